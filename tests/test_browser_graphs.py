"""Graphs that scale, in a real browser (Debian's chromium through playwright, see
tests/browser.py): a 40-task DAG run by a real cluster lights up a task's upstream and
downstream on hover and on focus, has a skip link past it, and stays readable on a phone;
a 1,000-task workflow's page shows a page of its tasks and its graph on demand."""

import re
from pathlib import Path

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from playwright.sync_api import expect

from tests.browser import no_horizontal_scroll, screenshot, start, states
from tests.conftest import wait_for
from tests.test_admin_graphs import a_workflow_that_ran
from workflow_orchestrator.models import Actor, State

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Five sources, ten tasks each after two of them, fifteen after one of those, ten joins.
DAG = (
    [{"name": f"src-{i}", "type": "noop"} for i in range(5)]
    + [{"name": f"mid-{i}", "type": "noop", "after": [f"src-{i % 5}", f"src-{(i + 1) % 5}"]} for i in range(10)]
    + [{"name": f"out-{i:02d}", "type": "noop", "after": [f"mid-{i % 10}"]} for i in range(15)]
    + [{"name": f"end-{i}", "type": "noop", "after": [f"out-{i:02d}", f"out-{i + 5:02d}"]} for i in range(10)]
)
# What mid-3 waits for, and what waits for it, all the way down.
MID_3_LINEAGE = {"src-3", "src-4", "mid-3", "out-03", "out-13", "end-3", "end-8"}


def traced(page) -> tuple[set[str], set[tuple[str, str]]]:
    graph = page.locator("#execute-graph svg.task-graph")
    nodes = {node.get_attribute("data-task") for node in graph.locator("g.task-node.traced").all()}
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to")) for e in graph.locator(".dep-edge.traced").all()
    }
    return nodes, edges


def opacity(locator) -> float:
    return float(locator.evaluate("element => getComputedStyle(element).opacity"))


@pytest.fixture
def forty(cluster):
    running = cluster()
    workflow = start("forty-task fan-out", DAG)
    wait_for(lambda: states(workflow) == {State.COMPLETE}, 60, f"the DAG to complete\n{running.output()[-3000:]}")
    return workflow


def test_a_forty_task_dag_lights_up_a_task_s_lineage_on_hover_and_focus(forty, page):
    page.goto(f"/admin/workflow_orchestrator/workflow/{forty.pk}/change/")
    graph = page.locator("#execute-graph svg.task-graph")
    expect(graph).to_have_attribute("aria-label", "EXECUTE: 40 tasks, 55 dependencies")
    expect(graph).not_to_have_class(re.compile("tracing"))

    graph.locator('g[data-task="mid-3"]').hover()
    expect(graph).to_have_class(re.compile("tracing"))
    nodes, edges = traced(page)
    assert nodes == MID_3_LINEAGE
    assert edges == {("src-3", "mid-3"), ("src-4", "mid-3"), ("mid-3", "out-03"), ("mid-3", "out-13"),
                     ("out-03", "end-3"), ("out-13", "end-8")}  # fmt: skip
    assert opacity(graph.locator('g[data-task="mid-4"]')) < 0.5  # the rest dimmed
    assert opacity(graph.locator('g[data-task="end-8"]')) == 1
    screenshot(page, "admin-workflow-graph-traced.png")
    page.mouse.move(5, 5)  # off the graph: everything back
    expect(graph).not_to_have_class(re.compile("tracing"))

    # The keyboard: a focused task lights up the same way; leaving the graph clears it.
    graph.locator('a:has(g[data-task="out-13"])').focus()
    expect(graph).to_have_class(re.compile("tracing"))
    assert traced(page)[0] == {"src-3", "src-4", "mid-3", "out-13", "end-8"}
    page.keyboard.press("Tab")
    assert traced(page)[0] != {"src-3", "src-4", "mid-3", "out-13", "end-8"}  # the next task's lineage


def test_the_skip_link_moves_focus_past_the_forty_nodes(forty, page):
    page.goto(f"/admin/workflow_orchestrator/workflow/{forty.pk}/change/")
    skip = page.get_by_role("link", name="Skip the graph")
    expect(skip).to_be_attached()
    # From the page's last link above the pictures (History), Tab reaches the skip link first,
    # before any of the forty tasks.
    page.locator("a.historylink").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('skip-graph')")
    expect(skip).to_be_visible()  # shown when focused
    assert skip.bounding_box()["height"] >= 24
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    inside = page.evaluate("document.getElementById('execute-graph').contains(document.activeElement)")
    assert not inside, page.evaluate("document.activeElement.outerHTML.slice(0, 200)")
    assert page.evaluate("document.activeElement !== document.body")


