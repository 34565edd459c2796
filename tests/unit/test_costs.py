"""What chunks cost and how many records each takes (batchserve.engine.costs)."""

from __future__ import annotations

import heapq

import pytest

from batchserve.engine.costs import (
    FIXED_SHARE,
    PROBE_GROWTH,
    PROBE_RECORDS,
    SURE_SECONDS,
    CostEstimate,
    Costs,
    range_size,
)

# A trivial service on the reference machine: 4 ms around each chunk, 0.3 µs a record.
FAST = Costs(chunk=0.004, call=0.0, record=3e-7)
# A CPU-bound one: 10 ms a record.
SLOW = Costs(chunk=0.004, call=0.0, record=0.01)


# --- the estimate ------------------------------------------------------------------------------


def test_nothing_is_known_before_a_chunk_finished():
    assert CostEstimate().costs() is None


def test_chunks_too_quick_to_measure_leave_the_estimate_unsure():
    estimate = CostEstimate()
    # 100 records: 30 µs of records, 4 ms around them: the fixed costs drown the records.
    estimate.observe(100, run_seconds=3e-5, chunk_seconds=0.004)
    estimate.observe(800, run_seconds=2.4e-4, chunk_seconds=0.004)
    assert estimate.costs() is None
    estimate.observe(51_200, run_seconds=SURE_SECONDS * 1.5, chunk_seconds=0.004)
    costs = estimate.costs()
    assert costs is not None
    assert costs.record == pytest.approx(SURE_SECONDS * 1.5 / 51_200, rel=0.2)
    assert costs.chunk == pytest.approx(0.004)


def test_a_fixed_cost_per_call_is_told_apart_by_chunks_of_different_sizes():
    estimate = CostEstimate()
    call, record = 0.002, 5e-8  # a model's own set-up per call, and its cost per row
    for n in (1_000, 200_000, 50_000, 500_000):
        estimate.observe(n, call + n * record, 0.004)
    costs = estimate.costs()
    assert costs is not None
    assert costs.call == pytest.approx(call, rel=0.01)
    assert costs.record == pytest.approx(record, rel=0.01)


def test_a_noisy_small_chunk_cannot_make_the_fixed_part_exceed_the_quickest_chunk():
    estimate = CostEstimate()
    estimate.observe(1_000, 0.001, 0.004)
    estimate.observe(1_200, 0.050, 0.004)  # held up by something else
    estimate.observe(500_000, 0.15, 0.004)
    costs = estimate.costs()
    assert costs is not None
    assert costs.call <= 0.001


def test_the_noise_in_the_times_of_like_chunks_is_not_taken_for_a_fixed_part():
    estimate = CostEstimate()
    # 10 ms records on a busy machine: times vary by a tenth, as they do.
    for n, seconds in [(34, 0.40), (34, 0.44), (33, 0.41), (61, 0.70), (32, 0.43), (36, 0.42)]:
        estimate.observe(n, seconds, 0.004)
    costs = estimate.costs()
    assert costs is not None
    assert costs.call == 0
    assert costs.record == pytest.approx(0.012, rel=0.1)


def test_the_fixed_cost_per_chunk_is_the_median_of_the_last_chunks():
    estimate = CostEstimate()
    for seconds in (0.004, 0.005, 0.004, 0.060, 0.004):  # one chunk waited for the store
        estimate.observe(100_000, 0.03, seconds)
    costs = estimate.costs()
    assert costs is not None
    assert costs.chunk == pytest.approx(0.004)


def test_what_earlier_batches_measured_counts_as_one_chunk_and_the_new_chunks_take_over():
    estimate = CostEstimate(prior=Costs(chunk=0.004, call=0.0, record=1e-4))  # wrongly slow
    for _ in range(4):
        estimate.observe(100_000, 100_000 * 3e-7, 0.004)
    costs = estimate.costs()
    assert costs is not None
    assert costs.record < 3e-6  # within a few chunks, nearer the truth than the prior


