"""What every part of the store shares: its errors, and which text it can hold."""

from __future__ import annotations


class AlreadyExists(Exception):
    """A row with the same unique key exists."""


class LastOwner(Exception):
    """The change would leave no active owner."""


class RevisionMismatch(Exception):
    """The row changed since the caller read it (a stale etag)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the current revision is {current}")
        self.current = current


def storable(*texts: str | None) -> bool:
    """Whether text can be in the store: PostgreSQL's text holds no NUL character, so no row
    has one, and a lookup by such text finds nothing here (as it does on SQLite) rather than
    failing in the driver."""
    return not any(t is not None and "\x00" in t for t in texts)
