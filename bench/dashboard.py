"""How long the dashboard's pages take on a store of many batches and one very large batch.

Against a real ``batchserve serve`` on SQLite, whose store is given ``--batches`` finished
batches (metadata spread over 50 teams) and one failed batch of ``--records`` records in chunks
of 1,000, every other one failed whole. Those rows are written into the store directly, beside
the running server: uploading and running ten million records would take the benchmark's whole
time, and the pages read only what the store says of them (a failed chunk's records are made up
from its row, as after a batch that failed).

For each page, ``--repeat`` requests by a signed-in browser session (cookies, as the dashboard
uses them), one after another; p50 and max of each request's wall time:

- the batch listing (first page, 25 batches), filtered by state, and by a metadata pair;
- the large batch's page (first results, first failed records), and far into it (results
  from its last records, failed records from its middle);
- the first event of a progress stream that follows 200 batches (one store read for all);
- the results of a batch that really ran, ``--sorted-records`` records (a million: the most the
  dashboard sorts whole), sorted by their output, descending (``--repeat`` / 4 requests, as each
  reads that column of every record).

    .venv/bin/python bench/dashboard.py [--batches 10000] [--records 10000000] [--repeat 20]
                                        [--sorted-records 1000000]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _common import PASSWORD, Server, Table, machine, percentile


def fill(db: Path, batches: int, records: int) -> tuple[str, list[str]]:
    """The store's rows: ``batches`` finished batches and one failed batch of ``records``
    records. Returns the large batch's id and the small batches' ids."""
    from batchserve.store import Store
    from batchserve.store.models import Batch, Chunk, utcnow

    store = Store(f"sqlite:///{db}")
    service = store.get_service("scale", "v1")
    admin = store.get_user("admin")
    assert service is not None and admin is not None
    now = utcnow()
    common = {
        "service_id": service.id,
        "owner_id": admin.id,
        "state_transition_time": now,
        "creation_time": now,
        "last_modified": now,
        "revision": 1,
        "priority": 0,
        "parallel_count": 10,
        "sealed": True,
    }
    options = {"service": {"name": "scale", "version": "v1"}, "outputs": {"y": "int"}}
    small = [uuid.uuid4().hex for _ in range(batches)]
    with store.session() as s:
        for i, batch_id in enumerate(small):
            s.add(
                Batch(
                    id=batch_id,
                    state="completed" if i % 3 else "failed",
                    chunk_size=10,
                    total_count=10,
                    options={**options, "metadata": {"team": f"t{i % 50}"}},
                    **common,
                )
            )
    large = uuid.uuid4().hex
    chunks = records // 1000
    with store.session() as s:
        s.add(
            Batch(
                id=large,
                state="failed",
                display_name="large",
                chunk_size=1000,
                total_count=chunks * 1000,
                claimed=chunks * 1000,
                options=options,
                **common,
            )
        )
    with store.session() as s:
        for seq in range(chunks):
            failed = seq % 2 == 1
            s.add(
                Chunk(
                    batch_id=large,
                    seq=seq,
                    start_index=seq * 1000,
                    count=1000,
                    state="failed" if failed else "cancelled",
                    attempts=1,
                    lost_workers=0,
                    failed=1000 if failed else 0,
                    cancelled=0 if failed else 1000,
                    error="the worker was lost",
                )
            )
    store.close()
    return large, small


def sign_in(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=60)
    page = http.get("/ui/login").text
    value = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert value is not None
    answer = http.post(
        "/ui/login",
        data={"csrf_token": value.group(1), "username": "admin", "password": PASSWORD},
    )
    assert answer.status_code == 303, answer.text
    return http


def timed(http: httpx.Client, path: str, repeat: int) -> list[float]:
    took = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = http.get(path)
        took.append(time.perf_counter() - began)
        assert answer.status_code == 200, f"{path}: {answer.status_code}"
    return took


def first_event(http: httpx.Client, path: str, repeat: int) -> list[float]:
    took = []
    for _ in range(repeat):
        began = time.perf_counter()
        with http.stream("GET", path) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    break
        took.append(time.perf_counter() - began)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--sorted-records", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), workers=1) as server:
        with server.client() as client:
            svc = client.publish_service(
                "scale", code="y = x", inputs={"x": int}, outputs={"y": int}, version="v1"
            )
            n = args.sorted_records
            ran = svc.batch({"x": [(i * 7919) % n for i in range(n)]}).start().wait(timeout=600)
            assert ran.completed_item_count == n, ran.state
        began = time.perf_counter()
        large, small = fill(server.data_dir / "batchserve.db", args.batches, args.records)
        print(f"store filled in {time.perf_counter() - began:.1f} s")
        http = sign_in(server.url)
        middle = args.records // 2
        pages = {
            "listing, first page": "/ui/batches",
            "listing, state=failed": "/ui/batches?state=failed",
            "listing, metadata team:t7": "/ui/batches?metadata=team:t7",
            "large batch, first page": f"/ui/batches/{large}",
            "large batch, last results and middle failures": (
                f"/ui/batches/{large}?start={args.records - 50}&failed_after={middle}"
            ),
        }
        table = Table(["page", "p50 (ms)", "max (ms)"])
        for name, path in pages.items():
            took = timed(http, path, args.repeat)
            table.add(name, f"{percentile(took, 50) * 1000:.1f}", f"{max(took) * 1000:.1f}")
            print(table.rows[-1])
        ids = ",".join([*small[:199], large])
        took = first_event(http, f"/ui/progress?ids={ids}", args.repeat)
        table.add(
            "progress stream of 200 batches, first event",
            f"{percentile(took, 50) * 1000:.1f}",
            f"{max(took) * 1000:.1f}",
        )
        took = timed(http, f"/ui/batches/{ran.execution_id}?sort=output:y&desc=1", args.repeat // 4)
        table.add(
            f"a batch of {n:,} results sorted by its output",
            f"{percentile(took, 50) * 1000:.1f}",
            f"{max(took) * 1000:.1f}",
        )
        print(f"\n{machine()}; {args.batches:,} batches, one of {args.records:,} records\n")
        print(table.render())


if __name__ == "__main__":
    main()
