"""The admin's pictures as SVG: EXECUTE's dependency graph (a node per task with its
status, an arrow per name in `after`, columns by dependency depth) and the timeline (a bar
per attempt, on a scale where neither a short attempt nor a long idle stretch hides the
rest). The SVG is parsed as XML, as a browser reads it."""

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from workflow_orchestrator.diagrams import (
    GRID_COLUMNS,
    MIN_BAR,
    MIN_SCALE,
    SUMMARY_OVER,
    dependency_depths,
    task_graph_svg,
    task_status_counts,
    task_timeline_svg,
)
from workflow_orchestrator.models import Task

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
S = Task.Status


def parse(svg) -> ET.Element:
    return ET.fromstring(str(svg))


def at(seconds: float) -> str:
    """A time as the engine keeps it in an attempt: ISO text."""
    return (T0 + timedelta(seconds=seconds)).isoformat()


def attempt(number: int, start: float, end: float | None, outcome: str, error: str = "") -> dict:
    entry = {"attempt": number, "worker": "w1", "started_at": at(start), "outcome": outcome}
    if end is not None:
        entry["finished_at"] = at(end)
    return {**entry, **({"error": error} if error else {})}


def make_task(name: str, status: str = S.SUCCEEDED, after=(), attempts=()) -> Task:
    started = [a["started_at"] for a in attempts]
    return Task(
        name=name, phase="EXECUTE", type="noop", status=status, after=list(after), attempts=list(attempts),
        attempt=len(attempts), max_attempts=3, started_at=T0 if started else None,
    )  # fmt: skip


# fetch → transform → load, notify beside them, all joined by a gather.
PIPELINE = [
    make_task("fetch"),
    make_task("transform", after=["fetch"]),
    make_task("load", S.FAILED, after=["transform"]),
    make_task("notify", S.RUNNING, after=["fetch"]),
    make_task("report", S.PENDING, after=["load", "notify"]),
]


