"""FastAPI dependencies: the engine and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="The access_token from POST /login")


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_principal(
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(
            "This route needs a bearer token: log in with POST /login and send "
            "'Authorization: Bearer <access_token>'."
        )
    return engine.accounts.authenticate(credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
