"""What a request may send, checked before the application reads a byte of its body.

Every request that carries a body passes :class:`RequestGuard` first:

1. **The caller.** A route that needs a token has it checked here: FastAPI reads a whole body
   (or spools a whole multipart form to disk) before it solves a route's dependencies, so
   ``PrincipalDep`` alone would authenticate only after the upload. Bodies that only a
   publisher may send (bundles, session objects) are refused to other roles here too.
2. **The size.** Each route's body has a limit by kind (:class:`BodyKind`, from the settings).
   A Content-Length over it is refused at once; otherwise the bytes are counted as they
   arrive, and past the limit the application is told the client went away (so it stops
   reading, wherever it reads from) and the client gets 413.
3. **Uploads per user.** An upload takes one of its user's ``max_uploads_per_user`` slots for
   as long as it runs; past them, 429 with Retry-After.

Refusals carry the error shape of the route's face (native or ML Server), say the limit and
what to do, and close the connection, since the rest of the body is not read.

A request whose client goes away (or is cut off by the read timeouts of
:mod:`batchserve.server.protocol`) ends without a traceback in the log: whatever the
application raised while reading a body that will never come, nobody is there to be answered.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchserve.engine.auth import Principal
from batchserve.engine.core import Engine
from batchserve.engine.errors import EngineError, Forbidden, PayloadTooLarge, TooManyRequests
from batchserve.server import errors
from batchserve.server.deps import bearer_token, get_principal, principal_of
from batchserve.server.mlserver import errors as mlserver_errors
from batchserve.settings import Settings

log = logging.getLogger(__name__)

# A multipart publish carries its metadata and the form's framing besides the bundle.
FORM_SLACK = 1024**2
CLOSE = (b"connection", b"close")
UPLOAD_RETRY_AFTER = 10  # seconds; uploads end when they end, so a guess that is not too eager


@dataclass(frozen=True)
class BodyKind:
    """A kind of request body: its limit and how a refusal speaks of it."""

    setting: str  # the Settings field of its limit
    what: str  # "the limit for <what>"
    advice: str  # what to do instead
    upload: bool = False  # takes one of its user's upload slots
    publishes: bool = False  # only users who may publish send it
    slack: int = 0  # bytes allowed past the setting

    def limit(self, settings: Settings) -> int:
        value: int = getattr(settings, self.setting)
        return value + self.slack

    def too_large(self, limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The request body is larger than the limit for {self.what}, {limit} bytes "
            f"(BATCHSERVE_{self.setting.upper()}); {self.advice}.",
            limit=limit,
        )


RECORDS = BodyKind(
    "max_upload_bytes",
    "the records of a batch",
    "split the records into several batches",
    upload=True,
)
BUNDLE = BodyKind(
    "max_bundle_bytes",
    "a service bundle",
    "keep large data out of the bundle (let the service read it from storage), or ask the "
    "server's operator to raise the limit",
    upload=True,
    publishes=True,
    slack=FORM_SLACK,
)
SESSION_OBJECT = BodyKind(
    "max_bundle_bytes",
    "an object of a session's workspace",
    "keep large data out of the service's objects (let the service read it from storage), or "
    "ask the server's operator to raise the limit",
    upload=True,
    publishes=True,
)
JOB_TASK = BodyKind(
    "max_bundle_bytes",
    "a batch's job preparation or release code",
    "keep large data out of it (let it read the data from storage), or ask the server's "
    "operator to raise the limit",
    upload=True,
    publishes=True,
)
JSON_RECORDS = BodyKind(
    "max_json_batch_bytes",
    "the JSON records of a batch execution",
    "split them into several batch executions, or stream them to the native API "
    "(POST /v1/services/{name}/{version}/batches) as JSON Lines, CSV, Parquet or Arrow",
    upload=True,
)
JSON = BodyKind("max_json_bytes", "a JSON body", "send less in one request")
ANONYMOUS = BodyKind(
    "max_login_bytes",
    "a route that needs no token",
    "it takes a username and a password, or a token, and nothing more",
)


#: How a route that answers with pages (the dashboard's) shows an error: (request, status,
#: message) -> the page.
ErrorPage = Callable[[Request, int, str], Response]


@dataclass(frozen=True)
class RoutePolicy:
    kind: BodyKind
    needs_token: bool
    mlserver: bool  # answers in the ML Server face's error shape
    page: ErrorPage | None = None  # answers with a page of this shape (the dashboard)

    def refusal(self, exc: EngineError, scope: Scope) -> Response:
        if self.page is not None:
            response = self.page(Request(scope), errors.STATUS.get(exc.code, 500), exc.message)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
        elif self.mlserver:
            response = mlserver_errors.engine_error_response(exc)
        else:
            response = errors.engine_error_response(exc)
        # The rest of the body is not read: the connection cannot carry another request.
        response.headers["Connection"] = "close"
        return response


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def policy_of(route: object, bodies: Mapping[Callable[..., Any], BodyKind]) -> RoutePolicy:
    """The policy of the route the router chose; ``bodies`` maps the endpoints whose bodies
    are not JSON to their kind."""
    if not isinstance(route, APIRoute):  # not one of the API's routes: a small body at most
        return RoutePolicy(ANONYMOUS, needs_token=False, mlserver=False)
    needs_token = any(call is get_principal for call in _calls(route.dependant))
    kind = bodies.get(route.endpoint) or (JSON if needs_token else ANONYMOUS)
    mlserver = isinstance(route, mlserver_errors.MLServerRoute)
    return RoutePolicy(kind, needs_token, mlserver, getattr(route, "error_page", None))


def body_framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None without one) and whether a body is sent chunked."""
    length: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:  # the HTTP parser refuses these before a request gets here
                length = None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


