"""Services: publish, list, get, delete, consume."""

from __future__ import annotations

import json

import anyio.to_thread
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import ValidationError

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import BadRequest, PayloadTooLarge
from batchserve.engine.services import NamePublishers
from batchserve.schema import SchemaError, check_json_depth, check_value_depth
from batchserve.server.consumes import consume_for
from batchserve.server.deps import ConsumeThreadsDep, EngineDep, PrincipalDep, UploadThreadsDep
from batchserve.server.schemas import (
    ConsumeRequest,
    GrantPublic,
    PublishersPublic,
    RecordResult,
    ServiceCreate,
    ServiceList,
    ServicePublic,
)
from batchserve.store.models import Service

router = APIRouter(prefix="/v1/services", tags=["services"])


def public(engine: EngineDep, svc: Service) -> ServicePublic:
    user = engine.store.get_user_by_id(svc.owner_id)
    return ServicePublic.of(svc, user.username if user else None)


@router.post("", response_model=ServicePublic, status_code=201, summary="Publish a service")
async def publish(
    engine: EngineDep,
    who: PrincipalDep,
    threads: UploadThreadsDep,
    metadata: str = Form(..., description="ServiceCreate as JSON text"),
    bundle: UploadFile = File(..., description="the cloudpickled bundle"),
) -> ServicePublic:
    # Reading a bundle of up to 2 GiB and storing it takes a while: on the uploads' threads.
    return await anyio.to_thread.run_sync(_publish, engine, who, metadata, bundle, limiter=threads)


def _publish(engine: Engine, who: Principal, metadata: str, bundle: UploadFile) -> ServicePublic:
    try:
        check_json_depth(metadata, "the metadata field")
        meta = ServiceCreate.model_validate(json.loads(metadata))
    except SchemaError as exc:
        raise BadRequest(str(exc)) from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BadRequest(f"The metadata field is not a valid service description: {exc}") from None
    except ValueError:  # an integer of more digits than Python reads (4300)
        raise BadRequest(
            "The metadata field holds a number too long to read; send shorter numbers."
        ) from None
    limit = engine.settings.max_bundle_bytes
    data = bundle.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"The service bundle is larger than the limit of {limit} bytes "
            "(BATCHSERVE_MAX_BUNDLE_BYTES); keep large data out of the bundle."
        )
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
        resources=meta.resources,
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


def publishers(found: NamePublishers) -> PublishersPublic:
    return PublishersPublic(
        name=found.name,
        owner=found.owner,
        granted=[
            GrantPublic(username=g.username, granted_by=g.granted_by, granted_at=g.granted_at)
            for g in found.granted
        ],
    )


# Declared before /{name}/{version}, which would take 'publishers' for a version (a word that
# versions may not be).
@router.get(
    "/{name}/publishers",
    response_model=PublishersPublic,
    summary="Who may add versions under a service name",
)
def list_publishers(name: str, engine: EngineDep, who: PrincipalDep) -> PublishersPublic:
    return publishers(engine.services.publishers(name))


@router.put(
    "/{name}/publishers/{username}",
    response_model=PublishersPublic,
    summary="Let a user add versions under a service name (its owner, or owners)",
)
def grant_publisher(
    name: str, username: str, engine: EngineDep, who: PrincipalDep
) -> PublishersPublic:
    return publishers(engine.services.grant(who, name, username))


@router.delete(
    "/{name}/publishers/{username}",
    response_model=PublishersPublic,
    summary="Take back a user's grant of a service name (its owner, or owners)",
)
def revoke_publisher(
    name: str, username: str, engine: EngineDep, who: PrincipalDep
) -> PublishersPublic:
    return publishers(engine.services.revoke(who, name, username))


@router.get(
    "/{name}/{version}",
    response_model=ServicePublic,
    summary="One version ('latest' for the newest)",
)
def get_service(name: str, version: str, engine: EngineDep, who: PrincipalDep) -> ServicePublic:
    return public(engine, engine.services.get(name, version))


@router.delete("/{name}/{version}", status_code=204, summary="Delete a service version")
def delete_service(
    name: str,
    version: str,
    engine: EngineDep,
    who: PrincipalDep,
    force: bool = Query(
        False,
        description="Owners only: delete it even though other users have batches of it, "
        "which are deleted with it.",
    ),
) -> Response:
    engine.services.delete(who, name, version, force=force)
    return Response(status_code=204)


@router.post(
    "/{name}/{version}/consume",
    response_model=RecordResult,
    summary="Run the service once (request-response)",
)
async def consume(
    name: str,
    version: str,
    body: ConsumeRequest,
    engine: EngineDep,
    who: PrincipalDep,
    threads: ConsumeThreadsDep,
    request: Request,
) -> RecordResult:
    try:
        check_value_depth(body.inputs, "the inputs")
    except SchemaError as exc:
        raise BadRequest(str(exc)) from None
    # A consume holds its thread until the service answers: one of the consumes' own threads.
    row = await consume_for(request, engine, name, version, body.inputs, threads)
    return RecordResult.model_validate(
        {
            **row,
            "outputs": row.get("outputs") or {},
            "console_output": row.get("console_output") or "",
        }
    )
