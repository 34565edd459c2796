"""The ASGI application: the faces over one engine."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from batchserve.engine.core import Engine
from batchserve.server import errors, mlserver
from batchserve.server.routes import auth, batches, health, services, workers


def create_app(engine: Engine, manage_engine: bool = True) -> FastAPI:
    """An app over ``engine``; with ``manage_engine`` the engine starts and stops with the app."""

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
            if manage_engine:
                await anyio.to_thread.run_sync(engine.stop)

    from batchserve._version import __version__

    app = FastAPI(
        title="batchserve",
        version=__version__,
        summary="Publish Python functions as versioned services and run batch executions.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    errors.install(app)
    # Routes are matched in the order they are added, one after another: batches first, as
    # their status is what clients ask for most often. No two routers' paths overlap.
    for module in (batches, health, auth, services, workers):
        app.include_router(module.router)
    for router in mlserver.routers:  # the Machine Learning Server compatible face
        app.include_router(router)
    return app
