"""Pictures for the admin, drawn as inline SVG on the server (no JavaScript, nothing
fetched): the state graph with the path a workflow took, and a timeline of its tasks."""

from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from .models import State, Task

STATE_COLOURS = {
    State.INIT: "#8a8f98",
    State.PREPARE: "#2f80ed",
    State.EXECUTE: "#2f80ed",
    State.VALIDATE: "#2f80ed",
    State.COMPLETE: "#27ae60",
    State.FAILED: "#d63b3b",
    State.CANCELLED: "#6c6f75",
}
STATUS_COLOURS = {
    Task.Status.PENDING: "#c4c8ce",
    Task.Status.QUEUED: "#9bb8e6",
    Task.Status.RUNNING: "#2f80ed",
    Task.Status.SUCCEEDED: "#27ae60",
    Task.Status.FAILED: "#d63b3b",
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
EDGES = [
    (State.INIT, State.PREPARE),
    (State.PREPARE, State.EXECUTE),
    (State.EXECUTE, State.VALIDATE),
    (State.VALIDATE, State.COMPLETE),
    *[(phase, State.FAILED) for phase in (State.PREPARE, State.EXECUTE, State.VALIDATE)],
    *[(State.FAILED, phase) for phase in (State.PREPARE, State.EXECUTE, State.VALIDATE)],
    *[(state, State.CANCELLED) for state in (State.INIT, State.PREPARE, State.EXECUTE, State.VALIDATE, State.FAILED)],
]


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
    for source, target in EDGES:
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


def _seconds(start: datetime, moment: datetime) -> float:
    return max((moment - start).total_seconds(), 0.0)


def task_timeline_svg(tasks: list[Task], now: datetime | None = None) -> SafeString:
    """A bar per task from its start to its end (or now), coloured by status."""
    now = now or timezone.now()
    started = [t.started_at for t in tasks if t.started_at]
    if not started:
        return mark_safe('<p class="timeline-empty">No task has started yet.</p>')
    origin = min(started)
    end = max([t.finished_at or now for t in tasks if t.started_at] + [origin])
    span = max(_seconds(origin, end), 0.001)
    label_w, chart_w, row_h = 200, 460, 22
    rows = []
    for index, task in enumerate(tasks):
        y = 10 + index * row_h
        if task.started_at:
            x = label_w + chart_w * _seconds(origin, task.started_at) / span
            width = max(chart_w * _seconds(task.started_at, task.finished_at or now) / span, 2)
            duration = f"{_seconds(task.started_at, task.finished_at or now):.2f} s"
        else:
            x, width, duration = label_w, 0, "not started"
        rows.append(
            (
                task.status.lower(),
                y + 13, f"{task.name[:28]} ({task.attempt}/{task.attempt_budget})",
                x, y + 3, width, STATUS_COLOURS[task.status],
                f"{task.name}: {task.status}, attempt {task.attempt}, {duration}",
            )
        )  # fmt: skip
    height = 20 + len(tasks) * row_h + 16
    return format_html(
        '<svg class="task-timeline" role="img" aria-label="Task timeline" viewBox="0 0 {} {}" width="{}" '
        'height="{}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">{}'
        '<text x="{}" y="{}" fill="#6b7280">0 s</text><text x="{}" y="{}" text-anchor="end" fill="#6b7280">'
        "{} s</text></svg>",
        label_w + chart_w + 10, height, label_w + chart_w + 10, height,
        format_html_join(
            "",
            '<g class="bar bar-{}"><text x="4" y="{}" fill="#1f2937">{}</text>'
            '<rect x="{}" y="{}" width="{}" height="14" rx="3" fill="{}"><title>{}</title></rect></g>',
            rows,
        ),
        label_w, height - 4, label_w + chart_w, height - 4, f"{span:.2f}",
    )  # fmt: skip
