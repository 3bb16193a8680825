"""Accessibility of the console and the browsable API: axe-core (pinned in docs/mermaid's npm
project, installed by `make`'s `npm ci`) checks each page against WCAG 2.2 A and AA in Debian's
chromium, on a laptop's screen and on a phone, in light and dark mode, against a live server whose
workflows a real cluster has run into several states. No page may have a critical or serious
violation; the phone layout's targets are also measured (WCAG 2.5.8: 24 × 24 px, or spaced apart),
and a table wider than the phone is scrolled from the keyboard.

A new page of the console joins the checks by a line in ADMIN_PAGES (or API_PAGES).
"""

from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

AXE = ROOT / "docs" / "mermaid" / "node_modules" / "axe-core" / "axe.min.js"
if not Path("/usr/bin/chromium").exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)
if not AXE.exists():
    pytest.skip("needs axe-core: npm ci --prefix docs/mermaid", allow_module_level=True)

from tests.browser import start, states  # noqa: E402  (after the skips: it needs playwright)
from workflow_orchestrator import schedules, services  # noqa: E402
from workflow_orchestrator.models import Actor, Hold, State, Task, WorkflowSchedule  # noqa: E402
from workflow_orchestrator.services import holds, limits  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
BLOCKING = ("critical", "serious")
ADMIN = "/admin/workflow_orchestrator"

# Each page: its name and its path, with the ids of the world below filled in; or the name of a
# function of this module that takes the page there (the pages reached by a form).
ADMIN_PAGES = [
    ("admin index", "/admin/"),
    ("workflow list", f"{ADMIN}/workflow/"),
    ("failed workflow", f"{ADMIN}/workflow/{{failed}}/change/"),
    ("running workflow", f"{ADMIN}/workflow/{{running}}/change/"),
    ("manual workflow", f"{ADMIN}/workflow/{{manual}}/change/"),
    ("workflow history", f"{ADMIN}/workflow/{{failed}}/history/"),
    ("add workflow", f"{ADMIN}/workflow/add/"),
    ("overview", f"{ADMIN}/workflow/dashboard/"),
    ("waiting for me", f"{ADMIN}/workflow/waiting/"),
    ("confirm cancel", f"{ADMIN}/workflow/{{running}}/transition/cancel/"),
    ("confirm bulk cancel", "open_bulk_cancel"),
    ("task list", f"{ADMIN}/task/"),
    ("failed task", f"{ADMIN}/task/{{failed_task}}/change/"),
    ("transitions", f"{ADMIN}/transition/"),
    ("deletions", f"{ADMIN}/workflowdeletion/"),
    ("schedules", f"{ADMIN}/workflowschedule/"),
    ("schedule", f"{ADMIN}/workflowschedule/{{schedule}}/change/"),
    ("concurrency limits", f"{ADMIN}/concurrencylimit/"),
    ("holds", f"{ADMIN}/hold/"),
    # Issue 24's pages: triage by time, waiting, labels, bulk on a query, large graphs.
    ("finished in the last hour", f"{ADMIN}/workflow/?finished=1h"),
    ("waiting workflows", f"{ADMIN}/workflow/?waiting=any"),
    ("workflows by label", f"{ADMIN}/workflow/?label=customer:acme"),
    ("overview, failures of the week", f"{ADMIN}/workflow/dashboard/?failures=week"),
    ("confirm cancel all matching", f"{ADMIN}/workflow/bulk/cancel/?state__exact=EXECUTE"),
    ("bulk operations", f"{ADMIN}/bulkoperation/"),
    ("bulk operation", f"{ADMIN}/bulkoperation/{{bulk}}/change/"),
    ("large workflow", f"{ADMIN}/workflow/{{large}}/change/"),
    ("large workflow's graph", f"{ADMIN}/workflow/{{large}}/graph/"),
    ("running task", f"{ADMIN}/task/{{running_task}}/change/"),
]
API_PAGES = [
    ("API workflows", "/workflows/"),
    ("API workflow", "/workflows/{failed}/"),
    ("API start form", "/workflow/start"),
    ("API docs", "/docs"),
]
# The parts of a page that are not this project's: what Swagger UI draws (its own colours, sizes
# and nested controls: 87 serious at 390 px with axe-core 4.14.1), checked once it is drawn.
THIRD_PARTY = {"API docs": [".swagger-ui"]}
DRAWN = {"API docs": ".swagger-ui .opblock"}
FAILS = [
    {"name": "fetch", "type": "echo", "params": {"rows": 12}},
    {"name": "load", "type": "fail", "params": {"message": "warehouse unavailable"}, "max_attempts": 1},
]
APPROVAL = {
    "name": "approve",
    "type": "approval",
    "max_attempts": 1,
    "params": {"approvers": {"users": ["admin"]}, "prompt": "Refund {amount} EUR?", "deadline_seconds": 86400},
}


