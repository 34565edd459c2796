"""Log in, refresh and revoke tokens; who am I; user administration for owners."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from batchserve.engine.auth import TokenPair
from batchserve.engine.errors import Forbidden
from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.server.schemas import LoginRequest, RefreshRequest, TokenPublic, UserPublic

router = APIRouter(tags=["auth"])


def _public(pair: TokenPair) -> TokenPublic:
    return TokenPublic(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        expires_on=pair.expires_on,
    )


@router.post("/login", response_model=TokenPublic, summary="Exchange credentials for tokens")
def login(body: LoginRequest, engine: EngineDep) -> TokenPublic:
    return _public(engine.accounts.login(body.username, body.password))


@router.post(
    "/login/refreshToken",
    response_model=TokenPublic,
    summary="Exchange a refresh token for a new pair",
)
def refresh(body: RefreshRequest, engine: EngineDep) -> TokenPublic:
    return _public(engine.accounts.refresh(body.refreshToken))


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


class UserCreate(UserPublic):
    password: str


def _owner_only(who: PrincipalDep) -> None:
    if not who.is_owner:
        raise Forbidden(f"Only owners manage users; {who.username!r} is a {who.role}.")


@router.get("/v1/users", response_model=list[UserPublic], summary="List users (owners)")
def list_users(engine: EngineDep, who: PrincipalDep) -> list[UserPublic]:
    _owner_only(who)
    return [UserPublic(username=u.username, role=u.role) for u in engine.store.list_users()]


@router.post("/v1/users", response_model=UserPublic, status_code=201, summary="Add a user (owners)")
def add_user(body: UserCreate, engine: EngineDep, who: PrincipalDep) -> UserPublic:
    _owner_only(who)
    user = engine.accounts.add_user(body.username, body.password, body.role)
    return UserPublic(username=user.username, role=user.role)


@router.put(
    "/v1/users/{username}/role", response_model=UserPublic, summary="Change a user's role (owners)"
)
def set_role(username: str, body: UserPublic, engine: EngineDep, who: PrincipalDep) -> UserPublic:
    _owner_only(who)
    engine.accounts.set_role(username, body.role)
    return UserPublic(username=username, role=body.role)


@router.delete("/v1/users/{username}", status_code=204, summary="Remove a user (owners)")
def remove_user(username: str, engine: EngineDep, who: PrincipalDep) -> Response:
    _owner_only(who)
    engine.accounts.remove_user(username)
    return Response(status_code=204)
