"""The ASGI application: the faces over one engine."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from batchserve.engine.core import Engine
from batchserve.server import errors, limits, metrics, mlserver, query, stopping, ui
from batchserve.server.mlserver import batches as mlserver_batches
from batchserve.server.mlserver import sessions as mlserver_sessions
from batchserve.server.protocol import http_protocol
from batchserve.server.routes import (
    auth,
    batch_control,
    batches,
    health,
    job_tasks,
    services,
    workers,
)
from batchserve.server.threads import Threads
from batchserve.settings import Settings

# The routes whose bodies are not JSON, and their limits (every other body is JSON; see
# batchserve.server.limits).
BODIES: dict[Callable[..., Any], limits.BodyKind] = {
    batches.create_batch: limits.RECORDS,
    job_tasks.put_job_task: limits.JOB_TASK,
    services.publish: limits.BUNDLE,
    mlserver_batches.start_batch: limits.JSON_RECORDS,
    mlserver_sessions.put_object: limits.SESSION_OBJECT,
    **ui.BODIES,  # the dashboard's forms
}


def create_app(
    engine: Engine, manage_engine: bool = True, stop_engine: bool | None = None
) -> FastAPI:
    """An app over ``engine``; with ``manage_engine`` the engine starts and stops with the app.
    ``stop_engine`` (default: as ``manage_engine``) stops an engine started before the app with
    it: on SIGTERM, uvicorn runs the app's shutdown, then raises the signal again, so code after
    ``uvicorn.run`` never runs."""
    stop = manage_engine if stop_engine is None else stop_engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await anyio.to_thread.run_sync(engine.start)
        # pyarrow imports pandas and its own pandas layer on first use of some of the paths
        # uploads and results take (a third of a second): paid here, not by the first batch.
        import pandas  # noqa: F401
        import pyarrow.pandas_compat  # noqa: F401

        # Everything loaded so far lives as long as the server: kept out of the collector's
        # full passes, which otherwise stop every request for tens of milliseconds now and then.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if stop:
                await anyio.to_thread.run_sync(engine.stop)

    from batchserve._version import __version__

    # /docs and /redoc load Swagger UI and ReDoc from files installed with the server (the
    # fastapi-offline package), not from a public CDN: the pages hold a token once one logs in.
    app = FastAPIOffline(
        title="batchserve",
        version=__version__,
        summary="Publish Python functions as versioned services and run batch executions.",
        lifespan=lifespan,
        # A misspelt query parameter on a route that changes things is a 400, not ignored.
        dependencies=[Depends(query.known_query)],
        static_url="/docs/assets",
        # Swagger UI's default shows a badge fetched from a public validator, which is sent the
        # document's address.
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.engine = engine
    app.state.threads = Threads.of(engine.settings)
    errors.install(app)
    app.add_middleware(limits.RequestGuard, bodies=BODIES)
    app.add_middleware(stopping.StoppingAnswer)  # the outer one: it answers for the guard too
    app.add_middleware(metrics.RequestMetrics, metrics=engine.metrics)  # times every answer
    # Routes are matched in the order they are added, one after another: batches first, as
    # their status is what clients ask for most often. No two routers' paths overlap.
    for module in (batches, batch_control, health, auth, services, workers, job_tasks):
        app.include_router(module.router)
    for router in mlserver.routers:  # the Machine Learning Server compatible face
        app.include_router(router)
    app.include_router(metrics.router)  # GET /metrics, for Prometheus
    app.include_router(ui.router)  # the web dashboard, /ui
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``uvicorn.run`` takes besides the app, the address and the logging."""
    return {
        # HTTP/1.1 with header and body read timeouts (uvicorn has none).
        "http": http_protocol(
            settings.header_timeout, settings.body_timeout, settings.shutdown_timeout
        ),
        # A stopping server waits this long for the requests in progress, then cancels them: a
        # stalled upload cannot hold the exit (uvicorn waits for ever by default).
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        # Sent with every answer, the server's own included (404, 408, 500...).
        "headers": [("X-Content-Type-Options", "nosniff")],
    }
