"""Batch executions on ML Server's paths: start from a JSON array, poll with (partial) results,
read each record's files, cancel-and-delete. The engine's batch operations do the work.

A poll returns at most ``mlserver_results_limit`` results (10,000 by default), written out a
slice at a time as they are read: a batch of millions of records is read a page at a time with
``start`` and ``limit``, which ML Server's clients do not send, and its ``Link`` header names the
next page. ML Server's clients index the results of one answer, which holds all of a batch of up
to that many records.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio.to_thread
import pyarrow as pa
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import BadRequest, NotFound
from batchserve.engine.ingest import ARROW_STREAM
from batchserve.schema import (
    ARROW_TYPES,
    MAX_RECORD_INDEX,
    SchemaError,
    check_columns,
    check_json_depth,
)
from batchserve.server.deps import EngineDep, PrincipalDep, UploadThreadsDep
from batchserve.server.mlserver.consume import web_result
from batchserve.server.mlserver.errors import MLServerRoute
from batchserve.server.mlserver.schemas import (
    STATES,
    BatchWebServiceResult,
    StartBatchExecutionResponse,
)
from batchserve.server.upload import read_body
from batchserve.states import BatchState
from batchserve.store.models import Batch

router = APIRouter(tags=["ML Server: batch"], route_class=MLServerRoute)

BATCH = "/api/{name}/{version}/batch"
#: Results read and written out at a time by a poll.
RESULT_SLICE = 1000
#: The index of a record in a path.
Index = Annotated[int, Path(ge=0, le=MAX_RECORD_INDEX, description="The record's index, from 0.")]


def records_stream(records: Any, inputs: dict[str, str], service: str) -> tuple[bytes, int]:
    """A JSON array of records as an Arrow IPC stream of the input columns, and its length.

    A value that does not fit its column's type keeps the column as text: the engine then
    fails that record alone, with a message naming the value, as for any other upload.
    """
    if not isinstance(records, list):
        raise BadRequest(
            "The body must be a JSON array of records, each an object mapping input names "
            "to values."
        )
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"Record {i} is not an object mapping input names to values.")
    if records:
        try:
            check_columns(sorted(set().union(*records)), inputs, service)
        except SchemaError as exc:
            raise BadRequest(str(exc)) from None
    columns = {name: _column([r.get(name) for r in records], t) for name, t in inputs.items()}
    table = pa.table(columns) if columns else pa.table({})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=10_000)
    return sink.getvalue(), len(records)


def _column(values: list[Any], type_name: str) -> pa.Array:
    try:
        return pa.array(values, type=ARROW_TYPES[type_name])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    return pa.array(
        [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
        type=pa.string(),
    )


def _batch(engine: Engine, who: Principal, name: str, version: str, execution_id: str) -> Batch:
    service = engine.services.get(name, version)
    try:
        batch = engine.batches.get(who, execution_id)
    except NotFound:
        batch = None
    if batch is None or batch.service_id != service.id:
        raise NotFound(
            f"No batch execution {execution_id!r} of service {name} {service.version} exists."
        )
    return batch


@router.post(
    BATCH,
    status_code=202,
    response_model=StartBatchExecutionResponse,
    summary="Start a batch execution over a JSON array of records",
)
async def start_batch(
    name: str,
    version: str,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    threads: UploadThreadsDep,
    parallelCount: int = Query(10, ge=1, le=10_000),
) -> JSONResponse:
    service = await anyio.to_thread.run_sync(engine.services.get, name, version)
    limit = engine.settings.max_json_batch_bytes
    raw = await read_body(
        request.stream(),
        limit,
        f"The records are larger than the limit of {limit} bytes "
        "(BATCHSERVE_MAX_JSON_BATCH_BYTES); split them into several batches, or stream them "
        "to the native API.",
    )

    def create() -> str:
        try:
            check_json_depth(raw, "the body")
            records = json.loads(raw or b"null")
        except SchemaError as exc:
            raise BadRequest(str(exc)) from None
        except ValueError as exc:
            raise BadRequest(f"The body is not valid JSON: {exc}.") from None
        data, count = records_stream(
            records, dict(service.inputs), f"{service.name} {service.version}"
        )
        batch = engine.batches.create(
            who,
            service,
            io.BytesIO(data),
            ARROW_STREAM,
            parallel_count=parallelCount,
            record_count=count,
        )
        return batch.id

    batch_id = await anyio.to_thread.run_sync(create, limiter=threads)
    body = StartBatchExecutionResponse(batchExecutionId=batch_id, BatchExecutionId=batch_id)
    return JSONResponse(body.model_dump(), status_code=202)


@router.get(BATCH, response_model=list[str], summary="The batch execution ids of a service")
def list_batches(name: str, version: str, engine: EngineDep, who: PrincipalDep) -> list[str]:
    service = engine.services.get(name, version)
    return [b.id for b in engine.batches.list_batches(who, service=service, limit=100_000)]


@router.get(
    BATCH + "/{execution_id}",
    response_model=BatchWebServiceResult,
    summary="A batch execution's state and results (a page of them for a large batch)",
)
def get_batch(
    name: str,
    version: str,
    execution_id: str,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    showPartialResults: bool | None = Query(None),
    # ML Server's Python client sends the singular spelling.
    showPartialResult: bool | None = Query(None),
    start: int = Query(
        0,
        ge=0,
        le=MAX_RECORD_INDEX,
        description="batchserve: the results of records from this index on.",
    ),
    limit: int | None = Query(
        None,
        ge=1,
        le=MAX_RECORD_INDEX,
        description="batchserve: the results of at most this many records (and at most the "
        "server's limit, BATCHSERVE_MLSERVER_RESULTS_LIMIT, 10,000 by default).",
    ),
) -> Response:
    batch = _batch(engine, who, name, version, execution_id)
    counts = engine.batches.counts(batch.id)
    partial = bool(showPartialResults or showPartialResult)
    final = BatchState(batch.state).is_final
    cap = engine.settings.mlserver_results_limit
    count = min(limit or cap, cap)
    stop = min(start + count, batch.total_count) if final or partial else start
    head = BatchWebServiceResult(
        state=STATES[BatchState(batch.state)],
        completedItemCount=counts.completed,
        totalItemCount=batch.total_count,
        batchExecutionResults=[],
    ).model_dump_json(exclude={"batchExecutionResults"})
    headers = {}
    if stop < batch.total_count and stop > start:
        query = urlencode({**request.query_params, "start": stop, "limit": count})
        headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return StreamingResponse(
        _answer(engine, batch, head, start, stop), media_type="application/json", headers=headers
    )


def _answer(engine: Engine, batch: Batch, head: str, start: int, stop: int) -> Iterator[bytes]:
    """The answer's JSON: the ``head`` object's fields, then its results, read and written out
    ``RESULT_SLICE`` records at a time."""
    yield head.removesuffix("}").encode() + b',"batchExecutionResults":['
    first = True
    for at in range(start, stop, RESULT_SLICE):
        rows = engine.results.page(batch, at, min(RESULT_SLICE, stop - at))
        if not rows:
            continue
        body = ",".join(web_result(r).model_dump_json() for r in rows)
        yield (body if first else "," + body).encode()
        first = False
    yield b"]}"


@router.delete(
    BATCH + "/{execution_id}",
    response_model=list[str],
    summary="Cancel a batch execution and delete it with its results",
)
def delete_batch(
    name: str, version: str, execution_id: str, engine: EngineDep, who: PrincipalDep
) -> list[str]:
    batch = _batch(engine, who, name, version, execution_id)
    engine.batches.delete(who, batch.id)
    return [batch.id]


@router.get(
    BATCH + "/{execution_id}/{index}/files",
    response_model=list[str],
    summary="The file names a record of the batch produced",
)
def list_files(
    name: str, version: str, execution_id: str, index: Index, engine: EngineDep, who: PrincipalDep
) -> list[str]:
    batch = _batch(engine, who, name, version, execution_id)
    return engine.results.artifacts(batch, index)


@router.get(
    BATCH + "/{execution_id}/{index}/files/{file_name}",
    summary="One file a record of the batch produced",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_file(
    name: str,
    version: str,
    execution_id: str,
    index: Index,
    file_name: str,
    engine: EngineDep,
    who: PrincipalDep,
) -> Response:
    batch = _batch(engine, who, name, version, execution_id)
    data = engine.results.artifact(batch, index, file_name)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in file_name)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )
