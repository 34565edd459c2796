"""Batches: create from a streamed upload, inspect, and read results and artifacts (their
control is in :mod:`batchserve.server.routes.batch_control`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from batchserve.engine.batch_listing import BatchPage
from batchserve.engine.errors import BadRequest
from batchserve.engine.ingest import ARROW_STREAM, CSV, FORMATS, JSONL, PARQUET, TSV
from batchserve.schema import MAX_RECORD_INDEX, SchemaError, check_json_depth
from batchserve.server.deps import EngineDep, PrincipalDep, UploadThreadsDep, caller
from batchserve.server.schemas import (
    ArtifactList,
    BatchList,
    BatchPublic,
    InputPage,
    InputRecord,
    RecordResult,
    RecordsAdded,
    ResultPage,
)
from batchserve.server.upload import blocking_body
from batchserve.states import BatchState
from batchserve.store.models import Batch

LONG_POLL_STEP = 1.0  # seconds between looks at a batch a long poll waits for

router = APIRouter(tags=["batches"])

#: An etag that makes a change conditional: it is made only if the batch still has this etag.
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="An etag of the batch: the change is made only if the batch still has it "
        "(else 412).",
    ),
]

#: The index of a record in a path.
Index = Annotated[int, Path(ge=0, le=MAX_RECORD_INDEX, description="The record's index, from 0.")]


def public(engine: EngineDep, batch: Batch) -> BatchPublic:
    user = engine.store.get_user_by_id(batch.owner_id)
    return BatchPublic.of(batch, engine.batches.counts(batch.id), user.username if user else None)


def record(row: dict[str, Any]) -> RecordResult:
    from batchserve.engine.results import row_to_json

    return RecordResult.model_validate(row_to_json(row))


@router.post(
    "/v1/services/{name}/{version}/batches",
    response_model=BatchPublic,
    status_code=201,
    summary="Create a batch from streamed records",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in FORMATS},
        }
    },
)
async def create_batch(
    name: str,
    version: str,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    threads: UploadThreadsDep,
    parallel_count: int = Query(
        10,
        ge=-1,
        le=10_000,
        description="Chunks run at once at most; -1: no limit but the workers.",
    ),
    chunk_size: int | None = Query(None, ge=1, le=10_000_000),
    record_count: int | None = Query(None, ge=0, le=MAX_RECORD_INDEX),
    start: bool = Query(True),
    priority: int = Query(0, ge=-1000, le=1000, description="Higher runs first."),
    display_name: str | None = Query(None, max_length=1024),
    metadata: str | None = Query(None, description='JSON object of text values: {"team": "risk"}'),
    environment: str | None = Query(
        None, description="JSON object of environment variables set for the service code"
    ),
    max_failed_records: int | None = Query(
        None,
        ge=0,
        le=MAX_RECORD_INDEX,
        description="Fail the batch once more records than this have failed.",
    ),
    task_failure_mode: str = Query(
        "noaction",
        pattern="^(noaction|terminatejob)$",
        description="terminatejob: the first failed record fails the batch.",
    ),
    max_wall_clock_time: float | None = Query(
        None, gt=0, description="Seconds from start after which the batch is failed."
    ),
    max_task_retry_count: int = Query(
        0,
        ge=-1,
        le=1_000_000,
        description="Tries of a failed record after its first; -1 for no limit.",
    ),
    task_timeout: float | None = Query(
        None, gt=0, description="Seconds one record (one call, if vectorized) may run."
    ),
    allow_preemption: bool = Query(
        False, description="Higher-priority batches may requeue this batch's running chunks."
    ),
    on_all_tasks_complete: str = Query(
        "terminatejob",
        pattern="^(noaction|terminatejob)$",
        description="noaction: an open batch, which takes more records (POST .../records) and "
        "completes only once closed (POST .../close).",
    ),
    depends_on: list[str] | None = Query(
        None, description="Ids of batches that must complete before this one runs."
    ),
    id_column: str | None = Query(
        None,
        max_length=1024,
        description="A column of the records whose values are carried into the results as "
        "each record's id (not checked for uniqueness).",
    ),
) -> BatchPublic:
    options: dict[str, Any] = {
        "max_failed_records": max_failed_records,
        "task_failure_mode": task_failure_mode,
        "max_wall_clock_time": max_wall_clock_time,
        "max_task_retry_count": max_task_retry_count,
        "task_timeout": task_timeout,
        "allow_preemption": allow_preemption,
        "on_all_tasks_complete": on_all_tasks_complete,
        "depends_on": [i for v in depends_on or [] for i in v.split(",") if i.strip()],
        "priority": priority,
        "display_name": display_name,
        "metadata": _text_mapping(metadata, "metadata"),
        "environment": _text_mapping(environment, "environment"),
    }
    service = await anyio.to_thread.run_sync(engine.services.get, name, version)
    content_type = (request.headers.get("content-type") or ARROW_STREAM).split(";")[0].strip()
    body = blocking_body(request.stream(), engine.settings.max_upload_bytes)

    def create() -> BatchPublic:
        with body:  # closed even when the upload is refused: the rest of it is not read
            return created()

    def created() -> BatchPublic:
        batch = engine.batches.create(
            who,
            service,
            body,
            content_type.lower(),
            parallel_count=parallel_count,
            chunk_size=chunk_size,
            record_count=record_count,
            start=start,
            options=options,
            id_column=id_column,
            spool_dir=engine.settings.home / "uploads",
            max_line_bytes=engine.settings.max_line_bytes,
        )
        return public(engine, batch)

    # The parser holds its thread while the body arrives: one of the uploads' own threads.
    return await anyio.to_thread.run_sync(create, limiter=threads)


STATE_HELP = (
    "Only batches in these states: repeat the parameter or separate names with commas "
    "(created, pending, running, pausing, paused, enabling, cancelling, cancelled, completed, "
    "failed, deleting: batches being deleted are listed only when asked for)."
)
METADATA_HELP = "Only batches whose metadata has key:value; repeat it to require several pairs."
LIMIT_HELP = "Batches per page (at most 1000)."
CURSOR_HELP = "The next_cursor of the previous page; leave it out to start from the newest batch."


@router.get(
    "/v1/services/{name}/{version}/batches",
    response_model=BatchList,
    summary="Batches of one service version, newest first, a page at a time",
)
def service_batches(
    name: str,
    version: str,
    engine: EngineDep,
    who: PrincipalDep,
    state: list[str] | None = Query(None, description=STATE_HELP),
    metadata: list[str] | None = Query(None, description=METADATA_HELP),
    created_after: datetime | None = Query(None, description="Only batches created after this."),
    created_before: datetime | None = Query(None, description="Only batches created before this."),
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_HELP),
    cursor: str | None = Query(None, description=CURSOR_HELP),
) -> BatchList:
    service = engine.services.get(name, version)
    page = engine.batches.list_page(
        who,
        service=service,
        states=state,
        metadata=_metadata_filter(metadata),
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        limit=limit,
        cursor=cursor,
    )
    return _listing(engine, page)


@router.get(
    "/v1/batches",
    response_model=BatchList,
    summary="Batches of every service, newest first, a page at a time",
)
def list_batches(
    engine: EngineDep,
    who: PrincipalDep,
    service: str | None = Query(None, description="Only batches of the service of this name."),
    version: str | None = Query(None, description="With service: only this version of it."),
    state: list[str] | None = Query(None, description=STATE_HELP),
    metadata: list[str] | None = Query(None, description=METADATA_HELP),
    created_after: datetime | None = Query(None, description="Only batches created after this."),
    created_before: datetime | None = Query(None, description="Only batches created before this."),
    limit: int = Query(100, ge=1, le=1000, description=LIMIT_HELP),
    cursor: str | None = Query(None, description=CURSOR_HELP),
) -> BatchList:
    services = None
    if service is not None:
        services = (
            [engine.services.get(service, version)]
            if version
            else engine.services.list_services(service)
        )
    elif version is not None:
        raise BadRequest("version filters the batches of one service: give service= with it.")
    page = engine.batches.list_page(
        who,
        services=services,
        states=state,
        metadata=_metadata_filter(metadata),
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        limit=limit,
        cursor=cursor,
    )
    return _listing(engine, page)


def _listing(engine: EngineDep, page: BatchPage) -> BatchList:
    users: dict[int, str | None] = {}  # a page holds a few users' batches: look each up once
    out = []
    for batch in page.batches:
        if batch.owner_id not in users:
            user = engine.store.get_user_by_id(batch.owner_id)
            users[batch.owner_id] = user.username if user else None
        counts = engine.batches.counts(batch.id)
        out.append(BatchPublic.of(batch, counts, users[batch.owner_id]))
    return BatchList(batches=out, next_cursor=page.next_cursor)


def _metadata_filter(pairs: list[str] | None) -> dict[str, str] | None:
    """``key:value`` query values as a mapping (the value may hold colons itself)."""
    wanted: dict[str, str] = {}
    for pair in pairs or []:
        key, colon, value = pair.partition(":")
        if not colon or not key:
            raise BadRequest(
                f"The metadata filter {pair!r} is not key:value; write it like metadata=team:risk."
            )
        if wanted.get(key, value) != value:
            raise BadRequest(
                f"The metadata filter names {key!r} twice with different values; a batch has "
                "one value per key."
            )
        wanted[key] = value
    return wanted or None


def _utc(when: datetime | None) -> datetime | None:
    """Times without a zone are taken as UTC, the zone every batch time is given in."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)


