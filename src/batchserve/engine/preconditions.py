"""Conditional changes of a batch: ``If-Match`` etags, which name a revision of the batch."""

from __future__ import annotations

from batchserve.engine.errors import PreconditionFailed
from batchserve.store.models import Batch


def revision(if_match: str | None) -> int | None:
    """The revision an ``If-Match`` etag names; None for no condition (absent, or ``*``)."""
    if if_match is None or if_match.strip() == "*":
        return None
    try:
        return int(if_match.strip().removeprefix("W/").strip('"'))
    except ValueError:
        raise PreconditionFailed(
            f"The If-Match value {if_match!r} is not an etag of this server; read the batch for "
            "its etag (the ETag header, or etag in its JSON)."
        ) from None


def stale(batch_id: str, if_match: str | None, current: int) -> PreconditionFailed:
    return PreconditionFailed(
        f"Batch {batch_id} changed since etag {if_match} was read (its etag is now "
        f'"{current}"); read it again and retry with the new etag.',
        etag=f'"{current}"',
    )


def check_etag(batch: Batch, if_match: str | None) -> None:
    """412 when ``if_match`` names another revision than ``batch``'s."""
    expect = revision(if_match)
    if expect is not None and expect != batch.revision:
        raise stale(batch.id, if_match, batch.revision)