def nodes(svg: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-task"): g for g in svg.iter(f"{SVG}g") if "task-node" in g.get("class", "")}


def edges(svg: ET.Element) -> set[tuple[str, str]]:
    return {(p.get("data-from"), p.get("data-to")) for p in svg.iter(f"{SVG}path") if "dep-edge" in p.get("class", "")}


def box(node: ET.Element) -> tuple[float, float, float, float]:
    rect = node.find(f"{SVG}rect")
    return tuple(float(rect.get(k)) for k in ("x", "y", "width", "height"))


# --- EXECUTE's graph ----------------------------------------------------------------------


def test_the_graph_has_a_node_per_task_and_an_arrow_per_dependency():
    svg = parse(task_graph_svg(PIPELINE))
    assert set(nodes(svg)) == {"fetch", "transform", "load", "notify", "report"}
    assert edges(svg) == {("fetch", "transform"), ("transform", "load"), ("fetch", "notify"), ("load", "report"),
                          ("notify", "report")}  # fmt: skip
    assert all(p.get("marker-end") for p in svg.iter(f"{SVG}path") if "dep-edge" in p.get("class", ""))
    assert svg.get("aria-label") == "EXECUTE: 5 tasks, 5 dependencies"


def test_each_node_shows_its_status_in_text_colour_and_label():
    graph = nodes(parse(task_graph_svg(PIPELINE)))
    for task in PIPELINE:
        node = graph[task.name]
        texts = [t.text for t in node.iter(f"{SVG}text")]
        assert texts[0] == task.name and texts[1].endswith(task.status)
        assert f"task-{task.status.lower()}" in node.get("class")
        assert node.get("role") == "img" and node.get("aria-label").startswith(f"{task.name}: {task.status}")
    assert graph["report"].get("aria-label") == "report: PENDING, after load, notify"
    fills = {name: node.find(f"{SVG}rect").get("stroke") for name, node in graph.items()}
    assert len({fills["fetch"], fills["load"], fills["notify"], fills["report"]}) == 4  # colour too


def test_columns_go_left_to_right_by_dependency_depth():
    assert dependency_depths(PIPELINE) == {"fetch": 0, "transform": 1, "notify": 1, "load": 2, "report": 3}
    x = {name: box(node)[0] for name, node in nodes(parse(task_graph_svg(PIPELINE))).items()}
    assert x["fetch"] < x["transform"] == x["notify"] < x["load"] < x["report"]


def test_arrows_run_from_the_upstream_task_to_the_task():
    svg = parse(task_graph_svg(PIPELINE))
    graph = nodes(svg)
    for path in (p for p in svg.iter(f"{SVG}path") if "dep-edge" in p.get("class", "")):
        numbers = [float(n) for n in re.findall(r"-?[\d.]+", path.get("d"))]
        (x1, y1), (x2, y2) = numbers[:2], numbers[-2:]
        fx, fy, fw, fh = box(graph[path.get("data-from")])
        tx, ty, tw, th = box(graph[path.get("data-to")])
        assert (x1, y1) == (fx + fw, fy + fh / 2)  # leaves the upstream task's right side
        assert tx - 3 <= x2 <= tx and y2 == ty + th / 2  # ends at the task's left side


def test_an_arrow_from_a_task_not_yet_succeeded_is_dashed():
    svg = parse(task_graph_svg(PIPELINE))
    styles = {(p.get("data-from"), p.get("data-to")): p for p in svg.iter(f"{SVG}path") if p.get("data-from")}
    assert "met" in styles[("fetch", "transform")].get("class") and not styles[("fetch", "transform")].get(
        "stroke-dasharray"
    )
    assert "met" not in styles[("load", "report")].get("class") and styles[("load", "report")].get("stroke-dasharray")


def test_twenty_tasks_stay_readable_and_the_graph_scales_to_its_box():
    wide = [make_task(f"step-{i:02d}", after=[f"step-{i - 1:02d}"] if i else []) for i in range(20)]
    tall = [make_task(f"branch-{i:02d}") for i in range(19)] + [
        make_task("join", S.PENDING, after=[f"branch-{i:02d}" for i in range(19)])
    ]
    for tasks in (wide, tall):
        svg = parse(task_graph_svg(tasks))
        assert svg.get("width") == "100%" and svg.get("viewBox").startswith("0 0 ")
        _, _, width, height = (float(n) for n in svg.get("viewBox").split())
        boxes = [box(node) for node in nodes(svg).values()]
        assert len(boxes) == 20
        for i, (x, y, w, h) in enumerate(boxes):  # inside the picture, and no two overlap
            assert x >= 0 and x + w <= width and y >= 0 and y + h <= height
            for x2, y2, w2, h2 in boxes[i + 1 :]:
                assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
        # Never shrunk below MIN_SCALE of its size (the figure scrolls instead), never blown up.
        style = svg.get("style")
        assert f"max-width:{width:g}px" in style and f"min-width:{round(width * MIN_SCALE)}px" in style
    assert len(edges(parse(task_graph_svg(wide)))) == 19 and len(edges(parse(task_graph_svg(tall)))) == 19


def test_a_flat_execute_is_laid_out_in_a_grid_not_one_long_column():
    flat = [make_task(f"part-{i:02d}", [S.SUCCEEDED, S.RUNNING, S.PENDING][i % 3]) for i in range(20)]
    svg = parse(task_graph_svg(flat))
    boxes = {name: box(node) for name, node in nodes(svg).items()}
    columns, rows = sorted({x for x, *_ in boxes.values()}), sorted({y for _, y, *_ in boxes.values()})
    assert len(columns) == GRID_COLUMNS and len(rows) == 4  # 6 + 6 + 6 + 2, in the tasks' own order
    assert [boxes[f"part-{i:02d}"][:2] for i in (0, 5, 6)] == [(columns[0], rows[0]), (columns[5], rows[0]),
                                                              (columns[0], rows[1])]  # fmt: skip
    _, _, width, height = (float(n) for n in svg.get("viewBox").split())
    assert height < width and height <= 4 * 60  # 486 px and more as one column
    for i, (x, y, w, h) in enumerate(boxes.values()):  # inside the picture, and no two overlap
        assert x >= 0 and x + w <= width and y + h <= height
        for x2, y2, w2, h2 in list(boxes.values())[i + 1 :]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
    assert not edges(svg)


def test_one_dependency_and_the_graph_goes_back_to_columns_by_depth():
    tasks = [make_task(f"part-{i}") for i in range(8)] + [make_task("join", after=["part-0"])]
    x = {name: box(node)[0] for name, node in nodes(parse(task_graph_svg(tasks))).items()}
    assert len({x[f"part-{i}"] for i in range(8)}) == 1 and x["join"] > x["part-0"]


def test_the_text_never_shrinks_below_10_px():
    """The figure's least width keeps the 11 px status line at 10 px or more: narrower than that
    (a phone), it scrolls in its box."""
    assert 11 * MIN_SCALE >= 10


def test_tasks_are_counted_by_status_in_the_order_a_task_goes_through_them():
    tasks = [make_task(f"t{i}", status) for i, status in enumerate([S.FAILED, S.SUCCEEDED, S.PENDING, S.FAILED])]
    assert task_status_counts(tasks) == [(S.PENDING, 1), (S.SUCCEEDED, 1), (S.FAILED, 2)]
    assert task_status_counts([]) == [] and SUMMARY_OVER == 60


def test_a_long_name_is_shortened_in_the_node_but_whole_in_its_label():
    name = "transform-the-customer-records-of-the-night"
    (node,) = nodes(parse(task_graph_svg([make_task(name)]))).values()
    assert node.find(f"{SVG}text").text == "transform-the-custom…"
    assert node.find(f"{SVG}title").text.startswith(name) and node.get("aria-label").startswith(name)


# --- The timeline ---------------------------------------------------------------------------


def bars(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("data-attempt") not in (None, "0")]


def bar_width(g: ET.Element) -> float:
    return float(g.find(f"{SVG}rect").get("width"))


def test_every_attempt_is_its_own_bar_with_its_outcome_in_words():
    tasks = [
        make_task("prepare", attempts=[attempt(1, 0, 0.2, "succeeded")]),
        make_task(
            "flaky",
            attempts=[
                attempt(1, 0.2, 0.3, "failed", "Traceback…\nTaskFailed: disk full"),
                attempt(2, 0.6, 0.7, "timed_out"),
                attempt(3, 1.1, 1.5, "succeeded"),
            ],
        ),
        make_task("slow", S.RUNNING, attempts=[attempt(1, 0.2, None, "running")]),
        make_task("report", S.PENDING, after=["flaky"]),
    ]
    svg = parse(task_timeline_svg(tasks, now=T0 + timedelta(seconds=2)))
    drawn = [(g.get("data-task"), g.get("data-attempt"), g.get("class")) for g in bars(svg)]
    assert drawn == [
        ("prepare", "1", "bar bar-succeeded"), ("flaky", "1", "bar bar-failed"), ("flaky", "2", "bar bar-timed_out"),
        ("flaky", "3", "bar bar-succeeded"), ("slow", "1", "bar bar-running"),
    ]  # fmt: skip
    notes = {(g.get("data-task"), g.get("data-attempt")): [t.text for t in g.iter(f"{SVG}text")] for g in bars(svg)}
    assert notes[("flaky", "1")] == ["flaky #1", "failed · 100 ms"]
    assert notes[("flaky", "2")] == ["flaky #2", "timed out · 100 ms"]
    assert notes[("slow", "1")] == ["slow #1", "running · 1.80 s"]  # running: until now
    title = bars(svg)[1].find(f"{SVG}rect/{SVG}title").text
    assert title == "flaky, attempt 1: failed, 100 ms, on w1: TaskFailed: disk full"
    (pending,) = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "bar bar-pending"]
    assert [t.text for t in pending.iter(f"{SVG}text")] == ["report", "pending, not started"]
    assert svg.get("aria-label") == "Task timeline: 5 attempts" and svg.get("width") == "100%"


