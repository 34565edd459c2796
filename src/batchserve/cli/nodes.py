"""``batchserve worker`` (a compute node) and ``batchserve nodes`` (the nodes sharing a store).

A compute node has no HTTP face: it claims chunks from the shared PostgreSQL store, runs them
on its workers, and writes their results to the shared blob store. On SIGTERM (or Ctrl-C) it
drains: it claims nothing new, lets its running chunks finish, and exits; a second signal
stops it at once, giving its running chunks back for other nodes to run.
"""

from __future__ import annotations

import logging
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from batchserve.cli.connection import connected
from batchserve.cli.output import JsonOption, Output, when

log = logging.getLogger(__name__)


class LogFormat(StrEnum):
    """How log lines are written: readable lines, or one JSON object a line (for a log
    collector; see batchserve.logs)."""

    text = "text"
    json = "json"


LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="BATCHSERVE_LOG_FORMAT",
        help="Log lines as readable text (default) or as one JSON object a line.",
    ),
]


def started_engine(
    given: dict[str, Any],
    log_level: str,
    role: str | None = None,
    log_format: LogFormat = LogFormat.text,
) -> Any:
    """Settings from the options given (the rest from the environment), and the engine of
    this node, started; a setting or a backend that cannot work is one line and exit 2."""
    from pydantic import ValidationError

    from batchserve.engine.core import ConfigurationError, Engine
    from batchserve.executors.base import ExecutorUnavailable
    from batchserve.settings import Settings
    from batchserve.worker.sandbox import SandboxUnavailable

    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: {problems}", err=True)
        raise typer.Exit(2) from None
    from batchserve.logs import configure, settings_secrets

    configure(log_level, log_format.value, settings_secrets(settings))
    try:
        engine = Engine(settings, role)
    except (SandboxUnavailable, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        engine.start()
    except (ExecutorUnavailable, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        engine.stop()
        raise typer.Exit(2) from None
    return engine


def worker(
    workers: int = typer.Option(
        None,
        min=1,
        help="Worker processes (default: one per core); with --executor ray, actors at once "
        "(default: the cluster's CPUs).",
    ),
    executor: str = typer.Option(
        None, help="Where chunks run: local (worker processes of this node) or ray."
    ),
    ray_address: str = typer.Option(
        None, "--ray-address", help="The Ray cluster for --executor ray (default auto)."
    ),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="This node's own data directory (default $BATCHSERVE_HOME or ~/.batchserve).",
    ),
    blob_url: str = typer.Option(
        None,
        "--blob-url",
        help="The blob store every node shares: file:///shared/folder or s3://bucket/prefix.",
    ),
    sandbox: str = typer.Option(None, help="auto (default), bwrap or off; as for serve."),
    worker_network: str = typer.Option(None, help="none (default) or host; as for serve."),
    worker_memory: str = typer.Option(None, help="Memory one worker may take; as for serve."),
    log_level: str = typer.Option("info", help="Log level: debug, info, warning, error."),
    log_format: LogFormatOption = LogFormat.text,
    metrics_port: int = typer.Option(
        None,
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve this node's Prometheus metrics on http://127.0.0.1:PORT/metrics (default: "
        "off; BATCHSERVE_METRICS_HOST binds another address). No token is asked there.",
    ),
) -> None:
    """Run a compute node: claim chunks from the shared PostgreSQL store (BATCHSERVE_DATABASE_URL)
    and run them. SIGTERM drains it: it finishes its running chunks, claims nothing new, and
    exits."""
    given = {
        "home": data_dir,
        "workers": workers,
        "blob_url": blob_url,
        "executor": executor,
        "ray_address": ray_address,
        "sandbox": sandbox,
        "worker_network": worker_network,
        "worker_memory": worker_memory,
        "metrics_port": metrics_port,
    }
    engine = started_engine(given, log_level, role="compute", log_format=log_format)
    typer.echo(f"batchserve compute node {engine.identity.id} on {engine.identity.host}")
    if engine.settings.metrics_port:
        serve_metrics(engine)
    typer.echo(f"blob store: {engine.blobs.url}; workers: {engine.executor.describe()}")
    signals: list[int] = []
    woken = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        signals.append(signum)
        woken.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        while not signals:
            woken.wait(1.0)
        typer.echo("draining: no new chunks; waiting for the running ones to finish")
        engine.drain()
        woken.clear()
        while len(signals) == 1 and engine.running():
            woken.wait(0.25)
        if engine.running():
            typer.echo("stopping now; the running chunks go back to the queue")
    finally:
        engine.stop()
    typer.echo("stopped")


def serve_metrics(engine: Any) -> None:
    """Serve the node's own figures over HTTP (a compute node has no API to serve them)."""
    from prometheus_client import start_http_server

    host, port = engine.settings.metrics_host, engine.settings.metrics_port
    try:
        start_http_server(port, host, registry=engine.metrics.registry)
    except OSError as exc:
        typer.echo(f"error: cannot serve the metrics on {host}:{port}: {exc.strerror}", err=True)
        engine.stop()
        raise typer.Exit(2) from None
    typer.echo(f"metrics: http://{host}:{port}/metrics")


def nodes_list(json_mode: JsonOption = False) -> None:
    """List the nodes sharing the server's store: role, host, pid, heartbeat, workers and the
    chunks each runs (owners)."""
    with connected() as conn:
        found = conn.request("GET", "/v1/nodes")
    out = Output(json_mode)
    if out.json:
        out.emit_lines(found)
        return
    out.table(
        ["node", "role", "host", "pid", "workers", "running", "heartbeat", "version", ""],
        [
            [
                n["id"][:12],
                n["role"],
                n["host"],
                n["pid"],
                n["workers"],
                n["running_chunks"],
                when(n["last_heartbeat"]),
                n["version"],
                " ".join(
                    w
                    for w, on in (
                        ("leader", n["leader"]),
                        ("draining", n["draining"]),
                        ("(this)", n["this_node"]),
                    )
                    if on
                ),
            ]
            for n in found
        ],
    )
