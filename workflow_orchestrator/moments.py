"""One way to show a moment everywhere in the console: how long ago (or how soon) in words,
with the absolute time and its time zone in the element's title and in text that screen
readers read (a title alone is read by few of them, and never on a phone)."""

from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

# (seconds in the unit, its name): the largest unit that fits is named, and the next one below it.
UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def absolute(moment: datetime) -> str:
    """`2026-12-05 16:40:02 UTC`: in the site's time zone (or the one activated), named."""
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def span_text(seconds: float) -> str:
    """A span of time in at most two units: `12 s`, `3 min 5 s`, `2 h 5 min`, `3 d 4 h`."""
    seconds = int(abs(seconds))
    for index, (size, name) in enumerate(UNITS):
        if seconds >= size or size == 1:
            text = f"{seconds // size} {name}"
            if index + 1 < len(UNITS) and (rest := seconds % size // UNITS[index + 1][0]):
                text += f" {rest} {UNITS[index + 1][1]}"
            return text
    return "0 s"  # pragma: no cover (the last unit always fits)


def relative(moment: datetime, now: datetime | None = None) -> str:
    """`3 min ago`, `in 2 h 5 min`, `just now` (within a second)."""
    seconds = ((now or timezone.now()) - moment).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    if abs(seconds) >= 60:  # past a minute, its seconds are noise: "3 min ago"
        seconds = int(seconds / 60) * 60
    return f"{span_text(seconds)} ago" if seconds > 0 else f"in {span_text(seconds)}"


def moment_html(moment: datetime | None, now: datetime | None = None) -> SafeString | str:
    """A <time> element: relative in words, absolute with its zone in the title and in
    visually hidden text; `—` for no moment."""
    if moment is None:
        return "—"
    exact = absolute(moment)
    return format_html(
        '<time class="moment" datetime="{}" title="{}">{}<span class="moment-absolute"> ({})</span></time>',
        moment.isoformat(timespec="seconds"),
        exact,
        relative(moment, now),
        exact,
    )
