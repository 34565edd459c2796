"""Signing in to the dashboard: a session in cookies, and the CSRF token of its forms.

The session is the token pair the engine issues at log-in (``POST /login`` issues the same), so
that the accounts, roles, deactivation and revocation of the API hold here as they are, and the
server checks a session as it checks a bearer token. The access token is in one cookie, the
refresh token in another; both are HttpOnly (no script reads them), SameSite=Strict (no other
site's page sends them), Secure on https, and scoped to ``/ui``. An access token that expired
is exchanged for a new pair with the refresh token, so a session lasts as long as the API's
refresh tokens do.

Every form that changes something carries a CSRF token: a digest of the session's access token,
which only a page of this session can know. It is checked before anything else of the request;
a form without it, or with another session's, is refused (403). The sign-in form, which has no
session yet, carries a random value also set as a cookie (a double submit), so that no other
site can sign a browser in to an account of its choosing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import Request, Response
from starlette.datastructures import FormData

from batchserve.engine.auth import Principal, TokenPair
from batchserve.engine.core import Engine
from batchserve.engine.errors import EngineError, Forbidden, Unauthorized
from batchserve.server.deps import principal_of
from batchserve.server.ui.pages import PREFIX, SignIn, render

ACCESS_COOKIE = "batchserve_session"
REFRESH_COOKIE = "batchserve_refresh"
LOGIN_COOKIE = "batchserve_login"  # the sign-in form's double-submit value
CSRF_FIELD = "csrf_token"

NO_CSRF = (
    "This form was sent without the dashboard's security token (or with one of another "
    "session), so nothing was changed: it may not come from this dashboard. Reload the page "
    "and send the form again."
)


def csrf_of(access_token: str) -> str:
    """The CSRF token of a session: derived from its access token, which only this session's
    pages know, so the server keeps nothing to check it."""
    return hashlib.sha256(b"batchserve dashboard csrf\0" + access_token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """A signed-in dashboard user."""

    who: Principal
    csrf: str


def _secure(request: Request) -> bool:
    """Whether the browser came over https (directly, or through a proxy uvicorn trusts:
    ``--proxy-headers`` puts the forwarded scheme in the scope)."""
    return request.scope.get("scheme") == "https"


def set_session(request: Request, response: Response, pair: TokenPair) -> None:
    engine: Engine = request.app.state.engine
    lifetime = engine.settings.refresh_token_lifetime
    for name, value in ((ACCESS_COOKIE, pair.access_token), (REFRESH_COOKIE, pair.refresh_token)):
        response.set_cookie(
            name,
            value,
            max_age=lifetime,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )


def clear_session(request: Request, response: Response) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(
            name, path=PREFIX, httponly=True, samesite="strict", secure=_secure(request)
        )


def login_page(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """The sign-in page, with its double-submit value: the browser's, or a new one set now."""
    value = request.cookies.get(LOGIN_COOKIE) or ""
    fresh = len(value) < 32
    if fresh:
        value = secrets.token_urlsafe(32)
    response = render(request, template, status_code, login_value=value, **context)
    if fresh:
        response.set_cookie(
            LOGIN_COOKIE,
            value,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
    return response


def check_login_value(request: Request, form: Mapping[str, Any]) -> None:
    cookie = request.cookies.get(LOGIN_COOKIE) or ""
    sent = form.get(CSRF_FIELD)
    if not cookie or not isinstance(sent, str) or not _same(cookie, sent):
        raise Forbidden(NO_CSRF)


def _same(expected: str, sent: str) -> bool:
    """A comparison that takes as long wherever the values differ (as bytes: a form may send
    any text, which ``compare_digest`` refuses as ``str`` unless it is ASCII)."""
    return hmac.compare_digest(expected.encode(), sent.encode())


def back_to(request: Request) -> str:
    """Where to come back to after signing in: this page, for a page; the referring page of
    the dashboard (or its start) for a form."""
    if request.method == "GET":
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return safe_next(request.headers.get("referer"))


def safe_next(target: str | None) -> str:
    """``target`` if it is a page of this dashboard, else the dashboard's start: a sign-in link
    must not send anyone elsewhere."""
    if not target:
        return f"{PREFIX}/batches"
    parts = urlsplit(target)
    path = parts.path
    if (
        parts.scheme
        or parts.netloc
        or not (path == PREFIX or path.startswith(PREFIX + "/"))
        or "\\" in target
        or path.startswith(f"{PREFIX}/login")
    ):
        return f"{PREFIX}/batches"
    return path + (f"?{parts.query}" if parts.query else "")


async def session_of(request: Request, form: FormData | None = None) -> Session:
    """The session of a dashboard request, kept on ``request.state`` for the page; with
    ``form`` (a request that changes something) its CSRF token is checked first. Without a
    valid session, :class:`SignIn`."""
    engine: Engine = request.app.state.engine
    access = request.cookies.get(ACCESS_COOKIE) or ""
    if form is not None:
        sent = form.get(CSRF_FIELD)
        # Checked against the cookie as sent, before the session is renewed: the page that
        # holds the form was made for that token.
        if not access or not isinstance(sent, str) or not _same(csrf_of(access), sent):
            raise Forbidden(NO_CSRF)
    if not access:
        raise SignIn(back_to(request))
    try:
        who = await principal_of(engine, access)
    except Unauthorized:
        who, access = await _renewed(request, engine)
    session = Session(who, csrf_of(access))
    request.state.ui_session = session
    return session


#: How long a renewed pair is handed to the other requests that come with the same expired
#: session: a page's requests (the page, its images, its progress stream) arrive together, and
#: the first renewal revokes the refresh token the others carry.
RENEWAL_SHARED_SECONDS = 30.0


class _Renewals:
    """Sessions renewed lately, by their refresh token's digest; one renewal at a time."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._recent: dict[str, tuple[float, TokenPair]] = {}

    async def pair(self, engine: Engine, refresh: str) -> TokenPair:
        key = hashlib.sha256(refresh.encode()).hexdigest()
        async with self._lock:
            now = time.monotonic()
            for old in [
                k for k, (at, _) in self._recent.items() if now - at > RENEWAL_SHARED_SECONDS
            ]:
                del self._recent[old]
            if key not in self._recent:
                pair = await anyio.to_thread.run_sync(engine.accounts.refresh, refresh)
                self._recent[key] = (now, pair)
            return self._recent[key][1]


async def _renewed(request: Request, engine: Engine) -> tuple[Principal, str]:
    """A new token pair for an expired access token, from the session's refresh token; the
    route sends it back as cookies with its answer."""
    refresh = request.cookies.get(REFRESH_COOKIE) or ""
    if not refresh:
        raise SignIn(back_to(request), expired=True)
    renewals: _Renewals | None = getattr(request.app.state, "ui_renewals", None)
    if renewals is None:  # made on the event loop, on first use
        renewals = request.app.state.ui_renewals = _Renewals()
    try:
        pair = await renewals.pair(engine, refresh)
        who = await principal_of(engine, pair.access_token)
    except Unauthorized:
        raise SignIn(back_to(request), expired=True) from None
    request.state.ui_renewed = lambda response: set_session(request, response, pair)
    return who, pair.access_token


async def end_session(request: Request) -> None:
    """Revoke the session's tokens (signing out); a session already gone is no error."""
    engine: Engine = request.app.state.engine
    refresh = request.cookies.get(REFRESH_COOKIE)
    if refresh:
        with contextlib.suppress(EngineError):
            await anyio.to_thread.run_sync(engine.accounts.revoke, refresh)