class RequestGuard:
    """ASGI middleware; see the module's docstring.

    The checks run when the application first asks for the body: the router has chosen the
    route by then (``scope["route"]``), and nothing of the body has been read (nor has
    ``100 Continue`` been sent to a client that waits for it). A refused request is told that
    its client went away, so that it stops, and its answer is replaced by the refusal.
    """

    def __init__(self, app: ASGIApp, bodies: Mapping[Callable[..., Any], BodyKind]) -> None:
        self.app = app
        self.bodies = bodies
        # Routes compare by path and method (so are not hashable): kept by identity, each with
        # its route, which keeps that identity from being reused.
        self._policies: dict[int, tuple[object, RoutePolicy]] = {}
        self._uploads: Counter[int] = Counter()  # uploads in progress by user id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = body_framing(scope)
        if not length and not chunked:
            # No body: nothing to guard (status polls and every other GET take this path).
            await self.app(scope, receive, send)
            return
        await _GuardedRequest(self, scope, receive, send, length).run()

    def policy(self, scope: Scope) -> RoutePolicy:
        route = scope.get("route")
        known = self._policies.get(id(route))
        if known is None or known[0] is not route:
            known = (route, policy_of(route, self.bodies))
            self._policies[id(route)] = known
        return known[1]

    def take_upload(self, who: Principal, per_user: int) -> None:
        if self._uploads[who.id] >= per_user:
            raise TooManyRequests(
                f"User {who.username!r} already has {per_user} uploads in progress, the most "
                "one user may send at once (BATCHSERVE_MAX_UPLOADS_PER_USER); wait for one "
                f"to finish, then send this one again (in {UPLOAD_RETRY_AFTER} s or later).",
                retry_after=UPLOAD_RETRY_AFTER,
                limit=per_user,
            )
        self._uploads[who.id] += 1

    def give_upload_back(self, who: Principal) -> None:
        self._uploads[who.id] -= 1
        if self._uploads[who.id] <= 0:
            del self._uploads[who.id]


class _GuardedRequest:
    """One request with a body, on its way through the application."""

    def __init__(
        self, guard: RequestGuard, scope: Scope, receive: Receive, send: Send, length: int | None
    ) -> None:
        self.guard = guard
        self.scope = scope
        self._receive = receive
        self._send = send
        self.length = length
        self.policy = policy_of(None, {})
        self.limit = 0
        self.checked = False
        self.uploader: Principal | None = None  # holds one of this user's upload slots
        self.refused: EngineError | None = None  # answered in the application's place
        self.gone = False  # the client left, or was cut off for its silence
        self.started = False  # the application's answer has begun
        self.received = 0
        self.whole = False  # the body's last piece was read

    async def run(self) -> None:
        try:
            await self.guard.app(self.scope, self.receive, self.send)
        except Exception as exc:
            if self.refused is None and not self.gone:
                raise
            # Raised while reading a body that will not come: the refusal answers it, or nobody
            # is left to answer.
            log.log(
                logging.DEBUG if self.refused else logging.INFO,
                "%s %s ended early (%s): %s",
                self.scope["method"],
                self.scope["path"],
                type(exc).__name__,
                self.refused.message
                if self.refused
                else "the connection closed before the body's end",
            )
        finally:
            if self.uploader is not None:
                self.guard.give_upload_back(self.uploader)
        if self.refused is not None and not self.started and not self.gone:
            refusal = self.policy.refusal(self.refused, self.scope)
            await refusal(self.scope, self._receive, self._send)

    async def receive(self) -> Message:
        if not self.checked:
            # Marked only once done: a read that is cancelled meanwhile (Starlette's
            # is_disconnected() reads with a cancelled scope) leaves the checks to the next one.
            try:
                await self._check()
            except EngineError as exc:
                self.refused = exc
            self.checked = True
        if self.refused is not None:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = self.policy.kind.too_large(self.limit)
                return {"type": "http.disconnect"}
            self.whole = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.gone = True
        return message

    async def send(self, message: Message) -> None:
        if self.refused is not None and not self.started:
            return  # its answer to a body it could not read: the refusal takes its place
        if message["type"] == "http.response.start":
            self.started = True
            if not self.whole:
                # Answered before its body was read whole (an unknown service, a missing
                # token): closing spares reading and dropping the rest of it, up to its
                # declared size, before the connection could carry another request.
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
        await self._send(message)

    async def _check(self) -> None:
        engine: Engine = self.scope["app"].state.engine
        self.policy = self.guard.policy(self.scope)
        kind = self.policy.kind
        self.limit = kind.limit(engine.settings)
        who = await self._caller(engine) if self.policy.needs_token else None
        if self.length is not None and self.length > self.limit:
            raise kind.too_large(self.limit)
        if kind.upload and who is not None:
            self.guard.take_upload(who, engine.settings.max_uploads_per_user)
            self.uploader = who

    async def _caller(self, engine: Engine) -> Principal:
        authorization = next((v for n, v in self.scope["headers"] if n == b"authorization"), b"")
        who = await principal_of(engine, bearer_token(authorization.decode("latin-1")))
        if self.policy.kind.publishes and not who.can_publish:
            raise Forbidden(
                f"User {who.username!r} has the role '{who.role}', which may list and consume "
                "services but not publish them; ask an owner for the contributor role."
            )
        return who
