"""Cron expressions in a time zone: when a schedule's runs fall due.

A run is due at a wall-clock time of the schedule's time zone, so `0 9 * * *` in
Europe/Paris runs at 09:00 in Paris in winter and in summer (08:00 and 07:00 UTC). Across
a change of the clocks:

- a time that the spring change skips (02:30 on the last Sunday of March in Paris) runs
  at the first minute after the gap (03:00), as cron does;
- a time that the autumn change repeats runs once, at its first occurrence, unless the
  expression runs every hour (`0 * * * *`, `*/15 * * * *`): those follow the real hours.
"""

import re
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


def next_runs(expression: str, zone: str, after: datetime, count: int) -> list[datetime]:
    """The next `count` times the expression falls due in `zone` after `after`, in that zone."""
    found = []
    for _ in range(count):
        after = next_run(expression, zone, after)
        found.append(after.astimezone(ZoneInfo(zone)))
    return found


def local_time_label(moment: datetime | None, zone: str) -> str:
    """`moment` as a wall-clock time of `zone`, the zone named: 2026-12-06 02:30 Europe/Paris."""
    if moment is None:
        return "—"
    return f"{moment.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} {zone}"


# --- The expression read out in words ------------------------------------------------------

DAY_NAMES = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTH_NAMES = ["", "January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December"]  # fmt: skip
# croniter takes English abbreviations too (mon-fri, jan).
DAY_NUMBERS = {name[:3].lower(): number for number, name in enumerate(DAY_NAMES[:7])}
MONTH_NUMBERS = {name[:3].lower(): number for number, name in enumerate(MONTH_NAMES) if name}
ALIAS_WORDS = {
    "@yearly": "At 00:00 on 1 January",
    "@annually": "At 00:00 on 1 January",
    "@monthly": "At 00:00 on day 1 of the month",
    "@weekly": "At 00:00 on Sunday",
    "@daily": "At 00:00 every day",
    "@midnight": "At 00:00 every day",
    "@hourly": "At minute 0 past every hour",
}


def _joined(words: list[str]) -> str:
    """a; a and b; a, b and c."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _value(token: str, numbers: dict | None = None) -> int:
    return int(token) if token.isdigit() else (numbers or {})[token.lower()]


def _singles(field: str, numbers: dict | None = None) -> list[int] | None:
    """The values of a field that lists single values (`5`, `1,15`), or None."""
    items = field.split(",")
    if not all(item.isdigit() or item.lower() in (numbers or {}) for item in items):
        return None
    return [_value(item, numbers) for item in items]


def _item_words(item: str, name, numbers: dict | None, unit: str) -> str:
    """One item of a list: 5, 1-5, */2 or 1-10/2, each value written by `name`."""
    span, _, step = item.partition("/")
    if span == "*":
        bounds = ""
    elif "-" in span:
        low, high = span.split("-", 1)
        bounds = f"{name(_value(low, numbers))} to {name(_value(high, numbers))}"
    else:
        bounds = name(_value(span, numbers))
    if not step:
        return bounds
    every = f"every {_ordinal(int(step))} {unit}" if int(step) > 1 else f"every {unit}"
    if not bounds:
        return every
    return f"{every} from {bounds}" if "-" in span else f"{every} from {bounds} on"


def _field_words(field: str, name=str, numbers: dict | None = None, unit: str = "") -> str:
    return _joined([_item_words(item, name, numbers, unit) for item in field.split(",")])


def _hours_scope(hours: str) -> str:
    """Where a frequency within the hour applies: `9-17` -> from 09:00 to 17:59."""
    if re.fullmatch(r"\d+(-\d+)?", hours):
        low, _, high = hours.partition("-")
        return f"from {int(low):02}:00 to {int(high or low):02}:59"
    return f"during {_field_words(hours, unit='hour')} hours" if "/" in hours else f"during hours {_field_words(hours)}"


def _time_words(minutes: str, hours: str) -> tuple[str, bool]:
    """The minute and hour fields in words, and whether they name times of day."""
    minute_list, hour_list = _singles(minutes), _singles(hours)
    if minute_list and hour_list and len(minute_list) * len(hour_list) <= 6:
        times = [f"{hour:02}:{minute:02}" for hour in hour_list for minute in minute_list]
        return f"At {_joined(times)}", True
    if minutes == "*" or re.fullmatch(r"\*/\d+", minutes):
        step = int(minutes[2:] or 1) if minutes != "*" else 1
        frequency = "Every minute" if step == 1 else f"Every {step} minutes"
        return (frequency if hours == "*" else f"{frequency} {_hours_scope(hours)}"), False
    minute_words = _field_words(minutes, unit="minute")
    if "/" in minutes:
        minute_part = f"At {minute_words}"
    else:
        minute_part = (
            f"At minute {minute_words}" if minute_list and len(minute_list) == 1 else f"At minutes {minute_words}"
        )
    if hours == "*":
        return f"{minute_part} past every hour", False
    if re.fullmatch(r"\d+-\d+", hours):
        return f"{minute_part} past every hour from {_field_words(hours)}", False
    if "/" in hours and "," not in hours:
        return f"{minute_part} past {_field_words(hours, unit='hour')}", False
    return f"{minute_part} past hours {_field_words(hours)}", False


def _day_words(days: str, months: str, weekdays: str, at_times: bool) -> str:
    weekday_words = _field_words(weekdays, lambda day: DAY_NAMES[day], DAY_NUMBERS, "day of the week")
    if days == "L":
        day_words = "on the last day of the month"
    elif days != "*":
        singles = _singles(days)
        plural = "" if "/" in days else "day " if singles and len(singles) == 1 else "days "
        day_words = f"on {plural}{_field_words(days, unit='day')} of the month"
    if days != "*" and weekdays != "*":  # cron runs on either
        words = f" {day_words} or on {weekday_words}"
    elif days != "*":
        words = f" {day_words}"
    elif weekdays != "*":
        words = f" on {weekday_words}"
    else:
        words = " every day" if at_times else ""
    if months != "*":
        words += f" in {_field_words(months, lambda month: MONTH_NAMES[month], MONTH_NUMBERS, 'month')}"
    return words


def cron_in_words(expression: str) -> str:
    """The expression read out in words: `30 2 * * *` -> "At 02:30 every day",
    `*/15 * * * *` -> "Every 15 minutes", `0 9 * * 1-5` -> "At 09:00 on Monday to Friday".
    Hours are the schedule's own time zone's. What it cannot read (an `L` or `#` beyond the
    simple cases) it gives back as the expression itself."""
    text = " ".join(expression.split())
    if text.lower() in ALIAS_WORDS:
        return ALIAS_WORDS[text.lower()]
    try:
        minutes, hours, days, months, weekdays = text.split(" ")
        times, at_times = _time_words(minutes, hours)
        return times + _day_words(days, months, weekdays, at_times)
    except (ValueError, KeyError, IndexError, TypeError):
        return f"cron {text}"
