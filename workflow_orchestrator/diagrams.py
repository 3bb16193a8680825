"""Pictures for the admin, drawn as inline SVG on the server (no JavaScript, nothing
fetched): the state graph with the path a workflow took, EXECUTE's tasks as a graph of
their dependencies, and a timeline of every attempt."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from .models import ATTEMPT_OUTCOMES, STATE_EDGES, State, Task
from .statements import from_time

# Dark enough that white text on each reaches WCAG AA (4.5:1) in the admin's badges:
# INIT 5.0, the working phases 4.9, COMPLETE 5.3, FAILED 5.5, CANCELLED 5.0.
STATE_COLOURS = {
    State.INIT: "#6b7079",
    State.PREPARE: "#1f6fd1",
    State.EXECUTE: "#1f6fd1",
    State.VALIDATE: "#1f6fd1",
    State.COMPLETE: "#1e7b45",
    State.FAILED: "#c62f2f",
    State.CANCELLED: "#6c6f75",
}
STATUS_COLOURS = {
    Task.Status.PENDING: "#6b7079",
    Task.Status.QUEUED: "#4a6fa5",
    Task.Status.RUNNING: "#1f6fd1",
    Task.Status.WAITING: "#8a5a00",
    Task.Status.SUCCEEDED: "#1e7b45",
    Task.Status.FAILED: "#c62f2f",
    Task.Status.CANCELLED: "#6c6f75",
}

# Where each state sits in the graph (centre x, centre y).
NODE_W, NODE_H = 96, 34
POSITIONS = {
    State.INIT: (60, 50),
    State.PREPARE: (190, 50),
    State.EXECUTE: (320, 50),
    State.VALIDATE: (450, 50),
    State.COMPLETE: (580, 50),
    State.FAILED: (320, 150),
    State.CANCELLED: (580, 150),
}


def _edge_points(source: str, target: str) -> tuple[float, float, float, float]:
    (x1, y1), (x2, y2) = POSITIONS[source], POSITIONS[target]
    if y1 == y2:  # along the row: from one box's right side to the next box's left side
        direction = 1 if x2 > x1 else -1
        return x1 + direction * NODE_W / 2, y1, x2 - direction * NODE_W / 2, y2
    # between the rows: from the bottom (or top) of one box to the top (or bottom) of the other,
    # shifted sideways so that the way down and the way back up do not overlap
    shift = -10 if y2 > y1 else 10
    down = 1 if y2 > y1 else -1
    return x1 + shift, y1 + down * NODE_H / 2, x2 + shift, y2 - down * NODE_H / 2


def state_graph_svg(current: str, taken: list[tuple[str, str]]) -> SafeString:
    """The state machine, with `current` filled in and the edges in `taken` drawn bold."""
    taken_edges = set(taken)
    visited = {state for edge in taken for state in edge} | {current}
    edges = []
    for source, target in STATE_EDGES:
        x1, y1, x2, y2 = _edge_points(source, target)
        on_path = (source, target) in taken_edges
        edges.append(
            (
                x1, y1, x2, y2,
                "#1f2937" if on_path else "#c9ced6",
                3 if on_path else 1.2,
                "url(#arrow-taken)" if on_path else "url(#arrow)",
                "taken" if on_path else "",
            )
        )  # fmt: skip
    nodes = []
    for state, (x, y) in POSITIONS.items():
        is_current = state == current
        colour = STATE_COLOURS[state]
        nodes.append(
            (
                state.lower(),
                " current" if is_current else "",
                x - NODE_W / 2, y - NODE_H / 2, NODE_W, NODE_H,
                colour if is_current else ("#eef2f7" if state in visited else "#ffffff"),
                colour,
                3 if is_current else 1.5,
                x, y + 5,
                "#ffffff" if is_current else "#1f2937",
                state,
            )
        )  # fmt: skip
    return format_html(
        '<svg class="state-graph" role="img" aria-label="State graph, current state {}" viewBox="0 0 640 190" '
        'width="640" height="190" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">'
        "<defs>"
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#c9ced6"/></marker>'
        '<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="5" markerHeight="5" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#1f2937"/></marker>'
        "</defs>{}{}</svg>",
        current,
        format_html_join(
            "",
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="{}" marker-end="{}" class="edge {}"/>',
            edges,
        ),
        format_html_join(
            "",
            '<g class="node node-{}{}"><rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{}" stroke="{}" '
            'stroke-width="{}"/><text x="{}" y="{}" text-anchor="middle" fill="{}">{}</text></g>',
            nodes,
        ),
    )


# --- EXECUTE as a graph of its tasks -----------------------------------------------------

# A light fill per status behind dark text, the status's colour as the border, and the
# status spelt out: colour is never the only sign.
STATUS_FILLS = {
    Task.Status.PENDING: "#f3f4f6",
    Task.Status.QUEUED: "#edf3fc",
    Task.Status.RUNNING: "#dde9fc",
    Task.Status.WAITING: "#fdf3dc",
    Task.Status.SUCCEEDED: "#e4f5eb",
    Task.Status.FAILED: "#fbe5e5",
    Task.Status.CANCELLED: "#ececee",
}
STATUS_MARKS = {
    Task.Status.PENDING: "○",
    Task.Status.QUEUED: "◔",
    Task.Status.RUNNING: "▶",
    Task.Status.WAITING: "⏸",
    Task.Status.SUCCEEDED: "✓",
    Task.Status.FAILED: "✗",
    Task.Status.CANCELLED: "⊘",
}
TASK_W, TASK_H, COLUMN_GAP, ROW_GAP, MARGIN = 150, 42, 54, 14, 12
NAME_CHARS = 21  # what fits in a node at 12 px; the full name is in its title and label
# Narrower than this, the 11 px status line renders under 10 px (unreadable on a phone): the
# figure scrolls sideways in its own box instead of shrinking further.
MIN_SCALE = 0.92
GRID_COLUMNS = 6  # tasks that wait for nothing are laid out in rows of this many, not one long column
SUMMARY_OVER = 60  # more EXECUTE tasks than this: the page shows counts by status, the graph on demand


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def dependency_depths(tasks: list[Task]) -> dict[str, int]:
    """Each task's column: 0 without `after`, else one more than the deepest task it waits for.
    Names outside `tasks` are ignored, and a cycle (refused at creation) cannot loop."""
    by_name = {task.name: task for task in tasks}
    depths: dict[str, int] = {}

    def depth(name: str, seen: frozenset) -> int:
        if name not in depths:
            upstream = [n for n in by_name[name].after or [] if n in by_name and n not in seen]
            depths[name] = 1 + max((depth(n, seen | {name}) for n in upstream), default=-1)
        return depths[name]

    for task in tasks:
        depth(task.name, frozenset())
    return depths


def _layers(tasks: list[Task]) -> list[list[Task]]:
    """Tasks by column; within a column, near the mean row of what they wait for (fewer
    crossing edges), then in their own order."""
    depths = dependency_depths(tasks)
    layers: list[list[Task]] = [[] for _ in range(max(depths.values(), default=-1) + 1)]
    row: dict[str, float] = {}
    for column, layer in enumerate(layers):
        members = [t for t in tasks if depths[t.name] == column]
        keys = []
        for index, task in enumerate(members):
            rows = [row[name] for name in task.after or [] if name in row]
            keys.append((sum(rows) / len(rows) if rows else index, index))
        layer.extend(task for _, task in sorted(zip(keys, members, strict=True), key=lambda pair: pair[0]))
        row.update({task.name: index for index, task in enumerate(layer)})
    return layers


def _grid_places(tasks: list[Task]) -> dict[str, tuple[float, float]]:
    """Tasks that wait for nothing, in their own order, GRID_COLUMNS to a row."""
    return {
        task.name: (
            MARGIN + index % GRID_COLUMNS * (TASK_W + ROW_GAP),
            MARGIN + index // GRID_COLUMNS * (TASK_H + ROW_GAP),
        )
        for index, task in enumerate(tasks)
    }


def _layered_places(tasks: list[Task]) -> dict[str, tuple[float, float]]:
    """A column per dependency depth, short columns centred on the tallest."""
    layers = _layers(tasks)
    tallest = max(len(layer) for layer in layers)
    place: dict[str, tuple[float, float]] = {}
    for column, layer in enumerate(layers):
        offset = (tallest - len(layer)) * (TASK_H + ROW_GAP) / 2
        for index, task in enumerate(layer):
            place[task.name] = (MARGIN + column * (TASK_W + COLUMN_GAP), MARGIN + offset + index * (TASK_H + ROW_GAP))
    return place


def task_places(tasks: list[Task]) -> dict[str, tuple[float, float]]:
    """The top-left corner of each task's node: a grid when no task waits for another (a
    flat EXECUTE), else columns by dependency depth."""
    names = {task.name for task in tasks}
    flat = not any(name in names for task in tasks for name in task.after or [])
    return _grid_places(tasks) if flat else _layered_places(tasks)


def task_graph_svg(tasks: list[Task], link: Callable[[Task], str] | None = None) -> SafeString:
    """EXECUTE's tasks left to right by dependency depth (or in a grid when none waits for
    another), an arrow from each task named in a task's `after` to the task, and each task's
    status in text, colour and label; with `link`, each node links to the page it names."""
    if not tasks:
        return mark_safe('<p class="task-graph-empty">No EXECUTE tasks.</p>')
    place = task_places(tasks)
    width = max(x for x, _ in place.values()) + TASK_W + MARGIN
    height = max(y for _, y in place.values()) + TASK_H + MARGIN
    status = {task.name: task.status for task in tasks}
    edges = []
    for task in tasks:
        for upstream in task.after or []:
            if upstream not in place:
                continue
            (x1, y1), (x2, y2) = place[upstream], place[task.name]
            x1, y1, y2 = x1 + TASK_W, y1 + TASK_H / 2, y2 + TASK_H / 2
            bend = (x2 - x1) / 2
            met = status[upstream] == Task.Status.SUCCEEDED
            edges.append(
                (
                    " met" if met else "", upstream, task.name,
                    f"M{x1:g},{y1:g} C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} {x2 - 2:g},{y2:g}",
                    "#374151" if met else "#9aa1ab", "" if met else "5 4",
                    "url(#dep-arrow-met)" if met else "url(#dep-arrow)",
                    f"{upstream} → {task.name}" + ("" if met else " (not yet succeeded)"),
                )
            )  # fmt: skip
    nodes = []
    for task in tasks:
        x, y = place[task.name]
        after = f", after {', '.join(task.after)}" if task.after else ""
        label = f"{task.name}: {task.status}{after}"
        nodes.append(
            (
                format_html(' href="{}"', link(task)) if link else "", task.status.lower(), task.name, label, label,
                x, y, TASK_W, TASK_H, STATUS_FILLS[task.status], STATUS_COLOURS[task.status],
                "4 3" if task.status == Task.Status.PENDING else "",
                x + 10, y + 17, _clip(task.name, NAME_CHARS),
                x + 10, y + 33, f"{STATUS_MARKS[task.status]} {task.status}",
            )
        )  # fmt: skip
    return format_html(
        '<svg class="task-graph" role="group" aria-label="EXECUTE: {} tasks, {} dependencies" viewBox="0 0 {} {}" '
        'width="100%" style="max-width:{}px;min-width:{}px" xmlns="http://www.w3.org/2000/svg" '
        'font-family="sans-serif" font-size="12">'
        "<defs>"
        '<marker id="dep-arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#9aa1ab"/></marker>'
        '<marker id="dep-arrow-met" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#374151"/></marker>'
        "</defs>{}{}</svg>",
        len(tasks), len(edges), width, height, width, round(width * MIN_SCALE),
        format_html_join(
            "",
            '<path class="dep-edge{}" data-from="{}" data-to="{}" d="{}" fill="none" stroke="{}" stroke-width="1.6" '
            'stroke-dasharray="{}" marker-end="{}"><title>{}</title></path>',
            edges,
        ),
        format_html_join(
            "",
            '<a{}><g class="task-node task-{}" data-task="{}" role="img" aria-label="{}"><title>{}</title>'
            '<rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{}" stroke="{}" stroke-width="2" '
            'stroke-dasharray="{}"/><text x="{}" y="{}" font-weight="600" fill="#111827">{}</text>'
            '<text x="{}" y="{}" font-size="11" fill="#374151">{}</text></g></a>',
            nodes,
        ),
    )  # fmt: skip


def task_status_counts(tasks: list[Task]) -> list[tuple[str, int]]:
    """How many of `tasks` are in each status, in the order a task goes through them; the
    statuses no task is in are left out."""
    counts = {status: 0 for status in Task.Status}
    for task in tasks:
        counts[task.status] += 1
    return [(status, count) for status, count in counts.items() if count]


# --- The timeline: every attempt its own bar ----------------------------------------------

OUTCOME_LABELS = {
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "timed out",
    "lease_expired": "lease expired",
    "handed_back": "handed back",
    "cancelled": "cancelled",
}
OUTCOME_COLOURS = {  # white text on each: at least 4.9:1
    "running": "#1f6fd1",
    "succeeded": "#1e7b45",
    "failed": "#c62f2f",
    "timed_out": "#b5470f",
    "lease_expired": "#8a5a00",
    "handed_back": "#5f6b78",
    "cancelled": "#6c6f75",
}
MIN_BAR = 6  # px: the shortest attempt still shows as a bar, not a sliver
GAP_W = 28  # px: what an idle stretch longer than the work around it is drawn as (narrower when there are many)


def format_seconds(seconds: float) -> str:
    """A duration a person reads at a glance: 340 ms, 2.41 s, 3 min 5 s, 2 h 4 min."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@dataclass
