"""The admin in a real browser: Debian's chromium driven by playwright, against pytest-django's
`live_server` (a thread of this process on the test database) while a real `qcluster` runs
the jobs.

With ORCH_SCREENSHOTS=1 the tests also save the screenshots the documentation shows, in docs/img/.
"""

import re
from pathlib import Path

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from playwright.sync_api import expect

from tests.browser import (
    assert_badges_readable,
    contrast,
    fetches,
    no_horizontal_scroll,
    screenshot,
    start,
    states,
)
from tests.conftest import events, wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Fails its first attempt and has no second one: the workflow fails, and a retry completes it.
FAILS_ONCE = [
    {"name": "fetch", "type": "echo", "params": {"rows": 120}},
    {"name": "transform", "type": "sleep", "params": {"seconds": 0.4}},
    {"name": "load", "type": "fail", "params": {"times": 1, "message": "warehouse unavailable"}, "max_attempts": 1},
    {"name": "notify", "type": "sleep", "params": {"seconds": 0.2}},
]
# fetch → transform → load, notify beside them, joined by a gather; `flaky` needs two attempts.
PIPELINE = [
    {"name": "fetch", "type": "echo", "params": {"rows": 120}},
    {"name": "transform", "type": "sleep", "params": {"seconds": 0.3}, "after": ["fetch"]},
    {"name": "load", "type": "echo", "params": {"table": "orders"}, "after": ["transform"]},
    {"name": "notify", "type": "sleep", "params": {"seconds": 0.2}, "after": ["fetch"]},
    {"name": "flaky", "type": "fail", "params": {"times": 1, "message": "mail relay down"}, "max_attempts": 2},
    {"name": "report", "type": "gather", "after": ["load", "notify", "flaky"]},
]
PIPELINE_EDGES = {("fetch", "transform"), ("transform", "load"), ("fetch", "notify"), ("load", "report"),
                  ("notify", "report"), ("flaky", "report")}  # fmt: skip


def test_retry_failed_workflows_from_the_changelist(cluster, page):
    running = cluster(ORCH_RETRY_BACKOFF=0.05)
    failing = [start(f"nightly import {i}", FAILS_ONCE, input={"day": f"2025-01-0{i}"}) for i in (1, 2, 3)]
    fine = [start(f"invoice batch {i}", [{"type": "echo", "params": {"n": i}}, {"type": "noop"}]) for i in (1, 2)]
    services.workflow_create(name="quarterly report", tasks=[{"type": "noop"}], actor=Actor.SYSTEM)  # INIT
    stepped = start("migration (manual)", [{"type": "noop"}], mode="manual")  # waits for `next` in PREPARE
    dropped = start("abandoned export", [{"type": "noop"}])
    services.workflow_cancel(dropped.pk, actor=Actor.SYSTEM, reason="not needed")
    wait_for(lambda: states(*failing) == {State.FAILED}, 30, "three workflows to fail")
    wait_for(lambda: states(*fine) == {State.COMPLETE}, 30, "two workflows to complete")
    wait_for(lambda: stepped.tasks.get(name="prepare").status == Task.Status.SUCCEEDED, 30, "the manual prepare")

    page.goto("/admin/workflow_orchestrator/workflow/")
    page.click("#toggle-nav-sidebar")  # more room for the columns (the admin remembers it in localStorage)
    expect(page.locator("#nav-sidebar")).to_be_hidden()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(8)
    expect(page.locator("#result_list tbody .badge", has_text="FAILED")).to_have_count(3)
    screenshot(page, "admin-changelist.png")

    # Filter by state FAILED in the sidebar, select all, and run the retry action.
    page.locator("#changelist-filter a", has_text="FAILED").click()
    expect(page).to_have_url(re.compile(r"state__exact=FAILED"))
    expect(rows).to_have_count(3)
    page.check("#action-toggle")
    expect(page.locator("#result_list tbody input.action-select:checked")).to_have_count(3)
    page.select_option("select[name=action]", label="Retry selected workflows")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist .success")).to_have_text("3 retried")
    for workflow in failing:
        retry = workflow.transitions.get(event="retry")
        assert (retry.actor_label, retry.source, retry.target) == ("admin:admin", State.FAILED, State.EXECUTE)

    # They left FAILED at once; the cluster then completes them (the failing task's second attempt succeeds).
    def none_failed_on_the_page() -> bool:
        page.reload()
        return rows.count() == 0

    wait_for(none_failed_on_the_page, 30, "the FAILED filter to come up empty", interval=0.3)
    wait_for(lambda: states(*failing) == {State.COMPLETE}, 30, f"the retried to complete\n{running.output()[-3000:]}")
    page.goto("/admin/workflow_orchestrator/workflow/?state__exact=COMPLETE")
    expect(rows).to_have_count(5)

    # A retried workflow's page: the path it took, its task bars, its tasks and its audit log.
    page.get_by_role("link", name="nightly import 2").click()
    expect(page.locator("h2", has_text="nightly import 2")).to_be_visible()
    graph = page.locator("svg.state-graph")
    expect(graph).to_be_visible()
    expect(graph).to_have_attribute("aria-label", "State graph, current state COMPLETE")
    expect(graph.locator("line.taken")).to_have_count(6)  # start execute fail retry validate complete
    timeline = page.locator("svg.task-timeline")
    expect(timeline).to_be_visible()
    expect(timeline.locator("g.bar-succeeded")).to_have_count(6)
    assert timeline.bounding_box()["width"] > 400
    transitions = page.locator("#transitions-group")
    expect(transitions.locator("tbody tr.has_original")).to_have_count(6)
    expect(transitions).to_contain_text("FAILED → EXECUTE")
    expect(transitions).to_contain_text("admin:admin")
    tasks = page.locator("#tasks-group")
    expect(tasks.locator("tbody tr.has_original")).to_have_count(6)
    expect(tasks).to_contain_text("2/2")  # load: the second attempt of a fresh budget
    expect(page.locator("#workflow-actions .button")).to_have_text(["Delete"])  # nothing else to do
    screenshot(page, "admin-workflow.png")
    workflow = Workflow.objects.get(name="nightly import 2")
    assert events(workflow) == ["start", "execute", "fail", "retry", "validate", "complete"]


