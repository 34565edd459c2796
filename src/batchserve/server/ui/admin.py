"""Owners' pages: the nodes and their workers, and the users.

They call what the API's owner routes call (the same functions, so the same checks: a user who
is not an owner is refused here as there), and the engine's account operations for changes.
Passwords are hashed on the password threads, as the API's routes hash them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from batchserve.engine.auth import ROLES, Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import BadRequest, Forbidden, NotFound
from batchserve.server.passwords import client_address, password_checks
from batchserve.server.routes import auth as auth_routes
from batchserve.server.routes import workers as worker_routes
from batchserve.server.ui import forms
from batchserve.server.ui.pages import PREFIX, SECURITY_HEADERS, DashboardRoute, render
from batchserve.server.ui.sessions import session_of

router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)

USER_CHANGES = {
    "role": "The role of {user} was changed.",
    "password": "The password of {user} was set; their sessions and tokens stopped working.",
    "deactivate": "{user} was deactivated: they cannot sign in; their work stays.",
    "reactivate": "{user} was reactivated.",
    "add": "{user} was added.",
}


def _owner(who: Principal, what: str) -> None:
    if not who.is_owner:
        raise Forbidden(f"Only owners may {what}; {who.username!r} is a {who.role}.")


@router.get("/nodes")
async def nodes(request: Request) -> Response:
    session = await session_of(request)
    _owner(session.who, "see the nodes and workers")
    engine: Engine = request.app.state.engine

    def read() -> dict[str, Any]:
        listed = worker_routes.nodes(engine, session.who)
        return {
            "nodes": listed,
            "workers": worker_routes.workers(engine, session.who)["workers"],
        }

    return render(request, "nodes.html", **await anyio.to_thread.run_sync(read))


@router.get("/users")
async def users(request: Request) -> Response:
    session = await session_of(request)
    _owner(session.who, "manage users")
    engine: Engine = request.app.state.engine
    accounts = await anyio.to_thread.run_sync(auth_routes.list_users, engine, session.who)
    done = request.query_params.get("done", "")
    user = request.query_params.get("user", "")
    message = USER_CHANGES[done].format(user=user) if done in USER_CHANGES and user else None
    return render(request, "users.html", users=accounts, roles=ROLES, done=message)


@router.post("/users")
async def add_user(request: Request) -> Response:
    form = await forms.read_form(request)
    session = await session_of(request, form)
    _owner(session.who, "manage users")
    engine: Engine = request.app.state.engine
    username = forms.text(form, "username")
    password = form.get("password")
    role = forms.text(form, "role")
    if not isinstance(password, str):
        raise BadRequest("Give the new user a password.")
    checks = await password_checks(request)
    user = await checks.run(
        client_address(request), engine.accounts.add_user, username, password, role
    )
    return _done("add", user.username)


#: The user changes asked to be confirmed first, with what each does.
CONFIRMED_CHANGES = {
    "role": "Change the role of {user}",
    "deactivate": "Deactivate {user}",
}


@router.get("/users/{username}/confirm/{change}")
async def confirm_user_change(
    request: Request,
    username: str = Path(max_length=64),
    change: str = Path(max_length=20),
    role: str | None = Query(None, max_length=20),
) -> Response:
    """Ask before a change that takes away someone's access: a new role, or deactivation."""
    session = await session_of(request)
    _owner(session.who, "manage users")
    if change not in CONFIRMED_CHANGES:
        raise BadRequest(
            f"There is no user change {change!r} to confirm; the ones asked first are "
            + " and ".join(CONFIRMED_CHANGES)
            + "."
        )
    if change == "role" and role not in ROLES:
        raise BadRequest(f"Choose a role: one of {', '.join(ROLES)}.")
    engine: Engine = request.app.state.engine
    accounts = await anyio.to_thread.run_sync(auth_routes.list_users, engine, session.who)
    user = next((u for u in accounts if u.username == username), None)
    if user is None:
        raise NotFound(f"There is no user {username!r}.")
    return render(
        request,
        "confirm_user.html",
        user=user,
        change=change,
        role=role,
        title=CONFIRMED_CHANGES[change].format(user=username),
        yourself=username == session.who.username,
    )


@router.post("/users/{username}/{change}")
async def change_user(
    request: Request, username: str = Path(max_length=64), change: str = Path(max_length=20)
) -> Response:
    form = await forms.read_form(request)
    session = await session_of(request, form)
    _owner(session.who, "manage users")
    engine: Engine = request.app.state.engine
    accounts = engine.accounts
    if change == "role":
        user = await anyio.to_thread.run_sync(accounts.set_role, username, forms.text(form, "role"))
    elif change == "password":
        password = form.get("password")
        if not isinstance(password, str):
            raise BadRequest("Give the new password.")
        checks = await password_checks(request)
        user = await checks.run(
            client_address(request), accounts.reset_password, username, password
        )
    elif change in ("deactivate", "reactivate"):
        active = change == "reactivate"
        user = await anyio.to_thread.run_sync(accounts.set_active, username, active)
    else:
        raise BadRequest(
            f"There is no user change {change!r}; the changes are role, password, deactivate "
            "and reactivate."
        )
    return _done(change, user.username)


def _done(change: str, username: str) -> Response:
    query = urlencode({"done": change, "user": username})
    return RedirectResponse(f"{PREFIX}/users?{query}", status_code=303, headers=SECURITY_HEADERS)