def test_a_retried_task_keeps_its_earlier_attempts_wide_enough_to_see_after_a_long_gap():
    """A workflow that failed, sat an hour, and was retried: the hour is drawn as a short
    idle stretch, and the first day's attempts are still bars, not 2 px slivers."""
    hour = 3600
    tasks = [
        make_task("fetch", attempts=[attempt(1, 0, 0.5, "succeeded")]),
        make_task(
            "load",
            attempts=[
                attempt(1, 0.5, 0.7, "failed", "TaskFailed: warehouse unavailable"),
                attempt(2, hour, hour + 0.3, "succeeded"),
            ],
        ),
        make_task("notify", attempts=[attempt(1, 0.5, 0.55, "succeeded")]),
    ]
    svg = parse(task_timeline_svg(tasks, now=T0 + timedelta(hours=2)))
    widths = {(g.get("data-task"), g.get("data-attempt")): bar_width(g) for g in bars(svg)}
    assert set(widths) == {("fetch", "1"), ("load", "1"), ("load", "2"), ("notify", "1")}
    assert all(width >= MIN_BAR > 2 for width in widths.values())
    assert widths[("fetch", "1")] > 100  # half a second of 1.3 s worked, on a 360 px chart
    (gap,) = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "idle-gap"]
    assert gap.find(f"{SVG}text").text == "59 min 59 s idle"
    x = {key: float(g.find(f"{SVG}rect").get("x")) for key, g in zip(widths, bars(svg), strict=True)}
    assert x[("fetch", "1")] < x[("load", "1")] < float(gap.find(f"{SVG}rect").get("x")) < x[("load", "2")]
    assert [t.text for t in svg.findall(f"{SVG}text")][-1] == "1 h 0 min"  # the real span, from first start to end