def test_cancel_a_running_workflow_from_its_page(cluster, page):
    cluster()
    workflow = start("long sleeper", [{"name": "long", "type": "sleep", "params": {"seconds": 60}}, {"type": "echo"}])
    wait_for(
        lambda: Task.objects.filter(workflow=workflow, name="long", status=Task.Status.RUNNING).exists(),
        30,
        "the long sleep to start",
    )

    page.goto(f"/admin/workflow_orchestrator/workflow/{workflow.pk}/change/")
    expect(page.locator(".field-state_badge .readonly")).to_have_text("EXECUTE")
    expect(page.locator("#workflow-actions .button")).to_have_text(["Cancel", "Pause workflow"])  # running: no delete
    expect(page.locator("svg.task-timeline g.bar-running")).to_have_count(1)
    page.click("#action-cancel")
    expect(page.locator("#content")).to_contain_text("now in state EXECUTE?")
    page.fill("#id_reason", "started by mistake")
    page.click("#confirm")

    expect(page).to_have_url(re.compile(rf"/admin/workflow_orchestrator/workflow/{workflow.pk}/change/$"))
    expect(page.locator(".messagelist .success")).to_have_text("Cancel: long sleeper is now CANCELLED.")
    expect(page.locator(".field-state_badge .readonly")).to_have_text("CANCELLED")
    expect(page.locator("svg.state-graph")).to_have_attribute("aria-label", "State graph, current state CANCELLED")
    expect(page.locator("#transitions-group")).to_contain_text("started by mistake")
    expect(page.locator("#workflow-actions .button")).to_have_text(["Delete"])

    workflow.refresh_from_db()
    assert workflow.state == State.CANCELLED
    cancel = workflow.transitions.get(event="cancel")
    assert (cancel.actor_label, cancel.reason, cancel.source) == ("admin:admin", "started by mistake", State.EXECUTE)
    # The running sleep notices the cancel and returns early, so the cluster can stop at once.
    long = wait_for(
        lambda: Task.objects.filter(workflow=workflow, name="long", finished_at__isnull=False).first(),
        20,
        "the sleep to notice the cancel",
    )
    assert long.status == Task.Status.CANCELLED  # its late result kept, but not a success
    assert long.result["cancelled"] is True and long.result["slept"] < 30


