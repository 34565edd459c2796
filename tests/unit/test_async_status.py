"""Batch task statuses: parsing what a caller gives, and the status of each batch state."""

from __future__ import annotations

import pytest

from batchserve import BatchState, BatchTaskStatus
from batchserve.client._taskinfo import parse_status, states_for_filter
from batchserve.errors import UsageError


def test_the_status_numbers_are_those_of_the_task_api():
    assert {s.name: s.value for s in BatchTaskStatus} == {
        "UNKNOWN": -1,
        "STATUS_UNSPECIFIED": 0,
        "CREATED": 1,
        "PENDING": 2,
        "IN_PROGRESS": 3,
        "COMPLETED": 4,
        "FAILED": 5,
        "CANCELED": 6,
    }


@pytest.mark.parametrize("status", list(BatchTaskStatus))
def test_an_enum_member_parses_as_itself(status: BatchTaskStatus):
    assert parse_status(status) is status


@pytest.mark.parametrize("status", list(BatchTaskStatus))
def test_a_number_parses_as_its_status(status: BatchTaskStatus):
    assert parse_status(int(status)) is status


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("in_progress", BatchTaskStatus.IN_PROGRESS),
        ("IN_PROGRESS", BatchTaskStatus.IN_PROGRESS),
        ("In_Progress", BatchTaskStatus.IN_PROGRESS),
        ("created", BatchTaskStatus.CREATED),
        ("Completed", BatchTaskStatus.COMPLETED),
        (" canceled ", BatchTaskStatus.CANCELED),
        ("fAiLeD", BatchTaskStatus.FAILED),
        ("pending", BatchTaskStatus.PENDING),
    ],
)
def test_a_name_parses_in_any_case(name: str, expected: BatchTaskStatus):
    assert parse_status(name) is expected


@pytest.mark.parametrize("bad", ["running", "in progress", "", "done", "CANCELLED_NOW"])
def test_a_bad_name_raises_value_error_listing_the_statuses(bad: str):
    with pytest.raises(ValueError, match="IN_PROGRESS") as info:
        parse_status(bad)
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize("bad", [7, 42, -2])
def test_a_number_that_is_no_status_raises_value_error(bad: int):
    with pytest.raises(ValueError, match="not the number of a batch task status"):
        parse_status(bad)


@pytest.mark.parametrize("bad", [True, 3.0, None, ["CREATED"]])
def test_other_types_raise_value_error(bad: object):
    with pytest.raises(ValueError):
        parse_status(bad)  # type: ignore[arg-type]


def test_every_batch_state_has_a_known_status():
    expected = {
        "created": BatchTaskStatus.CREATED,
        "pending": BatchTaskStatus.PENDING,
        "paused": BatchTaskStatus.PENDING,
        "running": BatchTaskStatus.IN_PROGRESS,
        "pausing": BatchTaskStatus.IN_PROGRESS,
        "completed": BatchTaskStatus.COMPLETED,
        "failed": BatchTaskStatus.FAILED,
        "cancelling": BatchTaskStatus.CANCELED,
        "cancelled": BatchTaskStatus.CANCELED,
    }
    assert {s.value: BatchTaskStatus.of_state(s) for s in BatchState} == expected


def test_a_state_this_sdk_does_not_know_is_unknown():
    assert BatchTaskStatus.of_state("hibernating") is BatchTaskStatus.UNKNOWN


def test_only_created_pending_and_in_progress_are_running():
    running = {s for s in BatchTaskStatus if s.is_running}
    assert running == {
        BatchTaskStatus.CREATED,
        BatchTaskStatus.PENDING,
        BatchTaskStatus.IN_PROGRESS,
    }


def test_finished_is_succeeded_or_failed_and_cancelled_counts_as_failed():
    assert {s for s in BatchTaskStatus if s.is_succeeded} == {BatchTaskStatus.COMPLETED}
    assert {s for s in BatchTaskStatus if s.is_failed} == {
        BatchTaskStatus.FAILED,
        BatchTaskStatus.CANCELED,
    }
    assert {s for s in BatchTaskStatus if s.is_finished} == {
        BatchTaskStatus.COMPLETED,
        BatchTaskStatus.FAILED,
        BatchTaskStatus.CANCELED,
    }


@pytest.mark.parametrize(
    ("status", "states"),
    [
        (BatchTaskStatus.CREATED, ["created"]),
        ("pending", ["pending", "paused"]),
        (3, ["running", "pausing"]),
        ("COMPLETED", ["completed"]),
        (BatchTaskStatus.FAILED, ["failed"]),
        ("canceled", ["cancelling", "cancelled"]),
    ],
)
def test_a_status_filter_asks_for_the_batch_states_of_that_status(
    status: BatchTaskStatus | int | str, states: list[str]
):
    assert sorted(states_for_filter(status) or []) == sorted(states)


def test_no_filter_and_the_unspecified_status_ask_for_any_state():
    assert states_for_filter(None) is None
    assert states_for_filter(BatchTaskStatus.STATUS_UNSPECIFIED) is None
    assert states_for_filter(0) is None


def test_filtering_by_unknown_is_refused():
    with pytest.raises(ValueError, match="UNKNOWN"):
        states_for_filter(BatchTaskStatus.UNKNOWN)
