"""Request latency of a warm server: one-record calls, and batch status polling under load.

Against a real ``batchserve serve --workers P``:

- **consume through the SDK**: ``svc.consume(x=...)`` of a warm row-mode service (``y = x + 1``),
  ``--calls`` times one after another; p50/p99/max of each call's wall time.
- **consume over raw HTTP**: the same ``POST /v1/services/{name}/{version}/consume`` from one
  kept-alive ``httpx.Client`` with the SDK's bearer token; the gap to the SDK figure is the
  SDK's own cost.
- **status polling**: ``--clients`` concurrent clients, each on its own kept-alive connection,
  each sending ``--polls`` ``GET /v1/batches/{id}`` back to back (the next as soon as the last
  is answered: the heaviest polling there is), while that batch runs (a service that sleeps
  ``--sleep-ms`` per record, so the workers hold the batch running without taking the CPU from
  the server), and again once it is finished; p50/p99 of every request. Two kinds of client:

  - *plain HTTP/1.1*: each client a bare asyncio connection writing one prepared request and
    reading the answer by its Content-Length, the way a load generator such as wrk does. It
    costs a few tens of microseconds a request, so the figure is the server's latency.
  - *httpx*: an ``httpx.AsyncClient`` per client, what a Python program polling would use.
    On these 2 cores the 32 clients' own work takes about as much CPU as the server's, so
    this figure is the client's cost as much as the server's.

    .venv/bin/python bench/latency.py [--calls 500] [--clients 32] [--polls 100]

The clients run on the same machine and cores as the server: what they cost is in the figures.
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


async def poll_httpx(url: str, token: str, path: str, clients: int, polls: int) -> list[float]:
    import httpx

    async def one_client(times: list[float]) -> None:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            # One request untimed: the figures are for a connected client, not connection set-up.
            (await http.get(path)).raise_for_status()
            for _ in range(polls):
                start = time.perf_counter()
                response = await http.get(path)
                times.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()

    times: list[float] = []
    await asyncio.gather(*(one_client(times) for _ in range(clients)))
    return times


async def poll_plain(url: str, token: str, path: str, clients: int, polls: int) -> list[float]:
    """The same polling from bare HTTP/1.1 connections (keep-alive, one request in flight)."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()

    async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"GET {path} answered {head.decode(errors='replace')}")

    async def one_client(times: list[float]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await get(reader, writer)  # untimed, as above
            for _ in range(polls):
                start = time.perf_counter()
                await get(reader, writer)
                times.append((time.perf_counter() - start) * 1000)
        finally:
            writer.close()

    times: list[float] = []
    await asyncio.gather(*(one_client(times) for _ in range(clients)))
    return times


POLLERS = {"plain HTTP/1.1": poll_plain, "httpx": poll_httpx}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="consume and status-polling latency.")
    parser.add_argument("--calls", type=int, default=500, help="consume calls of each kind")
    parser.add_argument("--clients", type=int, default=32, help="concurrent polling clients")
    parser.add_argument("--polls", type=int, default=100, help="status requests per client")
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
        status_path = f"/v1/batches/{batch.execution_id}"
        token = str(client.token)
        polled: dict[tuple[str, str], list[float]] = {}
        usage: dict[str, tuple[float, float, float]] = {}  # rate, client CPU, server CPU
        for kind, poller in POLLERS.items():
            start, client_cpu, server_cpu = (
                time.perf_counter(),
                time.process_time(),
                cpu_seconds(server.pid),
            )
            times = asyncio.run(poller(server.url, token, status_path, args.clients, args.polls))
            polling_s = time.perf_counter() - start
            polled[kind, "running"] = times
            usage[kind] = (
                len(times) / polling_s,
                time.process_time() - client_cpu,
                cpu_seconds(server.pid) - server_cpu,
            )
        state = batch.refresh().state
        batch.cancel()
        # The same polling of a batch that is finished: what polling costs without a running batch.
        batch.wait()
        for kind, poller in POLLERS.items():
            polled[kind, "finished"] = asyncio.run(
                poller(server.url, token, status_path, args.clients, args.polls)
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
    for (kind, what), times in polled.items():
        p99 = percentile(times, 99)
        table.add(
            f"`GET /v1/batches/{{id}}` of a {what} batch, {args.clients} {kind} clients",
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
        f"The polled batch was {state} while polled ({args.batch_records:,} records of "
        f"{args.sleep_ms:g} ms each)."
    )
    for kind, (rate, client_cpu, server_cpu) in usage.items():
        print(
            f"{kind} polling of the running batch: {rate:,.0f} requests/s; CPU seconds "
            f"meanwhile: the clients {client_cpu:.2f}, the server and its workers {server_cpu:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
