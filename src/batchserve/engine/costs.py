"""What a chunk costs, and how many records the scheduler hands out at a time.

A chunk of ``n`` records costs ``chunk + call + n * record`` seconds:

- ``chunk``: fixed per chunk, around its records: the scheduler's claim and bookkeeping, the
  worker's reading of the range and its opening and closing of the result file. Measured
  directly for every chunk: the scheduler's time on it, and its worker's time on it less the
  time spent on its records (and on loading the service, a once-per-worker cost). Time a
  finished chunk waits for a busy scheduler is left out, and the estimate is the median of the
  last few chunks: a chunk held up by contention (an upload writing to the same store, a
  collector's pass) is not what the next one costs, and a batch of small chunks would look like
  one of costly chunks.
- ``call``: fixed per chunk in the worker's run of its records: setting up the record loop and
  writing the last results, and for a vectorized service (called once per chunk with a
  DataFrame) the function's own set-up, such as a model's input checks.
- ``record``: per record.

``call`` and ``record`` are fitted to the time the worker spent on each chunk's records by
least squares over their record counts, with older chunks weighing less, so that a chunk of 100
records (mostly fixed cost) and one of a million (mostly records) each tell what they can. A
plain average of chunk time over records takes the fixed cost of small chunks for a cost per
record, and then cuts the next batch into thousands of tiny chunks.

Nothing is taken for known before a chunk's records took ``SURE_SECONDS``: below that, the fixed
costs (milliseconds, and noisy) drown the records' time. Until then chunks are probes, each
``PROBE_GROWTH`` times the one before (100, 800, 6,400, ... records), so that a fast service is
measured after a few quick chunks and a slow one after its first; and an estimate never sure is
not kept for the next batch, which then probes too. So history can only make chunks better.
Each probe that finished still proves something: no record costs more than its chunk's time over
its records. A probe is never smaller than a range sized as if records cost that bound; without
it, a service too quick ever to be sure would be cut into a tail of probes, each a quarter of
what is left, down to single records.

Noise only ever makes a chunk slower (a busy machine, a held-up store), never quicker. So a chunk
whose records ran in under a ``CONTRADICTED``-th of the time the estimate gave them proves the
estimate wrong, however it was reached (a small chunk held up long enough to look sure, a
batch on a busier machine): the estimate then starts again from that chunk alone.

:func:`range_size` turns the estimate into the size of the next range of records: never so
small that the fixed cost is more than ``FIXED_SHARE`` of a chunk's time (unless the batch is
too small to give every slot a chunk that large: then one chunk a slot, as long as its records
take half its fixed cost); half a slot's share
of the work left while much is left, so that later ranges can even out the finish; in the last
round, each slot's equal share, so that the slots finish together.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

#: A chunk's fixed cost may be at most this share of its time.
FIXED_SHARE = 0.05
#: Records in a first chunk when nothing is known of the service: small enough to cost little
#: if its records are slow. (Its size is bounded by the batch too.)
PROBE_RECORDS = {"row": 100, "vectorized": 1000}
#: Each probe has this many times the records of the one before.
PROBE_GROWTH = 8
#: An estimate is sure once a chunk's records took this long.
SURE_SECONDS = 0.01
#: How much an older chunk weighs against the next one (per chunk observed).
DECAY = 0.7
#: The fixed cost per chunk is the median of this many last chunks.
CHUNK_WINDOW = 9
#: No chunk's fixed cost is taken for less: a claim in the store and a round trip to a worker
#: cost at least this much. The time around a chunk's records is the difference of two
#: measurements, and a busy machine can make it come out near nothing.
MIN_FIXED_SECONDS = 0.001
#: A chunk this many times quicker than its estimate proves the estimate wrong.
CONTRADICTED = 4.0


@dataclass(frozen=True)
class Costs:
    """A service's estimated costs, in seconds (see the module's docstring)."""

    chunk: float
    call: float
    record: float

    @property
    def fixed(self) -> float:
        return max(self.chunk + self.call, MIN_FIXED_SECONDS)

    def seconds(self, records: int) -> float:
        return self.fixed + records * self.record

    def floor(self) -> int:
        """The fewest records a chunk should hold: below it, the fixed cost is more than
        ``FIXED_SHARE`` of the chunk's time."""
        return max(1, math.ceil(self.fixed * (1 - FIXED_SHARE) / FIXED_SHARE / self.record))


