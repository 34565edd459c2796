"""Consume: ``POST /api/{name}/{version}`` runs one record and answers a WebServiceResult."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from batchserve.engine.errors import BadRequest
from batchserve.engine.results import STATUS_SUCCEEDED
from batchserve.schema import SchemaError, check_value_depth
from batchserve.server.consumes import consume_for
from batchserve.server.deps import ConsumeThreadsDep, EngineDep, PrincipalDep
from batchserve.server.mlserver.errors import MLServerRoute
from batchserve.server.mlserver.schemas import WebServiceResult

router = APIRouter(tags=["ML Server: consume"], route_class=MLServerRoute)


def web_result(row: dict[str, Any], files: dict[str, str] | None = None) -> WebServiceResult:
    """A result row as ML Server's WebServiceResult. ``changedFiles`` names the record's
    artifacts; ``outputFiles`` holds their base64 content when given (consume does)."""
    ok = row.get("status") == STATUS_SUCCEEDED
    return WebServiceResult(
        success=ok,
        errorMessage=row.get("error") or "",
        consoleOutput=row.get("console_output") or "",
        changedFiles=list(row.get("artifacts") or []),
        outputParameters=(row.get("outputs") or {}) if ok else {},
        outputFiles=files or {},
    )


@router.post(
    "/api/{name}/{version}",
    response_model=WebServiceResult,
    summary="Run the service once with the given inputs",
)
async def consume(
    name: str,
    version: str,
    engine: EngineDep,
    who: PrincipalDep,
    threads: ConsumeThreadsDep,
    request: Request,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> WebServiceResult:
    try:
        check_value_depth(body, "the inputs")
    except SchemaError as exc:
        raise BadRequest(str(exc)) from None
    # A consume holds its thread until the service answers: one of the consumes' own threads.
    row = await consume_for(request, engine, name, version, body or {}, threads)
    return web_result(row, row.get("artifact_data") or {})
