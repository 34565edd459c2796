"""The batch and chunk state machines in batchserve.states."""

from __future__ import annotations

import json
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.states import (
    BATCH_TRANSITIONS,
    CHUNK_TRANSITIONS,
    FINAL_BATCH_STATES,
    BatchState,
    ChunkState,
    InvalidTransition,
    check_batch_transition,
    check_chunk_transition,
    states_allowing,
)

# Tests assert behaviour, never timings.
no_deadline = settings(deadline=None)


def reachable(start, table):
    seen = {start}
    todo = deque([start])
    while todo:
        for nxt in table[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# --- values and aliases ----------------------------------------------------------------------


def test_batch_states_are_spelled_as_on_the_wire():
    assert [s.value for s in BatchState] == [
        "created",
        "pending",
        "running",
        "pausing",
        "paused",
        "cancelling",
        "cancelled",
        "completed",
        "failed",
    ]


def test_chunk_states_are_spelled_as_on_the_wire():
    assert [s.value for s in ChunkState] == [
        "pending",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]


def test_ml_server_spellings_are_aliases_of_the_canonical_states():
    assert BatchState.complete is BatchState.COMPLETED
    assert BatchState.failed is BatchState.FAILED


def test_aliases_do_not_add_states():
    assert len(list(BatchState)) == 9


def test_a_state_prints_and_formats_as_its_value():
    assert str(BatchState.RUNNING) == "running"
    assert f"{BatchState.PAUSED}" == "paused"
    assert str(ChunkState.SUCCEEDED) == "succeeded"
    assert json.dumps({"state": BatchState.COMPLETED}) == '{"state": "completed"}'


def test_a_state_equals_its_wire_string():
    assert BatchState.CANCELLED == "cancelled"
    assert BatchState("completed") is BatchState.COMPLETED
    assert ChunkState("running") is ChunkState.RUNNING


def test_an_unknown_state_name_is_refused():
    with pytest.raises(ValueError):
        BatchState("complete")  # the alias name, not a value


# --- final and active states -----------------------------------------------------------------


def test_only_cancelled_completed_and_failed_are_final_batch_states():
    assert {s for s in BatchState if s.is_final} == {
        BatchState.CANCELLED,
        BatchState.COMPLETED,
        BatchState.FAILED,
    }
    assert {s for s in BatchState if s.is_final} == FINAL_BATCH_STATES


def test_only_pending_and_running_batches_are_active():
    assert {s for s in BatchState if s.is_active} == {BatchState.PENDING, BatchState.RUNNING}


def test_only_succeeded_failed_and_cancelled_are_final_chunk_states():
    assert {s for s in ChunkState if s.is_final} == {
        ChunkState.SUCCEEDED,
        ChunkState.FAILED,
        ChunkState.CANCELLED,
    }


def test_every_state_has_a_row_in_its_table():
    assert set(BATCH_TRANSITIONS) == set(BatchState)
    assert set(CHUNK_TRANSITIONS) == set(ChunkState)


@no_deadline
@given(st.sampled_from(list(BatchState)))
def test_final_batch_states_have_no_way_out(state):
    assert (not BATCH_TRANSITIONS[state]) == state.is_final


@no_deadline
@given(st.sampled_from(list(ChunkState)))
def test_final_chunk_states_have_no_way_out(state):
    assert (not CHUNK_TRANSITIONS[state]) == state.is_final


@no_deadline
@given(st.sampled_from(list(BatchState)))
def test_no_batch_state_moves_to_itself(state):
    assert state not in BATCH_TRANSITIONS[state]


# --- reachability ----------------------------------------------------------------------------


def test_every_batch_state_is_reachable_from_created():
    assert reachable(BatchState.CREATED, BATCH_TRANSITIONS) == set(BatchState)


def test_every_chunk_state_is_reachable_from_pending():
    assert reachable(ChunkState.PENDING, CHUNK_TRANSITIONS) == set(ChunkState)


def test_nothing_leads_back_to_created():
    assert states_allowing(BatchState.CREATED) == []


@no_deadline
@given(st.data())
def test_any_walk_from_created_can_always_still_finish(data):
    state = BatchState.CREATED
    for _ in range(30):
        assert reachable(state, BATCH_TRANSITIONS) & FINAL_BATCH_STATES
        if state.is_final:
            break
        state = data.draw(st.sampled_from(sorted(BATCH_TRANSITIONS[state])))


@no_deadline
@given(st.data())
def test_a_walk_of_allowed_moves_is_accepted_step_by_step(data):
    state = BatchState.CREATED
    for _ in range(30):
        if state.is_final:
            break
        wanted = data.draw(st.sampled_from(sorted(BATCH_TRANSITIONS[state])))
        assert check_batch_transition(state, wanted) is wanted
        state = wanted


# --- checking a move -------------------------------------------------------------------------


@no_deadline
@given(st.sampled_from(list(BatchState)), st.sampled_from(list(BatchState)))
def test_check_batch_transition_follows_the_table(current, wanted):
    if wanted in BATCH_TRANSITIONS[current]:
        assert check_batch_transition(current, wanted) is wanted
    else:
        with pytest.raises(InvalidTransition):
            check_batch_transition(current, wanted)


@no_deadline
@given(st.sampled_from(list(ChunkState)), st.sampled_from(list(ChunkState)))
def test_check_chunk_transition_follows_the_table(current, wanted):
    if wanted in CHUNK_TRANSITIONS[current]:
        assert check_chunk_transition(current, wanted) is wanted
    else:
        with pytest.raises(InvalidTransition):
            check_chunk_transition(current, wanted)


def test_check_batch_transition_accepts_wire_strings_and_returns_the_enum():
    assert check_batch_transition("created", "pending") is BatchState.PENDING


@no_deadline
@given(st.sampled_from(list(BatchState)), st.sampled_from(list(BatchState)))
def test_a_refused_move_names_every_allowed_state(current, wanted):
    if wanted in BATCH_TRANSITIONS[current]:
        return
    with pytest.raises(InvalidTransition) as caught:
        check_batch_transition(current, wanted)
    message = str(caught.value)
    assert f"'{current.value}'" in message
    assert f"'{wanted.value}'" in message
    _, _, allowed_part = message.partition("it may become:")
    for allowed in BATCH_TRANSITIONS[current]:
        assert allowed.value in allowed_part


def test_a_refused_move_out_of_a_final_state_says_it_is_final():
    with pytest.raises(InvalidTransition) as caught:
        check_batch_transition(BatchState.COMPLETED, BatchState.RUNNING)
    assert str(caught.value) == (
        "A batch in state 'completed' cannot become 'running'; from 'completed' it may become: "
        "none (it is final)."
    )
    assert caught.value.current == "completed"
    assert caught.value.wanted == "running"


def test_a_refused_move_lists_the_allowed_states_in_order():
    with pytest.raises(InvalidTransition) as caught:
        check_batch_transition(BatchState.PAUSING, BatchState.RUNNING)
    assert str(caught.value).endswith("it may become: cancelling, failed, paused.")


def test_a_refused_chunk_move_says_it_is_a_chunk():
    with pytest.raises(InvalidTransition, match=r"^A chunk in state 'succeeded'"):
        check_chunk_transition(ChunkState.SUCCEEDED, ChunkState.PENDING)


def test_a_running_chunk_may_go_back_to_pending_for_a_retry():
    assert check_chunk_transition(ChunkState.RUNNING, ChunkState.PENDING) is ChunkState.PENDING


def test_a_cancelling_batch_can_only_become_cancelled():
    assert BATCH_TRANSITIONS[BatchState.CANCELLING] == {BatchState.CANCELLED}


# --- states_allowing -------------------------------------------------------------------------


@no_deadline
@given(st.sampled_from(list(BatchState)))
def test_states_allowing_lists_exactly_the_states_that_may_move_there(target):
    assert set(states_allowing(target)) == {
        s for s, nxt in BATCH_TRANSITIONS.items() if target in nxt
    }


def test_states_allowing_paused():
    assert states_allowing(BatchState.PAUSED) == [BatchState.PENDING, BatchState.PAUSING]


def test_states_allowing_cancelling_excludes_final_states():
    assert not any(s.is_final for s in states_allowing(BatchState.CANCELLING))
