"""Every error the batchserve SDK raises, as one hierarchy.

::

    BatchserveError
    ├── TransportError              the server could not be reached or did not answer in time
    ├── APIError                    the server answered with an error status
    │   │                           (.status_code, .code, .message, .details)
    │   ├── BadRequestError         400: bad records, a wrong column, an unreadable file...
    │   │   └── ValidationError     422: a body or parameter of the wrong shape (.errors)
    │   ├── AuthenticationError     401: no token, a bad or expired token, bad credentials
    │   ├── PermissionDeniedError   403: the user's role does not allow the action
    │   ├── NotFoundError           404: unknown service, version, batch, record or artifact;
    │   │                           also raised by the SDK itself for a record index out of
    │   │                           range, a record with no final result yet, or an unknown
    │   │                           output or artifact name
    │   ├── ConflictError           409: the name+version exists; the batch's state forbids it
    │   ├── PreconditionFailedError 412: an If-Match etag is stale
    │   ├── PayloadTooLargeError    413: an upload over the server's limit
    │   ├── TooManyRequestsError    429: too many log-ins or uploads at once (.retry_after)
    │   └── ServerError             5xx: the server failed
    ├── UsageError (ValueError)     the call cannot be made as written; nothing was sent
    │   └── InvalidRecordsError     records that cannot be turned into a batch upload
    └── WaitTimeout (TimeoutError)  Batch.wait() ran past its timeout

Errors the server sends carry its body ``{"error": {"code", "message", "details"}}``; an error the
SDK raises by itself (for example :class:`NotFoundError` for a record index past the end) has
``status_code`` ``None``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BatchserveError",
    "ConflictError",
    "InvalidRecordsError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "ServerError",
    "TooManyRequestsError",
    "TransportError",
    "UsageError",
    "ValidationError",
    "WaitTimeout",
    "error_from_response",
]


class BatchserveError(Exception):
    """The base of every error raised by the batchserve SDK."""


class TransportError(BatchserveError):
    """The server could not be reached (refused, unknown host, broken connection) or timed out."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class APIError(BatchserveError):
    """The server answered with an error; also the base of the errors below, one per status."""

    #: The ``code`` used when the SDK raises this error by itself.
    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code or self.default_code
        self.details: dict[str, Any] = details if details is not None else {}
        self.method = method
        self.url = url

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"{self.message} (HTTP {self.status_code} {self.code})"


class BadRequestError(APIError):
    """400: malformed input — bad records, a wrong column, an unreadable file, a bad parameter."""

    default_code = "bad_request"


class ValidationError(BadRequestError):
    """422: a request body or parameter of the wrong shape."""

    default_code = "validation_error"

    @property
    def errors(self) -> list[Any]:
        """The individual problems the server listed (``details.errors``)."""
        errors = self.details.get("errors")
        return list(errors) if isinstance(errors, list) else []


class AuthenticationError(APIError):
    """401: no token, a bad or expired token, or bad credentials."""

    default_code = "unauthorized"


class PermissionDeniedError(APIError):
    """403: the user's role does not allow the action."""

    default_code = "forbidden"


class NotFoundError(APIError):
    """404, or a record index, result, output or artifact the SDK knows does not exist."""

    default_code = "not_found"


class ConflictError(APIError):
    """409: the name+version exists already, or the batch's state does not allow the action."""

    default_code = "conflict"


class PreconditionFailedError(APIError):
    """412: an ``If-Match`` etag is stale; read the object again and retry."""

    default_code = "precondition_failed"


class PayloadTooLargeError(APIError):
    """413: an upload over the server's configured limit."""

    default_code = "payload_too_large"


class TooManyRequestsError(APIError):
    """429: too many failed log-ins, or too many uploads at once; try again after
    :attr:`retry_after` seconds (None when the server did not say)."""

    default_code = "too_many_requests"

    @property
    def retry_after(self) -> float | None:
        value = (self.details or {}).get("retry_after")
        return float(value) if isinstance(value, (int, float)) else None


class ServerError(APIError):
    """5xx: the server failed while handling the request."""

    default_code = "server_error"


class UsageError(BatchserveError, ValueError):
    """The call cannot be made as written (bad schema type, missing outputs, batch not started...).

    Raised before anything is sent to the server.
    """


class InvalidRecordsError(UsageError):
    """Records that cannot be turned into a batch upload (wrong container, unequal columns...)."""


class WaitTimeout(BatchserveError, TimeoutError):
    """:meth:`Batch.wait` ran past its timeout; the batch itself keeps running."""

    def __init__(self, message: str, *, execution_id: str, state: str, timeout: float) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.state = state
        self.timeout = timeout


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: TooManyRequestsError,
}


def error_class(status_code: int) -> type[APIError]:
    """The :class:`APIError` subclass raised for an HTTP status."""
    if status_code >= 500:
        return ServerError
    return _BY_STATUS.get(status_code, APIError)


def error_from_response(
    status_code: int, content: bytes, *, method: str | None = None, url: str | None = None
) -> APIError:
    """Build the error for an error response from its status and raw body.

    Understands the batchserve body ``{"error": {...}}`` and, because a proxy or the web framework
    may answer before batchserve does, also ``{"detail": ...}`` bodies and bodies that are not JSON
    at all; the message then says the status and shows the start of the body.
    """
    cls = error_class(status_code)
    where = f" to {method} {url}" if method and url else ""
    code: str | None = None
    details: dict[str, Any] = {}
    try:
        body = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        body = None
        text = content[:300].decode("utf-8", "replace").strip()
        message = (
            f"The server answered{where} with HTTP {status_code} and a non-JSON body: {text!r}"
        )
    else:
        message = f"The server answered{where} with HTTP {status_code} and no error message."
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            code = error.get("code") if isinstance(error.get("code"), str) else None
            if error.get("message"):
                message = str(error["message"])
            if isinstance(error.get("details"), dict):
                details = error["details"]
        elif isinstance(body, dict) and "detail" in body:
            # The web framework's own error shape (an unknown route, a wrong method).
            detail = body["detail"]
            if isinstance(detail, list):
                details = {"errors": detail}
                message = f"The request was refused{where}: {_summarise(detail)}"
            else:
                message = str(detail)
        elif content:
            text = content[:300].decode("utf-8", "replace").strip()
            message = f"The server answered{where} with HTTP {status_code}: {text}"
    return cls(message, status_code=status_code, code=code, details=details, method=method, url=url)


def _summarise(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        if isinstance(err, dict):
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', err)}" if loc else str(err.get("msg", err)))
        else:
            parts.append(str(err))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
