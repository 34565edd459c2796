"""A batch's control: start, close, cancel, terminate, pause and resume, change and delete it.
Every change takes ``If-Match`` and answers with the batch as it is now."""

from __future__ import annotations

from fastapi import APIRouter, Response

from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.server.routes.batches import IfMatch, public
from batchserve.server.schemas import BatchPublic, BatchUpdate, DisableRequest, TerminateRequest

router = APIRouter(tags=["batches"])


@router.post(
    "/v1/batches/{batch_id}/close",
    response_model=BatchPublic,
    summary="Close an open batch: it takes no more records, and completes once they are done",
)
def close_batch(
    batch_id: str, engine: EngineDep, who: PrincipalDep, if_match: IfMatch = None
) -> BatchPublic:
    return public(engine, engine.batches.close(who, batch_id, if_match=if_match))


@router.post("/v1/batches/{batch_id}/start", response_model=BatchPublic, summary="Start a batch")
def start_batch(batch_id: str, engine: EngineDep, who: PrincipalDep) -> BatchPublic:
    return public(engine, engine.batches.start(who, batch_id))


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=BatchPublic,
    summary="Cancel a batch; finished results are kept",
)
def cancel_batch(
    batch_id: str, engine: EngineDep, who: PrincipalDep, if_match: IfMatch = None
) -> BatchPublic:
    return public(engine, engine.batches.cancel(who, batch_id, if_match=if_match))


@router.post(
    "/v1/batches/{batch_id}/disable",
    response_model=BatchPublic,
    summary="Pause a batch: no new chunk starts; running ones are requeued, stopped or awaited",
)
def disable_batch(
    batch_id: str,
    engine: EngineDep,
    who: PrincipalDep,
    body: DisableRequest | None = None,
    if_match: IfMatch = None,
) -> BatchPublic:
    mode = body.disable_tasks if body is not None else "requeue"
    return public(engine, engine.batches.disable(who, batch_id, mode, if_match=if_match))


@router.post(
    "/v1/batches/{batch_id}/enable",
    response_model=BatchPublic,
    summary="Let a paused batch run again",
)
def enable_batch(
    batch_id: str, engine: EngineDep, who: PrincipalDep, if_match: IfMatch = None
) -> BatchPublic:
    return public(engine, engine.batches.enable(who, batch_id, if_match=if_match))


@router.patch(
    "/v1/batches/{batch_id}",
    response_model=BatchPublic,
    summary="Change a batch's settings (If-Match: an etag makes it conditional)",
)
def update_batch(
    batch_id: str,
    body: BatchUpdate,
    engine: EngineDep,
    who: PrincipalDep,
    if_match: IfMatch = None,
) -> BatchPublic:
    changes = body.model_dump(exclude_none=True)
    return public(engine, engine.batches.update(who, batch_id, if_match=if_match, **changes))


@router.post(
    "/v1/batches/{batch_id}/terminate",
    response_model=BatchPublic,
    summary="Stop a batch with a reason; finished results are kept",
)
def terminate_batch(
    batch_id: str,
    engine: EngineDep,
    who: PrincipalDep,
    body: TerminateRequest | None = None,
    if_match: IfMatch = None,
) -> BatchPublic:
    reason = (body.reason if body is not None else None) or "UserTerminate"
    return public(engine, engine.batches.cancel(who, batch_id, reason=reason, if_match=if_match))


@router.delete(
    "/v1/batches/{batch_id}",
    status_code=204,
    summary="Delete a batch and its data (stops it first)",
    responses={
        204: {"description": "The batch, its records, results and files are gone"},
        202: {
            "description": "The batch is gone for reads; its workers are being stopped and its "
            "data removed. The body is the batch, in state deleting.",
            "model": BatchPublic,
        },
    },
)
def delete_batch(
    batch_id: str, engine: EngineDep, who: PrincipalDep, if_match: IfMatch = None
) -> Response:
    if engine.batches.delete(who, batch_id, if_match=if_match):
        return Response(status_code=204)
    left = engine.batches.being_deleted(who, batch_id)
    if left is None:  # removed meanwhile
        return Response(status_code=202)
    body = public(engine, left).model_dump_json().encode()
    return Response(body, status_code=202, media_type="application/json")