def test_a_chunk_far_quicker_than_the_estimate_makes_it_start_again():
    # A 25-record chunk held up for 10 ms looked sure: 400 µs a record.
    estimate = CostEstimate()
    estimate.observe(25, 0.010, 0.004)
    assert estimate.costs() is not None
    # The next chunk's 1,250 records ran in 3 ms, not the half second the estimate gave them.
    estimate.observe(1_250, 0.003, 0.004)
    assert estimate.costs() is None  # not sure yet: the next chunks probe
    estimate.observe(512_000, 0.15, 0.004)
    costs = estimate.costs()
    assert costs is not None
    assert costs.record == pytest.approx(0.15 / 512_000, rel=0.2)


def test_a_fixed_cost_measured_as_nothing_still_keeps_chunks_large():
    # The time around chunks came out near nothing (a busy machine): a trivial service's
    # 300,000 records must still not be cut into ever smaller chunks.
    costs = Costs(chunk=0.0, call=0.0, record=6e-7)
    assert costs.floor() >= 10_000
    # The last 30,000 are not halved again and again.
    assert range_size(30_000, 2, costs, busy_seconds=0.01) >= 15_000


def test_a_chunk_slower_than_the_estimate_only_moves_it():
    estimate = CostEstimate(prior=FAST)
    estimate.observe(100_000, 100_000 * FAST.record * 10, 0.004)  # held up, or truly slower
    costs = estimate.costs()
    assert costs is not None
    assert FAST.record < costs.record < 10 * FAST.record


# --- the size of the next range ------------------------------------------------------------------


def test_the_floor_keeps_the_fixed_cost_within_its_share_of_a_chunk():
    n = FAST.floor()
    assert FAST.fixed / FAST.seconds(n) <= FIXED_SHARE + 1e-9
    assert FAST.fixed / FAST.seconds(n - 1) > FIXED_SHARE
    assert SLOW.floor() == 8  # 4 ms is 5% of 80 ms


def test_an_unknown_service_gets_growing_probes_bounded_by_the_batch():
    assert range_size(1_000_000, 2, None) == PROBE_RECORDS["row"]
    assert range_size(1_000_000, 2, None, mode="vectorized") == PROBE_RECORDS["vectorized"]
    assert range_size(1_000_000, 2, None, probes=2) == PROBE_RECORDS["row"] * PROBE_GROWTH**2
    assert range_size(1_000_000, 2, None, probes=9) == 250_000  # a quarter of the batch at most
    assert range_size(40, 2, None) == 10


def test_a_service_too_quick_to_measure_is_not_cut_into_a_tail_of_ever_smaller_probes():
    # A vectorized service: 75,000 records in 4 ms, never the SURE_SECONDS that make an estimate
    # sure. After a small batch's probes, the next probe is a quarter of a big batch.
    estimate = CostEstimate()
    estimate.probes = 5
    left, sizes = 300_000, []
    while left:
        n = range_size(
            left, 2, None, mode="vectorized", probes=estimate.probes, bound=estimate.bound()
        )
        sizes.append(n)
        left -= n
        estimate.probes += 1
        estimate.observe(n, run_seconds=n * 5e-8, chunk_seconds=0.005)
    assert estimate.costs() is None  # never sure
    assert len(sizes) <= 4, sizes
    assert sizes[0] == 75_000


def test_the_bound_of_an_unsure_estimate_is_the_least_time_a_record_took():
    estimate = CostEstimate()
    assert estimate.bound() is None
    estimate.observe(100, run_seconds=4e-4, chunk_seconds=0.004)
    estimate.observe(800, run_seconds=8e-4, chunk_seconds=0.006)
    bound = estimate.bound()
    assert bound is not None
    assert bound.record == pytest.approx(1e-6)
    assert bound.chunk == pytest.approx(0.005)


def test_a_range_is_never_below_the_floor_while_there_is_work_for_every_slot():
    for slots in (2, 8, 64):
        assert range_size(100_000_000, slots, FAST) >= FAST.floor()


def test_the_last_round_gives_each_slot_an_equal_share():
    # 2 slots, nothing running, a million 0.3 µs records: two equal halves finish together.
    assert range_size(1_000_000, 2, FAST) == 500_000
    # One slot still has 0.1 s to go: the free one takes enough that both end together.
    assert range_size(20, 2, SLOW, busy_seconds=0.1) == 15  # 0.15 s; the other 0.1 + 0.05 s


