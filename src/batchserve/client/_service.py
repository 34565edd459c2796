"""A published service (ML Server's ``Service``): consume it, run batches of it.

Each service object is an instance of a class made for it, ``<Name>Service``, whose method named
after the service's alias (``manual_transmission``, say) calls the service with its inputs, as
ML Server's SDK does.
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from batchserve.client import _ops
from batchserve.client._batch import Batch
from batchserve.client._checks import check_parallel_count, retry_count, seconds
from batchserve.client._operations import BatchTaskOperation, sync_runner
from batchserve.client._publish import DEFAULT_RESOURCES, job_task_bundle
from batchserve.client._records import records_body
from batchserve.client._responses import ServiceResponse
from batchserve.client._types import plain
from batchserve.client._wire import Op
from batchserve.errors import UsageError

if TYPE_CHECKING:
    from batchserve.client._runner import Runner


class Service:
    """A service version on the server, as described when it was read."""

    def __init__(self, info: dict[str, Any], runner: Runner) -> None:
        self.info = info  #: the service as the server described it (``ServicePublic``)
        self._runner = runner

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def version(self) -> str:
        return str(self.info["version"])

    @property
    def description(self) -> str:
        return str(self.info.get("description") or "")

    @property
    def alias(self) -> str:
        """The name of the method that calls the service (``consume`` always works too)."""
        return str(self.info.get("alias") or "consume")

    @property
    def mode(self) -> str:
        return str(self.info.get("mode") or "row")

    @property
    def artifacts(self) -> list[str]:
        """The names of the files each call may produce."""
        return [str(name) for name in self.info.get("artifacts") or []]

    @property
    def bundle_kind(self) -> str:
        """``callable`` (a published function) or ``code`` (a published code string)."""
        return str(self.info.get("bundle_kind") or "callable")

    @property
    def resources(self) -> dict[str, Any]:
        """What each worker running the service is given: ``num_cpus``, ``num_gpus`` and
        ``memory`` (bytes; None: none reserved)."""
        # A server older than resources sends none: its workers get the defaults.
        return {**DEFAULT_RESOURCES, **(self.info.get("resources") or {})}

    @property
    def published_by(self) -> str | None:
        return self.info.get("published_by")

    @property
    def created_at(self) -> str | None:
        return self.info.get("created_at")

    @property
    def inputs(self) -> dict[str, str]:
        """Input names, in the order the service takes them, with their types."""
        return dict(self.info.get("inputs") or {})

    @property
    def outputs(self) -> dict[str, str]:
        """Output names with their types."""
        return dict(self.info.get("outputs") or {})

    def consume(self, *args: Any, **kwargs: Any) -> ServiceResponse:
        """Call the service once, with its inputs given in declared order or by name."""
        inputs = _bind(self.inputs, self.alias, args, kwargs)
        return self._runner.run(self._consume(inputs))

    def _consume(self, inputs: dict[str, Any]) -> Op[ServiceResponse]:
        raw = yield from _ops.consume(self.name, self.version, inputs)
        return ServiceResponse(raw, self._runner)

    def batch(
        self,
        records: Any,
        parallel_count: int = 10,
        chunk_size: int | None = None,
        *,
        priority: int = 0,
        display_name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        max_failed_records: int | None = None,
        task_failure_mode: str = "noaction",
        max_wall_clock_time: float | timedelta | None = None,
        max_task_retry_count: int = 0,
        task_timeout: float | timedelta | None = None,
        allow_preemption: bool = False,
        depends_on: Iterable[Batch | str] | None = None,
        id_column: str | None = None,
        format: str | None = None,
        open: bool = False,
        preparation: Any = None,
        release: Any = None,
    ) -> Batch:
        """Prepare a batch execution over ``records``; :meth:`Batch.start` runs it.

        ``records`` is a pandas DataFrame, a list of dicts, an iterator of dicts (read and sent a
        record batch at a time), a dict of equal-length columns, a pyarrow Table, or a records
        file: its path or an open binary file, in CSV, TSV, JSON Lines, Parquet or Arrow IPC
        (file or stream) format, told by the name's extension or by ``format=`` (``csv``,
        ``tsv``, ``jsonl``, ``parquet``, ``arrow``, ``arrows``). In-memory records are checked
        and converted now, so a problem with them is raised here; nothing is sent until
        ``start()``.

        ``id_column`` names a column of the records (an input or not) whose values are carried
        into the results as each record's ``id``; ids are not checked for uniqueness.

        ``priority`` (-1000..1000) orders batches waiting for workers, highest first (only
        owners may go above the server's ``max_user_priority``, 0 unless configured);
        ``display_name`` and ``metadata`` (name -> value) are kept with the batch;
        ``environment`` (name -> value) is set for the service code while it runs the batch.
        ``max_failed_records`` fails the batch once more records than that have failed;
        ``task_failure_mode="terminatejob"`` fails it at the first failed record (the default,
        ``"noaction"``, reports failed records and completes the batch).

        Limits: ``max_wall_clock_time`` (seconds or a timedelta from the start; past it the
        batch fails with ``MaxWallClockTimeExpiry``), ``max_task_retry_count`` (tries of a
        failed record after its first; -1 for no limit), ``task_timeout`` (seconds one record,
        or one call of a vectorized service, may run; a longer one is stopped and counts as a
        failed try). ``parallel_count`` caps the chunks that run at once (-1: no limit but the
        workers). ``allow_preemption`` lets batches of higher priority requeue this one's
        running chunks. ``depends_on`` (started batches or their ids): this batch runs only
        after all of them have completed, and fails if one of them does not.

        ``open=True`` makes an open batch (Azure Batch's ``on_all_tasks_complete="noaction"``):
        :meth:`Batch.add` adds records to it, while it waits or runs, and it completes only once
        :meth:`Batch.close` is called and its records are done.

        ``preparation`` and ``release`` (Azure Batch's job preparation and release tasks) are
        functions called with no arguments, or Python source text, run in the workers beside
        the service: the preparation once in each worker before its first chunk of the batch
        (to fetch a reference file, warm a cache), the release once in each worker that ran the
        batch, after the batch ends (to clean up). Both, and the records, run with the batch's
        environment and find a folder of the worker's kept from one to the other in
        ``BATCHSERVE_JOB_DIR``. Where the preparation fails, the worker's records fail with its
        error (and the failure mode decides the rest); a failed release is logged by the
        server. Only the service's publisher, or an owner, may give them.
        """
        if task_failure_mode not in ("noaction", "terminatejob"):
            raise UsageError(
                "task_failure_mode must be 'noaction' or 'terminatejob', not "
                f"{task_failure_mode!r}."
            )
        if max_failed_records is not None and (
            not isinstance(max_failed_records, int) or max_failed_records < 0
        ):
            raise UsageError(
                "max_failed_records must be a whole number of at least 0, not "
                f"{max_failed_records!r}."
            )
        if not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise UsageError(
                f"priority must be a whole number from -1000 to 1000, not {priority!r}."
            )
        for option, mapping in (("metadata", metadata), ("environment", environment)):
            if mapping is not None and not all(
                isinstance(k, str) and isinstance(v, str) for k, v in dict(mapping).items()
            ):
                raise UsageError(
                    f"{option} must map names to text values, like {{'team': 'risk'}}."
                )
        dependencies: list[str] = []
        for other in depends_on or ():
            other_id = other if isinstance(other, str) else other.execution_id
            if not other_id:
                raise UsageError(
                    f"depends_on holds {other!r}, which is not started yet; start it first."
                )
            dependencies.append(other_id)
        options = {
            "max_wall_clock_time": seconds(max_wall_clock_time, "max_wall_clock_time"),
            "max_task_retry_count": retry_count(max_task_retry_count) or None,
            "task_timeout": seconds(task_timeout, "task_timeout"),
            "allow_preemption": "true" if allow_preemption else None,
            "depends_on": dependencies or None,
            "priority": priority or None,  # 0 is the default: not sent
            "display_name": display_name,
            "metadata": dict(metadata) if metadata else None,
            "environment": dict(environment) if environment else None,
            "max_failed_records": max_failed_records,
            "task_failure_mode": None if task_failure_mode == "noaction" else task_failure_mode,
            "id_column": id_column,
            "on_all_tasks_complete": "noaction" if open else None,
        }
        if not self.inputs:
            raise UsageError(f"Service {self.name} {self.version} has no inputs to run a batch on.")
        check_parallel_count(parallel_count)  # -1: no limit but the workers
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise UsageError(
                f"chunk_size must be a whole number of at least 1, not {chunk_size!r}."
            )
        if id_column is not None and (not isinstance(id_column, str) or not id_column):
            raise UsageError(f"id_column must be the name of a column, not {id_column!r}.")
        job_tasks = {
            kind: job_task_bundle(code, kind)
            for kind, code in (("preparation", preparation), ("release", release))
            if code is not None
        }
        body = records_body(records, self.inputs, id_column=id_column, format=format)
        return Batch(
            self,
            body,
            records=records,
            parallel_count=parallel_count,
            chunk_size=chunk_size,
            options={k: v for k, v in options.items() if v is not None and v != {}},
            job_tasks=job_tasks,
        )

    def get_batch(self, execution_id: str) -> Batch:
        """The batch with this execution id, as the server describes it now."""
        return self._runner.run(self._get_batch(execution_id))

    def _get_batch(self, execution_id: str) -> Op[Batch]:
        info = yield from _ops.get_batch(execution_id)
        return batch_from_info(self, info)

    def list_batches(
        self,
        *,
        state: str | Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = _ops.BATCHES_PAGE_SIZE,
    ) -> Iterator[Batch]:
        """This version's batches that you may see, newest first, read a page at a time as
        the iteration goes on.

        ``state`` keeps batches in that state (or any of several); ``metadata`` keeps those whose
        metadata has every one of these pairs; ``created_after`` / ``created_before`` bound the
        creation time. ``page_size`` (1 to 1000) is the number of batches per request.
        """
        filters = listing_filters(state, metadata, created_after, created_before, page_size)
        for info in paged(
            self._runner,
            lambda cursor: _ops.list_service_batches(
                self.name, self.version, filters, cursor, page_size
            ),
        ):
            yield batch_from_info(self, info)

    def list_batch_executions(self) -> list[str]:
        """The execution ids of this service version's batches, newest first."""
        return [str(b.execution_id) for b in self.list_batches(page_size=1000)]

    def get_batch_executions(self) -> list[str]:
        """The execution ids of this service version's batches, newest first: ML Server's name
        for :meth:`list_batch_executions`."""
        return self.list_batch_executions()

    def run_deferred(self, records: Any, **batch_options: Any) -> BatchTaskOperation:
        """Upload ``records`` as a batch of this service, start it, and return its
        batch-task operation (status, task info, wait, result, cancel, delete).

        ``records`` and ``batch_options`` are those of :meth:`batch` (``parallel_count``,
        ``chunk_size``, ``priority``, ``metadata``, ``max_task_retry_count``, ...). Bad options
        raise before anything is sent; records the service cannot take are refused by the
        server (:class:`~batchserve.errors.BadRequestError`), and no batch is made.
        """
        batch_id = self._runner.run(self._run_deferred(records, batch_options))
        return BatchTaskOperation(batch_id, sync_runner(self._runner))

    def _run_deferred(self, records: Any, batch_options: dict[str, Any]) -> Op[str]:
        batch = self.batch(records, **batch_options)
        yield from batch._start()
        return batch._require_id()

    def __repr__(self) -> str:
        args = ", ".join(f"{n}: {t}" for n, t in self.inputs.items())
        return f"<{type(self).__name__} {self.name} {self.version} {self.alias}({args})>"


def _bind(
    inputs: dict[str, str], alias: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Map call arguments to input names like Python binds a function's parameters."""
    names = list(inputs)
    if len(args) > len(names):
        raise TypeError(
            f"{alias}() takes {len(names)} inputs ({', '.join(names) or 'none'}) "
            f"but {len(args)} were given"
        )
    values = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name not in inputs:
            raise TypeError(f"{alias}() got an unexpected input {name!r}; it takes {names}")
        if name in values:
            raise TypeError(f"{alias}() got multiple values for input {name!r}")
        values[name] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise TypeError(f"{alias}() is missing input(s): {', '.join(missing)}")
    return {name: plain(values[name]) for name in names}


def batch_from_info(service: Service, info: dict[str, Any]) -> Batch:
    """A batch of ``service`` as the server described it (``BatchPublic``)."""
    return Batch(
        service,
        None,
        parallel_count=int(info.get("parallel_count") or 0),
        chunk_size=info.get("chunk_size"),
        info=info,
    )


def listing_filters(
    state: str | Iterable[str] | None,
    metadata: Mapping[str, str] | None,
    created_after: datetime | str | None,
    created_before: datetime | str | None,
    page_size: int,
) -> dict[str, Any]:
    """The query parameters of a batch listing, checked before anything is sent."""
    if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
        raise UsageError(f"page_size must be a whole number from 1 to 1000, not {page_size!r}.")
    params: dict[str, Any] = {}
    if state is not None:
        states = [state] if isinstance(state, str) else list(state)
        if not all(isinstance(s, str) for s in states):
            raise UsageError(f"state must be a state name or several of them, not {state!r}.")
        params["state"] = [str(s) for s in states]
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(metadata).items()):
            raise UsageError("metadata must map names to text values, like {'team': 'risk'}.")
        if any(":" in k or not k for k in metadata):
            raise UsageError("metadata names to filter on must be non-empty and hold no ':'.")
        params["metadata"] = [f"{k}:{v}" for k, v in metadata.items()]
    for name, when in (("created_after", created_after), ("created_before", created_before)):
        if when is not None:
            params[name] = when.isoformat() if isinstance(when, datetime) else str(when)
    return params


def paged(runner: Runner, page: Callable[[str | None], Op[dict[str, Any]]]) -> Iterator[Any]:
    """The items of a cursor-paged listing, one request per page, made as they are needed."""
    cursor: str | None = None
    while True:
        answer = runner.run(page(cursor))
        yield from answer.get("batches") or []
        cursor = answer.get("next_cursor")
        if not cursor:
            return


def service_from_info(info: dict[str, Any], runner: Runner) -> Service:
    """A :class:`Service` whose class has the alias method, named ``<Name>Service``."""
    alias = str(info.get("alias") or "consume")
    inputs = list(info.get("inputs") or {})
    namespace: dict[str, Any] = {"__doc__": Service.__doc__}
    # An alias that is not a usable name, or that would hide a Service attribute, gets no method
    # of its own; consume() always works.
    if alias.isidentifier() and not keyword.iskeyword(alias) and not hasattr(Service, alias):
        namespace[alias] = _alias_method(alias, inputs)
    base = re.sub(r"\W", "", str(info.get("name", "")))
    class_name = f"{base[:1].upper()}{base[1:]}Service" if base.isidentifier() else "Service"
    cls = type(class_name, (Service,), namespace)
    cls.__module__ = Service.__module__
    return cls(info, runner)


def _alias_method(alias: str, inputs: list[str]) -> Any:
    def method(self: Service, *args: Any, **kwargs: Any) -> ServiceResponse:
        return self.consume(*args, **kwargs)

    method.__name__ = method.__qualname__ = alias
    method.__doc__ = (
        f"Call the service with {', '.join(inputs) or 'no inputs'} "
        "(in this order, or by name); returns a ServiceResponse."
    )
    if all(n.isidentifier() and not keyword.iskeyword(n) for n in inputs):
        # For help() and editors: the inputs as the method's parameters.
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in inputs]
        method.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return method
