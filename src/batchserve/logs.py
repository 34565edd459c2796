"""How a server or a compute node logs: readable lines by default, or one JSON object a line
(``--log-format json``) for a log collector, with the batch and the chunk a line is about.

The batch and chunk come from ``extra={"batch_id": ..., "chunk_id": ...}`` on a call, or from
:func:`log_context` around the code that works on them (context variables: they follow the
scheduler's thread and each request's task, never another's).

No secret reaches a log line: every line, exception text included, goes through
:class:`Redactor`, which masks bearer tokens, passwords in ``key=value`` and JSON pairs, the
password of a URL's user (a database URL), and the secret values the server was given
(the admin password, the metrics token, the database password).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")

_batch_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_id", default=None)
_chunk_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("chunk_id", default=None)

MASK = "***"

# Patterns of secrets in free text: a bearer token, a URL's user password, and key=value or
# "key": "value" pairs whose key names a secret.
_SECRET_KEYS = r"(?:password|passwd|pwd|token|access_token|refresh_token|secret|api_key|apikey)"
_PATTERNS = (
    (re.compile(r"(?i)(\bbearer\s+)[^\s,;\"']+"), r"\1" + MASK),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(@)"), r"\1" + MASK + r"\2"),
    (
        re.compile(r"(?i)(\b\w*" + _SECRET_KEYS + r"\w*[\"']?\s*[=:]\s*[\"']?)[^\s,;&\"'}]+"),
        r"\1" + MASK,
    ),
)


class Redactor:
    """Masks secrets in text: the patterns above, and the exact ``secrets`` given."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so that a secret holding another is masked whole. Very short values
        # would mask ordinary words; secrets that short are refused elsewhere.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


@contextmanager
def log_context(batch_id: str | None = None, chunk_id: int | None = None) -> Iterator[None]:
    """Lines logged inside name this batch (and chunk)."""
    batch_token = _batch_id.set(batch_id)
    chunk_token = _chunk_id.set(chunk_id)
    try:
        yield
    finally:
        _chunk_id.reset(chunk_token)
        _batch_id.reset(batch_token)


def _about(record: logging.LogRecord) -> dict[str, Any]:
    """The batch and chunk a record is about: given with ``extra=``, else from the context."""
    found: dict[str, Any] = {}
    batch_id = getattr(record, "batch_id", None) or _batch_id.get()
    chunk_id = getattr(record, "chunk_id", None)
    if chunk_id is None:
        chunk_id = _chunk_id.get()
    if batch_id is not None:
        found["batch_id"] = str(batch_id)
    if chunk_id is not None:
        found["chunk_id"] = chunk_id
    return found


class TextFormatter(logging.Formatter):
    """``time level logger: message [batch=... chunk=...]``, secrets masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        about = _about(record)
        if about:
            where = " ".join(
                f"{k.removesuffix('_id')}={v}" for k, v in about.items()
            )  # e.g. batch=... chunk=...
            head, newline, rest = line.partition("\n")
            line = f"{head} [{where}]{newline}{rest}"
        return self.redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    and ``batch_id``, ``chunk_id`` and ``exception`` when there are; secrets masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            **_about(record),
        }
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text", secrets: Iterable[str | None] = ()) -> None:
    """Send this process's log lines (uvicorn's included) to stderr in ``log_format``, at
    ``level`` and above; ``secrets`` are masked wherever they appear."""
    if log_format not in FORMATS:
        raise ValueError(f"{log_format!r} is not a log format; use text or json.")
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if log_format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers log through the root's handler (uvicorn.run is given no log_config).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def settings_secrets(settings: Any) -> list[str | None]:
    """The secret values among a server's settings: masked in every log line."""
    import os

    from sqlalchemy.engine import make_url

    found: list[str | None] = [
        getattr(settings, "admin_password", None),
        getattr(settings, "metrics_token", None),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
    ]
    url = getattr(settings, "database_url", None)
    if url:
        # A URL SQLAlchemy cannot read has no password to find: the engine says so at start.
        with contextlib.suppress(Exception):
            found.append(make_url(url).password)
    return found
