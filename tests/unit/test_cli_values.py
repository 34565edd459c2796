"""The option values the command line reads itself: durations, KEY=VALUE pairs, parallel counts."""

from __future__ import annotations

import pytest
import typer

from batchserve.cli.values import Pair, duration, filter_pair, pair, parallel_count


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("45s", 45),
        ("30m", 1800),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2d", 172_800),
        ("1d2h3m4s", 93_784),
        ("PT1H30M", 5400),
        ("pt45s", 45),
        ("P1DT2H", 93_600),
        ("P1W", 604_800),
        ("PT0.5S", 0.5),
    ],
)
def test_a_duration_is_read_as_seconds(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "1h30", "h", "PT", "P1DT", "P1Y", "P1M", "1x", "--5", "1h-30m"]
)
def test_a_text_that_is_not_a_duration_says_how_to_write_one(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="is not a duration: give seconds"):
        duration(text)


@pytest.mark.parametrize("text", ["0", "-5", "0s", "PT0S", "nan", "inf"])
def test_a_duration_must_be_longer_than_nothing(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="longer than 0 seconds"):
        duration(text)


def test_a_pair_splits_at_the_first_equals_sign() -> None:
    assert pair("team=risk") == Pair("team", "risk")
    assert pair("query=a=b") == Pair("query", "a=b")
    assert pair("empty=") == Pair("empty", "")


@pytest.mark.parametrize("text", ["nokey", "=value", " =value", ""])
def test_a_pair_needs_a_key_and_an_equals_sign(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="is not KEY=VALUE"):
        pair(text)


def test_a_filter_key_cannot_hold_a_colon() -> None:
    assert filter_pair("team=a:b") == Pair("team", "a:b")
    with pytest.raises(typer.BadParameter, match="cannot hold ':'"):
        filter_pair("a:b=c")


@pytest.mark.parametrize(("text", "count"), [("1", 1), ("20", 20), ("-1", -1), ("unlimited", -1)])
def test_a_parallel_count_is_at_least_one_or_unlimited(text: str, count: int) -> None:
    assert parallel_count(text) == count


def test_a_default_parallel_count_passes_as_it_is() -> None:
    assert parallel_count(10) == 10  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0", "-2", "many", "1.5"])
def test_another_parallel_count_is_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="is not a parallel count"):
        parallel_count(text)
