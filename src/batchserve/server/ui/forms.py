"""The dashboard's form bodies: their limit, and reading their fields.

Forms are small (a few names and numbers), so a dashboard form may be at most the size of a
log-in body: the request guard (:mod:`batchserve.server.limits`) refuses a larger one before
reading it, which matters here because a form is read before its session is checked (its CSRF
token is in it).
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import FormData

from batchserve.engine.errors import BadRequest
from batchserve.server.limits import BodyKind

FORM = BodyKind(
    "max_login_bytes",
    "a dashboard form",
    "send shorter values, or use the API (see /docs) for larger ones",
)


async def read_form(request: Request) -> FormData:
    """The fields of a form post (urlencoded or multipart)."""
    try:
        return await request.form(max_files=0, max_fields=200)
    except (ValueError, AssertionError, KeyError) as exc:
        raise BadRequest(f"The form cannot be read: {exc}. Send it from the dashboard.") from None


def text(form: FormData, name: str, default: str = "") -> str:
    """A text field, trimmed; ``default`` when absent."""
    value = form.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"The field {name!r} must be text, not a file.")
    return value.strip()


def whole_number(form: FormData, name: str, what: str) -> int | None:
    """An integer field; None when empty; a 400 that names it when it is not a number."""
    value = text(form, name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{what} must be a whole number, not {value[:40]!r}.") from None
