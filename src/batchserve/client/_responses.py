"""Results: :class:`ServiceResponse` (one record's result) and :class:`BatchResponse` (a batch).

Accessors that only read what is already here return values directly. Methods that may need the
server (:meth:`ServiceResponse.artifact`, :meth:`BatchResponse.execution`,
:meth:`BatchResponse.to_pandas`) go through the client's runner, so with an asyncio client they
return awaitables.
"""

from __future__ import annotations

import base64
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from batchserve.client import _ops
from batchserve.client._export import ArrowSink
from batchserve.client._wire import Op
from batchserve.errors import NotFoundError, UsageError
from batchserve.states import BatchState

if TYPE_CHECKING:
    import pandas as pd

    from batchserve.client._runner import Runner

# Result columns of the Arrow results, in the order to_pandas() shows them around the outputs.
_LEADING = ("index", "id", "status")

#: Result file formats by extension: the server's format, and whether the Arrow stream it sends
#: is rewritten as an Arrow IPC file.
EXPORT_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrow",
}
_TRAILING = ("error", "error_type", "console_output", "duration_ms", "attempts")
#: Formats written here from the Arrow stream, rather than downloaded as they are.
_CONVERTED = {".csv": "csv", ".tsv": "tsv", ".arrow": "arrow"}


class ServiceResponse:
    """The result of one record: from :meth:`Service.consume` or :meth:`BatchResponse.execution`."""

    def __init__(
        self, raw: dict[str, Any], runner: Runner, *, execution_id: str | None = None
    ) -> None:
        self.raw = raw  #: the JSON result as the server sent it
        self.execution_id = execution_id  #: the batch of the record; None for a consume call
        self._runner = runner

    @property
    def index(self) -> int | None:
        """The record's 0-based index in its batch (0 for a consume call)."""
        return self.raw.get("index")

    @property
    def id(self) -> Any:
        """The record's id, from the batch's ``id_column``; None when the batch has none."""
        return self.raw.get("id")

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``cancelled``."""
        return str(self.raw.get("status", ""))

    @property
    def outputs(self) -> dict[str, Any]:
        """The output values by name (empty when the record failed)."""
        return dict(self.raw.get("outputs") or {})

    @property
    def error(self) -> str | None:
        """The error message when the record failed, else None."""
        return self.raw.get("error")

    @property
    def error_type(self) -> str | None:
        """The exception type name when the record failed, else None."""
        return self.raw.get("error_type")

    @property
    def console_output(self) -> str:
        """What the service printed while handling the record."""
        return str(self.raw.get("console_output") or "")

    @property
    def artifacts(self) -> list[str]:
        """The names of the files the record produced."""
        return [str(name) for name in self.raw.get("artifacts") or []]

    @property
    def duration_ms(self) -> float | None:
        return self.raw.get("duration_ms")

    @property
    def attempts(self) -> int | None:
        return self.raw.get("attempts")

    def output(self, name: str) -> Any:
        """The value of output ``name``; :class:`NotFoundError` if the record has no such output."""
        outputs = self.outputs
        if name in outputs:
            return outputs[name]
        if self.error:
            raise NotFoundError(
                f"The record has no output {name!r}: it {self.status or 'failed'} "
                f"({self.error_type or 'error'}: {self.error})."
            )
        raise NotFoundError(f"There is no output {name!r}; the outputs are {sorted(outputs)}.")

    def artifact(self, name: str) -> bytes:
        """The bytes of the artifact file ``name``."""
        return self._runner.run(self._artifact(name))

    def _artifact(self, name: str) -> Op[bytes]:
        inline = self.raw.get("artifact_data")
        if isinstance(inline, dict) and name in inline:
            return base64.b64decode(inline[name])
        if name not in self.artifacts or self.execution_id is None or self.index is None:
            raise NotFoundError(
                f"The record has no artifact {name!r}; its artifacts are {self.artifacts}."
            )
        return (yield from _ops.artifact(self.execution_id, self.index, name))

    def __repr__(self) -> str:
        return f"<ServiceResponse index={self.index} status={self.status!r} outputs={self.outputs}>"


class BatchResponse:
    """A snapshot of a batch's progress, and access to its per-record results.

    ``state`` and the counts are those of the moment the snapshot was taken; call
    :meth:`Batch.results` again for a newer one. Results are read from the server a page at a
    time, on first use, and kept.
    """

    #: How many results one page holds.
    page_size = _ops.RESULTS_PAGE_SIZE

    def __init__(
        self,
        info: dict[str, Any],
        runner: Runner,
        *,
        outputs: list[str] | None = None,
        show_partial_results: bool = True,
    ) -> None:
        self.info = info  #: the batch as the server described it (``BatchPublic``)
        self.show_partial_results = show_partial_results
        self._outputs = list(outputs or [])
        self._runner = runner
        self._pages: dict[int, dict[int, dict[str, Any]]] = {}

    @property
    def execution_id(self) -> str:
        return str(self.info["id"])

    @property
    def api(self) -> str:
        """The batch's absolute REST URL (``GET`` it for its state now)."""
        return batch_url(self._runner.base_url, self.execution_id)

    @property
    def state(self) -> BatchState:
        return BatchState(self.info["state"])

    # Every record ends with one final result: succeeded, failed, or cancelled (given up, unrun
    # or stopped, when the batch was stopped before it finished). So, once the batch is final,
    # total = completed + cancelled, and completed = succeeded + failed; before, the difference
    # is the records still waiting or running.

    @property
    def completed_item_count(self) -> int:
        """Records that ran to a result: :attr:`succeeded_item_count` +
        :attr:`failed_item_count`. Cancelled records are not counted here (see
        :attr:`cancelled_item_count`)."""
        return int(self.info.get("completed_item_count") or 0)

    @property
    def total_item_count(self) -> int:
        """All the records of the batch: once it is final, :attr:`completed_item_count` +
        :attr:`cancelled_item_count`."""
        return int(self.info.get("total_item_count") or 0)

    @property
    def succeeded_item_count(self) -> int:
        """Records whose call returned outputs."""
        return int(self.info.get("succeeded_item_count") or 0)

    @property
    def failed_item_count(self) -> int:
        """Records whose call raised, or whose inputs did not fit (each with its error)."""
        return int(self.info.get("failed_item_count") or 0)

    @property
    def cancelled_item_count(self) -> int:
        """Records given up, unrun or stopped, when the batch was stopped before they finished
        (cancelled, terminated, or failed by its failure policy or its wall-clock limit): they
        have a final result too, whose ``status`` is ``cancelled``."""
        return int(self.info.get("cancelled_item_count") or 0)

    def execution(self, index: int) -> ServiceResponse:
        """The result of record ``index`` (0-based).

        Raises :class:`NotFoundError` for an index outside the batch, for a record without a final
        result yet, and for any record while the batch runs if ``show_partial_results`` is False.
        """
        return self._runner.run(self._execution(index))

    def _execution(self, index: int) -> Op[ServiceResponse]:
        i = operator.index(index)
        total = self.total_item_count
        if not 0 <= i < total:
            span = f"indexes 0 to {total - 1}" if total else "no records"
            raise NotFoundError(
                f"Batch {self.execution_id} has {total} records ({span}); there is no record {i}."
            )
        self._check_results_shown()
        page_no = i // self.page_size
        if page_no not in self._pages:
            page = yield from _ops.results_page(self.execution_id, page_no * self.page_size)
            self._pages[page_no] = {int(r["index"]): r for r in page["results"]}
        raw = self._pages[page_no].get(i)
        if raw is None:
            raise NotFoundError(
                f"Record {i} of batch {self.execution_id} had no final result yet when these "
                f"results were read (state {self.state}, {self.completed_item_count} of {total} "
                "records finished). Call batch.results() again later, or batch.wait()."
            )
        return ServiceResponse(raw, self._runner, execution_id=self.execution_id)

    def to_pandas(self) -> pd.DataFrame:
        """One row per finished record: index, status, one column per output, error, error_type,
        console_output, duration_ms, attempts."""
        return self._runner.run(self._to_pandas())

    def _to_pandas(self) -> Op[pd.DataFrame]:
        table = yield from self._table()
        return table.to_pandas()

    def export(self, path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> str:
        """Write the finished results to ``path``, in the format its extension names: ``.csv``,
        ``.tsv``, ``.jsonl`` (JSON Lines), ``.parquet``, ``.arrow`` (an Arrow IPC file) or
        ``.arrows`` (an Arrow IPC stream); with ``columns``, only these result columns, in this
        order (see :meth:`Batch.export_results`). The results are streamed from the server into
        the file, never all held in memory. Returns the path."""
        return self._runner.run(self._export(Path(path), columns))

    def _export(self, path: Path, columns: Sequence[str] | None) -> Op[str]:
        self._check_results_shown()
        return (yield from export_results(self.execution_id, path, columns))

    def _table(self) -> Op[Any]:
        """The finished results as an Arrow table, columns in a stable order."""
        self._check_results_shown()
        content = yield from _ops.results_arrow(self.execution_id)
        import pyarrow as pa

        table = pa.ipc.open_stream(pa.py_buffer(content)).read_all()
        names = table.column_names
        fixed = set(_LEADING) | set(_TRAILING)
        outputs = [n for n in self._outputs if n in names]
        outputs += [n for n in names if n not in fixed and n not in outputs]
        order = [n for n in _LEADING if n in names] + outputs + [n for n in _TRAILING if n in names]
        return table.select(order)

    def _check_results_shown(self) -> None:
        if not self.show_partial_results and not self.state.is_final:
            raise NotFoundError(
                f"Batch {self.execution_id} is {self.state}: with show_partial_results=False, "
                "results are shown only when the batch is finished. Call batch.wait(), or "
                "batch.results(show_partial_results=True) to see the records finished so far."
            )

    def __str__(self) -> str:
        return (
            f"execution_id: {self.execution_id}\nstate: {self.state}\n"
            f"completed_item_count: {self.completed_item_count}\n"
            f"total_item_count: {self.total_item_count}"
        )

    def __repr__(self) -> str:
        return (
            f"<BatchResponse {self.execution_id} state={self.state.value} "
            f"completed={self.completed_item_count}/{self.total_item_count}>"
        )


def batch_url(base_url: str, execution_id: str) -> str:
    """The absolute REST URL of a batch."""
    return f"{base_url.rstrip('/')}/v1/batches/{quote(execution_id, safe='')}"


def export_results(execution_id: str, path: Path, columns: Sequence[str] | None = None) -> Op[str]:
    """Stream a batch's finished results into ``path``, in the format of its extension, with
    only ``columns`` if given."""
    wanted = _columns(columns)
    suffix = path.suffix.lower()
    format = EXPORT_FORMATS.get(suffix)
    if format is None:
        raise UsageError(
            f"Cannot export results to '{path.name}': use a file ending in .csv, .jsonl or "
            ".parquet, or .tsv, .arrow (an Arrow IPC file) or .arrows (an Arrow IPC stream)."
        )
    if not path.parent.is_dir():
        raise UsageError(f"The folder '{path.parent}' does not exist; create it first.")
    if suffix not in _CONVERTED:
        yield from _ops.download_results(execution_id, format, path, wanted)
        return str(path)
    # Text and the Arrow file layout are written here from the server's Arrow stream, as it
    # arrives (see _export.py).
    sink = ArrowSink(path, _CONVERTED[suffix])
    try:
        yield from _ops.stream_results(execution_id, "arrow", sink.write, wanted)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return str(path)


def _columns(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns):
        raise UsageError(
            f"columns must be a list of result column names, like ['index', 'answer'], not "
            f"{columns!r}."
        )
    if not columns:
        raise UsageError("columns names no result column; leave it out to export every column.")
    return list(columns)
