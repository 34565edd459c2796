"""Sessions and snapshots: the authoring steps ML Server's clients take while publishing."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, Request, Response

from batchserve.server.deps import EngineDep, PrincipalDep, UploadThreadsDep
from batchserve.server.mlserver.errors import MLServerRoute
from batchserve.server.mlserver.schemas import (
    CreateSessionRequest,
    CreateSessionResponse,
    CreateSnapshotRequest,
    CreateSnapshotResponse,
)
from batchserve.server.mlserver.workspaces import Workspaces
from batchserve.server.upload import read_body

router = APIRouter(tags=["ML Server: sessions"], route_class=MLServerRoute)


def get_workspaces(engine: EngineDep) -> Workspaces:
    return Workspaces(engine.blobs)


WorkspacesDep = Annotated[Workspaces, Depends(get_workspaces)]


@router.post(
    "/sessions",
    response_model=CreateSessionResponse,
    status_code=201,
    summary="Open an authoring session",
)
def create_session(
    body: CreateSessionRequest, who: PrincipalDep, spaces: WorkspacesDep
) -> CreateSessionResponse:
    return CreateSessionResponse(sessionId=spaces.create_session(who, body.runtimeType))


@router.delete("/sessions/{session_id}", summary="Close a session and drop its workspace")
def close_session(session_id: str, who: PrincipalDep, spaces: WorkspacesDep) -> Response:
    spaces.close_session(who, session_id)
    return Response(status_code=200)


@router.post(
    "/sessions/{session_id}/workspace/{object_name}",
    status_code=201,
    summary="Upload one serialized (dill) object into the session's workspace",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_object(
    session_id: str,
    object_name: str,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    spaces: WorkspacesDep,
    threads: UploadThreadsDep,
) -> Response:
    limit = engine.settings.max_bundle_bytes  # the object goes into a service bundle
    data = await read_body(
        request.stream(),
        limit,
        f"The object {object_name!r} is larger than the limit of {limit} bytes "
        "(BATCHSERVE_MAX_BUNDLE_BYTES).",
    )
    # The bytes stay opaque here: they are only ever unpickled by the workers.
    await anyio.to_thread.run_sync(
        spaces.put_object, who, session_id, object_name, data, limiter=threads
    )
    return Response(status_code=201)


@router.post(
    "/sessions/{session_id}/snapshot",
    response_model=CreateSnapshotResponse,
    status_code=201,
    summary="Save the session's workspace as a snapshot",
)
def create_snapshot(
    session_id: str,
    who: PrincipalDep,
    spaces: WorkspacesDep,
    body: Annotated[CreateSnapshotRequest | None, Body()] = None,
) -> CreateSnapshotResponse:
    return CreateSnapshotResponse(snapshotId=spaces.snapshot(who, session_id))


@router.delete("/snapshots/{snapshot_id}", summary="Delete a snapshot")
def delete_snapshot(snapshot_id: str, who: PrincipalDep, spaces: WorkspacesDep) -> Response:
    spaces.delete_snapshot(who, snapshot_id)
    return Response(status_code=200)