@router.get(
    "/v1/batches/{batch_id}",
    response_model=BatchPublic,
    summary="One batch",
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def get_batch(
    batch_id: str,
    request: Request,
    wait: float = Query(
        0,
        ge=0,
        le=60,
        description="Hold the answer until the batch is finished, at most this "
        "many seconds (a long poll).",
    ),
) -> Response:
    # The status clients poll: one statement for the batch with its counts, and the JSON
    # written by pydantic directly (returning a Response skips FastAPI's second validation of
    # the answer against response_model). A local SQLite read takes less time than a hop to a
    # worker thread and back, and under many pollers those hops queue for the GIL: it runs
    # on the event loop. A database across a network is read from a worker thread.
    engine, who = await caller(request)

    def status() -> tuple[bool, Response]:
        batch, counts, created_by = engine.batches.status(who, batch_id)
        answer = BatchPublic.of(batch, counts, created_by)
        return BatchState(batch.state).is_final, _conditional(request, batch, answer)

    async def look() -> tuple[bool, Response]:
        if engine.store.reads_are_local:
            return status()
        return await anyio.to_thread.run_sync(status)

    if not wait:
        return (await look())[1]
    # A long poll wakes as soon as this process ends the batch, and looks again every
    # LONG_POLL_STEP anyway, for changes made by another process sharing the store.
    deadline = time.monotonic() + wait
    while True:
        ended = engine.endings.expect(batch_id)
        try:
            final, answer = await look()
            left = deadline - time.monotonic()
            if final or left <= 0:
                return answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended, min(left, LONG_POLL_STEP))
        finally:
            engine.endings.forget(batch_id, ended)


