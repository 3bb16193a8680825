"""Cron expressions in a time zone: when a schedule's runs fall due.

A run is due at a wall-clock time of the schedule's time zone, so `0 9 * * *` in
Europe/Paris runs at 09:00 in Paris in winter and in summer (08:00 and 07:00 UTC). Across
a change of the clocks:

- a time that the spring change skips (02:30 on the last Sunday of March in Paris) runs
  at the first minute after the gap (03:00), as cron does;
- a time that the autumn change repeats runs once, at its first occurrence, unless the
  expression runs every hour (`0 * * * *`, `*/15 * * * *`): those follow the real hours.
"""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter
from django.core.exceptions import ValidationError

ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
FORMAT = "five fields (minute hour day-of-month month day-of-week, e.g. '*/15 * * * *') or " + ", ".join(ALIASES)


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a cron expression this project runs, or None."""
    if not isinstance(expression, str) or not expression.strip():
        return f"a cron expression is required: {FORMAT}"
    text = expression.strip()
    # croniter also takes a seconds and a year field; a schedule runs at most once a minute.
    if not text.startswith("@") and len(text.split()) != 5:
        return f"{expression!r} has {len(text.split())} fields; a cron expression has {FORMAT}"
    if text.startswith("@") and text.lower() not in ALIASES:
        return f"{expression!r} is not one of {', '.join(ALIASES)}"
    try:
        runs = croniter(text, datetime(2000, 1, 1, tzinfo=UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        return f"{expression!r} is not a valid cron expression: {exc}"
    try:
        runs.get_next(datetime)
    except CroniterBadDateError:  # no run could ever be computed, nor the schedule saved
        return f"{expression!r} never falls due: no month has the day it names (such as 30 February or 31 April)"
    return None


def timezone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone (such as Europe/Paris or UTC), or None."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return f"{name!r} is not a known time zone: give an IANA name such as UTC or Europe/Paris"
    return None


def validate_cron(expression: str) -> None:
    if problem := cron_problem(expression):
        raise ValidationError(problem)


def validate_timezone(name: str) -> None:
    if problem := timezone_problem(name):
        raise ValidationError(problem)


def _every_hour(expression: str) -> bool:
    return croniter(expression.strip()).expanded[1] == ["*"]


def _repeated(moment: datetime, every_hour: bool) -> bool:
    """Whether `moment` is the second occurrence of a wall-clock time the autumn change
    repeats, which runs only for expressions that follow the real hours."""
    if every_hour:
        return False
    # croniter's `fold` is not to be trusted (its get_prev sets it even in UTC): ask the zone.
    local = moment.astimezone(UTC).astimezone(moment.tzinfo)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _first_run(expression: str, zone: str, start: datetime, *, forward: bool) -> datetime:
    """The first run strictly after (or, not `forward`, before) `start`, in UTC."""
    every_hour = _every_hour(expression)
    runs = croniter(expression.strip(), start.astimezone(ZoneInfo(zone)))
    step = runs.get_next if forward else runs.get_prev
    moment = step(datetime)
    while _repeated(moment, every_hour):
        moment = step(datetime)
    return moment.astimezone(UTC)


def next_run(expression: str, zone: str, after: datetime) -> datetime:
    """The first time strictly after `after` that the expression falls due in `zone` (UTC)."""
    return _first_run(expression, zone, after, forward=True)


def latest_run(expression: str, zone: str, until: datetime) -> datetime:
    """The last time at or before `until` that the expression fell due in `zone` (UTC)."""
    before = _first_run(expression, zone, until, forward=False)
    following = next_run(expression, zone, before)
    return following if following <= until else before
