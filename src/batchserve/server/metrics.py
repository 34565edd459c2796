"""``GET /metrics`` (Prometheus' text format) and the HTTP figures behind it.

Who may read it: owners (their access token), and a scraper holding the ``metrics_token``
setting (``BATCHSERVE_METRICS_TOKEN``), a secret that grants nothing else. The figures name
services and nodes, and reading them costs the store a few aggregate statements: not for
anyone who can reach the port. Refusals are the API's usual 401 and 403 error bodies.

Requests are timed by :class:`RequestMetrics`, labelled by the path template of the route that
answered (``/v1/batches/{batch_id}``), never by the URL asked for, and with unknown methods
folded into ``other``: what a client sends cannot add series.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchserve.engine.core import Engine
from batchserve.engine.errors import Forbidden
from batchserve.engine.metrics import NodeMetrics
from batchserve.server.deps import EngineDep, bearer_token, principal_of
from batchserve.server.mlserver import batches as mlserver_batches
from batchserve.server.routes import batches

router = APIRouter(tags=["operations"])

#: Routes whose request bodies are records uploaded to batches.
UPLOADS: frozenset[Callable[..., Any]] = frozenset(
    {batches.create_batch, batches.add_records, mlserver_batches.start_batch}
)
#: Routes whose answers carry results or artifacts out.
EXPORTS: frozenset[Callable[..., Any]] = frozenset(
    {batches.results, batches.artifact, mlserver_batches.get_batch, mlserver_batches.get_file}
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"  # the route label of a request no route took (a 404, say)

REQUEST_SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
)  # fmt: skip


_HTTP: weakref.WeakKeyDictionary[NodeMetrics, HttpMetrics] = weakref.WeakKeyDictionary()


class HttpMetrics:
    """The HTTP instruments, in the engine's registry."""

    def __init__(self, metrics: NodeMetrics) -> None:
        registry = metrics.registry
        self.request_seconds = Histogram(
            "batchserve_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer (a streamed download's "
            "included), by method, route path template and status code.",
            ["method", "route", "status"],
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=registry,
        )
        self.upload_bytes = Counter(
            "batchserve_upload_bytes",
            "Bytes of batch records received (native uploads and ML Server batch starts).",
            registry=registry,
        )
        self.export_bytes = Counter(
            "batchserve_export_bytes",
            "Bytes of results and artifacts sent (native and ML Server faces).",
            registry=registry,
        )
        self._timers: dict[tuple[str, str, int], Histogram] = {}

    @classmethod
    def of(cls, metrics: NodeMetrics) -> HttpMetrics:
        """The HTTP instruments in this registry, made once: a second app over the same engine
        shares them (registering them twice would fail)."""
        found = _HTTP.get(metrics)
        if found is None:
            found = _HTTP[metrics] = cls(metrics)
        return found

    def timer(self, method: str, route: str, status: int) -> Histogram:
        """The histogram's child for these labels, kept: looking it up in the histogram costs
        a lock and the labels' checks on every request, status polls included."""
        key = (method, route, status)
        child = self._timers.get(key)
        if child is None:
            child = self._timers[key] = self.request_seconds.labels(method, route, str(status))
        return child


class RequestMetrics:
    """ASGI middleware: times every HTTP request, and counts the bytes of uploads and
    exports."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self.http = HttpMetrics.of(metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless an answer starts
        http = self.http

        # Bytes are counted as they pass, so that a figure is up to date once its answer has
        # arrived. The router has chosen the route (``scope["route"]``) before the endpoint
        # reads a body or answers.
        async def counted_receive() -> Message:
            message = await receive()
            if (
                message["type"] == "http.request"
                and message.get("body")
                and getattr(scope.get("route"), "endpoint", None) in UPLOADS
            ):
                http.upload_bytes.inc(len(message["body"]))
            return message

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif (
                message["type"] == "http.response.body"
                and message.get("body")
                and status < 400
                and getattr(scope.get("route"), "endpoint", None) in EXPORTS
            ):
                http.export_bytes.inc(len(message["body"]))
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            template = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "other"
            http.timer(method, template, status).observe(time.perf_counter() - began)


@router.get(
    "/metrics",
    summary="Figures for Prometheus (owners, or the metrics token)",
    description=(
        "The server's figures in Prometheus' text exposition format: batches by state, records "
        "by service, the queue, the nodes' workers, chunk run times, request latencies. Send "
        "'Authorization: Bearer <token>' with an owner's access token, or with the server's "
        "metrics_token (BATCHSERVE_METRICS_TOKEN) from a scraper."
    ),
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request, engine: EngineDep) -> Response:
    token = bearer_token(request.headers.get("authorization"))
    if not _is_metrics_token(engine, token):
        who = await principal_of(engine, token)
        if not who.is_owner:
            raise Forbidden(
                "Only owners may read the metrics; a scraper sends the server's metrics token "
                "(BATCHSERVE_METRICS_TOKEN) as its bearer token."
            )
    # The cluster's figures are read from the store: off the event loop.
    body = await anyio.to_thread.run_sync(generate_latest, engine.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _is_metrics_token(engine: Engine, token: str) -> bool:
    expected = engine.settings.metrics_token
    # Compared in constant time: how long a refusal takes must not tell how much was right.
    return bool(expected) and secrets.compare_digest(token.encode(), (expected or "").encode())
