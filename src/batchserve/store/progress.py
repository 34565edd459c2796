"""Reads for people watching batches: many batches' progress in one statement, and the chunks
that hold failed records, a few at a time.

Mixed into :class:`~batchserve.store.Store`. A dashboard page shows dozens of batches and
refreshes their progress every second: one statement for all of them, whatever their number,
rather than one per batch. A batch of millions of records may have thousands of chunks; the
ones with failures are found by an indexed scan over its chunk rows that stops after ``limit``,
so that no reading of failed records starts from the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, literal, select
from sqlalchemy.orm import Session

from batchserve.store.models import Batch, Chunk, User

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from batchserve.store.sql import BatchCounts

#: The most batches one progress read takes (a page of a listing is smaller).
MAX_PROGRESS_BATCHES = 1000


class ProgressQueries:
    engine: Engine

    if TYPE_CHECKING:

        def session(self, *, locked: bool = False) -> AbstractContextManager[Session]: ...

    def batch_statuses(
        self, batch_ids: Sequence[str]
    ) -> list[tuple[Batch, BatchCounts, str | None]]:
        """Each batch of ``batch_ids`` that exists, with its counts and its owner's username
        (as :meth:`~batchserve.store.Store.batch_status` gives one), read in one statement."""
        # The statement's parts live with the single-batch read they mirror; imported here, as
        # that module builds the Store from this one.
        from batchserve.store.sql import _count_columns, _counts_of, _detached_batch

        ids = list(dict.fromkeys(batch_ids))[:MAX_PROGRESS_BATCHES]
        if not ids or any("\x00" in i for i in ids):
            return []
        batches, users, chunks = Batch.__table__, User.__table__, Chunk.__table__
        query = (
            select(batches, users.c.username, *_count_columns())
            .select_from(
                batches.outerjoin(users, users.c.id == batches.c.owner_id).outerjoin(
                    chunks, chunks.c.batch_id == batches.c.id
                )
            )
            .where(batches.c.id.in_(ids))
            .group_by(batches.c.id, users.c.username)
        )
        width = len(batches.columns)
        with self.engine.connect() as conn:
            rows: list[Any] = list(conn.execute(query))
        found = {
            row[0]: (_detached_batch(row), _counts_of(row[width + 1 :]), row[width]) for row in rows
        }
        return [found[i] for i in ids if i in found]

    def chunks_with_failures(self, batch_id: str, after: int, limit: int) -> list[Chunk]:
        """Up to ``limit`` chunks of the batch that hold failed records and end past record
        ``after``, in index order."""
        first = literal(after, BigInteger)
        query = (
            select(Chunk)
            .where(
                Chunk.batch_id == batch_id,
                Chunk.failed > 0,
                Chunk.start_index + Chunk.count > first,
            )
            .order_by(Chunk.start_index)
            .limit(limit)
        )
        with self.session() as s:
            return list(s.scalars(query))
