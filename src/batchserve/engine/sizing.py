"""How the scheduler cuts a batch's next chunk: its record range, sized from the service's cost
estimate (:mod:`batchserve.engine.costs`) and the batch's running chunks, the upload parts that
hold it, and the estimate's upkeep as chunks finish. Part of the
:class:`~batchserve.engine.scheduler.Scheduler`, and only ever run on its thread."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

from batchserve.engine.costs import CostEstimate, Costs, range_size
from batchserve.engine.inputs import PartRef
from batchserve.engine.running import (
    RunningChunk,
)
from batchserve.engine.tasks import (
    ServiceSpec,
)
from batchserve.executors.base import Executor
from batchserve.store import Store
from batchserve.store.models import Batch

log = logging.getLogger("batchserve.engine.scheduler")


class ChunkSizing:
    store: Store
    executor: Executor | None
    target_chunk_seconds: float
    max_chunk_size: int
    _running: dict[str, RunningChunk]
    _costs: dict[tuple[int, str], CostEstimate]
    _costs_kept: dict[tuple[int, str], float]
    _parts: dict[str, tuple[PartRef, ...]]

    def _sizer(
        self, batch: Batch, mode: str, estimate: CostEstimate, costs: Costs | None, now: float
    ) -> Callable[[int, bool], int]:
        """What the store's claim asks for the size of the batch's next range (``remaining``,
        ``sealed``): :meth:`_range_size` with the estimate's costs, or its bound while unsure."""
        bound = estimate.bound() if costs is None else None
        return functools.partial(
            self._range_size, batch, mode, costs, estimate.probes, bound, now
        )

    def _range_size(
        self,
        batch: Batch,
        mode: str,
        costs: Costs | None,
        probes: int,
        bound: Costs | None,
        now: float,
        remaining: int,
        sealed: bool,
    ) -> int:
        """How many of a batch's ``remaining`` unclaimed records its next chunk takes: the size
        asked for, else as :func:`~batchserve.engine.costs.range_size` says from the service's
        costs and the batch's running chunks. While the upload goes on (not ``sealed``), a chunk
        takes the records stored so far, up to the target time; 0 waits for more when they are
        fewer than the floor."""
        if batch.chunk_size:
            return int(batch.chunk_size) if sealed or remaining >= batch.chunk_size else 0
        assert self.executor is not None
        slots = min(batch.parallel_cap, self.executor.capacity())
        if not sealed and costs is not None:
            if remaining < costs.floor():
                return 0
            at_most = max(1, math.ceil(self.target_chunk_seconds / costs.record))
            return min(remaining, at_most, self.max_chunk_size)
        busy = sum(
            max(0.0, r.expected_end - now) for r in self._running.values() if r.batch_id == batch.id
        )
        return range_size(
            remaining,
            slots,
            costs,
            busy,
            mode=mode,
            target_seconds=self.target_chunk_seconds,
            maximum=self.max_chunk_size,
            probes=probes,
            # While the upload goes on, the records stored so far are not all that is left:
            # sized at the bound, a range could take them all and leave the other slots idle.
            bound=bound if sealed else None,
        )

    def _parts_of(self, batch: Batch, start: int, count: int) -> tuple[PartRef, ...]:
        """The upload parts holding a chunk's records (kept once the batch is sealed: its parts
        never change then)."""
        parts = self._parts.get(batch.id)
        stop = start + count
        if parts is not None and not any(p.start_index + p.count >= stop for p in parts):
            parts = None  # records were added to the (open) batch since: read its parts again
        if parts is None:
            parts = tuple(
                PartRef(p.key, p.start_index, p.count) for p in self.store.parts(batch.id)
            )
            if batch.sealed:
                self._parts[batch.id] = parts
        return tuple(p for p in parts if p.start_index < stop and p.start_index + p.count > start)

    def _estimate(self, service_id: int, spec: ServiceSpec) -> CostEstimate:
        """The running cost estimate of a service, started from what the store kept."""
        key = (service_id, spec.bundle_key)
        estimate = self._costs.get(key)
        if estimate is None:
            service = self.store.get_service_by_id(service_id)
            prior = None
            if (
                service is not None
                and service.record_seconds is not None
                and service.chunk_seconds is not None
            ):
                prior = Costs(
                    service.chunk_seconds, service.call_seconds or 0.0, service.record_seconds
                )
            estimate = self._costs[key] = CostEstimate(prior)
        return estimate

    def _observe(self, run: RunningChunk, running: float, around: float) -> None:
        """Fold a finished chunk's times into its service's cost estimate, and keep it."""
        if run.costs_key is None or not run.count:
            return
        estimate = self._costs.get(run.costs_key)
        if estimate is None:
            return
        try:
            estimate.observe(run.count, running, around)
            costs = estimate.costs()
            now = time.monotonic()
            # Kept for a restart (and for other nodes) at most once a second: this process
            # sizes the next chunks from its own estimate.
            if costs is not None and now - self._costs_kept.get(run.costs_key, -1e9) >= 1.0:
                self._costs_kept[run.costs_key] = now
                self.store.observe_costs(
                    run.service_id, chunk=costs.chunk, call=costs.call, record=costs.record
                )
        except Exception:  # an estimate is no reason to leave a finished chunk unrecorded
            log.exception("could not update the cost estimate of service %s", run.service_id)
