"""Services: publish, list, get, delete, consume."""

from __future__ import annotations

import json

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from pydantic import ValidationError

from batchserve.engine.errors import BadRequest, PayloadTooLarge
from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.server.schemas import (
    ConsumeRequest,
    RecordResult,
    ServiceCreate,
    ServiceList,
    ServicePublic,
)
from batchserve.store.models import Service

router = APIRouter(prefix="/v1/services", tags=["services"])

MAX_BUNDLE_BYTES = 2 * 1024**3


def public(engine: EngineDep, svc: Service) -> ServicePublic:
    user = engine.store.get_user_by_id(svc.owner_id)
    return ServicePublic.of(svc, user.username if user else None)


@router.post("", response_model=ServicePublic, status_code=201, summary="Publish a service")
def publish(
    engine: EngineDep,
    who: PrincipalDep,
    metadata: str = Form(..., description="ServiceCreate as JSON text"),
    bundle: UploadFile = File(..., description="the cloudpickled bundle"),
) -> ServicePublic:
    try:
        meta = ServiceCreate.model_validate(json.loads(metadata))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BadRequest(f"The metadata field is not a valid service description: {exc}") from None
    data = bundle.file.read(MAX_BUNDLE_BYTES + 1)
    if len(data) > MAX_BUNDLE_BYTES:
        raise PayloadTooLarge("The service bundle is larger than 2 GiB.")
    svc = engine.services.publish(
        who,
        name=meta.name,
        version=meta.version,
        bundle=data,
        bundle_kind=meta.bundle_kind,
        inputs=meta.inputs,
        outputs=meta.outputs,
        artifacts=meta.artifacts,
        description=meta.description,
        alias=meta.alias,
        mode=meta.mode,
    )
    return public(engine, svc)


@router.get("", response_model=ServiceList, summary="List services")
def list_services(
    engine: EngineDep, who: PrincipalDep, name: str | None = Query(None)
) -> ServiceList:
    return ServiceList(services=[public(engine, s) for s in engine.services.list_services(name)])


@router.get("/{name}", response_model=ServiceList, summary="All versions of a service")
def list_versions(name: str, engine: EngineDep, who: PrincipalDep) -> ServiceList:
    found = engine.services.list_services(name)
    if not found:
        engine.services.get(name, None)  # raises the not-found error
    return ServiceList(services=[public(engine, s) for s in found])


@router.get(
    "/{name}/{version}",
    response_model=ServicePublic,
    summary="One version ('latest' for the newest)",
)
def get_service(name: str, version: str, engine: EngineDep, who: PrincipalDep) -> ServicePublic:
    return public(engine, engine.services.get(name, version))


@router.delete("/{name}/{version}", status_code=204, summary="Delete a service version")
def delete_service(name: str, version: str, engine: EngineDep, who: PrincipalDep) -> Response:
    engine.services.delete(who, name, version)
    return Response(status_code=204)


@router.post(
    "/{name}/{version}/consume",
    response_model=RecordResult,
    summary="Run the service once (request-response)",
)
def consume(
    name: str, version: str, body: ConsumeRequest, engine: EngineDep, who: PrincipalDep
) -> RecordResult:
    row = engine.services.consume(name, version, body.inputs)
    return RecordResult.model_validate(
        {
            **row,
            "outputs": row.get("outputs") or {},
            "console_output": row.get("console_output") or "",
        }
    )
