"""Batch task statuses: parsing what a caller gives, and the status of each batch state."""

from __future__ import annotations

import pytest

from batchserve import BatchState, BatchTaskStatus
from batchserve.client._taskinfo import errors_info, parse_status, states_for_filter, task_info
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
        "enabling": BatchTaskStatus.PENDING,
        "completed": BatchTaskStatus.COMPLETED,
        "failed": BatchTaskStatus.FAILED,
        "cancelling": BatchTaskStatus.CANCELED,
        "cancelled": BatchTaskStatus.CANCELED,
        "deleting": BatchTaskStatus.CANCELED,
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
        ("pending", ["pending", "paused", "enabling"]),
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


@pytest.mark.parametrize("name", ["canceled", "cancelled", "CANCELED", "Cancelled", " cancelled "])
def test_both_spellings_of_cancelled_parse_as_the_same_status(name: str):
    assert parse_status(name) is BatchTaskStatus.CANCELED
    assert sorted(states_for_filter(name) or []) == ["cancelled", "cancelling"]


def test_cancelled_is_an_alias_of_canceled_not_a_status_of_its_own():
    assert BatchTaskStatus.CANCELLED is BatchTaskStatus.CANCELED
    assert BatchTaskStatus["CANCELLED"] is BatchTaskStatus.CANCELED
    assert len([s for s in BatchTaskStatus if s.value == 6]) == 1


def test_a_state_spelled_canceled_has_the_cancelled_status():
    assert BatchTaskStatus.of_state("canceled") is BatchTaskStatus.CANCELED


def test_a_bad_name_lists_both_spellings_of_cancelled():
    with pytest.raises(ValueError, match=r"CANCELED \(or CANCELLED\)"):
        parse_status("stopped")


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (BatchTaskStatus.CREATED, "running"),
        (BatchTaskStatus.PENDING, "running"),
        (BatchTaskStatus.IN_PROGRESS, "running"),
        (BatchTaskStatus.COMPLETED, "success"),
        (BatchTaskStatus.FAILED, "failed"),
        (BatchTaskStatus.CANCELED, "failed"),
        (BatchTaskStatus.UNKNOWN, "unknown"),
        (BatchTaskStatus.STATUS_UNSPECIFIED, "unknown"),
    ],
)
def test_status_name_summarises_the_status_as_the_task_api_does(status: BatchTaskStatus, name: str):
    assert status.status_name == name


def describe(state: str, **fields: object) -> dict[str, object]:
    return {
        "id": "b/1",
        "service": {"name": "mtService", "version": "v1.0.0"},
        "state": state,
        "metadata": {},
        **fields,
    }


def test_task_info_names_the_model_as_service_colon_version_and_is_its_own_operation():
    info = task_info(describe("running"), errors_info(None, []), "http://host:8000/")
    assert info.model_uri == "mtService:v1.0.0"
    assert info.operation_id == info.task_id == "b/1"


def test_task_info_locates_the_batch_and_the_results_of_a_completed_batch():
    info = task_info(describe("completed"), errors_info(None, []), "http://host:8000")
    assert info.source_dataset_id == "http://host:8000/v1/batches/b%2F1/records"
    assert info.result_dataset_id == "http://host:8000/v1/batches/b%2F1/results"


@pytest.mark.parametrize("state", ["created", "running", "failed", "cancelled"])
def test_a_batch_not_completed_has_no_result_dataset(state: str):
    info = task_info(describe(state), errors_info(None, []), "http://host:8000")
    assert info.result_dataset_id is None
    assert info.source_dataset_id == "http://host:8000/v1/batches/b%2F1/records"
