"""The web dashboard, at ``/ui``: pages rendered on the server from Jinja2 templates, made
livelier by htmx and a few lines of script, all served by the server itself (no CDN, no build
step; the files ship in the package). See docs/dashboard.md.

It is a face like the API: every page calls the engine operations the API's routes call, with
the signed-in user as the caller, so it shows and allows what the API would, and no more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from batchserve.server.limits import BodyKind
from batchserve.server.ui import account, admin, batches, progress, services
from batchserve.server.ui.forms import FORM
from batchserve.server.ui.pages import PREFIX, DashboardRoute, error_page, static_file

_files = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


@_files.get("/static/{name}")
async def static(name: str) -> Response:
    return static_file(name)


_missing = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


@_missing.get("/{rest:path}")
async def missing(request: Request, rest: str) -> Response:
    """A dashboard address that names no page: a page that says so (not the API's JSON)."""
    return error_page(
        request, 404, f"The dashboard has no page {request.url.path}; start from the batches."
    )


router = APIRouter()
for module in (_files, account, batches, progress, services, admin):
    router.include_router(module if isinstance(module, APIRouter) else module.router)
router.include_router(_missing)  # last: it takes what no other route took

#: The dashboard's routes whose bodies are forms (see :data:`batchserve.server.app.BODIES`).
BODIES: dict[Callable[..., Any], BodyKind] = {
    endpoint: FORM
    for endpoint in (
        account.sign_in,
        account.sign_out,
        batches.act,
        services.consume,
        admin.add_user,
        admin.change_user,
    )
}

__all__ = ["BODIES", "router"]
