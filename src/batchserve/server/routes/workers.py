"""Operators' view of the worker pool."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from batchserve.engine.errors import Forbidden
from batchserve.server.deps import EngineDep, PrincipalDep

router = APIRouter(tags=["operations"])


@router.get("/v1/workers", summary="The worker processes (owners)")
def workers(engine: EngineDep, who: PrincipalDep) -> dict[str, Any]:
    if not who.is_owner:
        raise Forbidden("Only owners may inspect the workers.")
    return {"workers": engine.executor.workers()}
