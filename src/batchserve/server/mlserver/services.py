"""Services: publish (from a snapshot and code), list, get, redeploy (PATCH) and delete."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import BadRequest, Forbidden
from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.server.mlserver.bundle import build_bundle
from batchserve.server.mlserver.errors import MLServerRoute
from batchserve.server.mlserver.schemas import (
    PublishRequest,
    ServiceMetadata,
    types_in,
    types_out,
)
from batchserve.server.mlserver.workspaces import Workspaces
from batchserve.store.models import Service

router = APIRouter(tags=["ML Server: services"], route_class=MLServerRoute)

EXTRA = "mlserver"  # the key of this face's fields in a service's ``extra`` column


def metadata(engine: Engine, svc: Service, who: Principal) -> ServiceMetadata:
    """ML Server's description of a version. Its ``code`` and ``initCode`` are shown to its
    publisher and to owners only: others may consume it, and its source may hold what its
    publisher keeps to themself (ML Server's clients never read them back)."""
    user = engine.store.get_user_by_id(svc.owner_id)
    extra = (svc.extra or {}).get(EXTRA, {})
    shown = who.is_owner or svc.owner_id == who.id
    return ServiceMetadata(
        name=svc.name,
        version=svc.version,
        versionPublishedBy=user.username if user else None,
        description=svc.description,
        creationTime=svc.created_at.isoformat(),
        snapshotId=extra.get("snapshotId"),
        initCode=extra.get("initCode") if shown else None,
        code=extra.get("code") if shown else None,
        operationId=svc.alias,
        inputParameterDefinitions=types_out(svc.inputs),
        outputParameterDefinitions=types_out(svc.outputs),
        outputFileNames=list(svc.artifacts),
    )


def _check_runtime(body: PublishRequest) -> None:
    if body.runtimeType is not None and body.runtimeType.lower() != "python":
        raise BadRequest(
            f"The runtimeType {body.runtimeType!r} is not supported; batchserve runs 'Python'."
        )


def _may_publish(who: Principal) -> None:
    """Refuse a reader before anything of the request is looked at (its code is compiled to
    check it, which costs the server time)."""
    if not who.can_publish:
        raise Forbidden(
            f"User {who.username!r} has the role '{who.role}', which may list and consume "
            "services but not publish or change them; ask an owner for the contributor role."
        )


def _may_change(who: Principal, svc: Service) -> None:
    _may_publish(who)
    if not who.is_owner and svc.owner_id != who.id:
        raise Forbidden(
            f"User {who.username!r} may not change service {svc.name} {svc.version}: only its "
            "publisher or an owner may."
        )


def _objects(engine: Engine, who: Principal, snapshot_id: str | None) -> dict[str, bytes]:
    return Workspaces(engine.blobs).snapshot_objects(who, snapshot_id) if snapshot_id else {}


def _publish(
    engine: Engine, who: Principal, name: str, version: str | None, body: PublishRequest
) -> JSONResponse:
    _may_publish(who)
    _check_runtime(body)
    if not body.code:
        raise BadRequest("The publish request has no code; send the Python source to run.")
    inputs = types_in(body.inputParameterDefinitions, "Input")
    outputs = types_in(body.outputParameterDefinitions, "Output")
    bundle = build_bundle(body.code, body.initCode, _objects(engine, who, body.snapshotId))
    svc = engine.services.publish(
        who,
        name=name,
        version=version,
        bundle=bundle,
        bundle_kind="code",
        inputs=inputs,
        outputs=outputs,
        artifacts=body.outputFileNames,
        description=body.description or "",
        alias=body.operationId,
        extra={
            EXTRA: {"snapshotId": body.snapshotId, "code": body.code, "initCode": body.initCode}
        },
    )
    # ML Server answers with the consume path of the new service.
    return JSONResponse(f"/api/{svc.name}/{svc.version}", status_code=201)


@router.post("/services/{name}", status_code=201, summary="Publish with a generated version")
def publish(name: str, body: PublishRequest, engine: EngineDep, who: PrincipalDep) -> Response:
    return _publish(engine, who, name, None, body)


@router.post("/services/{name}/{version}", status_code=201, summary="Publish a version")
def publish_version(
    name: str, version: str, body: PublishRequest, engine: EngineDep, who: PrincipalDep
) -> Response:
    return _publish(engine, who, name, version, body)


@router.patch("/services/{name}/{version}", summary="Redeploy: change a published version")
def patch(
    name: str, version: str, body: PublishRequest, engine: EngineDep, who: PrincipalDep
) -> Response:
    """Fields left out stay as they are. The code, init code and workspace objects are rebuilt
    together: from the request, the code and init code falling back to the published ones, and
    the objects coming from the snapshot the request names (none when it names none)."""
    svc = engine.services.get(name, version)
    _may_change(who, svc)
    _check_runtime(body)
    extra = dict((svc.extra or {}).get(EXTRA, {}))
    fields = body.model_fields_set
    if "code" in fields and body.code:
        extra["code"] = body.code
    if "initCode" in fields:
        extra["initCode"] = body.initCode
    if "snapshotId" in fields:
        extra["snapshotId"] = body.snapshotId
    if not extra.get("code"):
        raise BadRequest(
            f"Service {name} {svc.version} was not published through this face and the "
            "request has no code; send the code to redeploy it."
        )
    bundle = build_bundle(
        extra["code"], extra.get("initCode"), _objects(engine, who, body.snapshotId)
    )
    updated = engine.services.update(
        who,
        name,
        svc.version,
        bundle=bundle,
        bundle_kind="code",
        inputs=(
            types_in(body.inputParameterDefinitions, "Input")
            if body.inputParameterDefinitions is not None
            else None
        ),
        outputs=(
            types_in(body.outputParameterDefinitions, "Output")
            if body.outputParameterDefinitions is not None
            else None
        ),
        artifacts=body.outputFileNames,
        description=body.description,
        alias=body.operationId,
        extra={**(svc.extra or {}), EXTRA: extra},
    )
    return JSONResponse(f"/api/{updated.name}/{updated.version}")


@router.get("/services", response_model=list[ServiceMetadata], summary="All services")
def list_services(engine: EngineDep, who: PrincipalDep) -> list[ServiceMetadata]:
    return [metadata(engine, s, who) for s in engine.services.list_services()]


@router.get(
    "/services/{name}",
    response_model=list[ServiceMetadata],
    summary="All versions of a service, oldest first",
)
def list_versions(name: str, engine: EngineDep, who: PrincipalDep) -> list[ServiceMetadata]:
    found = engine.services.list_services(name)
    if not found:
        engine.services.get(name, None)  # raises the not-found error
    return [metadata(engine, s, who) for s in found]


@router.get(
    "/services/{name}/{version}",
    response_model=list[ServiceMetadata],
    summary="One version, as a list of one",
)
def get_service(
    name: str, version: str, engine: EngineDep, who: PrincipalDep
) -> list[ServiceMetadata]:
    return [metadata(engine, engine.services.get(name, version), who)]


@router.delete("/services/{name}/{version}", summary="Delete a version")
def delete_service(name: str, version: str, engine: EngineDep, who: PrincipalDep) -> Response:
    engine.services.delete(who, name, version)
    return Response(status_code=200)
