"""Bulk on a query in Chromium, on a live server with a real cluster: filter the workflow
list, "Cancel all N matching", see N on the confirmation, give a reason, and watch the
operation's page count up to N while the cluster works through them."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser import screenshot
from tests.test_bulk import REASON, insert_init_workflows
from workflow_orchestrator.models import BulkOperation, State, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MATCHING = 230  # more than one step's chunk (services.bulk.CHUNK)


def test_cancel_all_matching_from_the_filtered_list(cluster, page):
    cluster()
    insert_init_workflows(MATCHING, customer="acme")
    Workflow.objects.filter(labels__customer="acme").update(name="acme import")
    insert_init_workflows(3, customer="globex")

    page.goto("/admin/workflow_orchestrator/workflow/")
    page.fill("#searchbar", "acme")
    page.press("#searchbar", "Enter")
    expect(page).to_have_url(re.compile(r"q=acme"))
    page.locator("#changelist-filter a", has_text="Init").first.click()
    expect(page).to_have_url(re.compile(r"state__exact=INIT"))
    controls = page.locator("#bulk-query")
    expect(controls).to_contain_text(f"Cancel all {MATCHING} matching")
    screenshot(page, "admin-bulk-list.png")
    controls.locator("a", has_text="Cancel all").click()

    expect(page.locator("#bulk-matching")).to_have_text(str(MATCHING))
    expect(page.locator("#bulk-filters")).to_contain_text("search: acme")
    expect(page.locator("#bulk-filters")).to_contain_text("state: Init")
    screenshot(page, "admin-bulk-confirm.png")
    page.click("#confirm")  # no reason yet: the browser asks for one (required)
    expect(page.locator("#bulk-matching")).to_have_text(str(MATCHING))
    assert not BulkOperation.objects.exists()
    page.fill("#id_reason", REASON)
    page.click("#confirm")

    expect(page).to_have_url(re.compile(r"/admin/workflow_orchestrator/bulkoperation/[0-9a-f-]+/change/$"))
    expect(page.locator("#bulk-status")).to_have_text("Finished", timeout=120_000)
    expect(page.locator("#bulk-progress")).to_contain_text(f"{MATCHING} of {MATCHING} dealt with (100%)")
    expect(page.locator("#bulk-done")).to_have_text(str(MATCHING))
    expect(page.locator("#live-bar")).to_have_attribute("data-state", "ended")
    screenshot(page, "admin-bulk-progress.png")
    assert Workflow.objects.filter(state=State.CANCELLED, transitions__reason=REASON).count() == MATCHING
    assert Workflow.objects.filter(labels__customer="globex", state=State.INIT).count() == 3

    page.click("#bulk-workflows")
    expect(page.locator("#result_list tbody tr")).to_have_count(50)  # a page of them
    expect(page.locator("#result_list tbody .badge", has_text="CANCELLED")).to_have_count(50)
