"""Log lines: one JSON object a line with the batch and chunk they are about, readable lines by
default, and no secret in either."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from batchserve.logs import (
    MASK,
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure,
    log_context,
    settings_secrets,
)
from batchserve.settings import Settings


def record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("the worker said password=hunter2-hunter2")
        except RuntimeError:
            exc_info = sys.exc_info()
    made = logging.getLogger("batchserve.engine.scheduler").makeRecord(
        "batchserve.engine.scheduler", logging.WARNING, __file__, 1, message, args, exc_info
    )
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("chunk %s of batch %s: retrying", 3, "b1"))
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "batchserve.engine.scheduler"
    assert entry["message"] == "chunk 3 of batch b1: retrying"
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line
    assert "batch_id" not in entry and "chunk_id" not in entry


def test_a_json_line_names_its_batch_and_chunk_from_extra_or_the_context() -> None:
    formatter = JsonFormatter()
    given = json.loads(formatter.format(record("x", batch_id="b1", chunk_id=7)))
    assert (given["batch_id"], given["chunk_id"]) == ("b1", 7)
    with log_context("b2", 8):
        inside = json.loads(formatter.format(record("y")))
        assert (inside["batch_id"], inside["chunk_id"]) == ("b2", 8)
        # What a call gives wins over the context.
        assert json.loads(formatter.format(record("z", batch_id="b3")))["batch_id"] == "b3"
    after = json.loads(formatter.format(record("w")))
    assert "batch_id" not in after and "chunk_id" not in after


def test_a_json_line_carries_its_exception_on_the_same_line() -> None:
    line = JsonFormatter().format(record("failed", exc=True))
    entry = json.loads(line)
    assert "RuntimeError" in entry["exception"]
    assert "\n" not in line


def test_a_text_line_is_readable_and_names_its_batch() -> None:
    with log_context("b9", 4):
        line = TextFormatter().format(record("chunk %s finished", 4))
    assert " WARNING batchserve.engine.scheduler: chunk 4 finished [batch=b9 chunk=4]" in line


SECRETS_IN_TEXT = [
    ("Authorization: Bearer eyJhbGciOi.secret-part", "eyJhbGciOi"),
    ("postgresql+psycopg://batch:s3cret-pw@db.example/batchserve", "s3cret-pw"),
    ("login with password=hunter2-hunter2 refused", "hunter2-hunter2"),
    ('{"username": "ann", "password": "pa55-word-x"}', "pa55-word-x"),
    ("refresh_token=abcdef0123456789 expired", "abcdef0123456789"),
    ("s3://key:aws-secret-1234@bucket/prefix", "aws-secret-1234"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS_IN_TEXT)
def test_secrets_in_a_message_are_masked_in_both_formats(text: str, secret: str) -> None:
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record("%s", text))
        assert secret not in line
        assert MASK in line


def test_the_given_secret_values_are_masked_wherever_they_appear() -> None:
    redact = Redactor(["my-metrics-token-1234567", None, ""])
    formatter = JsonFormatter(redact)
    line = formatter.format(record("scraped with my-metrics-token-1234567 ok", exc=True))
    assert "my-metrics-token-1234567" not in line
    assert "hunter2" not in line  # in the exception's text
    assert "scraped with *** ok" in json.loads(line)["message"]


def test_the_settings_secrets_are_the_passwords_and_tokens_the_server_was_given() -> None:
    settings = Settings(
        admin_password="admin-pw-123",
        metrics_token="metrics-token-0123456789",
        database_url="postgresql://batch:db-pw-456@db/batchserve",
    )
    found = set(settings_secrets(settings))
    assert {"admin-pw-123", "metrics-token-0123456789", "db-pw-456"} <= found


def test_configure_sends_every_logger_through_one_masking_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    kept = (list(root.handlers), root.level)
    try:
        configure("info", "json", ["admin-pw-123"])
        logging.getLogger("uvicorn.error").info("started, admin password admin-pw-123")
        with log_context("b5"):
            logging.getLogger("batchserve.engine.core").warning("recovered")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
    assert [x["logger"] for x in lines] == ["uvicorn.error", "batchserve.engine.core"]
    assert "admin-pw-123" not in lines[0]["message"]
    assert lines[1]["batch_id"] == "b5"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure("info", "xml")
