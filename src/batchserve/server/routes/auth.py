"""Log in, refresh and revoke tokens; who am I; change my password; user administration for
owners.

``POST /login`` is also the ML Server face's log-in: its clients post the same body to the
same path. Routes that check or set a password run that work through
:mod:`batchserve.server.passwords`, never on the thread pool the other routes share.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from batchserve.engine.auth import PASSWORD_RULES, TokenPair
from batchserve.engine.errors import Forbidden
from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.server.passwords import PasswordChecksDep, client_address
from batchserve.server.schemas import (
    AccountPublic,
    LoginRequest,
    RefreshRequest,
    TokenPublic,
    UserPublic,
)
from batchserve.store.models import User

router = APIRouter(tags=["auth"])


def _tokens(pair: TokenPair, response: Response) -> TokenPublic:
    # Tokens are credentials: no cache along the way may keep a copy.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenPublic(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        expires_on=pair.expires_on,
    )


@router.post(
    "/login",
    response_model=TokenPublic,
    summary="Exchange credentials for tokens",
    description=(
        "Usernames ignore case. Failed logins are limited per client address and per user, "
        "with growing waits: past a limit the answer is 429 with a Retry-After header."
    ),
)
async def login(
    body: LoginRequest,
    request: Request,
    response: Response,
    engine: EngineDep,
    checks: PasswordChecksDep,
) -> TokenPublic:
    client = client_address(request)
    # Refused before waiting for a turn to check the password: a throttled client costs none.
    engine.accounts.check_login(client, body.username)
    pair = await checks.run(client, engine.accounts.login, body.username, body.password, client)
    return _tokens(pair, response)


@router.post(
    "/login/refreshToken",
    response_model=TokenPublic,
    summary="Exchange a refresh token for a new pair",
)
def refresh(body: RefreshRequest, response: Response, engine: EngineDep) -> TokenPublic:
    return _tokens(engine.accounts.refresh(body.refreshToken), response)


@router.delete("/login/refreshToken", status_code=204, summary="Revoke a refresh token")
def revoke(engine: EngineDep, refreshToken: str = Query(...)) -> Response:
    engine.accounts.revoke(refreshToken)
    return Response(status_code=204)


@router.delete("/login/refreshToken/{refreshToken}", status_code=204, include_in_schema=False)
def revoke_path(refreshToken: str, engine: EngineDep) -> Response:
    engine.accounts.revoke(refreshToken)
    return Response(status_code=204)


@router.get("/v1/me", response_model=UserPublic, summary="The calling user")
def me(who: PrincipalDep) -> UserPublic:
    return UserPublic(username=who.username, role=who.role)


class PasswordChange(BaseModel):
    current_password: str
    new_password: str = Field(description=PASSWORD_RULES)


@router.post(
    "/v1/me/password",
    response_model=TokenPublic,
    summary="Change my password",
    description=(
        "Every token of the caller stops working, the one of this request included; the "
        f"answer is a new token pair. {PASSWORD_RULES}"
    ),
)
async def change_password(
    body: PasswordChange,
    request: Request,
    response: Response,
    engine: EngineDep,
    who: PrincipalDep,
    checks: PasswordChecksDep,
) -> TokenPublic:
    engine.accounts.check_password_change(who.username)
    pair = await checks.run(
        client_address(request),
        engine.accounts.change_password,
        who,
        body.current_password,
        body.new_password,
    )
    return _tokens(pair, response)


# --- user administration (owners) -----------------------------------------------------------


class UserCreate(UserPublic):
    password: str = Field(description=PASSWORD_RULES)


class RoleUpdate(BaseModel):
    role: str
    username: str | None = Field(None, description="Ignored: the user is the one in the path.")


class PasswordReset(BaseModel):
    new_password: str = Field(description=PASSWORD_RULES)


class ActiveUpdate(BaseModel):
    active: bool


def _owner_only(who: PrincipalDep) -> None:
    if not who.is_owner:
        raise Forbidden(f"Only owners manage users; {who.username!r} is a {who.role}.")


def _account(user: User) -> AccountPublic:
    return AccountPublic(username=user.username, role=user.role, active=user.active)


@router.get("/v1/users", response_model=list[AccountPublic], summary="List users (owners)")
def list_users(engine: EngineDep, who: PrincipalDep) -> list[AccountPublic]:
    _owner_only(who)
    return [_account(u) for u in engine.store.list_users()]


@router.post(
    "/v1/users",
    response_model=AccountPublic,
    status_code=201,
    summary="Add a user (owners)",
    description=(
        "A username is 1 to 64 characters: letters, digits, '.', '_', '-' and '@', starting "
        f"with a letter or a digit; no two usernames differ only in case. {PASSWORD_RULES}"
    ),
)
async def add_user(
    body: UserCreate,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    checks: PasswordChecksDep,
) -> AccountPublic:
    _owner_only(who)
    user = await checks.run(
        client_address(request), engine.accounts.add_user, body.username, body.password, body.role
    )
    return _account(user)


@router.put(
    "/v1/users/{username}/role",
    response_model=AccountPublic,
    summary="Change a user's role (owners)",
    description="The last active owner cannot be given another role (409).",
)
def set_role(
    username: str, body: RoleUpdate, engine: EngineDep, who: PrincipalDep
) -> AccountPublic:
    _owner_only(who)
    return _account(engine.accounts.set_role(username, body.role))


@router.put(
    "/v1/users/{username}/password",
    response_model=AccountPublic,
    summary="Set a user's password (owners)",
    description=f"Every token of that user stops working. {PASSWORD_RULES}",
)
async def reset_password(
    username: str,
    body: PasswordReset,
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    checks: PasswordChecksDep,
) -> AccountPublic:
    _owner_only(who)
    user = await checks.run(
        client_address(request), engine.accounts.reset_password, username, body.new_password
    )
    return _account(user)


@router.put(
    "/v1/users/{username}/active",
    response_model=AccountPublic,
    summary="Deactivate or reactivate a user (owners)",
    description=(
        "A deactivated user cannot log in and their tokens stop working; their services and "
        "batches stay. The last active owner cannot be deactivated (409)."
    ),
)
def set_active(
    username: str, body: ActiveUpdate, engine: EngineDep, who: PrincipalDep
) -> AccountPublic:
    _owner_only(who)
    return _account(engine.accounts.set_active(username, body.active))


@router.delete(
    "/v1/users/{username}",
    status_code=204,
    summary="Remove a user (owners)",
    description=(
        "A user who owns no service and no batch is deleted (204). One who has published or "
        "run anything is deactivated instead (200, the user with active false): they can no "
        "longer log in, their tokens stop working, their services and batches stay, and an "
        "owner can reactivate them (PUT /v1/users/{username}/active). The last active owner "
        "cannot be removed (409)."
    ),
    responses={200: {"model": AccountPublic, "description": "Deactivated, not deleted."}},
)
def remove_user(username: str, engine: EngineDep, who: PrincipalDep) -> Response:
    _owner_only(who)
    kept = engine.accounts.remove_user(username)
    if kept is None:
        return Response(status_code=204)
    return JSONResponse(_account(kept).model_dump(), status_code=200)
