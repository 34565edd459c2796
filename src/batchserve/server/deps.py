"""FastAPI dependencies: the engine and the caller."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import Unauthorized

NO_TOKEN = (
    "This route needs a bearer token: log in with POST /login and send "
    "'Authorization: Bearer <access_token>'."
)

_bearer = HTTPBearer(auto_error=False, description="The access_token from POST /login")


# Both dependencies are coroutines: FastAPI runs a plain ``def`` dependency on a worker thread,
# and a hop there and back costs more than what they do when the token was seen recently.
async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def get_principal(
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(NO_TOKEN)
    return await principal_of(engine, credentials.credentials)


async def principal_of(engine: Engine, token: str) -> Principal:
    who = engine.accounts.cached(token)
    if who is None:  # not seen in the last few seconds: read the store, off the event loop
        who = await anyio.to_thread.run_sync(engine.accounts.authenticate, token)
    return who


async def caller(request: Request) -> tuple[Engine, Principal]:
    """The engine and the caller of a request, read straight from it: what EngineDep and
    PrincipalDep give, for the hottest route, without FastAPI solving three dependencies."""
    engine: Engine = request.app.state.engine
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(NO_TOKEN)
    return engine, await principal_of(engine, token.strip())


PrincipalDep = Annotated[Principal, Depends(get_principal)]
