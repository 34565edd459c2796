"""How the dashboard answers: templates rendered on the server, its errors as pages, its files.

Every dashboard route is a :class:`DashboardRoute`: whatever a request gets wrong (an engine
error, a bad query value, a missing session) ends as a page that says what happened and what to
do, in the dashboard's own look, never as the API's JSON or a traceback. Templates escape every
value (autoescape), and every answer forbids other sites to frame it and scripts from anywhere
but the server itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchserve.engine.errors import EngineError
from batchserve.server.errors import STATUS

log = logging.getLogger(__name__)

PREFIX = "/ui"

#: Sent with every dashboard page. Scripts, styles and images come from the server alone (the
#: pages work offline); images may also be inline data (a consumed record's artifacts).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages show what a session may see: no cache keeps them
}

_TITLES = {
    400: "That request is not right",
    401: "Sign in again",
    403: "Not allowed",
    404: "Not found",
    409: "Not now",
    412: "It changed meanwhile",
    413: "Too large",
    422: "That request is not right",
    429: "Too many tries",
    503: "Busy",
}


class SignIn(Exception):
    """The request has no valid session: it is sent to the sign-in page, and back after;
    ``expired`` when it had one that ended (the sign-in page says so)."""

    def __init__(self, back_to: str, expired: bool = False) -> None:
        super().__init__("sign in")
        self.back_to = back_to
        self.expired = expired


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    """A duration as people read it: 850 ms, 12.4 s, 3 min 20 s, 2 h 5 min."""
    if value is None or not math.isfinite(value):
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _number(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _short(value: Any, length: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= length else text[: length - 1] + "…"


environment = Environment(
    loader=PackageLoader("batchserve.server.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(
    when=_when,
    seconds=_seconds,
    number=_number,
    bytes=_bytes,
    short=_short,
    # A value put in a URL path segment: every reserved character escaped, "/" too.
    path=lambda value: quote(str(value), safe=""),
)
environment.globals["prefix"] = PREFIX


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The page ``template`` with ``context``, for the request's session (if any)."""
    session = getattr(request.state, "ui_session", None)
    html = environment.get_template(template).render(
        request=request,
        session=session,
        who=session.who if session is not None else None,
        csrf=session.csrf if session is not None else "",
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        status_code=status,
        title=_TITLES.get(status, "Something went wrong"),
        status=status,
        message=message,
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{where}: {error.get('msg')}")
    return "Some values of the request are not right: " + "; ".join(parts) + "."


def sign_in_redirect(request: Request, back_to: str, expired: bool = False) -> Response:
    target = f"{PREFIX}/login?next={quote(back_to, safe='')}"
    if expired:
        target += "&expired=1"
    if request.headers.get("hx-request"):
        # A part of a page asked for by htmx: the whole page goes to the sign-in page (a
        # redirect would be followed by the request, and the sign-in page put in the part).
        return Response(status_code=204, headers={**SECURITY_HEADERS, "HX-Redirect": target})
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


class DashboardRoute(APIRoute):
    """A dashboard route: its errors are pages, and a renewed session is sent back as
    cookies with whatever the route answered."""

    #: Also how the request guard (:mod:`batchserve.server.limits`) answers a form it refuses
    #: (too large, too many) before the route runs.
    error_page = staticmethod(error_page)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignIn as exc:
                response = sign_in_redirect(request, exc.back_to, exc.expired)
            except EngineError as exc:
                response = error_page(request, STATUS.get(exc.code, 500), exc.message)
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    response.headers["Retry-After"] = str(retry_after)
            except RequestValidationError as exc:
                response = error_page(request, 400, _validation_message(exc))
            except StarletteHTTPException as exc:
                detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
                response = error_page(request, exc.status_code, detail)
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                response = error_page(
                    request,
                    500,
                    "The server failed while showing this page; the server log has the details.",
                )
            renewed = getattr(request.state, "ui_renewed", None)
            if renewed is not None:
                renewed(response)
            return response

        return handle


# --- the dashboard's own files -------------------------------------------------------------

STATIC_TYPES = {
    "htmx.min.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}


def static_file(name: str) -> Response:
    """One of the files in ``static/``, read from the installed package (no CDN: the pages
    work without a network). Only the files listed are served."""
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        return Response("No such file.", status_code=404, media_type="text/plain")
    data = resources.files("batchserve.server.ui").joinpath("static", name).read_bytes()
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=3600"},
    )
