"""Sign in and sign out, with the accounts, roles and log-in limits of the API."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from batchserve.engine.core import Engine
from batchserve.engine.errors import Unauthorized
from batchserve.server.passwords import client_address, password_checks
from batchserve.server.ui import forms, sessions
from batchserve.server.ui.pages import PREFIX, SECURITY_HEADERS, DashboardRoute

router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


@router.get("")
@router.get("/")
async def start(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/batches", status_code=303)


@router.get("/login")
async def sign_in_page(request: Request) -> Response:
    target = sessions.safe_next(request.query_params.get("next"))
    expired = request.query_params.get("expired") == "1"
    return sessions.login_page(
        request,
        "login.html",
        next=target,
        message="Your session has ended; sign in again." if expired else None,
    )


@router.post("/login")
async def sign_in(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    form = await forms.read_form(request)
    sessions.check_login_value(request, form)
    username = forms.text(form, "username")
    password = form.get("password")
    target = sessions.safe_next(forms.text(form, "next"))
    if not username or not isinstance(password, str) or not password:
        return _refused(request, target, username, "Enter a username and a password.")
    client = client_address(request)
    engine.accounts.check_login(client, username)  # throttled: a 429 page, before any work
    checks = await password_checks(request)
    try:
        pair = await checks.run(client, engine.accounts.login, username, password, client)
    except Unauthorized as exc:
        return _refused(request, target, username, exc.message)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    sessions.set_session(request, response, pair)
    return response


def _refused(request: Request, target: str, username: str, message: str) -> Response:
    return sessions.login_page(
        request, "login.html", 401, next=target, username=username, error=message
    )


@router.post("/logout")
async def sign_out(request: Request) -> Response:
    form = await forms.read_form(request)
    await sessions.session_of(request, form)
    await sessions.end_session(request)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
    sessions.clear_session(request, response)
    request.state.ui_renewed = None  # a session renewed by this request ends with it too
    return response