class CostEstimate:
    """The running estimate of one service's :class:`Costs`, from its chunks as they finish.

    It starts from what the store kept of earlier batches (``prior``), which counts as one
    chunk's worth of evidence, and follows the new chunks from there.
    """

    def __init__(self, prior: Costs | None = None) -> None:
        # Decayed sums over chunks of (1, n, t, n*n, n*t): n records, t seconds running them.
        self._w = self._n = self._t = self._nn = self._nt = 0.0
        self._chunks: deque[float] = deque(maxlen=CHUNK_WINDOW)
        self.sure = prior is not None  # what the store kept was sure when it was kept
        self.probes = 0  # probes handed out so far
        # The least time seen running a chunk's records: no chunk's fixed part is more.
        self._least = math.inf
        # The least time a record took in any chunk (its chunk's time over its records): no
        # record costs more, sure or not.
        self._record_bound = math.inf
        if prior is not None:
            self._chunks.append(prior.chunk)
            self._least = prior.call if prior.call > 0 else math.inf
            # Two pseudo-chunks on the prior's line, a decade apart: its call cost and its cost
            # per record, as one chunk's worth of weight.
            for n in (1_000.0, 10_000.0):
                self._add(n, prior.call + n * prior.record, 0.5)

    def _add(self, n: float, t: float, weight: float = 1.0) -> None:
        self._w += weight
        self._n += weight * n
        self._t += weight * t
        self._nn += weight * n * n
        self._nt += weight * n * t

    def observe(self, records: int, run_seconds: float, chunk_seconds: float) -> None:
        """A chunk of ``records`` records finished: its worker ran them for ``run_seconds``, and
        ``chunk_seconds`` more went around them."""
        if records <= 0:
            return
        known = self.costs()
        if known is not None and CONTRADICTED * run_seconds < known.call + records * known.record:
            self._w = self._n = self._t = self._nn = self._nt = 0.0
            self._least = math.inf
            self._record_bound = math.inf
            self.sure = False
        for name in ("_w", "_n", "_t", "_nn", "_nt"):
            setattr(self, name, getattr(self, name) * DECAY)
        self._add(float(records), max(run_seconds, 0.0))
        self._least = min(self._least, max(run_seconds, 0.0))
        self._record_bound = min(self._record_bound, max(run_seconds, 0.0) / records)
        self.sure = self.sure or run_seconds >= SURE_SECONDS
        self._chunks.append(max(chunk_seconds, 0.0))

    def costs(self) -> Costs | None:
        """The estimate, or None while it is not sure (see the module's docstring)."""
        if not self.sure or self._w <= 0 or not self._chunks or self._n <= 0:
            return None
        # Chunks of one size: no line to fit, so all of their time is taken as the records'.
        call, record = 0.0, self._t / self._n
        mean_n, mean_t = self._n / self._w, self._t / self._w
        spread = self._nn / self._w - mean_n * mean_n
        if spread > (0.05 * mean_n) ** 2:  # chunks of different sizes: fit a line
            slope = (self._nt / self._w - mean_n * mean_t) / spread
            intercept = mean_t - slope * mean_n
            # The fixed part is kept only where it shows: a good share of the quickest chunk's
            # time (then it decides how small a chunk may be), and no more than all of it. A
            # smaller intercept is the noise of chunks' times, not a cost.
            if slope > 0 and 0.25 * self._least <= intercept:
                call = min(intercept, self._least)
                record = max((self._nt - call * self._n) / self._nn, 0.0)
        # A service so fast that no time shows still costs something per record.
        return Costs(statistics.median(self._chunks), call, max(record, 1e-9))


    def bound(self) -> Costs | None:
        """What the chunks seen so far prove while the estimate is not sure: costs per record
        no higher than this, and the chunks' fixed cost. None before a chunk finished."""
        if self._record_bound == math.inf or not self._chunks:
            return None
        return Costs(statistics.median(self._chunks), 0.0, max(self._record_bound, 1e-9))


def range_size(
    remaining: int,
    slots: int,
    costs: Costs | None,
    busy_seconds: float = 0.0,
    *,
    mode: str = "row",
    target_seconds: float = 0.5,
    maximum: int = 1_000_000,
    probes: int = 0,
    bound: Costs | None = None,
) -> int:
    """How many of a batch's ``remaining`` unclaimed records the next chunk takes.

    ``slots`` is how many workers the batch may use at once; ``busy_seconds`` the estimated
    seconds left on its chunks running now; ``costs`` the service's estimate (None: not known
    yet, so a probe, larger after each of the ``probes`` handed out before, and no smaller than
    the ``bound`` of the estimate allows: a service too quick to measure must not be cut into a
    tail of ever smaller probes). ``target_seconds``
    bounds a chunk's time while much work is left (a chunk is also the unit of preemption and
    retry); ``maximum`` bounds its records (memory).
    """
    if remaining <= 0:
        return 0
    slots = max(slots, 1)
    if costs is None:
        probe = PROBE_RECORDS.get(mode, PROBE_RECORDS["row"]) * PROBE_GROWTH ** min(probes, 12)
        size = max(1, min(remaining, probe, maximum, math.ceil(remaining / (2 * slots))))
        if bound is None:
            return size
        # Sized as if each record cost its bound: a range no longer than that says, in time.
        at_bound = range_size(
            remaining,
            slots,
            bound,
            busy_seconds,
            mode=mode,
            target_seconds=target_seconds,
            maximum=maximum,
        )
        return max(size, at_bound)
    record = costs.record
    floor = costs.floor()
    per_slot = (busy_seconds + remaining * record) / slots  # seconds of work left per slot
    if per_slot <= 2 * floor * record:
        # The last round: each slot its equal share, so they finish together.
        size = math.ceil(per_slot / record - 1e-9)
    else:
        # Half of a slot's share: the other half is left to even out the finish.
        size = min(math.ceil(per_slot / (2 * record)), math.ceil(target_seconds / record))
    # At least the floor, unless that would leave slots idle: the floor keeps chunks from
    # being cut finer than the slots need, not the slots from sharing a small batch. Sharing
    # pays only while a share's records take a good part (half) of its fixed cost, which the
    # scheduler spends on each chunk in turn: below that, a tail whose chunks end before the
    # next is cut would be halved again and again, down to single records.
    least = min(floor, max(math.ceil(remaining / slots), math.ceil(costs.fixed / (2 * record))))
    size = min(max(size, least), maximum, remaining)
    if remaining - size < max(least // 2, 1) and remaining <= maximum:
        size = remaining  # not a sliver left for a chunk of its own
    return max(size, 1)
