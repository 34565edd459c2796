"""The dashboard's sort of one page of results, used when a batch is too large to sort whole."""

from __future__ import annotations

from batchserve.server.ui.batches import _sorted


def rows(*values):  # type: ignore[no-untyped-def]
    return [{"index": i, "outputs": {"y": v}} for i, v in enumerate(values)]


def test_a_page_sorts_numbers_by_value_and_records_without_a_value_last_both_ways():
    page = rows(10, None, 2, float("nan"), 30)
    assert [r["index"] for r in _sorted(page, "output:y", False)] == [2, 0, 4, 3, 1]
    assert [r["index"] for r in _sorted(page, "output:y", True)] == [3, 4, 0, 2, 1]


def test_a_column_of_mixed_values_sorts_numbers_before_text():
    page = rows("b", 3, "a", 1)
    assert [r["outputs"]["y"] for r in _sorted(page, "output:y", False)] == [1, 3, "a", "b"]