def test_short_gaps_keep_their_true_length():
    tasks = [make_task("t", attempts=[attempt(1, 0, 1, "failed"), attempt(2, 1.5, 2.5, "succeeded")])]
    svg = parse(task_timeline_svg(tasks, now=T0))
    assert not [g for g in svg.iter(f"{SVG}g") if g.get("class") == "idle-gap"]
    first, second = bars(svg)
    assert bar_width(first) == bar_width(second)  # one second each, on one linear scale
    assert float(second.find(f"{SVG}rect").get("x")) - float(first.find(f"{SVG}rect").get("x")) == 1.5 * bar_width(
        first
    )


def test_a_task_run_before_attempts_were_kept_shows_its_latest_run():
    task = make_task("old", S.SUCCEEDED)
    task.started_at, task.finished_at, task.attempt = T0, T0 + timedelta(seconds=2), 1
    (bar,) = bars(parse(task_timeline_svg([task], now=T0)))
    assert bar.get("class") == "bar bar-succeeded" and bar_width(bar) > 300  # the whole chart


def test_nothing_started_yet_is_said_in_words():
    assert "No task has started yet." in task_timeline_svg([make_task("t", S.PENDING)])


def label_box(text: ET.Element) -> tuple[float, float]:
    """A label's left and right, at 0.6 em a character: wider than an 11 px sans-serif's digits
    and letters (Arial's digits are 0.556 em)."""
    width = len(text.text or "") * 11 * 0.6
    x = float(text.get("x"))
    anchored = {"middle": (x - width / 2, x + width / 2), "end": (x - width, x)}
    return anchored.get(text.get("text-anchor"), (x, x + width))


def test_idle_gap_labels_never_overlap_and_each_keeps_its_whole_text_in_a_title():
    """Many long idle stretches between short attempts, the worst case for labels side by side:
    each is written in full where it fits, else shortened, else left out; none overlaps
    another or leaves the chart, and every stretch's title says how long it was."""
    starts = [0, 57.5, 73.2, 150, 160, 3600, 3610, 3700, 7300]
    tasks = [
        make_task(f"t{i}", attempts=[attempt(1, start, start + 0.5, "failed" if i % 2 else "succeeded")])
        for i, start in enumerate(starts)
    ]
    svg = parse(task_timeline_svg(tasks, now=T0 + timedelta(hours=3)))
    gaps = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "idle-gap"]
    assert len(gaps) == len(starts) - 1
    titles = [g.find(f"{SVG}rect/{SVG}title").text for g in gaps]
    assert titles[0] == "57.00 s idle" and titles[-1] == "59 min 59 s idle"
    written = [g.find(f"{SVG}text") for g in gaps if g.find(f"{SVG}text").text]
    # Too close together for "57.00 s idle": each in its largest unit, none dropped here.
    assert [t.text for t in written] == ["57 s", "15 s", "1 min", "10 s", "57 min", "10 s", "1 min", "59 min"]
    spans = sorted(label_box(text) for text in written)
    for (_, right), (left, _) in zip(spans, spans[1:], strict=False):
        assert right <= left, spans
    assert spans[0][0] >= 150 and spans[-1][1] <= 150 + 360  # within the chart, clear of the task names


def test_a_lone_idle_gap_keeps_its_full_label():
    tasks = [make_task("t", attempts=[attempt(1, 0, 1, "failed"), attempt(2, 58.06, 59, "succeeded")])]
    (gap,) = [g for g in parse(task_timeline_svg(tasks, now=T0)).iter(f"{SVG}g") if g.get("class") == "idle-gap"]
    assert gap.find(f"{SVG}text").text == gap.find(f"{SVG}rect/{SVG}title").text == "57.06 s idle"


def test_twenty_idle_gaps_still_fit_the_chart_and_labels_that_do_not_fit_are_left_out():
    tasks = [make_task(f"t{i}", attempts=[attempt(1, i * 100, i * 100 + 0.2, "failed")]) for i in range(21)]
    svg = parse(task_timeline_svg(tasks, now=T0))
    gaps = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "idle-gap"]
    assert len(gaps) == 20
    rects = [tuple(float(r.get(k)) for k in ("x", "width")) for r in (g.find(f"{SVG}rect") for g in bars(svg))]
    assert all(x >= 150 and x + w <= 150 + 360 + 0.01 for x, w in rects)  # every bar on the chart
    assert all(w >= MIN_BAR for _, w in rects)
    written = [g.find(f"{SVG}text") for g in gaps if g.find(f"{SVG}text").text]
    assert 0 < len(written) < 20  # some left out: their titles still say "1 min 39 s idle"
    assert {g.find(f"{SVG}rect/{SVG}title").text for g in gaps} == {"1 min 39 s idle"}
    spans = sorted(label_box(text) for text in written)
    assert all(right <= left for (_, right), (left, _) in zip(spans, spans[1:], strict=False))
