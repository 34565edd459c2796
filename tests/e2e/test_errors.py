"""Bad input gets a clear error and loses nothing; unknown things are not-found errors."""

from __future__ import annotations

import httpx
import pytest

from batchserve import Client, errors

pytestmark = pytest.mark.e2e


def divide(a: float, b: float) -> float:
    return a / b


@pytest.fixture
def divider(client, unique_name):  # type: ignore[no-untyped-def]
    return client.publish_service(
        unique_name,
        code=divide,
        inputs={"a": float, "b": float},
        outputs={"q": float},
        version="v1",
    )


def test_an_exception_fails_only_its_own_record(divider):  # type: ignore[no-untyped-def]
    records = [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 1.0}]
    resp = divider.batch(records, parallel_count=2).start().wait(timeout=60)
    assert resp.state == "completed"
    assert resp.execution(0).output("q") == 0.5
    bad = resp.execution(1)
    assert bad.status == "failed"
    assert "division by zero" in bad.error
    assert bad.error_type == "ZeroDivisionError"
    assert resp.execution(2).output("q") == 3.0


def test_a_wrong_column_name_is_refused_with_a_clear_message(divider):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.BadRequestError) as info:
        divider.batch([{"a": 1.0, "denominator": 2.0}]).start()
    message = str(info.value)
    assert "'b'" in message and "denominator" in message


def test_a_wrongly_typed_value_fails_its_record_with_a_clear_message(divider):  # type: ignore[no-untyped-def]
    resp = divider.batch([{"a": 1.0, "b": 2.0}, {"a": "abc", "b": 2.0}]).start().wait(timeout=60)
    assert resp.execution(0).output("q") == 0.5
    bad = resp.execution(1)
    assert bad.status == "failed"
    assert "'a'" in bad.error and "float" in bad.error and "abc" in bad.error


def test_a_csv_with_a_bad_value_fails_only_that_record(divider, tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "records.csv"
    path.write_text("a,b\n4,2\nfour,2\n9,3\n")
    resp = divider.batch(str(path)).start().wait(timeout=60)
    assert [resp.execution(i).status for i in range(3)] == ["succeeded", "failed", "succeeded"]
    assert resp.execution(2).output("q") == 3.0


def test_unknown_service_batch_and_index_are_not_found_errors(client, divider):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.NotFoundError):
        client.get_service("no-such-service")
    with pytest.raises(errors.NotFoundError):
        client.get_service(divider.name, version="v999")
    with pytest.raises(errors.NotFoundError):
        divider.get_batch("0" * 32).results()
    resp = divider.batch([{"a": 1.0, "b": 1.0}]).start().wait(timeout=60)
    with pytest.raises(errors.NotFoundError):
        resp.execution(7)


def test_a_nul_character_in_a_name_looked_up_is_not_found(client, divider):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.NotFoundError):
        client.get_service(divider.name, version="v1\x00")
    with pytest.raises(errors.NotFoundError):
        divider.get_batch("0" * 31 + "\x00").results()
    with pytest.raises(errors.AuthenticationError):
        Client(client.url, username="admin\x00", password="whatever")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"display_name": "night\x00ly"}, "display_name holds a NUL character"),
        ({"metadata": {"team": "ri\x00sk"}}, "metadata value of 'team' holds a NUL character"),
        ({"max_wall_clock_time": float("inf")}, "max_wall_clock_time must be a number"),
    ],
)
def test_options_the_store_cannot_keep_are_refused_with_a_clear_message(  # type: ignore[no-untyped-def]
    divider, options, named
):
    with pytest.raises(errors.BadRequestError, match=named):
        divider.batch([{"a": 1.0, "b": 2.0}], **options).start()


def test_publishing_an_existing_version_again_is_a_conflict(client, divider):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.ConflictError):
        client.publish_service(
            divider.name,
            code=divide,
            inputs={"a": float, "b": float},
            outputs={"q": float},
            version="v1",
        )


def test_calls_without_a_token_get_401(server):  # type: ignore[no-untyped-def]
    for path in ("/v1/services", "/v1/batches", "/v1/me"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(server.url + "/v1/services", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_bad_password_gets_401(server):  # type: ignore[no-untyped-def]
    r = httpx.post(server.url + "/login", json={"username": "admin", "password": "wrong"})
    assert r.status_code == 401
    with pytest.raises(errors.AuthenticationError):
        Client(server.url, username="admin", password="wrong")
