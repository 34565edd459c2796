"""A batch's input records read back from the server: ``Batch.records`` of a fetched batch.

A batch made in this program keeps the records it was given. One found again on the server
(``svc.get_batch(id)``, a listing) has only its id, so its records are read from
``GET /v1/batches/{id}/records`` a page at a time, when they are used, never all at once.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from batchserve.client import _ops
from batchserve.client._wire import Op

if TYPE_CHECKING:
    import pandas as pd

    from batchserve.client._runner import Runner


class BatchRecords:
    """The input records of a batch on the server, each a dict of input name -> value.

    ``len(records)`` is the number of records (no request); ``records[i]`` is record ``i``'s
    inputs (0-based; negative indexes count from the end); iterating gives every record's inputs
    in index order, a page per request as the iteration reaches it; :meth:`to_pandas` reads them
    all into a DataFrame. With an asyncio client, ``records[i]`` and ``to_pandas()`` return
    awaitables and iteration is ``async for``.
    """

    #: How many records one request reads.
    page_size = _ops.RESULTS_PAGE_SIZE

    def __init__(self, execution_id: str, count: int, runner: Runner) -> None:
        self.execution_id = execution_id
        self._count = count
        self._runner = runner
        # The page last read by records[i], so that reading records in order costs a request
        # per page, not per record.
        self._page_start: int | None = None
        self._page: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._runner.run(self._record(index))

    def _record(self, index: int) -> Op[dict[str, Any]]:
        i = operator.index(index)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            span = f"indexes 0 to {self._count - 1}" if self._count else "no records"
            raise IndexError(
                f"Batch {self.execution_id} has {self._count} records ({span}); there is no "
                f"record {index}."
            )
        start = i - i % self.page_size
        if self._page_start != start:
            page = yield from _ops.records_page(self.execution_id, start, self.page_size)
            self._page_start, self._page = start, page["records"]
        return dict(self._page[i - start]["inputs"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if inspect.iscoroutinefunction(self._runner.run):
            raise TypeError("With an asyncio client, iterate with `async for record in records`.")
        start: int | None = 0
        while start is not None:
            page = self._runner.run(_ops.records_page(self.execution_id, start, self.page_size))
            for raw in page["records"]:
                yield dict(raw["inputs"])
            start = page["next_start"]

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        start: int | None = 0
        while start is not None:
            page = await self._runner.run(  # type: ignore[misc]
                _ops.records_page(self.execution_id, start, self.page_size)
            )
            for raw in page["records"]:
                yield dict(raw["inputs"])
            start = page["next_start"]

    def to_pandas(self) -> pd.DataFrame:
        """Every record as a row of a DataFrame, one column per input, indexed by record index."""
        return self._runner.run(self._to_pandas())

    def _to_pandas(self) -> Op[pd.DataFrame]:
        import pandas as pd

        rows: list[dict[str, Any]] = []
        start: int | None = 0
        while start is not None:
            page = yield from _ops.records_page(self.execution_id, start, self.page_size)
            rows.extend(raw["inputs"] for raw in page["records"])
            start = page["next_start"]
        return pd.DataFrame.from_records(rows, index=range(len(rows)))

    def __repr__(self) -> str:
        return f"<BatchRecords of batch {self.execution_id}: {self._count} records>"
