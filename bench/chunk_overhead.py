"""What one chunk costs around its records: the same records as one chunk, then one per chunk.

Against a real ``batchserve serve --workers P``, a warm row-mode service (``y = x``) runs
``--records`` records twice in each of ``--repeat`` rounds: as one chunk (the baseline: the
records' own cost and a batch's fixed cost), then as ``--records`` chunks of one record. The
difference, spread over the extra chunks, is what a chunk costs: its file at upload, its row in
the store, the scheduler's dispatch and recording, the worker's set-up and result file. The
upload (``start()``) and the run (``wait()``) are timed apart.

    .venv/bin/python bench/chunk_overhead.py [--records 400] [--parallel 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import Server, Table, machine, versions


def identity(x: int) -> int:
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The cost of a chunk around its records.")
    parser.add_argument("--records", type=int, default=400, help="records per batch")
    parser.add_argument("--parallel", type=int, default=2, help="server workers, parallel_count")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best counts")
    args = parser.parse_args(argv)
    n = args.records

    best: dict[int, tuple[float, float]] = {}  # chunk size -> (upload s, run s)
    with (
        tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp,
        Server(Path(tmp), args.parallel) as server,
    ):
        client = server.client()
        svc = client.publish_service(
            "bench_identity", code=identity, inputs={"x": int}, outputs={"y": int}, version="v1"
        )
        svc.batch({"x": [1, 2]}).start().wait()  # the service and the client's batch path, warm
        for _ in range(args.repeat):
            for size in (n, 1):
                start = time.perf_counter()
                batch = svc.batch(
                    {"x": list(range(n))}, parallel_count=args.parallel, chunk_size=size
                ).start()
                started = time.perf_counter()
                batch.wait()
                done = time.perf_counter()
                upload, run = started - start, done - started
                old = best.get(size)
                if old is None or upload + run < sum(old):
                    best[size] = (upload, run)
        client.close()

    (one_upload, one_run), (many_upload, many_run) = best[n], best[1]
    extra = n - 1
    table = Table(["batch", "upload + start s", "run s", "total s"])
    table.add(f"{n} records, 1 chunk (baseline)", f"{one_upload:.3f}", f"{one_run:.3f}",
              f"{one_upload + one_run:.3f}")  # fmt: skip
    table.add(f"{n} records, {n} chunks", f"{many_upload:.3f}", f"{many_run:.3f}",
              f"{many_upload + many_run:.3f}")  # fmt: skip
    table.add(
        "**per extra chunk, ms**",
        f"{1000 * (many_upload - one_upload) / extra:.2f}",
        f"{1000 * (many_run - one_run) / extra:.2f}",
        f"**{1000 * (many_upload + many_run - one_upload - one_run) / extra:.2f}**",
    )
    print(
        f"Chunk overhead, row mode, {args.parallel} workers, best of {args.repeat} "
        f"({machine()}; {versions(['batchserve'])})"
    )
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
