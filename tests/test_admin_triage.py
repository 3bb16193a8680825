"""Triage in the admin, through Django's test client: the list's finished column and filter
(a window or a range, bad values said on the page, never a 500), the Waiting filter by what
a workflow waits for, the overview's WAITING card and its failures by time window and page,
the workers as the work they run, and the task page that updates itself."""

# ruff: noqa: F811  (the `make` fixture of test_admin, imported, is a parameter of the tests here)

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tests import dom
from tests.conftest import reload
from tests.test_admin import CHANGELIST, change_url, make, rows_by_name  # noqa: F401  (make: a fixture)
from workflow_orchestrator import moments, selectors, services, stats
from workflow_orchestrator.models import PHASES, Actor, ConcurrencyLimit, State, Task, Workflow

OVERVIEW = reverse("admin:workflow_orchestrator_workflow_dashboard")


def listed(response) -> set[str]:
    assert response.status_code == 200, response.status_code
    return {workflow.name for workflow in response.context["cl"].result_list}


def shown_messages(response) -> list[str]:
    return [message.message for message in response.context["messages"]]


def finished_ago(workflow: Workflow, **ago) -> Workflow:
    Workflow.objects.filter(pk=workflow.pk).update(finished_at=timezone.now() - timedelta(**ago))
    return reload(workflow)


# --- Finished: column, sort, filter ------------------------------------------------------------


@pytest.fixture
def finished(make):
    """Four ended workflows, finished 5 min, 40 min, 5 h and 3 days ago, and one running."""
    ended = {
        "5 min": finished_ago(make(State.COMPLETE, name="5 min"), minutes=5),
        "40 min": finished_ago(make(State.FAILED, name="40 min"), minutes=40),
        "5 h": finished_ago(make(State.COMPLETE, name="5 h"), hours=5),
        "3 d": finished_ago(make(State.CANCELLED, name="3 d"), days=3),
    }
    make(State.PREPARE, name="running")
    return ended


@pytest.mark.parametrize(
    "window, names",
    [("15m", {"5 min"}), ("1h", {"5 min", "40 min"}), ("1d", {"5 min", "40 min", "5 h"})],
)
def test_the_finished_filter_keeps_the_workflows_that_ended_within_its_window(admin_client, finished, window, names):
    assert listed(admin_client.get(CHANGELIST, {"finished": window})) == names


