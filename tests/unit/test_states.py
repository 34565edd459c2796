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
        "enabling",
        "cancelling",
        "cancelled",
        "completed",
        "failed",
        "deleting",
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
    assert len(list(BatchState)) == 11


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
def test_final_batch_states_have_no_way_out_but_deletion(state):
    assert (not BATCH_TRANSITIONS[state] - {BatchState.DELETING}) == (
        state.is_final or state is BatchState.DELETING
    )


def test_any_batch_may_be_deleted_and_a_deleting_one_goes_nowhere():
    assert all(
        BatchState.DELETING in nxt for s, nxt in BATCH_TRANSITIONS.items() if s != "deleting"
    )
    assert BATCH_TRANSITIONS[BatchState.DELETING] == frozenset()


def test_an_enabling_batch_becomes_pending_and_a_paused_one_is_enabled_through_enabling():
    assert BatchState.PENDING not in BATCH_TRANSITIONS[BatchState.PAUSED]
    assert check_batch_transition("paused", "enabling") is BatchState.ENABLING
    assert check_batch_transition("enabling", "pending") is BatchState.PENDING


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
    ends = FINAL_BATCH_STATES | {BatchState.DELETING}  # a deleting batch is removed
    for _ in range(30):
        assert reachable(state, BATCH_TRANSITIONS) & ends
        if state.is_final or state is BatchState.DELETING:
            break
        state = data.draw(st.sampled_from(sorted(BATCH_TRANSITIONS[state])))


@no_deadline
@given(st.data())
def test_a_walk_of_allowed_moves_is_accepted_step_by_step(data):
    state = BatchState.CREATED
    for _ in range(30):
        if state.is_final or state is BatchState.DELETING:
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


def test_a_refused_move_out_of_a_final_state_says_only_deletion_is_left():
    with pytest.raises(InvalidTransition) as caught:
        check_batch_transition(BatchState.COMPLETED, BatchState.RUNNING)
    assert str(caught.value) == (
        "A batch in state 'completed' cannot become 'running'; from 'completed' it may become: "
        "deleting."
    )
    assert caught.value.current == "completed"
    assert caught.value.wanted == "running"
    with pytest.raises(InvalidTransition, match=r"none \(it is final\)"):
        check_batch_transition(BatchState.DELETING, BatchState.RUNNING)


def test_a_refused_move_lists_the_allowed_states_in_order():
    with pytest.raises(InvalidTransition) as caught:
        check_batch_transition(BatchState.PAUSING, BatchState.RUNNING)
    assert str(caught.value).endswith("it may become: cancelling, deleting, failed, paused.")


def test_a_refused_chunk_move_says_it_is_a_chunk():
    with pytest.raises(InvalidTransition, match=r"^A chunk in state 'succeeded'"):
        check_chunk_transition(ChunkState.SUCCEEDED, ChunkState.PENDING)


def test_a_running_chunk_may_go_back_to_pending_for_a_retry():
    assert check_chunk_transition(ChunkState.RUNNING, ChunkState.PENDING) is ChunkState.PENDING


def test_a_cancelling_batch_can_only_become_cancelled_or_be_deleted():
    assert BATCH_TRANSITIONS[BatchState.CANCELLING] == {BatchState.CANCELLED, BatchState.DELETING}


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


@pytest.mark.parametrize(
    ("state", "spellings"),
    [
        (BatchState.COMPLETED, ["complete", "Complete", "completed", "COMPLETED"]),
        (BatchState.FAILED, ["failed", "Failed"]),
        (BatchState.RUNNING, ["inProgress", "inprogress", "running", "Running"]),
        (BatchState.PAUSING, ["inProgress"]),
        (BatchState.PAUSED, ["inProgress", "paused"]),
        (BatchState.PENDING, ["pending", "Pending"]),
        (BatchState.CANCELLED, ["cancelled", "Cancelled"]),
    ],
)
def test_a_state_equals_its_machine_learning_server_spellings(state, spellings):
    for spelling in spellings:
        assert state == spelling
        assert spelling == state
        assert (state != spelling) is False


@pytest.mark.parametrize(
    ("state", "spelling"),
    [
        # An ML Server spelling that is another state's name stays that state's alone.
        (BatchState.CREATED, "pending"),
        (BatchState.CANCELLED, "failed"),
        (BatchState.CANCELLING, "failed"),
        (BatchState.COMPLETED, "failed"),
        (BatchState.FAILED, "complete"),
        (BatchState.PENDING, "inProgress"),
        (BatchState.RUNNING, "complete"),
    ],
)
def test_a_state_differs_from_other_states_spellings(state, spelling):
    assert state != spelling
    assert (state == spelling) is False


def test_every_machine_learning_server_state_names_a_batchserve_state():
    # ML Server's four states (its Swagger document's enum) each equal some canonical state.
    for spelling in ("pending", "inProgress", "complete", "failed"):
        assert any(state == spelling for state in BatchState), spelling


def test_states_keep_their_canonical_value_hash_and_parsing():
    assert BatchState.COMPLETED.value == "completed"
    assert str(BatchState.COMPLETED) == "completed"
    assert json.dumps({"state": BatchState.COMPLETED}) == '{"state": "completed"}'
    assert BatchState("completed") is BatchState.COMPLETED
    assert BatchState.complete is BatchState.COMPLETED
    assert hash(BatchState.COMPLETED) == hash("completed")
    assert {"completed": 1}[BatchState.COMPLETED] == 1
    assert BatchState.COMPLETED != BatchState.FAILED
    assert BatchState.COMPLETED != 3
    with pytest.raises(ValueError):
        BatchState("complete")