def test_a_batch_too_small_for_the_floor_still_gets_one_chunk_a_slot():
    assert range_size(300_000, 2, FAST) == 150_000  # below the floor, but both slots work


def test_a_tail_claimed_one_chunk_at_a_time_is_not_halved_down_to_single_records():
    # Chunks so quick that each ends before the next is cut: nothing is ever busy.
    left, sizes = 27_160, []
    while left:
        sizes.append(range_size(left, 2, FAST))
        left -= sizes[-1]
    assert len(sizes) <= 3, sizes
    # Shares whose records take less than half the chunk's fixed cost are not cut at all.
    assert range_size(6_000, 2, FAST) == 6_000  # 0.9 ms of records against 4 ms


def test_while_much_is_left_a_range_is_half_a_slot_s_share_within_the_target_time():
    size = range_size(400, 2, SLOW, target_seconds=10.0)
    assert size == 100  # half of 200 records a slot
    assert range_size(400, 2, SLOW, target_seconds=0.5) == 50  # 0.5 s of 10 ms records


def test_the_maximum_bounds_a_range():
    assert range_size(50_000_000, 2, FAST, maximum=1_000_000) == 1_000_000


def test_no_sliver_is_left_for_a_chunk_of_its_own():
    floor = SLOW.floor()
    size = range_size(floor + 2, 1, SLOW, target_seconds=floor * SLOW.record)
    assert size == floor + 2


# --- history may only make chunks better -------------------------------------------------------


def makespan(records: int, slots: int, true: Costs, estimate: CostEstimate, mode: str) -> float:
    """Run a batch on a model of the scheduler: ``slots`` workers take ranges as they free up,
    each range costing ``true.seconds(n)``; the estimate learns from every finished chunk."""
    free = [(0.0, i) for i in range(slots)]  # (time the slot frees up, slot)
    running: dict[int, tuple[float, int]] = {}  # slot -> (end, records)
    left = records
    end = 0.0
    while left:
        now, slot = heapq.heappop(free)
        if slot in running:
            _, n = running.pop(slot)
            estimate.observe(n, true.call + n * true.record, true.chunk)
        costs = estimate.costs()
        busy = sum(max(0.0, e - now) for e, _ in running.values())
        n = range_size(
            left,
            slots,
            costs,
            busy,
            mode=mode,
            probes=estimate.probes,
            bound=estimate.bound() if costs is None else None,
        )
        if costs is None:
            estimate.probes += 1
        left -= n
        done = now + true.seconds(n)
        running[slot] = (done, n)
        end = max(end, done)
        heapq.heappush(free, (done, slot))
    return end


@pytest.mark.parametrize("mode", ["row", "vectorized"])
@pytest.mark.parametrize(
    "true",
    [FAST, SLOW, Costs(chunk=0.004, call=0.003, record=5e-8)],
    ids=["fast", "cpu-bound", "model"],
)
def test_a_small_batch_first_leaves_the_next_big_one_no_more_than_ten_percent_slower(mode, true):
    records = 1_000_000 if true.record < 1e-4 else 400
    cold = makespan(records, 2, true, CostEstimate(), mode)
    # What a 100-record batch run first leaves behind, as the store keeps it: nothing when its
    # chunks were too quick to measure.
    small = CostEstimate()
    makespan(100, 2, true, small, mode)
    kept = small.costs()
    after = makespan(records, 2, true, CostEstimate(prior=kept), mode)
    assert after <= 1.1 * cold


@pytest.mark.parametrize("true", [FAST, SLOW], ids=["fast", "cpu-bound"])
def test_probing_costs_a_cold_batch_little(true):
    records = 1_000_000 if true is FAST else 400
    cold = makespan(records, 2, true, CostEstimate(), "row")
    known = makespan(records, 2, true, CostEstimate(prior=true), "row")
    assert cold <= 1.15 * known


def test_a_failed_batch_of_quick_failures_leaves_the_next_batch_balanced():
    # Every record of the earlier batch failed at once: it looked a thousand times cheaper.
    fooled = CostEstimate(prior=Costs(chunk=0.004, call=0.0, record=SLOW.record / 1000))
    after = makespan(400, 2, SLOW, fooled, "row")
    ideal = 400 * SLOW.record / 2
    assert after <= 1.1 * ideal
