"""Services: every name and version, one version's schema and latest batches, and a form that
runs it once on one record (a consume, as ``POST /v1/services/{name}/{version}/consume``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response

from batchserve.engine.core import Engine
from batchserve.engine.errors import EngineError
from batchserve.server.consumes import consume_for
from batchserve.server.mlserver.services import metadata as mlserver_metadata
from batchserve.server.schemas import ServicePublic
from batchserve.server.ui import forms
from batchserve.server.ui.batches import IMAGE_TYPES
from batchserve.server.ui.pages import PREFIX, DashboardRoute, render
from batchserve.server.ui.progress import progress_of
from batchserve.server.ui.sessions import Session, session_of

router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)

LATEST_BATCHES = 10


@router.get("/services")
async def service_list(request: Request) -> Response:
    await session_of(request)
    engine: Engine = request.app.state.engine

    def read() -> dict[str, list[ServicePublic]]:
        names: dict[int, str | None] = {}
        by_name: dict[str, list[ServicePublic]] = defaultdict(list)
        for svc in engine.services.list_services():
            if svc.owner_id not in names:
                user = engine.store.get_user_by_id(svc.owner_id)
                names[svc.owner_id] = user.username if user else None
            by_name[svc.name].append(ServicePublic.of(svc, names[svc.owner_id]))
        return dict(sorted(by_name.items()))

    services = await anyio.to_thread.run_sync(read)
    return render(request, "services.html", services=services)


def _service_page(engine: Engine, session: Session, name: str, version: str) -> dict[str, Any]:
    svc = engine.services.get(name, version)
    user = engine.store.get_user_by_id(svc.owner_id)
    public = ServicePublic.of(svc, user.username if user else None)
    # The code and init code of a service published from source, shown as the ML Server face
    # shows them: to its publisher and to owners only.
    described = mlserver_metadata(engine, svc, session.who)
    page = engine.batches.list_page(session.who, service=svc, limit=LATEST_BATCHES)
    found = engine.batches.statuses(session.who, [b.id for b in page.batches])
    return {
        "service": public,
        "code": described.code,
        "init_code": described.initCode,
        "batches": [{"batch": b, "progress": progress_of(b, c)} for b, c, _ in found],
        "versions": [s.version for s in engine.services.list_services(name)],
    }


@router.get("/services/{name}/{version}")
async def service_page(
    request: Request,
    name: str = Path(max_length=200),
    version: str = Path(max_length=200),
) -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine
    page = await anyio.to_thread.run_sync(_service_page, engine, session, name, version)
    return render(request, "service.html", **page, inputs={}, result=None)


@router.post("/services/{name}/{version}/consume")
async def consume(request: Request, name: str, version: str) -> Response:
    form = await forms.read_form(request)
    session = await session_of(request, form)
    engine: Engine = request.app.state.engine
    page = await anyio.to_thread.run_sync(_service_page, engine, session, name, version)
    service: ServicePublic = page["service"]
    # Values are sent as typed: the engine reads numbers and booleans from text, as it does
    # from a CSV upload, and says which input is wrong.
    inputs = {n: forms.text(form, f"input:{n}") for n in service.inputs}
    threads = request.app.state.threads.consumes
    try:
        row = await consume_for(request, engine, name, service.version, inputs, threads)
    except EngineError as exc:
        return render(
            request, "service.html", **page, inputs=inputs, result=None, error=exc.message
        )
    # Artifacts come back inline, base64: images are shown as data, the rest only named.
    images = {
        n: (IMAGE_TYPES[_suffix(n)], data)
        for n, data in (row.get("artifact_data") or {}).items()
        if isinstance(data, str) and _suffix(n) in IMAGE_TYPES
    }
    return render(request, "service.html", **page, inputs=inputs, result=row, images=images)


def _suffix(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
