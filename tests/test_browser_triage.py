"""Triage in a real browser (Debian's chromium through playwright) on pytest-django's
`live_server` while a real `qcluster` runs the jobs: failures found by when they finished,
times in words with their absolute time and zone, the WAITING card and the list it opens,
busy workers as the work they run, a task's page that follows its task, and a retry whose
heading, breadcrumb and message agree."""

import re
from datetime import timedelta
from pathlib import Path

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from django.utils import timezone
from playwright.sync_api import expect

from tests.browser import screenshot, start, states
from tests.conftest import wait_for
from workflow_orchestrator import services, stats
from workflow_orchestrator.models import Actor, State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LIST = "/admin/workflow_orchestrator/workflow/"
OVERVIEW = "/admin/workflow_orchestrator/workflow/dashboard/"
# Fails its only attempt: the workflow fails, and a retry completes it.
FAILS_ONCE = [
    {"name": "load", "type": "fail", "params": {"times": 1, "message": "warehouse unavailable"}, "max_attempts": 1}
]
EXACT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


def finished_ago(workflow: Workflow, **ago) -> None:
    Workflow.objects.filter(pk=workflow.pk).update(finished_at=timezone.now() - timedelta(**ago))


def test_failures_found_by_when_they_finished_with_times_in_words(cluster, page):
    cluster()
    recent = start("nightly import", FAILS_ONCE)
    old = start("last week's import", FAILS_ONCE)
    fine = start("invoice batch", [{"type": "noop"}])
    wait_for(lambda: states(recent, old) == {State.FAILED} and states(fine) == {State.COMPLETE}, 30, "the runs to end")
    finished_ago(old, days=3)

    page.goto(LIST)
    page.click("#toggle-nav-sidebar")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(3)
    # The sidebar's window: the last hour leaves last week's failure out.
    page.locator("#changelist-filter a", has_text="in the last hour").click()
    expect(page).to_have_url(re.compile(r"finished=1h"))
    expect(rows).to_have_count(2)
    row = page.locator("#result_list tbody tr", has_text="nightly import")

    # When it finished: in words, with the exact time and its zone on hover and for screen readers.
    finished = row.locator("td.field-finished time")
    expect(finished).to_have_text(re.compile(r"^(just now|\d+ s ago|\d+ min ago) \(\d{4}-.* UTC\)$"))
    assert EXACT.match(finished.get_attribute("title"))
    hidden = finished.locator(".moment-absolute")
    # The exact time is text a screen reader reads, in a box of 1 px that is not seen.
    assert hidden.bounding_box()["width"] <= 1 and hidden.text_content() == f" ({finished.get_attribute('title')})"

    # The failure's message, whole and wrapped, without the exception's module path first.
    error = row.locator("td.field-error_line")
    expect(error).to_have_text("load: warehouse unavailable (TaskFailed)")
    assert error.bounding_box()["width"] > 160
    # Every column on a laptop's screen, the new one and the wider error with them.
    widths = page.evaluate("(e => [e.scrollWidth, e.clientWidth])(document.querySelector('.results'))")
    assert widths[0] <= widths[1], widths
    screenshot(page, "admin-triage-finished.png")

    # A range typed in the sidebar (in the site's time zone) finds last week's.
    page.goto(LIST)
    five_days_ago = timezone.localtime() - timedelta(days=5)
    page.fill("#finished-from", five_days_ago.strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#finished-before", (timezone.localtime() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.locator("#finished-range button").click()
    expect(page).to_have_url(re.compile(r"finished_at__gte=.*finished_at__lt="))
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("last week's import")

    # A bound that is not a time is said on the page, and the list is shown without it.
    page.goto(f"{LIST}?finished_at__gte=last+tuesday")
    expect(page.locator(".messagelist .error")).to_contain_text("'last tuesday' is not a date or a date and time")
    expect(rows).to_have_count(3)

    # The overview's failures: by time window, with the same times.
    page.goto(OVERVIEW)
    failures = page.locator("#overview-failures tbody tr")
    expect(failures).to_have_count(1)
    expect(failures.locator("time")).to_have_text(re.compile(r"ago \(\d{4}-.* UTC\)$"))
    page.locator(".failures-windows a", has_text="last week").click()
    expect(failures).to_have_count(2)
    page.click("#failures-list-link")
    expect(rows).to_have_count(2)


def test_the_waiting_card_opens_the_list_of_waiting_workflows(cluster, page):
    cluster()
    stepped = start("migration (manual)", [{"type": "noop"}], mode="manual")  # waits for `next` in PREPARE
    signalled = start("awaiting payment", [{"name": "paid", "type": "wait_signal", "params": {"name": "paid"}}])
    busy = start("busy import", [{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    wait_for(lambda: stepped.tasks.get(name="prepare").status == Task.Status.SUCCEEDED, 30, "the manual prepare")
    wait_for(lambda: signalled.tasks.filter(status=Task.Status.WAITING).exists(), 30, "the signal's wait")
    wait_for(lambda: busy.tasks.filter(status=Task.Status.RUNNING).exists(), 30, "the long sleep")

    page.goto(OVERVIEW)
    card = page.locator("#waiting-card")
    expect(card.locator(".waiting-all .count")).to_have_text("2")
    expect(card.locator(".waiting-all .badge")).to_have_text("WAITING")
    expect(card.locator(".waiting-reasons")).to_contain_text("for a signal: 1")
    screenshot(page, "admin-triage-waiting.png")
    card.locator(".waiting-all").click()
    expect(page).to_have_url(re.compile(r"waiting=any"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#result_list")).not_to_contain_text("busy import")

    # The filter's reason in the sidebar narrows it down.
    page.locator("#changelist-filter a", has_text="for a signal").click()
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("awaiting payment")
    # And the search finds them by the word.
    page.goto(f"{LIST}?q=waiting")
    expect(rows).to_have_count(2)
    services.workflow_cancel(busy.pk, actor=Actor.SYSTEM)


def test_a_busy_worker_shows_its_work_and_the_task_s_page_follows_it(cluster, page):
    running = cluster()
    workflow = start("hourly sync", [{"name": "extract", "type": "sleep", "params": {"seconds": 4}}])
    task = wait_for(
        lambda: workflow.tasks.filter(name="extract", status=Task.Status.RUNNING).first(), 30, "the task to run"
    )
    # The cluster whose worker runs it (an earlier test's cluster may still be in the statistics).
    [cluster_id] = [
        c["cluster_id"]
        for c in stats.cluster_stats()["clusters"]
        if any(f"{c['host']}:{worker['pid']}" == task.worker for worker in c["worker_processes"])
    ]

    page.goto(OVERVIEW)
    row = page.locator("#overview-clusters tr.cluster", has_text=cluster_id)
    expect(row).to_have_count(1)
    expect(row.locator(".cluster-id")).to_have_text(cluster_id)  # whole, not cut to 8 characters
    assert len(cluster_id) > 9
    expect(row.locator(".cluster-uptime")).to_have_text(re.compile(r"^\d+ (s|min)( \d+ s)?$"))
    worker = row.locator("li.worker-task")
    expect(worker).to_have_count(1)
    expect(worker).to_contain_text("hourly sync › extract")
    expect(worker.locator(".worker-running-for")).to_have_text(re.compile(r"^for \d+ s$"))
    screenshot(page, "admin-triage-workers.png")
    assert running.env["ORCH_WORKERS"]

    # Its link opens the task's page, which follows the task to its end without a reload.
    worker.locator("a.worker-task-link").click()
    expect(page).to_have_url(re.compile(rf"/admin/workflow_orchestrator/task/{task.pk}/change/$"))
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#live-bar")).to_have_attribute("data-state", "live")
    expect(page.locator(".field-status_badge .badge")).to_have_text("RUNNING")
    expect(page.locator(".field-status_badge .badge")).to_have_text("SUCCEEDED", timeout=30_000)
    expect(page.locator("#task-subtitle")).to_contain_text("SUCCEEDED")
    expect(page.locator("#task-breadcrumbs")).to_contain_text("SUCCEEDED")
    expect(page.locator(".field-finished time")).to_have_text(re.compile(r"ago \(\d{4}-.* UTC\)$"))
    wait_for(lambda: states(workflow) == {State.COMPLETE}, 30, "the workflow to complete")
    expect(page.locator("#live-bar")).to_have_attribute("data-state", "ended", timeout=20_000)
    assert page.evaluate("window.notReloaded === true")


def test_after_a_retry_heading_breadcrumb_state_and_message_agree(cluster, page):
    cluster()
    workflow = start("nightly import", FAILS_ONCE)
    wait_for(lambda: states(workflow) == {State.FAILED}, 30, "the workflow to fail")

    page.goto(f"{LIST}{workflow.pk}/change/")
    page.click("#action-retry")
    # What the retry did: true whatever the cluster has done since.
    expect(page.locator(".messagelist .success")).to_have_text("Retry: nightly import went from FAILED to EXECUTE.")

    def shown() -> tuple[str, str, str]:
        heading = re.search(r"\((\w+)\)$", page.locator("#workflow-subtitle").inner_text())[1]
        crumb = re.search(r"\((\w+)\)\s*$", page.locator("#workflow-breadcrumbs").inner_text())[1]
        return heading, crumb, page.locator(".field-state_badge .badge").first.inner_text()

    heading, crumb, badge = shown()
    assert heading == crumb == badge, (heading, crumb, badge)
    expect(page.locator(".field-state_badge .badge").first).to_have_text("COMPLETE", timeout=30_000)
    expect(page.locator("#workflow-breadcrumbs")).to_contain_text("(COMPLETE)")
    assert shown() == ("COMPLETE", "COMPLETE", "COMPLETE")


def test_the_index_s_overview_link_reads_as_a_line(page):
    page.goto("/admin/")
    link = page.locator("#overview-link")
    box = link.bounding_box()
    assert box["width"] > 50 and box["height"] < 30, box  # not a column of single letters
    link.click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))