def test_on_a_phone_the_forty_task_graph_scrolls_in_its_box_with_text_of_10_px_or_more(forty, page):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/admin/workflow_orchestrator/workflow/{forty.pk}/change/")
    graph = page.locator("#execute-graph svg.task-graph")
    expect(graph).to_be_visible()
    heights = graph.locator("g.task-node text").evaluate_all(
        "texts => texts.map(text => text.getBoundingClientRect().height)"
    )
    assert len(heights) == 80 and min(heights) >= 10, min(heights)
    assert no_horizontal_scroll(page)  # the page stays put; the graph's own box scrolls
    box = page.locator("#execute-graph .graph-scroll")
    assert box.evaluate("box => box.scrollWidth > box.clientWidth")
    box.focus()  # a box that scrolls is reachable by keyboard
    page.keyboard.press("ArrowRight")
    wait_for(lambda: box.evaluate("box => box.scrollLeft") > 0, 5, "the graph to scroll by keyboard")
    screenshot(page, "admin-workflow-graph-phone.png")


def test_a_thousand_task_workflow_shows_a_page_of_tasks_and_its_graph_on_demand(page, django_user_model):
    workflow = a_workflow_that_ran(1000, Actor.SYSTEM)
    page.goto(f"/admin/workflow_orchestrator/workflow/{workflow.pk}/change/")
    rows = page.locator("#tasks-group tbody tr.has_original")
    expect(rows).to_have_count(100)
    pager = page.get_by_role("navigation", name="Pages of tasks")
    expect(pager).to_contain_text("Tasks 1–100 of 1002.")
    summary = page.locator("#task-summary")
    expect(summary.locator("li")).to_have_text(["SUCCEEDED 990", "FAILED 10"])
    expect(page.locator("#execute-graph svg.task-graph")).to_have_count(0)
    screenshot(page, "admin-workflow-large.png")

    pager.get_by_role("link", name="3", exact=True).click()
    expect(page).to_have_url(re.compile(r"tasks_page=3"))
    expect(rows).to_have_count(100)
    expect(rows.first.locator("td.field-name")).to_have_text("part-0199")
    expect(pager.locator("[aria-current=page]")).to_have_text("3")

    # The disclosure fetches the whole graph; it stays open while the page updates itself.
    summary.locator("summary").click()
    graph = page.locator("#full-graph svg.task-graph")
    expect(graph.locator("g.task-node")).to_have_count(1000)
    updated = page.locator("#live-bar .live-updated")
    # The server's time of the refresh, in the console's one format with its zone.
    expect(updated).to_have_text(re.compile(r"^updated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"), timeout=10_000)
    first = updated.inner_text()
    expect(updated).not_to_have_text(first, timeout=10_000)
    expect(page.locator("#full-graph")).to_have_attribute("open", "")
    expect(graph.locator("g.task-node")).to_have_count(1000)
    expect(rows.first.locator("td.field-name")).to_have_text("part-0199")  # still the third page

    # A count links to those tasks in the task list.
    summary.get_by_role("link", name="FAILED 10").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(10)


def test_the_timeline_s_idle_gap_labels_do_not_overlap_as_chromium_draws_them(page):
    """Attempts separated by long idle stretches of different lengths, side by side: the labels
    the browser renders (its own font) never overlap one another or leave the chart."""
    starts = [0, 57.5, 73.2, 150, 160, 3600, 3610, 3700, 7300]
    tasks = [{"name": f"step-{i}", "type": "noop"} for i in range(len(starts))]
    workflow = a_workflow_that_ran(0, Actor.SYSTEM, tasks=tasks, starts=starts)
    page.goto(f"/admin/workflow_orchestrator/workflow/{workflow.pk}/change/")
    timeline = page.locator("svg.task-timeline")
    expect(timeline.locator("g.idle-gap")).to_have_count(len(starts) - 1)
    boxes = timeline.locator("g.idle-gap text").evaluate_all(
        "texts => texts.filter(t => t.textContent).map(t => { const r = t.getBoundingClientRect(); "
        "return [r.left, r.right]; })"
    )
    assert len(boxes) >= 4
    boxes.sort()
    for (_, right), (left, _) in zip(boxes, boxes[1:], strict=False):
        assert right <= left, boxes
    chart = timeline.evaluate("svg => svg.getBoundingClientRect().left")
    scale = timeline.evaluate("svg => svg.getBoundingClientRect().width / svg.viewBox.baseVal.width")
    assert boxes[0][0] >= chart + 150 * scale and boxes[-1][1] <= chart + 510 * scale
    titles = timeline.locator("g.idle-gap rect title").all_text_contents()
    assert titles[0] == "57.00 s idle" and titles[-1] == "59 min 59 s idle"
