"""The messages exchanged between operations and the runners that carry them out.

An operation (see ``_ops.py``) is a generator. It yields a :class:`Request` and is sent back a
:class:`Response`, or yields a :class:`Sleep` and is resumed after the pause; its return value is
the operation's result. Nothing here does I/O, so the same operation runs under the blocking runner
and under the asyncio runner.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote

from batchserve.errors import APIError

T = TypeVar("T")

#: A stream of request body pieces. A factory rather than an iterator so the body can be sent
#: again when a request has to be repeated (after refreshing an expired token).
BodyFactory: TypeAlias = Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class Request:
    """One HTTP request, described without sending it."""

    method: str
    path: str  # relative to the server's base URL, path parts already quoted with :func:`q`
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | BodyFactory | None = None
    data: Mapping[str, str] | None = None  # multipart form fields (with ``files``)
    files: Mapping[str, tuple[str, bytes, str]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: When set, a successful response body is handed to it piece by piece instead of being kept
    #: in :attr:`Response.content` (downloads straight to a file).
    sink: Callable[[bytes], object] | None = None
    #: Whether the bearer token is attached (False for login and token refresh).
    auth: bool = True
    #: Seconds this request may take (connect, each read and write); None: the client's timeout.
    timeout: float | None = None

    def with_headers(self, **headers: str) -> Request:
        return dataclasses.replace(self, headers={**self.headers, **headers})


@dataclass(frozen=True)
class Response:
    """A response, with its body read (empty when the request had a sink)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    method: str = ""
    url: str = ""

    def json(self) -> Any:
        try:
            return jsonlib.loads(self.content)
        except (ValueError, UnicodeDecodeError) as exc:
            start = self.content[:200].decode("utf-8", "replace")
            raise APIError(
                f"The server answered {self.method} {self.url} with a body that is not JSON: "
                f"{start!r}. Is the URL that of a batchserve server?",
                status_code=self.status_code,
                code="invalid_response",
                method=self.method,
                url=self.url,
            ) from exc


@dataclass(frozen=True)
class Sleep:
    """A pause between polls; the runner sleeps the way its I/O model wants."""

    seconds: float


#: The type of an operation that returns ``T``.
Op: TypeAlias = Generator[Request | Sleep, Response | None, T]


def call(request: Request) -> Op[Response]:
    """Send ``request`` and return its (successful) response: ``resp = yield from call(...)``."""
    response = yield request
    assert response is not None, "a runner must answer a Request with a Response"
    return response


def sleep(seconds: float) -> Op[None]:
    """Pause the operation: ``yield from sleep(0.5)``."""
    yield Sleep(max(0.0, seconds))


def q(part: object) -> str:
    """Percent-quote one URL path part (``/`` included, so a name cannot change the route)."""
    return quote(str(part), safe="")