def _conditional(request: Request, batch: Batch, answer: BatchPublic) -> Response:
    """The batch's JSON with its ``ETag`` and ``Last-Modified``, or 304 Not Modified when the
    request's ``If-None-Match`` names its etag, or (without ``If-None-Match``) its
    ``If-Modified-Since`` is not before its last change. Like Azure Batch's, the etag and the
    last change cover the batch's state and settings, not its record counts."""
    etag = answer.etag
    modified = batch.last_modified.replace(microsecond=0)
    headers = {"ETag": etag, "Last-Modified": format_datetime(modified, usegmt=True)}
    none_match = request.headers.get("if-none-match")
    if none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in none_match.split(",")}
        if etag in tags or "*" in tags:
            return Response(status_code=304, headers=headers)
    else:
        since = _http_date(request.headers.get("if-modified-since"))
        if since is not None and modified <= since:
            return Response(status_code=304, headers=headers)
    return Response(
        answer.model_dump_json().encode(), media_type="application/json", headers=headers
    )


def _http_date(value: str | None) -> datetime | None:
    """An HTTP date; None when absent or not a date (then, as HTTP says, it is ignored)."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@router.post(
    "/v1/batches/{batch_id}/records",
    response_model=RecordsAdded,
    summary="Add records to an open batch, while it waits or runs (they take its next indices)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in FORMATS},
        }
    },
)
async def add_records(
    batch_id: str,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    threads: UploadThreadsDep,
) -> RecordsAdded:
    content_type = (request.headers.get("content-type") or ARROW_STREAM).split(";")[0].strip()
    body = blocking_body(request.stream(), engine.settings.max_upload_bytes)

    def add() -> RecordsAdded:
        with body:
            batch, first, count = engine.batches.add_records(
                who,
                batch_id,
                body,
                content_type.lower(),
                spool_dir=engine.settings.home / "uploads",
                max_line_bytes=engine.settings.max_line_bytes,
            )
            return RecordsAdded(first_index=first, count=count, batch=public(engine, batch))

    return await anyio.to_thread.run_sync(add, limiter=threads)


#: Media types of the streamed result formats.
RESULT_MEDIA_TYPES = {
    "arrow": ARROW_STREAM,
    "parquet": PARQUET,
    "csv": CSV,
    "tsv": TSV,
    "jsonl": JSONL,
}
_RESULT_SUFFIX = {"arrow": "arrows"}


@router.get(
    "/v1/batches/{batch_id}/results",
    response_model=ResultPage,
    summary="Finished results by index range (JSON pages), or all of them as one file "
    "(JSON Lines, CSV, TSV, Parquet or Arrow), in index order",
    responses={200: {"content": {t: {} for t in RESULT_MEDIA_TYPES.values()}}},
)
def results(
    batch_id: str,
    engine: EngineDep,
    who: PrincipalDep,
    start: int = Query(0, ge=0, le=MAX_RECORD_INDEX),
    limit: int = Query(1000, ge=1, le=100_000),
    format: str = Query("json", pattern="^(json|jsonl|csv|tsv|parquet|arrow)$"),
    columns: list[str] | None = Query(
        None,
        description="With a file format: only these result columns, in this order (repeated or "
        "comma-separated), e.g. columns=index,answer.",
    ),
) -> ResultPage | StreamingResponse:
    batch = engine.batches.get(who, batch_id)
    if format != "json":
        name = f"{batch.id}-results.{_RESULT_SUFFIX.get(format, format)}"
        wanted = (
            [c.strip() for v in columns for c in v.split(",") if c.strip()] if columns else None
        )
        return StreamingResponse(
            engine.results.stream(batch, format, wanted),
            media_type=RESULT_MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    rows = engine.results.page(batch, start, limit)
    nxt = start + limit if start + limit < batch.total_count else None
    return ResultPage(
        batch=public(engine, batch),
        start=start,
        limit=limit,
        next_start=nxt,
        results=[record(r) for r in rows],
    )


@router.get(
    "/v1/batches/{batch_id}/records",
    response_model=InputPage,
    summary="The batch's input records by index range, in index order",
)
def input_records(
    batch_id: str,
    engine: EngineDep,
    who: PrincipalDep,
    start: int = Query(0, ge=0, le=MAX_RECORD_INDEX),
    limit: int = Query(1000, ge=1, le=10_000),
) -> InputPage:
    batch = engine.batches.get(who, batch_id)
    rows = engine.results.inputs(batch, start, limit)
    nxt = start + limit if start + limit < batch.total_count else None
    return InputPage(
        start=start, limit=limit, next_start=nxt, records=[InputRecord(**r) for r in rows]
    )


@router.get(
    "/v1/batches/{batch_id}/results/{index}",
    response_model=RecordResult,
    summary="The result of one record",
)
def result(batch_id: str, index: Index, engine: EngineDep, who: PrincipalDep) -> RecordResult:
    batch = engine.batches.get(who, batch_id)
    return record(engine.results.record(batch, index))


@router.get(
    "/v1/batches/{batch_id}/results/{index}/artifacts",
    response_model=ArtifactList,
    summary="Artifact names of one record",
)
def artifacts(batch_id: str, index: Index, engine: EngineDep, who: PrincipalDep) -> ArtifactList:
    batch = engine.batches.get(who, batch_id)
    return ArtifactList(artifacts=engine.results.artifacts(batch, index))


@router.get(
    "/v1/batches/{batch_id}/results/{index}/artifacts/{name}",
    summary="One artifact's bytes",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def artifact(
    batch_id: str, index: Index, name: str, engine: EngineDep, who: PrincipalDep
) -> Response:
    batch = engine.batches.get(who, batch_id)
    data = engine.results.artifact(batch, index, name)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'},
    )


def _text_mapping(text: str | None, what: str) -> dict[str, str]:
    """A query parameter holding a JSON object of text values."""
    if not text:
        return {}
    try:
        check_json_depth(text, f"the {what} parameter")
        value = json.loads(text)
    except SchemaError as exc:
        raise BadRequest(str(exc)) from None
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(f'{what} must be a JSON object of text values, like {{"team": "risk"}}.')
    return value


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
