"""Operators' view of the nodes and of this node's worker pool (owners only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from batchserve.engine.errors import Forbidden
from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.store.models import utcnow

router = APIRouter(tags=["operations"])


class NodePublic(BaseModel):
    id: str
    role: str  # all (API and workers), api, or compute
    host: str
    pid: int
    version: str
    workers: int
    executor: str
    running_chunks: int
    started_at: datetime
    last_heartbeat: datetime
    lease_until: datetime
    draining: bool
    leader: bool
    this_node: bool


@router.get("/v1/workers", summary="The worker processes of this node (owners)")
def workers(engine: EngineDep, who: PrincipalDep) -> dict[str, Any]:
    if not who.is_owner:
        raise Forbidden("Only owners may inspect the workers.")
    return {"workers": engine.executor.workers()}


@router.get(
    "/v1/nodes",
    response_model=list[NodePublic],
    summary="The nodes sharing this server's store (owners)",
    description=(
        "Every live batchserve node: API nodes, compute nodes and embedded servers, with their "
        "last heartbeat and the chunks each runs. A node whose lease ran out is left out (and "
        "removed once its work is taken back)."
    ),
)
def nodes(engine: EngineDep, who: PrincipalDep) -> list[NodePublic]:
    if not who.is_owner:
        raise Forbidden("Only owners may list the nodes.")
    now = utcnow()
    leader = engine.store.leader_node()
    return [
        NodePublic(
            id=node.id,
            role=node.role,
            host=node.host,
            pid=node.pid,
            version=node.version,
            workers=node.workers,
            executor=node.executor,
            running_chunks=running,
            started_at=node.started_at,
            last_heartbeat=node.heartbeat_at,
            lease_until=node.lease_until,
            draining=node.draining,
            leader=node.id == leader,
            this_node=node.id == engine.identity.id,
        )
        for node, running in engine.store.nodes()
        if node.lease_until >= now
    ]
