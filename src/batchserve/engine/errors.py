"""Errors of engine operations. Each has a ``code``; the faces map codes to their wire form."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(EngineError):
    code = "bad_request"


class Unauthorized(EngineError):
    code = "unauthorized"


class Forbidden(EngineError):
    code = "forbidden"


class NotFound(EngineError):
    code = "not_found"


class Conflict(EngineError):
    code = "conflict"


class PreconditionFailed(EngineError):
    code = "precondition_failed"


class PayloadTooLarge(EngineError):
    code = "payload_too_large"


class Unavailable(EngineError):
    code = "unavailable"


class UnsupportedMediaType(EngineError):
    code = "unsupported_media_type"


class TooManyRequests(EngineError):
    """Refused for now: try again in ``retry_after`` seconds (the faces send it as the
    ``Retry-After`` header)."""

    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class Busy(Unavailable):
    """The server has no capacity for this request now: try again in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


def check_text(value: str, what: str, max_length: int | None = None) -> str:
    """``value``, if the store can keep it as given on every backend; else a clear 400.

    PostgreSQL's text cannot hold a NUL character, and it refuses text longer than its column
    where SQLite would keep it all.
    """
    if "\x00" in value:
        raise BadRequest(f"{what} holds a NUL character (\\x00); leave it out.")
    if max_length is not None and len(value) > max_length:
        raise BadRequest(f"{what} is {len(value)} characters long; at most {max_length} fit.")
    return value
