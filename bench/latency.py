"""Request latency of a warm server: one-record calls, and batch status polling under load.

Against a real ``batchserve serve --workers P``:

- **consume through the SDK**: ``svc.consume(x=...)`` of a warm row-mode service (``y = x + 1``),
  ``--calls`` times one after another; p50/p99/max of each call's wall time.
- **consume over raw HTTP**: the same ``POST /v1/services/{name}/{version}/consume`` from one
  kept-alive ``httpx.Client`` with the SDK's bearer token; the gap to the SDK figure is the
  SDK's own cost.
- **status polling**: ``--clients`` concurrent clients (asyncio, one ``httpx.AsyncClient`` with a
  connection each) each send ``--polls`` ``GET /v1/batches/{id}`` one after another, while that
  batch runs (a service that sleeps ``--sleep-ms`` per record, so the workers hold the batch
  running without taking the CPU from the server); p50/p99 of every request.

    .venv/bin/python bench/latency.py [--calls 500] [--clients 32] [--polls 50]

The client runs on the same machine and cores as the server: what it costs is in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from _common import Server, Table, cpu_seconds, machine, percentile, verdict, versions


def add_one(x: float) -> float:
    return x + 1.0


def make_sleeper(ms: float):  # type: ignore[no-untyped-def]
    def slow_add_one(x: float) -> float:
        import time

        time.sleep(ms / 1000)
        return x + 1.0

    return slow_add_one


def timed_calls(calls: int, call) -> list[float]:  # type: ignore[no-untyped-def]
    """Wall time of each of `calls` calls, in milliseconds."""
    times = []
    for i in range(calls):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1000)
    return times


async def poll(url: str, token: str, batch_id: str, clients: int, polls: int) -> list[float]:
    import httpx

    async def one_client(times: list[float]) -> None:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            # One request untimed: the figures are for a connected client, not connection set-up.
            (await http.get(f"/v1/batches/{batch_id}")).raise_for_status()
            for _ in range(polls):
                start = time.perf_counter()
                response = await http.get(f"/v1/batches/{batch_id}")
                times.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()

    times: list[float] = []
    await asyncio.gather(*(one_client(times) for _ in range(clients)))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="consume and status-polling latency.")
    parser.add_argument("--calls", type=int, default=500, help="consume calls of each kind")
    parser.add_argument("--clients", type=int, default=32, help="concurrent polling clients")
    parser.add_argument("--polls", type=int, default=50, help="status requests per client")
    parser.add_argument("--parallel", type=int, default=2, help="server workers")
    parser.add_argument("--sleep-ms", type=float, default=5.0, help="per record, polled batch")
    parser.add_argument("--batch-records", type=int, default=20_000, help="polled batch size")
    args = parser.parse_args(argv)

    import httpx

    with (
        tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp,
        Server(Path(tmp), args.parallel) as server,
    ):
        client = server.client()
        svc = client.publish_service(
            "bench_add_one", code=add_one, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        for i in range(20):  # warm: the worker has loaded the service, connections are open
            svc.consume(x=float(i))

        sdk = timed_calls(args.calls, lambda i: svc.consume(x=float(i)))

        path = "/v1/services/bench_add_one/v1/consume"
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {client.token}"}, timeout=60
        ) as http:
            for i in range(20):
                http.post(path, json={"inputs": {"x": float(i)}}).raise_for_status()

            def raw_call(i: int) -> None:
                http.post(path, json={"inputs": {"x": float(i)}}).raise_for_status()

            raw = timed_calls(args.calls, raw_call)

        slow = client.publish_service(
            "bench_slow_add_one",
            code=make_sleeper(args.sleep_ms),
            inputs={"x": float},
            outputs={"y": float},
            version="v1",
        )
        batch = slow.batch(
            {"x": [float(i) for i in range(args.batch_records)]}, parallel_count=args.parallel
        ).start()
        start, client_cpu, server_cpu = (
            time.perf_counter(),
            time.process_time(),
            cpu_seconds(server.pid),
        )
        polls = asyncio.run(
            poll(server.url, str(client.token), str(batch.execution_id), args.clients, args.polls)
        )
        polling_s = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        server_cpu = cpu_seconds(server.pid) - server_cpu
        state = batch.refresh().state
        batch.cancel()
        # The same polling of a batch that is finished: what polling costs without a running batch.
        idle = asyncio.run(
            poll(server.url, str(client.token), str(batch.execution_id), args.clients, args.polls)
        )
        client.close()

    table = Table(["request", "n", "p50 ms", "p99 ms", "max ms", "target", "met?"])
    for name, times, target, limit in (
        ("consume, SDK `svc.consume()`", sdk, "p50 < 5 ms", 5.0),
        ("consume, raw HTTP (httpx, kept alive)", raw, "", None),
    ):
        p50 = percentile(times, 50)
        table.add(
            name, len(times), f"{p50:.2f}", f"{percentile(times, 99):.2f}", f"{max(times):.2f}",
            target, verdict(p50 < limit) if limit else "",
        )  # fmt: skip
    for what, times in (("running", polls), ("finished", idle)):
        p99 = percentile(times, 99)
        table.add(
            f"`GET /v1/batches/{{id}}` of a {what} batch, {args.clients} concurrent clients",
            len(times), f"{percentile(times, 50):.2f}", f"{p99:.2f}", f"{max(times):.2f}",
            "p99 < 25 ms", verdict(p99 < 25.0),
        )  # fmt: skip
    print(
        f"Latency, warm server, {args.parallel} workers ({machine()}; "
        f"{versions(['batchserve', 'httpx', 'uvicorn', 'fastapi'])})"
    )
    print()
    print(table.render())
    print()
    print(
        f"polling: {len(polls) / polling_s:,.0f} requests/s overall; the polled batch was "
        f"{state} while polled ({args.batch_records:,} records of {args.sleep_ms:g} ms); "
        f"CPU seconds meanwhile: the polling clients {client_cpu:.2f}, the server and its "
        f"workers {server_cpu:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