def test_the_finished_filter_takes_a_range_in_the_site_s_time_zone(admin_client, finished):
    now = timezone.localtime()
    since = (now - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M")
    before = (now - timedelta(minutes=20)).strftime("%Y-%m-%d %H:%M:%S")
    assert listed(admin_client.get(CHANGELIST, {"finished_at__gte": since, "finished_at__lt": before})) == {
        "40 min",
        "5 h",
    }
    # A date alone is its midnight.
    tomorrow = (now + timedelta(days=1)).date().isoformat()
    assert listed(admin_client.get(CHANGELIST, {"finished_at__gte": tomorrow})) == set()


@pytest.mark.parametrize(
    "query, said",
    [
        ({"finished_at__gte": "yesterday"}, "finished_at__gte (finished from): 'yesterday' is not a date"),
        ({"finished_at__lt": "2026-02-30"}, "finished_at__lt (finished before): '2026-02-30' is not a date"),
        ({"finished_at__gte": "2026-12-05T25:00"}, "'2026-12-05T25:00' is not a date"),
        ({"finished": "2y"}, "finished: '2y' is not one of 15m, 1h, 1d"),
    ],
)
def test_a_bad_finished_value_is_said_on_the_page_and_left_out(admin_client, finished, query, said):
    response = admin_client.get(CHANGELIST, query)
    assert listed(response) == {"5 min", "40 min", "5 h", "3 d", "running"}  # the value left out, not a 500
    [message] = shown_messages(response)
    assert said in message


def test_the_finished_column_shows_when_and_sorts_by_it(admin_client, finished):
    response = admin_client.get(CHANGELIST, {"o": "9"})  # list_display's 9th column: finished
    assert response.context["cl"].list_display[9] == "finished"
    names = [workflow.name for workflow in response.context["cl"].result_list]
    assert names == ["3 d", "5 h", "40 min", "5 min", "running"]  # not finished yet: last
    latest_first = admin_client.get(CHANGELIST, {"o": "-9"}).context["cl"].result_list
    assert [workflow.name for workflow in latest_first] == ["running", "5 min", "40 min", "5 h", "3 d"]
    cell = rows_by_name(dom.parse(response))["40 min"].one("td.field-finished time")
    assert cell.text.startswith("40 min ago")


def test_the_range_form_keeps_the_list_s_other_filters(admin_client, finished):
    page = dom.parse(admin_client.get(CHANGELIST, {"state__exact": "COMPLETE", "finished": "1d"}))
    form = page.one("form#finished-range")
    kept = {(field["name"], field["value"]) for field in form.select("input[type=hidden]")}
    assert kept == {("state__exact", "COMPLETE")}  # the window gives way to the range
    assert {field["name"] for field in form.select("input[type=datetime-local]")} == {
        "finished_at__gte",
        "finished_at__lt",
    }


# --- Waiting ---------------------------------------------------------------------------------


APPROVAL = {
    "name": "approve",
    "type": "approval",
    "params": {"approvers": {"users": ["ann"]}, "prompt": "Ship it?"},
}


@pytest.fixture
def waiting(engine, make):
    """A workflow waiting for each reason, and two that do not wait (one ready to run, one ended)."""
    make(State.COMPLETE, name="ended")  # first: the timer's job, due in an hour, would hold up its drain
    made = {
        "next": make("PREPARE done", name="for next"),
        "approval": engine.start(name="for approval", tasks=[APPROVAL]),
        "signal": engine.start(name="for signal", tasks=[{"type": "wait_signal", "params": {"name": "paid"}}]),
        "paused": make(State.PREPARE, name="paused"),
    }
    engine.drain()
    made["timer"] = engine.start(name="for timer", tasks=[{"type": "wait", "params": {"seconds": 3600}}])
    engine.drain(wait=1)  # not the 5 s default: the timer's wake-up job is due in an hour
    engine.call(services.workflow_pause, made["paused"].pk, actor=Actor.SYSTEM)
    # A key at its limit: its one slot taken by a task that runs; the other's task waits for it.
    services.limit_set("acme", max_running=1)
    first, second = (engine.start(name=name, tasks=[{"type": "noop"}], concurrency_key="acme") for name in "ab")
    ready = first.tasks.get(status=Task.Status.QUEUED)
    services.task_claim(ready.pk, ready.attempt, 300, worker="host:1")
    assert selectors.waiting_reason(reload(second)).startswith("concurrency key acme")
    made["key"] = second
    for name in ("for approval", "for signal", "for timer"):
        assert Workflow.objects.get(name=name).tasks.filter(status=Task.Status.WAITING).exists(), name
    return made


@pytest.mark.parametrize(
    "reason, names",
    [
        ("next", {"for next"}),
        ("approval", {"for approval"}),
        ("signal", {"for signal"}),
        ("timer", {"for timer"}),
        ("flow", {"paused", "b"}),
        ("any", {"for next", "for approval", "for signal", "for timer", "paused", "b"}),
    ],
)
def test_the_waiting_filter_finds_the_workflows_waiting_for_its_reason(admin_client, waiting, reason, names):
    assert listed(admin_client.get(CHANGELIST, {"waiting": reason})) == names


def test_each_waiting_workflow_says_why_on_its_page(waiting):
    # The filter's reasons and the workflow page's agree.
    assert all(selectors.waiting_reason(reload(workflow)) for workflow in waiting.values())


def test_each_waiting_row_of_the_list_shows_waiting_and_why(admin_client, waiting, django_assert_max_num_queries):
    with django_assert_max_num_queries(20):
        rows = rows_by_name(dom.parse(admin_client.get(CHANGELIST)))
    for name in ("for next", "for approval", "for signal", "for timer", "paused", "b"):
        badge = rows[name].one(".field-state_badge .badge-waiting")
        assert badge.text == "WAITING"
        why = badge.parent["title"]
        assert why and rows[name].one(".field-state_badge .sr-text").text == f"({why})"
    assert rows["for signal"].one(".field-state_badge .badge-waiting").parent["title"] == "waiting for signal paid"
    assert rows["paused"].one(".field-state_badge .badge-waiting").parent["title"] == "paused"
    for name in ("a", "ended"):  # its task runs; it has ended
        assert not rows[name].select(".badge-waiting"), name


def test_searching_waiting_finds_the_waiting_workflows(admin_client, waiting):
    assert "for signal" in listed(admin_client.get(CHANGELIST, {"q": "waiting"}))
    assert "ended" not in listed(admin_client.get(CHANGELIST, {"q": "waiting"}))


def test_an_unknown_waiting_reason_filters_nothing_and_is_no_error(admin_client, waiting):
    assert "ended" in listed(admin_client.get(CHANGELIST, {"waiting": "lunch"}))


def test_the_overview_s_waiting_card_counts_them_and_links_to_the_filtered_list(admin_client, waiting):
    page = dom.parse(admin_client.get(OVERVIEW))
    card = page.one("#waiting-card")
    everything = card.one("a.waiting-all")
    assert everything["href"] == f"{CHANGELIST}?waiting=any"
    assert everything.one(".count").text == "6"
    reasons = {link.text: link["href"] for link in card.select(".waiting-reasons a")}
    assert reasons == {
        "for Next (manual mode): 1": f"{CHANGELIST}?waiting=next",
        "for an approval: 1": f"{CHANGELIST}?waiting=approval",
        "for a signal: 1": f"{CHANGELIST}?waiting=signal",
        "for a timer: 1": f"{CHANGELIST}?waiting=timer",
        "flow control (paused, held, limits): 2": f"{CHANGELIST}?waiting=flow",
    }


def test_the_waiting_counts_are_one_query(waiting, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert selectors.waiting_counts()["all"] == 6


def test_the_overview_costs_the_same_queries_with_waiting_workflows_and_pages_of_failures(
    admin_client, make, engine, django_assert_max_num_queries
):
    make(State.COMPLETE)
    make(State.FAILED)
    with django_assert_max_num_queries(30) as small:
        admin_client.get(OVERVIEW)
    make("PREPARE done")
    for _ in range(3):
        make(State.FAILED)
    engine.start(tasks=[{"type": "wait", "params": {"seconds": 3600}}])
    engine.drain(wait=1)
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert admin_client.get(OVERVIEW, {"failures": "week", "failures_page": "2"}).status_code == 200


# --- The overview's failures -------------------------------------------------------------------


@pytest.fixture
def failures(make):
    return {
        "recent": finished_ago(make(State.FAILED, name="recent"), minutes=30),
        "today": finished_ago(make(State.FAILED, name="today"), hours=5),
        "this week": finished_ago(make(State.FAILED, name="this week"), days=3),
        "old": finished_ago(make(State.FAILED, name="old"), days=10),
    }


def failure_names(response) -> list[str]:
    assert response.status_code == 200
    return [row.one("a").text for row in dom.parse(response).select("#overview-failures tbody tr") if row.select("a")]


@pytest.mark.parametrize(
    "window, names",
    [("hour", ["recent"]), ("day", ["recent", "today"]), ("week", ["recent", "today", "this week"])],
)
def test_the_overview_lists_the_failures_of_a_time_window(admin_client, failures, window, names):
    assert failure_names(admin_client.get(OVERVIEW, {"failures": window})) == names


def test_the_overview_s_failures_default_to_the_last_day(admin_client, failures):
    assert failure_names(admin_client.get(OVERVIEW)) == ["recent", "today"]


def test_the_overview_pages_through_a_window_s_failures(admin_client, failures, monkeypatch):
    monkeypatch.setattr(stats, "FAILURES_PAGE", 2)
    first = admin_client.get(OVERVIEW, {"failures": "week"})
    assert failure_names(first) == ["recent", "today"]
    older = dom.parse(first).one("#failures-older")["href"]
    second = admin_client.get(older)
    assert failure_names(second) == ["this week"]
    page = dom.parse(second)
    assert not page.select("#failures-older")
    assert page.one("#failures-newer")["href"].endswith("failures=week&failures_page=1")


def test_the_overview_links_a_window_s_failures_to_the_filtered_list(admin_client, failures):
    link = dom.parse(admin_client.get(OVERVIEW, {"failures": "hour"})).one("#failures-list-link")["href"]
    assert listed(admin_client.get(link)) == {"recent"}
    link = dom.parse(admin_client.get(OVERVIEW, {"failures": "week"})).one("#failures-list-link")["href"]
    assert listed(admin_client.get(link)) == {"recent", "today", "this week"}


@pytest.mark.parametrize(
    "query, said",
    [
        ({"failures": "year"}, "failures: 'year' is not one of hour, day, week."),
        ({"failures_page": "0"}, "failures_page: '0' is not a page number (1 or more)."),
        ({"failures_page": "-1"}, "failures_page: '-1' is not a page number (1 or more)."),
        ({"failures_page": "x" * 100}, "failures_page: '" + "x" * 40 + "' is not a page number (1 or more)."),
    ],
)
def test_a_bad_failures_window_or_page_is_said_and_the_default_shown(admin_client, failures, query, said):
    response = admin_client.get(OVERVIEW, query)
    assert failure_names(response) == ["recent", "today"]
    assert shown_messages(response) == [said]


# --- Workers, the task page --------------------------------------------------------------------


def test_a_busy_worker_is_told_by_the_workflow_and_task_it_runs(engine):
    workflow = engine.start(name="nightly import", tasks=[{"name": "load", "type": "noop"}])
    ready = workflow.tasks.get(status=Task.Status.QUEUED)
    services.task_claim(ready.pk, ready.attempt, 300, worker="host-a:4242")
    running = stats.running_tasks()["host-a:4242"]
    assert running["task_id"] == ready.pk and running["task_name"] == ready.name
    assert (running["workflow_id"], running["workflow_name"]) == (workflow.pk, "nightly import")
    assert running["started_at"] is not None


@pytest.mark.parametrize("state, live", [(State.PREPARE, True), (State.COMPLETE, False)])
def test_a_task_s_page_updates_itself_until_it_can_change_no_more(admin_client, make, state, live):
    workflow = make(state)
    task = workflow.tasks.order_by("position").first()
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_task_change", args=[task.pk])))
    bar = page.one("#live-bar")
    assert ("data-ended" not in bar) is live
    assert bar["data-targets"].split(",") == ["task-breadcrumbs", "task-subtitle", "task_form"]
    assert page.one("#task-subtitle").text == str(task)
    assert str(task) in page.one("#task-breadcrumbs").text


def test_a_limit_at_its_running_count_makes_its_key_s_ready_workflows_wait(engine, admin_client):
    services.limit_set("solo", max_running=1)
    workflow = engine.start(name="solo", tasks=[{"type": "noop"}], concurrency_key="solo")
    assert "solo" not in listed(admin_client.get(CHANGELIST, {"waiting": "flow"}))
    ConcurrencyLimit.objects.filter(key="solo").update(running=1)  # another workflow's task holds the slot
    assert listed(admin_client.get(CHANGELIST, {"waiting": "flow"})) == {workflow.name}


def test_the_overview_s_running_figure_says_how_many_of_them_wait(admin_client, waiting):
    page = dom.parse(admin_client.get(OVERVIEW))
    assert page.one("#figure-running").text == str(Workflow.objects.filter(state__in=PHASES).count())
    assert page.one("#figure-running-waiting").text == "6 of them waiting"


# --- One way to show a moment ------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.4, "just now"),
        (5, "5 s ago"),
        (200, "3 min ago"),  # past a minute, its seconds are noise
        (7505, "2 h 5 min ago"),
        (90000, "1 d 1 h ago"),
        (-300, "in 5 min"),
    ],
)
def test_a_moment_reads_as_how_long_ago_or_how_soon(seconds, text):
    now = timezone.now()
    assert moments.relative(now - timedelta(seconds=seconds), now) == text


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (741, "12 min 21 s"), (7500, "2 h 5 min"), (86400, "1 d")])
def test_a_span_reads_in_at_most_two_units(seconds, text):
    assert moments.span_text(seconds) == text


def test_a_moment_is_shown_in_the_active_time_zone_with_its_name():
    moment = datetime(2026, 12, 5, 16, 40, 2, tzinfo=UTC)
    with timezone.override("Europe/Paris"):
        assert moments.absolute(moment) == "2026-12-05 17:40:02 CET"
        html = moments.moment_html(moment, now=moment + timedelta(minutes=3))
    assert html == (
        '<time class="moment" datetime="2026-12-05T16:40:02+00:00" title="2026-12-05 17:40:02 CET">3 min ago'
        '<span class="moment-absolute"> (2026-12-05 17:40:02 CET)</span></time>'
    )
    assert moments.moment_html(None) == "—"
