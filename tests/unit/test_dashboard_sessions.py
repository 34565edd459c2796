"""The dashboard's session rules that need no server: where a sign-in may send a browser back
to, and the CSRF token of a session."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import Response

from batchserve.engine.auth import TokenPair
from batchserve.server.ui.sessions import csrf_of, safe_next, set_session


@pytest.mark.parametrize(
    "target",
    [
        "/ui/batches/abc?start=50",
        "/ui/services/squares/v1",
        "/ui",
    ],
)
def test_a_sign_in_goes_back_to_a_page_of_the_dashboard(target):
    assert safe_next(target) == target


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        "https://elsewhere.example/ui/batches",
        "//elsewhere.example/ui/batches",
        "/\\elsewhere.example",
        "/v1/batches",
        "/uix",
        "/ui/login?next=/ui/login",
        "javascript:alert(1)",
    ],
)
def test_a_sign_in_never_goes_anywhere_else(target):
    assert safe_next(target) == "/ui/batches"


def test_a_sessions_csrf_token_is_its_own():
    assert csrf_of("token-a") == csrf_of("token-a")
    assert csrf_of("token-a") != csrf_of("token-b")
    assert "token-a" not in csrf_of("token-a")


class _App:
    """As much of the application as setting a session's cookies reads."""

    class state:
        class engine:
            class settings:
                refresh_token_lifetime = 3600


def _request(scheme: str) -> Request:
    return Request({"type": "http", "scheme": scheme, "app": _App(), "headers": [], "path": "/"})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_session_cookies_are_http_only_strict_and_secure_over_https(scheme):
    response = Response()
    set_session(_request(scheme), response, TokenPair("access-1", "refresh-1", 3600, 0))

    cookies = [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]
    assert len(cookies) == 2
    for cookie in cookies:
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/ui" in cookie
        assert ("Secure" in cookie) == (scheme == "https")


def test_a_csrf_token_of_any_text_is_refused_without_an_error():
    from batchserve.server.ui.sessions import _same

    assert not _same(csrf_of("token-a"), "é" * 64)
    assert _same(csrf_of("token-a"), csrf_of("token-a"))
