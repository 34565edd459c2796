"""One error body on the native API: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchserve.engine.errors import Busy, EngineError, TooManyRequests

log = logging.getLogger(__name__)

STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "request_timeout": 408,
    "precondition_failed": 412,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "too_many_requests": 429,
    "unavailable": 503,
}
_CODES = {v: k for k, v in STATUS.items()}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


def engine_error_response(exc: EngineError) -> JSONResponse:
    status = STATUS.get(exc.code, 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, (TooManyRequests, Busy)):
        headers = {"Retry-After": str(exc.retry_after)}
    return error_response(status, exc.code, exc.message, exc.details, headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return engine_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
        return error_response(
            422, "validation_error", f"The request is not valid: {summary}", {"errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.method} {request.url.path}; see /docs for the API."
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs."
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "internal_error",
            f"The server failed while handling this request ({type(exc).__name__});"
            " the server log has the details.",
        )
