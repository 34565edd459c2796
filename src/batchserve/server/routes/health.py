from __future__ import annotations

from fastapi import APIRouter

from batchserve.server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness; needs no token")
def health() -> Health:
    from batchserve._version import __version__

    return Health(status="ok", version=__version__)