class Attempt:
    """One attempt of a task, its times parsed, as the timeline and the task page show it."""

    number: int
    worker: str
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str
    error: str

    @property
    def label(self) -> str:
        return OUTCOME_LABELS.get(self.outcome, self.outcome)

    @property
    def description(self) -> str:
        return ATTEMPT_OUTCOMES.get(self.outcome, self.outcome)

    @property
    def error_last_line(self) -> str:
        lines = self.error.strip().splitlines()
        return lines[-1] if lines else ""

    def seconds(self, now: datetime) -> float:
        return _seconds(self.started_at, self.finished_at or now) if self.started_at else 0.0


def task_attempts(task: Task) -> list[Attempt]:
    """The task's attempts, oldest first. A task run before attempts were kept shows its
    latest run as its one attempt."""
    if not task.attempts and task.started_at:
        outcome = {Task.Status.RUNNING: "running", Task.Status.SUCCEEDED: "succeeded"}.get(task.status, "failed")
        return [Attempt(task.attempt, task.worker, task.started_at, task.finished_at, outcome, task.error)]
    return [
        Attempt(
            number=entry.get("attempt", index + 1),
            worker=entry.get("worker") or "",
            started_at=from_time(entry.get("started_at")),
            finished_at=from_time(entry.get("finished_at")),
            outcome=entry.get("outcome", "running"),
            error=entry.get("error") or "",
        )
        for index, entry in enumerate(task.attempts or [])
    ]


