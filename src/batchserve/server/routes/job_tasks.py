"""A batch's job preparation and release code (:mod:`batchserve.engine.job_tasks`), attached
before the batch starts: the body is the SDK's bundle of a function, kept as bytes."""

from __future__ import annotations

from enum import StrEnum

import anyio.to_thread
from fastapi import APIRouter, Query, Request

from batchserve.server.deps import EngineDep, PrincipalDep, UploadThreadsDep
from batchserve.server.routes.batches import public
from batchserve.server.schemas import BatchPublic
from batchserve.server.upload import read_body

router = APIRouter(tags=["batches"])


class JobTaskKind(StrEnum):
    preparation = "preparation"
    release = "release"


@router.put(
    "/v1/batches/{batch_id}/{kind}",
    response_model=BatchPublic,
    summary="Attach the batch's job preparation (run by each worker before its first chunk) or "
    "release (run by each worker that ran it, once it ends)",
)
async def put_job_task(
    batch_id: str,
    kind: JobTaskKind,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    threads: UploadThreadsDep,
    name: str | None = Query(
        None, max_length=200, description="What info() calls it (the function's name)."
    ),
) -> BatchPublic:
    limit = engine.settings.max_bundle_bytes
    code = await read_body(
        request.stream(),
        limit,
        f"The job {kind.value}'s code is larger than the limit of {limit} bytes "
        "(BATCHSERVE_MAX_BUNDLE_BYTES); keep large data out of it.",
    )

    def attach() -> BatchPublic:
        return public(engine, engine.job_tasks.attach(who, batch_id, kind.value, code, name))

    return await anyio.to_thread.run_sync(attach, limiter=threads)