def test_the_dependency_graph_and_a_retried_task_s_attempts(cluster, page):
    running = cluster(ORCH_RETRY_BACKOFF=0.05)
    workflow = start("nightly pipeline", PIPELINE)
    wait_for(lambda: states(workflow) == {State.COMPLETE}, 30, f"the pipeline to complete\n{running.output()[-3000:]}")

    page.goto(f"/admin/workflow_orchestrator/workflow/{workflow.pk}/change/")
    graph = page.locator("#execute-graph svg.task-graph")
    expect(graph).to_be_visible()
    expect(graph).to_have_attribute("aria-label", "EXECUTE: 6 tasks, 6 dependencies")
    for spec in PIPELINE:  # every task a node, named, with its status in words and in its label
        node = graph.get_by_role("img", name=re.compile(rf"^{spec['name']}: SUCCEEDED"))
        expect(node).to_be_visible()
        expect(node).to_contain_text(spec["name"])
        expect(node).to_contain_text("✓ SUCCEEDED")
    edges = graph.locator("path.dep-edge.met")
    expect(edges).to_have_count(len(PIPELINE_EDGES))
    drawn = {(edges.nth(i).get_attribute("data-from"), edges.nth(i).get_attribute("data-to")) for i in range(6)}
    assert drawn == PIPELINE_EDGES
    # Left to right by dependency depth, as the browser lays it out.
    x = {spec["name"]: graph.locator(f'g[data-task="{spec["name"]}"]').bounding_box()["x"] for spec in PIPELINE}
    assert x["fetch"] == x["flaky"] < x["transform"] == x["notify"] < x["load"] < x["report"]
    assert graph.bounding_box()["width"] > 600  # drawn across the page, not a thumbnail
    # The timeline: a bar per attempt, flaky's first (failed) one among them.
    timeline = page.locator("svg.task-timeline")
    expect(timeline.locator('g[data-task="flaky"]')).to_have_count(2)
    expect(timeline.locator('g.bar-failed[data-task="flaky"]')).to_contain_text("failed")
    for bar in timeline.locator("g.bar rect").all():
        if bar.get_attribute("width") != "0":
            assert bar.bounding_box()["width"] > 2
    screenshot(page, "admin-workflow-graph.png")

    # A node links to its task's page, which lists both attempts with their outcomes.
    graph.get_by_role("img", name=re.compile(r"^flaky: ")).click()
    expect(page.locator("h2", has_text="flaky")).to_be_visible()
    attempts = page.locator("table.attempt-list tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0).locator("td").nth(0)).to_have_text("1")
    expect(attempts.nth(0).locator(".badge")).to_have_text("failed")
    expect(attempts.nth(1).locator("td").nth(0)).to_have_text("2")
    expect(attempts.nth(1).locator(".badge")).to_have_text("succeeded")
    error = attempts.nth(0).locator("details")
    expect(error.locator("summary")).to_have_text("workflow_orchestrator.builtin_tasks.TaskFailed: mail relay down")
    expect(error.locator("pre")).to_be_hidden()  # the full traceback is one click away
    error.locator("summary").click()
    expect(error.locator("pre")).to_contain_text("Traceback (most recent call last)")
    worker = Task.objects.get(workflow=workflow, name="flaky").attempts[0]["worker"]
    expect(attempts.nth(0).locator("td").nth(1)).to_have_text(worker)
    screenshot(page, "admin-task.png")


def test_start_from_the_browsable_api_form_then_bulk_cancel_with_a_reason(cluster, page):
    cluster()
    page.goto("/workflow/start")
    expect(page).to_have_title("Start a workflow – Workflow orchestrator API")
    form = page.locator("#post-object-form")
    expect(form.locator("#start-definition option:checked")).to_have_text("default")
    page.fill("#start-name", "report from the form")
    page.select_option("#start-mode", "auto")
    page.fill("#start-input", "{oops")
    page.fill("#start-tasks", '[{"name": "long", "type": "sleep", "params": {"seconds": 60}}]')
    page.fill("#start-priority", "5")
    page.fill("#start-concurrency-key", "reports")
    form.get_by_role("button", name="POST").click()

    # Refused: the page comes back with what was typed and the field's message.
    expect(page.locator(".response-info")).to_contain_text("400 Bad Request")
    expect(page.locator("#start-name")).to_have_value("report from the form")
    expect(page.locator("#start-input")).to_have_value("{oops")
    expect(page.locator("#start-priority")).to_have_value("5")
    expect(page.locator("#start-concurrency-key")).to_have_value("reports")
    expect(page.locator("#post-object-form")).to_contain_text("Must be a JSON object.")
    assert not Workflow.objects.exists()

    page.fill("#start-input", '{"day": "2025-01-01"}')
    page.locator("#post-object-form").get_by_role("button", name="POST").click()
    expect(page.locator(".response-info")).to_contain_text("201 Created")
    created = Workflow.objects.get(name="report from the form")
    assert (created.input, created.created_by.username) == ({"day": "2025-01-01"}, "admin")
    assert (created.priority, created.concurrency_key) == (5, "reports")
    other = start("second sleeper", [{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    for workflow in (created, other):
        wait_for(lambda w=workflow: states(w) == {State.EXECUTE}, 30, f"{workflow.name} to run")

    # Its page offers the transitions it allows, nothing else.
    page.goto(f"/workflow/{created.pk}")
    page.click("#extra-actions-menu")
    expect(page.locator("[aria-labelledby=extra-actions-menu] a")).to_have_text(
        ["Cancel", "Pause", "Signal", "Status", "Tasks", "Transitions"]
    )

    # Bulk cancel: the action asks first, with a reason for the audit log.
    page.goto("/admin/workflow_orchestrator/workflow/")
    page.check("#action-toggle")
    page.select_option("select[name=action]", label="Cancel selected workflows")
    page.get_by_role("button", name="Go").click()
    expect(page.locator("#content")).to_contain_text("Cancel these 2 workflows?")
    assert states(created, other) == {State.EXECUTE}
    page.fill("#id_reason", "wrong day")
    page.click("#confirm")
    expect(page.locator(".messagelist .success")).to_have_text("2 cancelled")
    for workflow in (created, other):
        cancel = workflow.transitions.get(event="cancel")
        assert (cancel.actor_label, cancel.reason, cancel.target) == ("admin:admin", "wrong day", State.CANCELLED)


def test_a_waiting_manual_workflow_and_a_search_by_its_short_id(cluster, page):
    cluster()
    waiting = start("schema migration", [{"type": "noop"}], mode="manual")
    busy = start("busy import", [{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    wait_for(lambda: waiting.tasks.get(name="prepare").status == Task.Status.SUCCEEDED, 30, "the manual prepare")
    wait_for(lambda: busy.tasks.filter(name="long", status=Task.Status.RUNNING).exists(), 30, "the long sleep")

    page.goto("/admin/workflow_orchestrator/workflow/")
    page.click("#toggle-nav-sidebar")  # room for every column in the screenshot
    row = page.locator("#result_list tbody tr", has_text="schema migration")
    badge = row.locator(".badge-waiting")
    expect(badge).to_have_text("WAITING")
    expect(row.locator(".field-state_badge")).to_contain_text("PREPARE")
    assert contrast(page, badge) >= 4.5
    expect(page.locator("#result_list tbody tr", has_text="busy import").locator(".badge-waiting")).to_have_count(0)

    # The 8-character id shown in the list finds the workflow.
    short_id = row.locator(".field-short_id").inner_text()
    assert short_id == str(waiting.pk)[:8]
    page.fill("#searchbar", short_id)
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list tbody tr")).to_contain_text("schema migration")
    screenshot(page, "admin-waiting.png")

    # On its page: the badge, and Next, which moves it on.
    page.get_by_role("link", name="schema migration").click()
    expect(page.locator(".field-state_badge .badge-waiting")).to_have_text("WAITING")
    expect(page.locator("#workflow-actions .button")).to_have_text(["Next step", "Cancel", "Pause workflow"])
    page.goto(f"/admin/workflow_orchestrator/workflow/{busy.pk}/change/")
    expect(page.locator(".field-state_badge .badge-waiting")).to_have_count(0)
    expect(page.locator("#workflow-actions .button")).to_have_text(
        ["Cancel", "Pause workflow"]
    )  # its work runs: no Next

    page.goto(f"/admin/workflow_orchestrator/workflow/{waiting.pk}/change/")
    page.click("#action-next")
    expect(page.locator(".messagelist .success")).to_have_text(
        "Next step: schema migration went from PREPARE to EXECUTE."
    )
    assert events(waiting) == ["start", "execute"]
    services.workflow_cancel(busy.pk, actor=Actor.SYSTEM)  # the sleep notices, so the cluster stops at once


def test_every_screen_phone_and_wide_readable_badges_and_a_favicon(cluster, page):
    cluster()
    done = start("invoice batch", [{"type": "echo", "params": {"n": 1}}, {"type": "noop"}])
    failed = start("nightly import with a rather long name", FAILS_ONCE, input={"day": "2025-01-01"})
    waiting = start("schema migration", [{"type": "noop"}], mode="manual")
    services.workflow_create(name="quarterly report", tasks=[{"type": "noop"}], actor=Actor.SYSTEM)  # INIT
    dropped = start("abandoned export", [{"type": "noop"}])
    services.workflow_cancel(dropped.pk, actor=Actor.SYSTEM, reason="not needed")
    wait_for(lambda: states(done) == {State.COMPLETE} and states(failed) == {State.FAILED}, 30, "the runs to end")
    wait_for(lambda: waiting.tasks.get(name="prepare").status == Task.Status.SUCCEEDED, 30, "the manual prepare")

    # Wide, with the sidebar open: every column header within the window, every badge readable.
    page.goto("/admin/workflow_orchestrator/workflow/")
    expect(page.locator("#nav-sidebar")).to_be_visible()
    expect(page.locator("#result_list tbody tr")).to_have_count(5)
    # All but definition, mode, priority, key and created (finished stays).
    expect(page.locator("#result_list thead th:visible")).to_have_count(9)
    # The list's box scrolls sideways when its table is wider: a column past its right edge is hidden.
    box = page.locator("#changelist .results").bounding_box()
    visible_right = min(page.evaluate("window.innerWidth"), box["x"] + box["width"])
    for header in page.locator("#result_list thead th:visible").all():
        box = header.bounding_box()
        assert box["x"] + box["width"] <= visible_right + 0.5, f"{header.inner_text()!r} is cut off"
    assert_badges_readable(page)
    for path in (
        f"/admin/workflow_orchestrator/workflow/{failed.pk}/change/",
        f"/admin/workflow_orchestrator/workflow/{waiting.pk}/change/",
    ):
        page.goto(path)
        assert_badges_readable(page)
    # One row of buttons, one size: Next step (a form's button), Cancel and Pause (links).
    buttons = page.locator("#workflow-actions .button")
    expect(buttons).to_have_text(["Next step", "Cancel", "Pause workflow"])
    sizes = {(round(box["height"]), round(box["y"])) for box in (b.bounding_box() for b in buttons.all())}
    assert len(sizes) == 1, sizes
    page.goto(f"/admin/workflow_orchestrator/task/{failed.tasks.get(name='load').pk}/change/")  # the attempts' outcomes
    assert_badges_readable(page)

    # The favicon, on the admin's pages and the browsable API's.
    for path in ("/admin/workflow_orchestrator/workflow/", "/workflows/"):
        page.goto(path)
        href = page.locator("link[rel=icon]").get_attribute("href")
        assert page.request.get(href).status == 200

    # A phone: only vertical scrolling; the list keeps name, state and progress.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/admin/workflow_orchestrator/workflow/")
    assert no_horizontal_scroll(page)
    row = page.locator("#result_list tbody tr", has_text="schema migration")
    for column in ("name", "state_badge", "progress"):
        expect(page.locator(f"#result_list thead th.column-{column}")).to_be_visible()
        cell = row.locator(f".field-{column}")
        expect(cell).to_be_in_viewport()
        box = cell.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (column, box)
    expect(row.locator(".badge-waiting")).to_be_visible()
    screenshot(page, "admin-phone-changelist.png")
    for workflow in (failed, waiting):
        page.goto(f"/admin/workflow_orchestrator/workflow/{workflow.pk}/change/")
        expect(page.locator("svg.state-graph")).to_be_visible()
        assert no_horizontal_scroll(page), page.evaluate("document.documentElement.scrollWidth")
    screenshot(page, "admin-phone-workflow.png")
    page.goto("/admin/workflow_orchestrator/workflow/dashboard/")
    expect(page.locator("svg.rate-chart")).to_have_count(2)
    assert no_horizontal_scroll(page), page.evaluate("document.documentElement.scrollWidth")
    assert_badges_readable(page)  # the states' cards and the cluster's
    screenshot(page, "admin-phone-overview.png")


def test_the_overview_matches_the_database_and_updates_itself(cluster, page):
    running = cluster()
    done = [start(f"invoice batch {i}", [{"type": "echo", "params": {"n": i}}, {"type": "noop"}]) for i in (1, 2)]
    failed = start("nightly import", FAILS_ONCE, input={"day": "2025-01-01"})
    services.workflow_create(name="quarterly report", tasks=[{"type": "noop"}], actor=Actor.SYSTEM)  # INIT
    wait_for(lambda: states(*done) == {State.COMPLETE} and states(failed) == {State.FAILED}, 30, "the runs to end")
    busy = start("busy import", [{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    long = wait_for(lambda: busy.tasks.filter(name="long", status=Task.Status.RUNNING).first(), 30, "the long sleep")

    page.goto("/admin/")
    page.click("#overview-link")
    expect(page).to_have_url(re.compile("/admin/workflow_orchestrator/workflow/dashboard/$"))
    expect(page.locator("#live-bar")).to_have_attribute("data-state", "live")
    for state in State.values:
        expect(page.locator(f'.state-card[data-state="{state}"] .count')).to_have_text(
            str(Workflow.objects.filter(state=state).count())
        )
    expect(page.locator("#figure-running")).to_have_text("1")
    # The cluster runs the long sleep: it is Working, not Idle, and links to the task.
    cluster_row = page.locator("#overview-clusters tr.cluster")
    expect(cluster_row).to_have_count(1)
    expect(cluster_row.locator(".badge")).to_have_text("Working")
    expect(cluster_row).to_contain_text(f"1 busy of {running.env['ORCH_WORKERS']}")
    expect(cluster_row.locator(f'a[href$="/admin/workflow_orchestrator/task/{long.pk}/change/"]')).to_have_count(1)
    failure = page.locator("#overview-failures tbody tr")
    expect(failure).to_have_count(1)
    expect(failure).to_contain_text("nightly import")
    expect(failure.locator(".error-line")).to_contain_text("warehouse unavailable")
    expect(page.locator("svg.rate-chart")).to_have_count(2)
    screenshot(page, "admin-overview.png")

    # It updates itself, without reloading: a workflow started elsewhere shows up in its counts.
    page.evaluate("window.notReloaded = true")
    more = start("late arrival", [{"type": "sleep", "params": {"seconds": 60}}])
    expect(page.locator("#figure-running")).to_have_text("2", timeout=20_000)
    assert page.evaluate("window.notReloaded === true")

    # Paused, it asks for nothing; resumed, it catches up.
    page.click(".live-toggle")
    expect(page.locator(".live-label")).to_have_text("Paused")
    seen = fetches(page)
    services.workflow_cancel(more.pk, actor=Actor.SYSTEM)
    page.wait_for_timeout(5_000)
    assert seen == []
    expect(page.locator("#figure-running")).to_have_text("2")
    page.click(".live-toggle")
    expect(page.locator("#figure-running")).to_have_text("1", timeout=20_000)
    expect(page.locator('.state-card[data-state="CANCELLED"] .count')).to_have_text("1")

    # A state's card opens the list of the workflows in that state.
    page.click('.state-card[data-state="FAILED"]')
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list tbody tr")).to_contain_text("nightly import")
    page.click("#overview-link")
    expect(page).to_have_url(re.compile("/admin/workflow_orchestrator/workflow/dashboard/$"))
    services.workflow_cancel(busy.pk, actor=Actor.SYSTEM)


def test_a_running_workflow_s_page_and_the_list_update_themselves(cluster, page):
    cluster()
    steps = [
        {"name": "extract", "type": "sleep", "params": {"seconds": 2}},
        {"name": "load", "type": "sleep", "params": {"seconds": 2}, "after": ["extract"]},
    ]
    first = start("hourly sync", steps)
    wait_for(lambda: first.tasks.filter(name="extract", status=Task.Status.RUNNING).exists(), 30, "the first task")

    # Its page follows it to COMPLETE on its own, then stops asking.
    page.goto(f"/admin/workflow_orchestrator/workflow/{first.pk}/change/")
    page.evaluate("window.notReloaded = true")
    expect(page.locator(".field-state_badge .badge")).to_have_text("EXECUTE")
    expect(page.locator("#live-bar .live-label")).to_have_text("Live")
    screenshot(page, "admin-live.png")
    expect(page.locator(".field-state_badge .badge")).to_have_text("COMPLETE", timeout=30_000)
    expect(page.locator("#workflow-subtitle")).to_have_text("hourly sync (COMPLETE)")
    expect(page).to_have_title(re.compile(r"^hourly sync \(COMPLETE\)"))
    expect(page.locator("#workflow-pictures svg.task-timeline .bar")).to_have_count(4)  # prepare, 2 tasks, validate
    expect(page.locator("#live-bar")).to_have_attribute("data-state", "ended")
    expect(page.locator("#live-bar .live-toggle")).to_be_hidden()
    assert page.evaluate("window.notReloaded === true")
    seen = fetches(page)
    page.wait_for_timeout(4_000)
    assert seen == [], "a page whose workflow has ended still polls"

    # The list: a ticked row stays ticked while its cells change.
    second = start("hourly sync 2", steps)
    page.goto("/admin/workflow_orchestrator/workflow/")
    page.evaluate("window.notReloaded = true")
    row = page.locator("#result_list tbody tr", has_text="hourly sync 2")
    expect(row.locator(".field-state_badge")).not_to_contain_text("COMPLETE")
    row.locator("input.action-select").check()
    expect(row.locator(".field-state_badge .badge")).to_have_text("COMPLETE", timeout=30_000)
    expect(row.locator("input.action-select")).to_be_checked()
    expect(page.locator(".action-counter")).to_contain_text("1 of 2 selected")

    # Nothing ticked, a new workflow appears as a row, and the admin's actions know it.
    row.locator("input.action-select").uncheck()
    start("hourly sync 3", [{"type": "noop"}])
    expect(page.locator("#result_list tbody tr")).to_have_count(3, timeout=20_000)
    page.check("#action-toggle")
    expect(page.locator(".action-counter")).to_contain_text("3 of 3 selected")
    assert page.evaluate("window.notReloaded === true")
    assert states(second) == {State.COMPLETE}


def test_an_approver_decides_an_expense_on_waiting_for_me(cluster, page):
    cluster()
    fields = [
        {"name": "cost_centre", "label": "Cost centre", "type": "choice", "choices": ["sales", "support"],
         "required": True},
        {"name": "note", "label": "Note for the customer", "type": "text"},
    ]  # fmt: skip
    approval = {
        "name": "approve",
        "type": "approval",
        "after": ["check"],
        "max_attempts": 1,
        "params": {
            "approvers": {"users": ["admin"]},
            "prompt": "Refund {amount} EUR to {customer} ({reason})? It is above the limit of 100 EUR.",
            "fields": fields,
            "deadline_seconds": 86400,
        },
    }
    tasks = [{"name": "check", "type": "echo", "params": {"limit": 100}}, approval,
             {"name": "pay", "type": "gather", "after": ["approve"]}]  # fmt: skip
    expense = start("refund ACME", tasks, input={"amount": 120, "customer": "ACME", "reason": "damaged on delivery"})
    wait_for(lambda: expense.tasks.get(name="approve").status == Task.Status.WAITING, 60, "the approval to wait")

    page.goto("/admin/")
    page.click("#waiting-link")
    section = page.locator("section.approval")
    expect(section).to_have_count(1)
    expect(section).to_contain_text("Refund 120 EUR to ACME (damaged on delivery)?")
    expect(section).to_contain_text("0 of 1 approval")
    page.select_option(f"#id_task-{expense.tasks.get(name='approve').pk}-cost_centre", "support")
    section.get_by_label("Note for the customer").fill("Sorry for the trouble.")
    section.get_by_label("Comment").fill("within the support budget")
    screenshot(page, "admin-waiting-for-me.png")
    section.get_by_role("button", name="Approve").click()
    expect(page.locator(".messagelist")).to_contain_text(re.compile("refund ACME: approve approved", re.IGNORECASE))
    expect(page.locator(".nothing-waiting")).to_be_visible()
    wait_for(lambda: states(expense) == {State.COMPLETE}, 60, "the expense to complete")
    decided = expense.transitions.get(event="decide")
    assert decided.actor_label == "admin:admin" and decided.data["data"] == {
        "cost_centre": "support",
        "note": "Sorry for the trouble.",
    }
    page.goto(f"/admin/workflow_orchestrator/workflow/{expense.pk}/change/")
    expect(page.locator("body")).to_contain_text("within the support budget")
    screenshot(page, "admin-approval-decided.png")
