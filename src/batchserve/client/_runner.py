"""Running operations: the session shared by both I/O models, and the two runners.

The :class:`Session` holds the tokens and turns an operation into a *plan*: the same requests with
the bearer token attached, one token refresh and retry after a 401, and error statuses raised as
:mod:`batchserve.errors` exceptions (thrown into the operation, which may catch them). It does no
I/O either.

A runner carries a plan out. :class:`SyncRunner` sends with ``httpx.Client`` and sleeps with
``time.sleep``; :class:`AsyncRunner` sends with ``httpx.AsyncClient`` and sleeps with
``asyncio.sleep``, and its :meth:`AsyncRunner.run` is a coroutine. That is their only difference:
every operation, and every object method built on operations, works with either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, TypeVar

import httpx

from batchserve.client import _ops
from batchserve.client._wire import Op, Request, Response, Sleep, call
from batchserve.errors import (
    AuthenticationError,
    BatchserveError,
    TransportError,
    error_from_response,
)

T = TypeVar("T")


class Runner(Protocol):
    """What objects hold to carry out their operations.

    Typed as the blocking runner sees it; :class:`AsyncRunner` returns an awaitable of the result
    instead. The shared classes are written against this type, and the asyncio classes
    (``_async.py``) declare each of their methods that runs an operation as a coroutine, made
    from the blocking method (``_twins.py``).
    """

    base_url: str

    def run(self, op: Op[T]) -> T: ...


class Session:
    """Authentication state, and the request pipeline every runner shares."""

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self._credentials = (username, password or "") if username is not None else None
        self.access_token = token
        self.refresh_token: str | None = None

    @property
    def has_credentials(self) -> bool:
        return self._credentials is not None

    def login(self) -> Op[None]:
        """Log in with the username and password given; they are forgotten once it succeeds."""
        if self._credentials is None:
            return
        tokens = yield from _ops.login(*self._credentials)
        self._store(tokens)
        self._credentials = None

    def refresh(self) -> Op[None]:
        """Trade the refresh token for a new token pair (the old pair stops working)."""
        if self.refresh_token is None:
            return
        try:
            tokens = yield from _ops.refresh_token(self.refresh_token)
        except AuthenticationError as exc:
            self.refresh_token = None
            raise AuthenticationError(
                f"The access token was refused and renewing it failed ({exc.message}). "
                "Create a new Client to log in again.",
                status_code=exc.status_code,
                code=exc.code,
                details=exc.details,
            ) from exc
        self._store(tokens)

    def _store(self, tokens: dict[str, Any]) -> None:
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens.get("refresh_token") or self.refresh_token

    def plan(self, op: Op[T]) -> Op[T]:
        """``op`` with its requests authorised and its error responses raised into it."""
        reply: Response | None = None
        error: BaseException | None = None
        while True:
            try:
                step = op.throw(error) if error is not None else op.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if isinstance(step, Sleep):
                yield step
                continue
            try:
                reply = yield from self._exchange(step)
            except BatchserveError as exc:
                error = exc

    def _exchange(self, request: Request) -> Op[Response]:
        if request.auth and self.access_token is None and self._credentials is not None:
            # Lazy login, for clients that were not able to log in when they were made.
            yield from self.plan(self.login())
        used_token = self.access_token
        response = yield from call(self._authorise(request))
        if response.status_code == 401 and request.auth and self.refresh_token is not None:
            # Another operation sharing this session may have refreshed the token while this
            # request was in flight; refreshing again would invalidate its new pair.
            if self.access_token == used_token:
                yield from self.plan(self.refresh())
            response = yield from call(self._authorise(request))
        if not 200 <= response.status_code < 300:
            raise error_from_response(
                response.status_code, response.content, method=response.method, url=response.url
            )
        return response

    def _authorise(self, request: Request) -> Request:
        if request.auth and self.access_token is not None:
            return request.with_headers(Authorization=f"Bearer {self.access_token}")
        return request


class _RunnerBase:
    """What both runners share: translating a :class:`Request`, and transport failures."""

    def __init__(self, session: Session, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    @staticmethod
    def _httpx_args(request: Request, content: Any) -> dict[str, Any]:
        params = {k: v for k, v in (request.params or {}).items() if v is not None}
        args = {
            "params": params or None,
            "json": request.json,
            "content": content,
            "data": request.data,
            "files": request.files,
            "headers": dict(request.headers),
        }
        if request.timeout is not None:
            args["timeout"] = request.timeout
        return args

    def _transport_error(self, exc: httpx.TransportError, request: Request) -> TransportError:
        url = f"{self.base_url}{request.path}"
        if isinstance(exc, httpx.TimeoutException):
            message = (
                f"The batchserve server at {self.base_url} did not answer {request.method} "
                f"{request.path} in time ({type(exc).__name__}). Check that it is not "
                "overloaded, or give the Client a larger timeout=."
            )
        else:
            message = (
                f"Could not reach the batchserve server at {self.base_url} "
                f"({type(exc).__name__}: {exc}). Check that the server is running "
                "(`batchserve serve`) and that the URL is right."
            )
        return TransportError(message, url=url)


def _response(r: httpx.Response, content: bytes) -> Response:
    return Response(r.status_code, r.headers, content, method=r.request.method, url=str(r.url))


class SyncRunner(_RunnerBase):
    """Carries operations out with ``httpx.Client``; :meth:`run` returns the result."""

    def __init__(self, session: Session, http: httpx.Client) -> None:
        super().__init__(session, str(http.base_url))
        self.http = http

    def run(self, op: Op[T]) -> T:
        plan = self.session.plan(op)
        reply: Response | None = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply, error = None, None
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    continue
                try:
                    reply = self._send(step)
                except TransportError as exc:
                    error = exc
        finally:
            plan.close()

    def _send(self, request: Request) -> Response:
        content = request.content() if callable(request.content) else request.content
        args = self._httpx_args(request, content)
        try:
            if request.sink is None:
                r = self.http.request(request.method, request.path, **args)
                return _response(r, r.content)
            with self.http.stream(request.method, request.path, **args) as r:
                if not r.is_success:
                    return _response(r, r.read())
                for piece in r.iter_bytes():
                    request.sink(piece)
                return _response(r, b"")
        except httpx.TransportError as exc:
            raise self._transport_error(exc, request) from exc


async def _aiter(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    # httpx.AsyncClient only streams async iterables. The pieces are produced in the event loop,
    # one record batch or file piece at a time, which keeps each step short.
    for piece in pieces:
        yield piece


class AsyncRunner(_RunnerBase):
    """Carries operations out with ``httpx.AsyncClient``; :meth:`run` is a coroutine."""

    def __init__(self, session: Session, http: httpx.AsyncClient) -> None:
        super().__init__(session, str(http.base_url))
        self.http = http

    async def run(self, op: Op[T]) -> T:
        plan = self.session.plan(op)
        reply: Response | None = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = plan.throw(error) if error is not None else plan.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply, error = None, None
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    continue
                try:
                    reply = await self._send(step)
                except TransportError as exc:
                    error = exc
        finally:
            plan.close()

    async def _send(self, request: Request) -> Response:
        content = _aiter(request.content()) if callable(request.content) else request.content
        args = self._httpx_args(request, content)
        try:
            if request.sink is None:
                r = await self.http.request(request.method, request.path, **args)
                return _response(r, r.content)
            async with self.http.stream(request.method, request.path, **args) as r:
                if not r.is_success:
                    return _response(r, await r.aread())
                async for piece in r.aiter_bytes():
                    request.sink(piece)
                return _response(r, b"")
        except httpx.TransportError as exc:
            raise self._transport_error(exc, request) from exc
