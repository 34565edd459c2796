"""FastAPI dependencies: the engine, the caller, and the threads of uploads and consumes."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import Unauthorized
from batchserve.server.threads import Threads

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


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; Unauthorized without one."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(NO_TOKEN)
    return token.strip()


async def caller(request: Request) -> tuple[Engine, Principal]:
    """The engine and the caller of a request, read straight from it: what EngineDep and
    PrincipalDep give, for the hottest route, without FastAPI solving three dependencies."""
    engine: Engine = request.app.state.engine
    return engine, await principal_of(engine, bearer_token(request.headers.get("authorization")))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def upload_threads(request: Request) -> CapacityLimiter:
    threads: Threads = request.app.state.threads
    return threads.uploads


async def consume_threads(request: Request) -> CapacityLimiter:
    threads: Threads = request.app.state.threads
    return threads.consumes


# Pass these to anyio.to_thread.run_sync (``limiter=``) for work that holds a thread while an
# upload arrives or a consume runs; see batchserve.server.threads.
UploadThreadsDep = Annotated[CapacityLimiter, Depends(upload_threads)]
ConsumeThreadsDep = Annotated[CapacityLimiter, Depends(consume_threads)]
