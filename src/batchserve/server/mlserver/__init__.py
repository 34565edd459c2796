"""The Machine Learning Server compatible REST face.

Routes on ML Server's paths and with its field names, so its original Python client
(``azureml-model-management-sdk``) can publish, consume and batch against batchserve. Log-in
(``POST /login`` and the refresh-token routes) is shared with the native API, whose field names
are ML Server's already. Every route is a thin adapter over the engine's operations.
"""

from __future__ import annotations

from fastapi import APIRouter

from batchserve.server.mlserver import batches, consume, services, sessions, swagger

routers: list[APIRouter] = [
    sessions.router,
    services.router,
    batches.router,
    consume.router,
    swagger.router,
]

__all__ = ["routers"]
