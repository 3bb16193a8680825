"""Cron schedules in the admin, in a real browser (Debian's chromium driven by playwright)
against pytest-django's `live_server` while a real `qcluster` runs the jobs: each row's
Pause, Resume and Run now buttons, and the run they start, followed to its end.

With ORCH_SCREENSHOTS=1 the test also saves the screenshot the documentation shows, in docs/img/.
"""

import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

from playwright.sync_api import expect

from tests.browser import screenshot
from tests.conftest import wait_for
from workflow_orchestrator import schedules
from workflow_orchestrator.models import State, Workflow, WorkflowSchedule

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARIS = "Europe/Paris"


def test_pause_resume_and_run_a_schedule_from_its_row_then_follow_the_run(cluster, page):
    cluster()
    nightly = schedules.schedule_save(
        WorkflowSchedule(
            name="nightly import",
            cron="30 2 * * *",
            time_zone=PARIS,
            tasks=[{"name": "fetch", "type": "echo", "params": {"rows": 120}}, {"type": "noop"}],
        )
    )
    schedules.schedule_save(WorkflowSchedule(name="office hours sync", cron="*/15 9-17 * * 1-5", time_zone="UTC"))

    page.goto("/admin/workflow_orchestrator/workflowschedule/")
    row = page.locator("#result_list tbody tr", has_text="nightly import")
    expect(row.locator("td.field-cron_in_words")).to_have_text(re.compile(r"30 2 \* \* \*\s*At 02:30 every day"))
    due = nightly.next_run_at.astimezone(ZoneInfo(PARIS))
    expect(row.locator("td.field-next_run")).to_have_text(f"{due:%Y-%m-%d} 02:30 Europe/Paris")
    other = page.locator("#result_list tbody tr", has_text="office hours sync")
    expect(other.locator("td.field-cron_in_words")).to_contain_text("Every 15 minutes from 09:00 to 17:59")
    screenshot(page, "admin-schedules.png")

    # Pause, from the row: no tick, no dropdown.
    row.get_by_role("button", name="Pause nightly import").click()
    expect(page.locator(".messagelist .success")).to_have_text(
        "Nightly import is paused: it starts nothing until it is resumed."  # the admin capitalises messages
    )
    expect(row.locator("td.field-status")).to_have_text("PAUSED")
    expect(row.locator("td.field-next_run")).to_have_text("— (paused)")
    assert WorkflowSchedule.objects.get(pk=nightly.pk).enabled is False

    row.get_by_role("button", name="Resume nightly import").click()
    expect(page.locator(".messagelist .success")).to_have_text(
        re.compile(r"Nightly import is resumed: next run \d{4}-\d\d-\d\d 02:30 Europe/Paris\.")
    )
    expect(row.locator("td.field-status")).to_have_text("ENABLED")

    # Run now: the message links to the workflow it started, which the cluster runs to its end.
    row.get_by_role("button", name="Run now nightly import").click()
    started = page.locator(".messagelist .success a")
    expect(started).to_have_text(re.compile(r"workflow [0-9a-f-]{36}"))
    workflow = Workflow.objects.get(schedule=nightly)
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 30, "the run to complete")
    started.click()
    expect(page).to_have_url(re.compile(rf"/workflow/{workflow.pk}/change/"))
    expect(page.locator("#content")).to_contain_text("nightly import")
    expect(page.locator("body")).to_contain_text("COMPLETE")
    # The run is counted on the schedule's row.
    page.goto("/admin/workflow_orchestrator/workflowschedule/")
    expect(row.locator("td.field-workflows_link")).to_have_text("1 started")


def test_swagger_ui_starts_a_workflow_s_body_from_the_schema_s_example(page):
    """/docs: POST /workflows/ shows the example body (a real task type, not "string") as its
    Example Value, and Try it out starts from it."""
    page.goto("/docs")
    operation = page.locator("#operations-workflows-workflows_create")
    operation.locator(".opblock-summary").click()
    example = operation.locator(".body-param__example").first
    expect(example).to_contain_text('"type": "echo"')
    operation.get_by_role("button", name="Try it out").click()
    body = operation.locator("textarea.body-param__text")
    expect(body).to_have_value(re.compile(r'"type": "echo"'))
    assert body.input_value().strip() != "{}"
