"""Listing the batches a user may see: filtered, newest first, a page at a time, each page's
position an opaque cursor. Part of :class:`~batchserve.engine.batches.BatchOps`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from batchserve.engine.auth import Principal
from batchserve.engine.errors import (
    BadRequest,
)
from batchserve.states import BatchState
from batchserve.store import Store
from batchserve.store.models import Batch, Service


@dataclass(frozen=True)
class BatchPage:
    """One page of a batch listing; ``next_cursor`` asks for the next (None: this is the last)."""

    batches: list[Batch]
    next_cursor: str | None


def parse_states(values: list[str] | None) -> list[str] | None:
    """Canonical state names from repeated and/or comma-separated values; None means any."""
    names = [n.strip().lower() for v in values or [] for n in v.split(",") if n.strip()]
    valid = [s.value for s in BatchState if s.name.isupper()]
    bad = [n for n in names if n not in valid]
    if bad:
        raise BadRequest(
            f"Unknown batch state(s): {', '.join(repr(n) for n in bad)}; the states are "
            f"{', '.join(valid)}.",
            unknown=bad,
            states=valid,
        )
    return names or None


def encode_cursor(last: Batch) -> str:
    """The opaque position after ``last``: its (creation time, id), the listing's sort key."""
    raw = json.dumps([last.creation_time.isoformat(), last.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, batch_id = json.loads(raw)
        at = datetime.fromisoformat(when)
        if at.tzinfo is None or not isinstance(batch_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadRequest(
            f"The cursor {cursor!r} is not one this server handed out; pass the next_cursor of "
            "the previous page, or leave cursor out to start from the newest batch."
        ) from None
    return at, batch_id


class BatchListing:
    store: Store

    def list_batches(
        self,
        who: Principal,
        *,
        service: Service | None = None,
        services: list[Service] | None = None,
        states: list[str] | None = None,
        limit: int = 100,
    ) -> list[Batch]:
        """Up to ``limit`` batches ``who`` may see, newest first (see :meth:`list_page`)."""
        return self.list_page(
            who, service=service, services=services, states=states, limit=limit
        ).batches

    def list_page(
        self,
        who: Principal,
        *,
        service: Service | None = None,
        services: list[Service] | None = None,
        states: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        owner: str | None = None,
    ) -> BatchPage:
        """One page of the batches ``who`` may see (their own; an owner sees all), newest first.

        ``states`` are canonical state names (an entry may hold several, comma-separated);
        ``metadata`` keeps batches whose metadata has all these pairs; ``owner`` (a username)
        keeps that user's batches. ``cursor`` is the ``next_cursor`` of the previous page; the
        page's own is None at the end.
        """
        owner_id = None if who.is_owner else who.id
        if owner:
            user = self.store.get_user(owner)
            if user is None or (owner_id is not None and user.id != owner_id):
                return BatchPage([], None)  # nobody's batches, or none this caller may see
            owner_id = user.id
        ids = (
            [service.id]
            if service is not None
            else ([s.id for s in services] if services is not None else None)
        )
        names = parse_states(states)
        page = self.store.list_batches(
            service_ids=ids,
            states=names,
            # Batches being deleted are gone for users, but for a listing that asks for them.
            include_deleting=bool(names and BatchState.DELETING.value in names),
            metadata=metadata,
            created_after=created_after,
            created_before=created_before,
            limit=limit + 1,  # one more tells whether another page follows
            before=decode_cursor(cursor) if cursor else None,
            owner_id=owner_id,
        )
        more = len(page) > limit
        page = page[:limit]
        return BatchPage(page, encode_cursor(page[-1]) if more else None)
