"""Machine Learning Server's error body, ``{"message", "code", "fields"}``, on this face only.

The native API keeps its own error shape: instead of app-wide exception handlers, the routers of
this face use :class:`MLServerRoute`, which turns the errors raised while handling one of its
requests (engine errors, bad request bodies, a missing token) into ML Server's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchserve.engine.errors import EngineError
from batchserve.server.errors import STATUS

log = logging.getLogger(__name__)

# ML Server names its error codes after the HTTP reason; keep that spelling on this face.
_CODES = {
    "bad_request": "BadRequest",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "not_found": "NotFound",
    "conflict": "Conflict",
    "precondition_failed": "PreconditionFailed",
    "payload_too_large": "PayloadTooLarge",
    "too_many_requests": "TooManyRequests",
    "unavailable": "ServiceUnavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    fields: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"message": message, "code": code, "fields": fields or {}},
        status_code=status,
        headers=headers,
    )


def engine_error_response(exc: EngineError) -> JSONResponse:
    status = STATUS.get(exc.code, 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    return error_response(
        status, _CODES.get(exc.code, "InternalServerError"), exc.message, exc.details, headers
    )


def validation_response(exc: RequestValidationError) -> JSONResponse:
    fields = {".".join(str(p) for p in e.get("loc", ())): str(e.get("msg")) for e in exc.errors()}
    summary = "; ".join(f"{k}: {v}" for k, v in list(fields.items())[:5])
    return error_response(400, "BadRequest", f"The request is not valid: {summary}", fields)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    code = next((c for c, status in STATUS.items() if status == exc.status_code), "bad_request")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if message == "There was an error parsing the body":
        message = (
            "The body cannot be read: it is not valid JSON, or it nests arrays or objects too "
            "deeply. Send one JSON object."
        )
    return error_response(
        exc.status_code, _CODES.get(code, "BadRequest"), message, headers=dict(exc.headers or {})
    )


class MLServerRoute(APIRoute):
    """A route whose errors leave in ML Server's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except EngineError as exc:
                return engine_error_response(exc)
            except RequestValidationError as exc:
                return validation_response(exc)
            except StarletteHTTPException as exc:  # the framework's own (a body it cannot parse)
                return http_error_response(exc)

        return handle
