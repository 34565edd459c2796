"""Option values the command line reads itself: ``KEY=VALUE`` pairs and durations.

Each parser raises :class:`typer.BadParameter`, so a malformed value is reported like any other
bad option (``Invalid value for '--metadata': ...``, exit status 2) before anything is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import typer

from batchserve.client._records import FILE_FORMATS


@dataclass(frozen=True)
class Pair:
    """One ``KEY=VALUE`` of a repeatable option."""

    key: str
    value: str


def pair(text: str) -> Pair:
    """``KEY=VALUE`` (the value may hold ``=`` itself, or be empty)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE; write it like team=risk.")
    return Pair(key, value)


def filter_pair(text: str) -> Pair:
    """``KEY=VALUE`` of a listing filter, whose keys the server reads up to a ``:``."""
    found = pair(text)
    if ":" in found.key:
        raise typer.BadParameter(
            f"{text!r}: a metadata key to filter on cannot hold ':'; batches whose keys do "
            "cannot be filtered on them."
        )
    return found


def unique_keys(
    ctx: typer.Context, param: typer.CallbackParam, pairs: list[Pair] | None
) -> list[Pair] | None:
    """The pairs, or an error for one key given twice with different values: which one was
    meant is not known."""
    seen: dict[str, str] = {}
    for p in pairs or []:
        if seen.get(p.key, p.value) != p.value:
            raise typer.BadParameter(
                f"{p.key!r} is given twice, as {seen[p.key]!r} and {p.value!r}; give it once."
            )
        seen[p.key] = p.value
    return pairs


def mapping(pairs: list[Pair] | None) -> dict[str, str] | None:
    """The pairs as a mapping; None when none were given."""
    return {p.key: p.value for p in pairs} if pairs else None


def parallel_count(text: str) -> int:
    """A parallel count: a whole number of at least 1, or ``-1`` / ``unlimited`` for no limit."""
    text = str(text)  # an option's default reaches the parser as it is: an int
    if text.strip().lower() in ("-1", "unlimited"):
        return -1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise typer.BadParameter(
            f"{text!r} is not a parallel count: give a whole number of at least 1, or -1 "
            "(unlimited) for as many chunks as the workers take."
        )
    return count


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_UNITS = re.compile(rf"(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?", re.IGNORECASE)
# ISO 8601 durations without years and months, whose length in seconds depends on the calendar.
_ISO = re.compile(
    rf"P(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?",
    re.IGNORECASE,
)
_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}


def duration(text: str) -> float:
    """Seconds, from ``90``, ``1.5``, ``1h30m``, ``2d``, ``45s`` or ISO 8601 ``PT1H30M``."""
    compact = "".join(text.split())
    seconds: float | None = None
    try:
        seconds = float(compact)
    except ValueError:
        for regex, units in ((_ISO, "wdhms"), (_UNITS, "dhms")):
            match = regex.fullmatch(compact)
            if match and any(match.groups()) and not compact.upper().endswith("T"):
                seconds = sum(
                    float(n) * _SECONDS[unit]
                    for n, unit in zip(match.groups(), units, strict=True)
                    if n
                )
                break
    if seconds is None:
        raise typer.BadParameter(
            f"{text!r} is not a duration: give seconds (90), units (1h30m, 2d, 45s) or ISO 8601 "
            "(PT1H30M)."
        )
    if not seconds > 0 or seconds == float("inf"):
        raise typer.BadParameter(f"{text!r}: give a duration longer than 0 seconds.")
    return seconds


#: ``--format`` names: the SDK's records file formats, and ``json`` (a list of records).
RECORDS_FORMATS = [suffix.lstrip(".") for suffix in FILE_FORMATS] + ["json"]


def records_format(text: str) -> str:
    name = text.lower().lstrip(".")
    if name not in RECORDS_FORMATS:
        raise typer.BadParameter(f"{text!r} is not one of {', '.join(RECORDS_FORMATS)}.")
    return name