@pytest.fixture
def world(cluster, page):
    """Workflows a real cluster has run: complete, failed, waiting for a manual Next, waiting for
    an approval, running, cancelled and deleted; a schedule, a concurrency limit and a hold."""
    cluster()
    failed = start("nightly import", FAILS, input={"day": "2025-01-01"}, labels={"customer": "acme"})
    # Over 60 tasks: its page shows counts by status, its graph is on a page of its own.
    large = start("large fan-out", [{"name": f"part-{i}", "type": "noop"} for i in range(70)])
    complete = [start(f"invoice batch {i}", [{"type": "echo", "params": {"n": i}}]) for i in (1, 2)]
    manual = start("schema migration", [{"type": "noop"}], mode="manual")
    approval = start("refund ACME", [APPROVAL, {"name": "pay", "type": "gather", "after": ["approve"]}],
                     input={"amount": 120})  # fmt: skip
    running = start("long sleeper", [{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    dropped = start("abandoned export", [{"type": "noop"}])
    services.workflow_cancel(dropped.pk, actor=Actor.SYSTEM, reason="not needed")
    gone = start("old report", [{"type": "noop"}])
    wait_for(lambda: states(failed) == {State.FAILED}, 30, "the import to fail")
    wait_for(lambda: states(*complete, gone, large) == {State.COMPLETE}, 60, "the invoices to complete")
    wait_for(lambda: manual.tasks.get(name="prepare").status == Task.Status.SUCCEEDED, 30, "the manual prepare")
    wait_for(lambda: approval.tasks.get(name="approve").status == Task.Status.WAITING, 30, "the approval")
    wait_for(lambda: running.tasks.filter(status=Task.Status.RUNNING).exists(), 30, "the sleep to start")
    services.workflow_delete(gone.pk, actor=Actor.SYSTEM)
    schedule = schedules.schedule_save(
        WorkflowSchedule(name="nightly", cron="0 2 * * *", time_zone="Europe/Paris", tasks=[{"type": "noop"}])
    )
    limits.limit_set("warehouse", max_running=2)
    holds.hold_set(Hold.Kind.KEY, "reports", actor=Actor.SYSTEM, reason="month-end freeze")
    bulk = services.bulk_start(  # each one skipped: a COMPLETE workflow cannot be resumed
        "resume", [w.pk for w in complete], actor=Actor.SYSTEM, reason="checking", criteria={"state": ["COMPLETE"]}
    )
    wait_for(lambda: type(bulk).objects.get(pk=bulk.pk).status == "finished", 30, "the bulk operation")
    yield {
        "bulk": bulk.pk,
        "large": large.pk,
        "running_task": running.tasks.get(name="long").pk,
        "failed": failed.pk,
        "failed_task": failed.tasks.get(name="load").pk,
        "manual": manual.pk,
        "running": running.pk,
        "schedule": schedule.pk,
    }
    # The sleep notices the cancel and returns, so the cluster stops at once.
    services.workflow_cancel(running.pk, actor=Actor.SYSTEM, reason="end of the test")


def open_bulk_cancel(page, world) -> None:
    page.goto(f"{ADMIN}/workflow/?state__exact=EXECUTE")
    page.locator("#result_list tbody input.action-select").first.check()
    page.select_option("select[name=action]", label="Cancel selected workflows")
    page.get_by_role("button", name="Go").click()
    page.locator("#content form input[name=reason], #content form textarea[name=reason]").wait_for()


def visit(page, world, where: str) -> None:
    if where.startswith("/"):
        page.goto(where.format(**world))
    else:
        globals()[where](page, world)
    page.wait_for_load_state("load")


def axe(page, exclude=()) -> list[dict]:
    """The page's WCAG 2.2 A/AA violations, each with its rule, impact and the elements at fault."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate(
        """async ([tags, exclude]) => {
            const context = exclude.length ? {include: [document], exclude: exclude.map(s => [s])} : document;
            const options = {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']};
            const why = node => (node.failureSummary || '').split('\\n').slice(1, 2).join('').trim();
            return (await axe.run(context, options)).violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(node => `${node.target.join(' ')} — ${why(node)}`),
            }));
        }""",
        [WCAG, exclude],
    )


def check(page, world, pages, viewport, scheme="light") -> dict[str, list[dict]]:
    """Every page's violations at `viewport` in `scheme`, by page name."""
    page.set_viewport_size(viewport)
    page.emulate_media(color_scheme=scheme)
    found = {}
    for name, where in pages:
        visit(page, world, where)
        if name in DRAWN:
            page.locator(DRAWN[name]).first.wait_for()
        found[name] = axe(page, THIRD_PARTY.get(name, ()))
    return found


def blocking(found: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {name: [v for v in vs if v["impact"] in BLOCKING] for name, vs in found.items()}


def summary(found: dict[str, list[dict]], label: str) -> str:
    """Counts by page (critical/serious/other nodes), then each blocking rule with its elements."""
    lines = [f"axe, {label}:"]
    for name, violations in found.items():
        count = {impact: sum(len(v["nodes"]) for v in violations if v["impact"] == impact)
                 for impact in ("critical", "serious", "moderate", "minor")}  # fmt: skip
        rules = ", ".join(sorted({f"{v['id']}({v['impact']})" for v in violations})) or "-"
        lines.append(f"  {name:26} critical {count['critical']:3}  serious {count['serious']:3}  "
                     f"moderate {count['moderate']:3}  minor {count['minor']:3}  {rules}")  # fmt: skip
    for name, violations in blocking(found).items():
        for v in violations:
            lines.append(f"  {name}: {v['impact']} {v['id']}: {v['help']}")
            lines += [f"      {node}" for node in v["nodes"][:6]]
    return "\n".join(lines)


def assert_none_blocking(found, label: str) -> None:
    report = summary(found, label)
    print(report)  # the moderate and minor ones, kept in the test's output
    if any(blocking(found).values()):
        pytest.fail(report, pytrace=False)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1440px", "390px"])
def test_the_console_has_no_serious_violation(world, page, viewport):
    assert_none_blocking(check(page, world, ADMIN_PAGES, viewport), f"the console at {viewport['width']} px")


def at_both_widths(page, world, pages, scheme="light") -> dict[str, list[dict]]:
    found = {}
    for viewport in (DESKTOP, PHONE):
        for name, violations in check(page, world, pages, viewport, scheme).items():
            found[f"{name} {viewport['width']}"] = violations
    return found


def test_the_browsable_api_has_no_serious_violation(world, page):
    assert_none_blocking(at_both_widths(page, world, API_PAGES), "the browsable API")


DARK_PAGES = ["workflow list", "failed workflow", "overview", "confirm bulk cancel", "schedule", "API workflows"]


def test_dark_mode_has_no_serious_violation(world, page):
    pages = [(name, where) for name, where in ADMIN_PAGES + API_PAGES if name in DARK_PAGES]
    assert_none_blocking(at_both_widths(page, world, pages, scheme="dark"), "dark mode")


SMALL_TARGETS = """() => {
    // WCAG 2.5.8: a target is 24 × 24 px, or a 24 px circle on its centre meets no other target
    // nor another small target's circle. Links inside a sentence are exempt.
    const selector = 'a[href], button, input:not([type=hidden]), select, textarea, summary, '
        + '[tabindex]:not([tabindex="-1"])';
    const visible = el => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
        return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
    const inSentence = el => el.tagName === 'A' && ['P', 'LI', 'DD'].includes(el.parentElement.tagName)
        && el.parentElement.textContent.trim().length > el.textContent.trim().length + 20;
    const targets = [...document.querySelectorAll(selector)].filter(visible).filter(el => !inSentence(el))
        .filter(el => !el.closest('svg'));  // the diagrams' nodes are checked by their own tests
    const rects = targets.map(el => el.getBoundingClientRect());
    const small = rects.map(r => r.width < 23.5 || r.height < 23.5);
    const centre = r => [r.x + r.width / 2, r.y + r.height / 2];
    const gap = ([x, y], r) => Math.hypot(Math.max(r.left - x, 0, x - r.right), Math.max(r.top - y, 0, y - r.bottom));
    const contains = (outer, inner) => outer.left <= inner.left && outer.right >= inner.right
        && outer.top <= inner.top && outer.bottom >= inner.bottom;
    const faults = [];
    targets.forEach((el, i) => {
        if (!small[i]) return;
        const c = centre(rects[i]);
        const apart = j => small[j] ? Math.hypot(c[0] - centre(rects[j])[0], c[1] - centre(rects[j])[1]) >= 24
                                    : gap(c, rects[j]) >= 12;
        const near = targets.findIndex((other, j) => j !== i && !other.contains(el) && !el.contains(other)
            && !contains(rects[j], rects[i]) && !contains(rects[i], rects[j]) && !apart(j));
        const size = `${Math.round(rects[i].width)}×${Math.round(rects[i].height)}`;
        const what = node => node.outerHTML.slice(0, 90);
        if (near >= 0) faults.push(`${what(el)} (${size}) near ${what(targets[near])}`);
    });
    return faults;
}"""

TOUCH_PAGES = ["workflow list", "failed workflow", "running workflow", "overview", "task list", "schedules"]


def test_on_a_phone_targets_are_large_and_wide_tables_scroll_from_the_keyboard(world, page):
    page.set_viewport_size(PHONE)
    faults = {}
    for name, where in ADMIN_PAGES:
        if name in TOUCH_PAGES:
            visit(page, world, where)
            faults[name] = page.evaluate(SMALL_TARGETS)
    if any(faults.values()):
        pytest.fail("\n".join(f"{name}: {fault}" for name, fs in faults.items() for fault in fs), pytrace=False)

    # The audit log is wider than the phone: Tab reaches its box, named, and the arrow keys scroll it.
    page.goto(f"{ADMIN}/workflow/{world['failed']}/change/")
    log = page.get_by_role("region", name="Transitions (scrolls)")
    assert log.evaluate("box => box.scrollWidth > box.clientWidth")
    for _ in range(200):
        page.keyboard.press("Tab")
        if log.evaluate("box => document.activeElement === box"):
            break
    else:
        pytest.fail("Tab never reaches the audit log's box")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("box => box.scrollLeft > 0", arg=log.element_handle())
    page.set_viewport_size(DESKTOP)  # wide enough: the box no longer scrolls, nor takes the focus
    page.wait_for_function(
        "box => !box.hasAttribute('tabindex')", arg=page.locator("#transitions-group").element_handle()
    )