def _seconds(start: datetime, moment: datetime) -> float:
    return max((moment - start).total_seconds(), 0.0)


class TimeScale:
    """Seconds to x: linear across the work, but an idle stretch (between the end of one
    attempt and the start of the next, when nothing ran) longer than all the work around it
    shrinks to GAP_W px, so a retry an hour later does not crush every bar into a sliver."""

    def __init__(self, spans: list[tuple[datetime, datetime]], x0: float, width: float):
        spans = sorted(spans)
        self.origin = spans[0][0]
        busy: list[list[float]] = []
        for start, end in spans:
            a, b = _seconds(self.origin, start), _seconds(self.origin, end)
            if busy and a <= busy[-1][1]:
                busy[-1][1] = max(busy[-1][1], b)
            else:
                busy.append([a, b])
        self.end = busy[-1][1]
        worked = sum(b - a for a, b in busy)
        threshold = max(worked, 1.0)
        self.gaps = [(busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1)]
        self.gaps = [(a, b) for a, b in self.gaps if b - a > threshold]
        linear = max(self.end - sum(b - a for a, b in self.gaps), 0.001)
        # Many idle stretches share at most half the width, so the work keeps the other half.
        self.gap_w = min(GAP_W, width / 2 / max(len(self.gaps), 1))
        self.x0, self.per_second = x0, (width - self.gap_w * len(self.gaps)) / linear

    def x(self, moment: datetime) -> float:
        return self.at(_seconds(self.origin, moment))

    def at(self, t: float) -> float:
        """The x of `t` seconds after the first start."""
        x, before = self.x0, 0.0
        for a, b in self.gaps:
            if t <= a:
                break
            if t < b:  # inside an idle stretch: somewhere along its short stand-in
                return x + (a - before) * self.per_second + self.gap_w * (t - a) / (b - a)
            x += (a - before) * self.per_second + self.gap_w
            before = b
        return x + (t - before) * self.per_second


