"""One attempt of a task, as its `attempts` (a JSON list, oldest first) records it: the one
definition of an entry's keys and of the outcomes an attempt can end with.

The hot path's statements write entries in SQL (a claim appends a running one; an outcome
ends the latest): tests/test_attempts.py checks what they store against this definition.
"""

from datetime import UTC, datetime
from typing import NotRequired, TypedDict

# How an attempt ended; "running" while it runs.
OUTCOMES = {
    "running": "still running",
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "ran past its timeout",
    "lease_expired": "taken back after its worker stopped heartbeating",
    "handed_back": "handed back by a stopping worker",
    "waiting": "its handler waits (a timer, a signal): it runs again when the task wakes",
    "cancelled": "ended after its workflow was cancelled",
}


class AttemptEntry(TypedDict):
    attempt: int  # its number: 1 for the task's first attempt
    worker: str  # host:pid of the worker process that claimed it
    started_at: str  # when it was claimed: a time as time_of reads it
    outcome: str  # a key of OUTCOMES
    finished_at: NotRequired[str]  # once it has ended: a time as time_of reads it
    error: NotRequired[str]  # why it failed, when it did


def started(number: int, worker: str, at: datetime) -> AttemptEntry:
    """A running attempt, claimed `at`."""
    return {"attempt": number, "worker": worker, "started_at": at.isoformat(), "outcome": "running"}


def ended(entry: AttemptEntry, outcome: str, at: datetime, error: str = "") -> AttemptEntry:
    """`entry` ended `at` with `outcome` (and `error`, when it failed)."""
    return {**entry, "outcome": outcome, "finished_at": at.isoformat(), **({"error": error} if error else {})}


def time_of(value) -> datetime | None:
    """A time of an entry, aware: ISO 8601 in UTC, with its offset or (as SQLite's statements
    write it, "2026-01-01 12:00:00.5") without one. None for no time."""
    if not isinstance(value, str):
        return None
    moment = datetime.fromisoformat(value)  # not Django's parse_datetime: a large history parses millions
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
