"""How server answers and client-side problems become batchserve.errors exceptions."""

from __future__ import annotations

import json

import httpx
import pytest

from batchserve import Client, errors
from batchserve.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchserveError,
    ConflictError,
    InvalidRecordsError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PreconditionFailedError,
    ServerError,
    TooManyRequestsError,
    TransportError,
    UsageError,
    ValidationError,
    WaitTimeout,
    error_from_response,
)


def error_body(code: str, message: str, details: dict | None = None) -> bytes:
    return json.dumps(
        {"error": {"code": code, "message": message, "details": details or {}}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", BadRequestError),
        (401, "unauthorized", AuthenticationError),
        (403, "forbidden", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (412, "precondition_failed", PreconditionFailedError),
        (413, "payload_too_large", PayloadTooLargeError),
        (422, "validation_error", ValidationError),
        (429, "too_many_requests", TooManyRequestsError),
        (500, "internal", ServerError),
        (503, "unavailable", ServerError),
    ],
)
def test_each_error_status_maps_to_its_class_and_keeps_the_server_message(status, code, cls):
    err = error_from_response(status, error_body(code, "Something precise."))
    assert type(err) is cls
    assert err.status_code == status
    assert err.code == code
    assert err.message == "Something precise."
    assert str(err) == f"Something precise. (HTTP {status} {code})"


def test_validation_error_is_a_bad_request_and_lists_the_problems():
    problems = [{"loc": ["query", "parallel_count"], "msg": "must be >= 1"}]
    err = error_from_response(
        422, error_body("validation_error", "Bad shape.", {"errors": problems})
    )
    assert isinstance(err, BadRequestError)
    assert err.errors == problems
    assert err.details == {"errors": problems}


def test_unlisted_client_error_status_is_a_plain_api_error():
    err = error_from_response(418, error_body("teapot", "No coffee."))
    assert type(err) is APIError
    assert err.status_code == 418


def test_non_json_error_body_still_gives_the_status_and_the_start_of_the_body():
    err = error_from_response(
        502, b"<html>Bad Gateway</html>", method="GET", url="http://h/v1/services"
    )
    assert isinstance(err, ServerError)
    assert "HTTP 502" in str(err)
    assert "Bad Gateway" in str(err)
    assert "GET http://h/v1/services" in str(err)


def test_empty_error_body_gives_a_message_with_the_status():
    err = error_from_response(404, b"")
    assert isinstance(err, NotFoundError)
    assert "HTTP 404" in err.message


def test_framework_detail_body_is_understood():
    assert error_from_response(405, b'{"detail": "Method Not Allowed"}').message == (
        "Method Not Allowed"
    )
    err = error_from_response(422, b'{"detail": [{"loc": ["body", "inputs"], "msg": "missing"}]}')
    assert isinstance(err, ValidationError)
    assert "body.inputs: missing" in err.message


def test_json_error_body_of_another_shape_is_shown_as_it_is():
    err = error_from_response(400, b'["odd"]')
    assert isinstance(err, BadRequestError)
    assert '["odd"]' in err.message


def test_hierarchy_is_the_documented_tree():
    for cls in (TransportError, APIError, UsageError, WaitTimeout):
        assert issubclass(cls, BatchserveError)
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PreconditionFailedError,
        PayloadTooLargeError,
        TooManyRequestsError,
        ServerError,
    ):
        assert issubclass(cls, APIError)
    assert issubclass(ValidationError, BadRequestError)
    assert issubclass(InvalidRecordsError, UsageError)
    assert issubclass(UsageError, ValueError)
    assert issubclass(WaitTimeout, TimeoutError)


def test_module_docstring_draws_every_exception_class():
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert name in errors.__doc__


# -- through a client -----------------------------------------------------------------------------


def client_answering(handler) -> Client:
    return Client("http://testserver", token="t", transport=httpx.MockTransport(handler))


def test_server_error_body_reaches_the_caller_as_its_exception():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=error_body("not_found", "No service 'x' exists."))

    with pytest.raises(NotFoundError, match="No service 'x' exists") as info:
        client_answering(handler).get_service("x")
    assert info.value.method == "GET"
    assert info.value.url == "http://testserver/v1/services/x/latest"


def test_unreachable_server_raises_transport_error_naming_the_url():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(TransportError, match=r"http://testserver.*batchserve serve"):
        client_answering(handler).get_service("x")


def test_timeout_raises_transport_error_suggesting_a_larger_timeout():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TransportError, match=r"in time.*timeout="):
        client_answering(handler).get_service("x")


def test_success_answer_that_is_not_json_raises_a_clear_api_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>a login page</html>")

    with pytest.raises(APIError, match="not JSON"):
        client_answering(handler).get_service("x")


def test_bad_credentials_fail_when_the_client_is_made():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, content=error_body("unauthorized", "Invalid credentials."))

    with pytest.raises(AuthenticationError, match="Invalid credentials"):
        Client(
            "http://testserver",
            username="admin",
            password="x",
            transport=httpx.MockTransport(handler),
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "127.0.0.1:8000"},
        {"url": "ftp://host"},
        {"url": "http://h", "username": "admin"},
        {"url": "http://h", "password": "pw"},
        {"url": "http://h", "username": "admin", "password": "pw", "token": "t"},
    ],
)
def test_bad_client_arguments_are_refused_before_anything_is_sent(kwargs):
    with pytest.raises(UsageError):
        Client(**kwargs, transport=httpx.MockTransport(lambda r: httpx.Response(500)))


def test_a_429_says_when_to_try_again():
    err = error_from_response(
        429, error_body("too_many_requests", "Too many failed log-ins.", {"retry_after": 4})
    )
    assert isinstance(err, TooManyRequestsError) and err.retry_after == 4.0