# px: a character of the timeline's 11 px sans-serif, on the wide side (Arial's digits are
# 6.1 px), so that labels judged not to overlap do not overlap as a browser draws them.
TIMELINE_CHAR_W = 7.0


def short_seconds(seconds: float) -> str:
    """A duration in its largest unit only, for where the full one does not fit: 57 s, 3 min, 2 h."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min" if seconds < 3600 else f"{seconds // 3600:.0f} h"


def _gap_labels(scale: TimeScale, left: float, right: float) -> list[str]:
    """What to write above each idle stretch, left to right: "57.06 s idle" where it fits
    beside the previous label, else "57 s", else nothing (the stretch's title says it all),
    so that two labels never overlap and none leaves the chart."""
    labels, free_from = [], left
    for a, b in scale.gaps:
        centre = scale.at(a) + scale.gap_w / 2
        for text in (f"{format_seconds(b - a)} idle", short_seconds(b - a), ""):
            half = len(text) * TIMELINE_CHAR_W / 2
            if not text or (centre - half >= free_from and centre + half <= right):
                break
        labels.append(text)
        if text:
            free_from = centre + half + 4
    return labels


def task_timeline_svg(tasks: list[Task], now: datetime | None = None) -> SafeString:
    """A row per attempt (a row per task not started yet), each attempt a bar from its start
    to its end (or now) with its outcome and duration written beside it."""
    now = now or timezone.now()
    rows = [(task, attempt) for task in tasks for attempt in task_attempts(task) if attempt.started_at]
    if not rows:
        return mark_safe('<p class="timeline-empty">No task has started yet.</p>')
    label_w, chart_w, note_w, row_h, top = 150, 360, 150, 20, 24
    scale = TimeScale([(a.started_at, a.finished_at or now) for _, a in rows], label_w, chart_w)
    bars, y = [], top
    for task in tasks:
        attempts = [a for a in task_attempts(task) if a.started_at]
        for attempt in attempts:
            x = scale.x(attempt.started_at)
            bar_w = max(scale.x(attempt.finished_at or now) - x, MIN_BAR)
            spent = format_seconds(attempt.seconds(now))
            error = f": {attempt.error_last_line}" if attempt.error_last_line else ""
            bars.append(
                (
                    attempt.outcome, task.name, attempt.number,
                    y + 14, f"{_clip(task.name, 20)} #{attempt.number}",
                    min(x, label_w + chart_w - MIN_BAR), y + 3, bar_w, OUTCOME_COLOURS.get(attempt.outcome, "#6b7079"),
                    f"{task.name}, attempt {attempt.number}: {attempt.description}, {spent}"
                    + (f", on {attempt.worker}" if attempt.worker else "") + error,
                    label_w + chart_w + 12, y + 14, f"{attempt.label} · {spent}",
                )
            )  # fmt: skip
            y += row_h
        if not attempts:
            waiting = f", after {', '.join(task.after)}" if task.after else ""
            bars.append(
                (
                    task.status.lower(), task.name, 0, y + 14, _clip(task.name, 23), label_w, y + 3, 0, "none",
                    f"{task.name}: {task.status}, not started{waiting}", label_w + chart_w + 12, y + 14,
                    f"{task.status.lower()}, not started",
                )
            )  # fmt: skip
            y += row_h
    width, height = label_w + chart_w + note_w, y + 22
    labels = _gap_labels(scale, label_w, label_w + chart_w)
    gap_marks = [
        (
            scale.at(a), top - 4, scale.gap_w, y - top + 4, f"{format_seconds(b - a)} idle",
            scale.at(a) + scale.gap_w / 2, top - 8, label,
        )
        for (a, b), label in zip(scale.gaps, labels, strict=True)
    ]  # fmt: skip
    return format_html(
        '<svg class="task-timeline" role="img" aria-label="Task timeline: {} attempts" viewBox="0 0 {} {}" '
        'width="100%" style="max-width:{}px" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
        'font-size="11">{}{}'
        '<text x="{}" y="{}" fill="#6b7280">0 s</text><text x="{}" y="{}" text-anchor="end" fill="#6b7280">'
        "{}</text></svg>",
        len(rows), width, height, width,
        format_html_join(
            "",
            '<g class="idle-gap"><rect x="{}" y="{}" width="{}" height="{}" fill="#f3f4f6" stroke="#c9ced6" '
            'stroke-dasharray="3 3"><title>{}</title></rect>'
            '<text x="{}" y="{}" text-anchor="middle" fill="#6b7280">{}</text></g>',
            gap_marks,
        ),
        format_html_join(
            "",
            '<g class="bar bar-{}" data-task="{}" data-attempt="{}"><text x="4" y="{}" fill="#1f2937">{}</text>'
            '<rect x="{}" y="{}" width="{}" height="14" rx="3" fill="{}"><title>{}</title></rect>'
            '<text x="{}" y="{}" fill="#374151">{}</text></g>',
            bars,
        ),
        label_w, height - 4, label_w + chart_w, height - 4, format_seconds(scale.end),
    )  # fmt: skip


def format_rate(value: float) -> str:
    """A rate a person reads at a glance: 0.44, 2.5, 12."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value < 10 else f"{value:.0f}"


def rate_chart_svg(values: list[float], since: datetime, label: str, unit: str) -> SafeString:
    """A bar per minute from `since` (the last bar is the current minute), scaled to the
    largest value, each bar titled with its minute and value, and the axis marked at its
    start, middle and end in the site's time zone."""
    bar_w, gap, chart_h, left, top = 7, 1, 110, 40, 10
    width = left + len(values) * (bar_w + gap) + 4
    peak = max(values, default=0) or 1
    bars = []
    for index, value in enumerate(values):
        height = round(value / peak * chart_h, 1)
        title = f"{timezone.localtime(since + timedelta(minutes=index)):%H:%M}: {format_rate(value)} {unit}"
        bars.append((left + index * (bar_w + gap), top + chart_h - height, bar_w, height, title))
    ticks = [
        (
            left + index * (bar_w + gap) + bar_w / 2,
            anchor,
            f"{timezone.localtime(since + timedelta(minutes=index)):%H:%M}",
        )
        for index, anchor in ((0, "start"), (len(values) // 2, "middle"), (len(values) - 1, "end"))
    ]
    return format_html(
        '<svg class="rate-chart" role="img" aria-label="{}: {} {} in the latest minute, at most {} over the hour" '
        'viewBox="0 0 {} {}" width="100%" style="max-width:{}px" xmlns="http://www.w3.org/2000/svg" '
        'font-family="sans-serif" font-size="12">'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#9ca3af"/>'
        '<text x="{}" y="{}" text-anchor="end" fill="#4b5563">{}</text>'
        '<text x="{}" y="{}" text-anchor="end" fill="#4b5563">0</text>{}{}</svg>',
        label, format_rate(values[-1] if values else 0), unit, format_rate(max(values, default=0)),
        width, top + chart_h + 22, width,
        left, top + chart_h, width, top + chart_h,
        left - 6, top + 9, format_rate(peak),
        left - 6, top + chart_h,
        format_html_join(
            "", '<rect class="rate-bar" x="{}" y="{}" width="{}" height="{}" fill="#1f6fd1"><title>{}</title></rect>',
            bars,
        ),
        format_html_join(
            "", '<text x="{}" y="' + str(top + chart_h + 16) + '" text-anchor="{}" fill="#4b5563">{}</text>', ticks
        ),
    )  # fmt: skip
