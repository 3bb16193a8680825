"""Why is it waiting? A running workflow none of whose tasks runs or may start says why
(`waiting_reason`: in the API, `workflow show` and the admin); the overview counts the
waiting tasks by reason and key, and /metrics the running and waiting tasks per key, in a
bounded number of rows and series however many keys there are."""

import json
import shutil
import subprocess
from datetime import UTC, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import reload, task
from workflow_orchestrator import metrics, selectors, services, stats
from workflow_orchestrator.models import Actor, ConcurrencyLimit, State, Task, Workflow

Status = Task.Status
ONE_TASK = [{"name": "a", "type": "noop"}]
TOKEN = "metrics-token-for-waiting"


def claim() -> Task | None:
    """The next claimable task, for a worker: what a delivery does."""
    return services.task_claim(None, None, 300, worker="w")


def claim_of(workflow: Workflow) -> Task:
    """The workflow's ready task, claimed for a worker by its id (whatever the claim's order)."""
    ready = workflow.tasks.get(status=Status.QUEUED)
    return services.task_claim(ready.pk, ready.attempt, 300, worker="w")


def reason(workflow: Workflow, now=None) -> str | None:
    return selectors.waiting_reason(reload(workflow), now)


def utc_second(moment) -> str:
    """How a reason writes a moment: UTC, rounded up to the second."""
    rounded = moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond else 0)
    return f"{rounded.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def pause(engine, workflow: Workflow) -> None:
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)


def key_at_its_limit(engine, key: str = "acme") -> tuple[Workflow, Workflow]:
    """Two workflows of `key`, whose limit is 1: the one whose task runs, and the other."""
    services.limit_set(key, max_running=1)
    first, second = (engine.start(tasks=ONE_TASK, concurrency_key=key) for _ in range(2))
    claim_of(first)
    return first, second


def rate_filled(engine, key: str = "api") -> tuple[Workflow, Workflow]:
    """Two workflows of `key`, whose rate is 1 start per 30 s: the one started, and the other."""
    services.limit_set(key, rate=1, per_seconds=30)
    first, second = (engine.start(tasks=ONE_TASK, concurrency_key=key) for _ in range(2))
    claim_of(first)
    return first, second


def retrying(engine, settings) -> Workflow:
    """A workflow whose only task failed its first attempt and waits out a minute's backoff."""
    settings.ORCH_RETRY_BACKOFF = 60
    workflow = engine.start(tasks=[{"name": "f", "type": "fail", "params": {"times": 1}, "max_attempts": 2}])
    engine.call(services.task_record, claim_of(workflow))  # PREPARE
    engine.call(services.task_record, claim_of(workflow), error="boom")
    assert task(workflow, "f").status == Status.QUEUED and task(workflow, "f").queued_at > timezone.now()
    return workflow


# --- The reasons ------------------------------------------------------------------------------


def test_no_reason_before_the_start_or_once_ended(engine):
    created, _ = services.workflow_create(name="init", actor=Actor.SYSTEM, tasks=ONE_TASK)
    complete = engine.start(tasks=ONE_TASK)
    failed = engine.start(tasks=[{"type": "fail", "max_attempts": 1}])
    cancelled = engine.start(tasks=ONE_TASK)
    engine.call(services.workflow_cancel, cancelled.pk, actor=Actor.SYSTEM)
    pause(engine, created)  # a workflow paused before it starts has not started either
    engine.drain()
    assert [reload(w).state for w in (created, complete, failed, cancelled)] == [
        State.INIT, State.COMPLETE, State.FAILED, State.CANCELLED,
    ]  # fmt: skip
    assert [reason(w) for w in (created, complete, failed, cancelled)] == [None] * 4


def test_no_reason_while_a_task_is_claimable_or_runs(engine):
    workflow = engine.start(tasks=ONE_TASK)
    assert reason(workflow) is None  # its PREPARE task waits for a free worker: that is no reason
    claim()
    assert task(workflow, "prepare").status == Status.RUNNING
    assert reason(workflow) is None


def test_a_paused_workflow_says_paused_until_it_is_resumed(engine):
    workflow = engine.start(tasks=ONE_TASK)
    pause(engine, workflow)
    assert reason(workflow) == "paused"
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    assert reason(workflow) is None


def test_a_manual_workflow_whose_phase_is_done_waits_for_next(engine):
    workflow = engine.start(tasks=ONE_TASK, mode=Workflow.Mode.MANUAL)
    engine.drain()
    assert reload(workflow).state == State.PREPARE
    assert reason(workflow) == "waiting for next (manual mode)"
    engine.call(services.workflow_next, workflow.pk, actor=Actor.SYSTEM)
    assert reason(workflow) is None  # EXECUTE's task is ready


def test_a_key_at_its_limit_holds_the_others_and_names_its_count(engine):
    holder, held = key_at_its_limit(engine)
    assert reason(holder) is None  # its task runs
    assert reason(held) == "concurrency key acme: 1 of 1 running"
    engine.call(services.task_record, holder.tasks.get(status=Status.RUNNING))  # the slot is given back
    assert reason(held) is None


def test_a_full_rate_window_says_until_when_in_utc_rounded_up(engine):
    started, held = rate_filled(engine)
    window_start = timezone.now().replace(microsecond=250_000) - timedelta(seconds=10)
    ConcurrencyLimit.objects.filter(key="api").update(window_started_at=window_start)
    assert reason(started) is None
    end = window_start + timedelta(seconds=30)
    rounded_up = (end + timedelta(seconds=1)).replace(microsecond=0).astimezone(UTC)
    assert reason(held) == f"rate limit of key api until {rounded_up:%Y-%m-%d %H:%M:%S} UTC"
    assert reason(held, now=end) is None  # the window has ended: a start is allowed


def test_a_workflow_whose_task_waits_out_a_backoff_says_when_it_is_due(engine, settings):
    workflow = retrying(engine, settings)
    due = task(workflow, "f").queued_at
    assert reason(workflow) == f"retry due at {utc_second(due)}"
    assert reason(workflow, now=due) is None  # due: claimable


def test_paused_comes_before_the_other_reasons(engine, settings):
    _, held = key_at_its_limit(engine)
    manual = engine.start(tasks=ONE_TASK, mode=Workflow.Mode.MANUAL)
    engine.call(services.task_record, claim_of(manual))
    assert reason(manual) == "waiting for next (manual mode)"
    for workflow in (held, manual):
        pause(engine, workflow)
        assert reason(workflow) == "paused"


def test_a_page_costs_two_queries_whatever_its_size_and_says_what_each_workflow_would(
    engine, settings, django_assert_num_queries
):
    holder, held = key_at_its_limit(engine)
    started, rated = rate_filled(engine)
    paused = engine.start(tasks=ONE_TASK)
    pause(engine, paused)
    ready = [engine.start(tasks=ONE_TASK, concurrency_key=f"k{i}") for i in range(10)]
    retried = retrying(engine, settings)
    created, _ = services.workflow_create(name="init", actor=Actor.SYSTEM, tasks=ONE_TASK)
    page = list(Workflow.objects.all())
    with django_assert_num_queries(2):  # the tasks counted by workflow and key; the limits of the keys due
        reasons = selectors.waiting_reasons(page)
    assert reasons == {workflow.pk: selectors.waiting_reason(workflow) for workflow in page}
    assert [reasons[w.pk] for w in (holder, started, paused, retried, created, *ready)] == [
        None, None, "paused", f"retry due at {utc_second(task(retried, 'f').queued_at)}", None, *[None] * 10,
    ]  # fmt: skip
    assert reasons[held.pk].startswith("concurrency key acme") and reasons[rated.pk].startswith("rate limit of key api")
    created = reload(created)
    with django_assert_num_queries(0):  # nothing running: nothing to ask
        assert selectors.waiting_reasons([created]) == {created.pk: None}


# --- Where it shows -----------------------------------------------------------------------------


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def api(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    return client


def owned(engine, owner, **kwargs) -> Workflow:
    workflow, _ = engine.call(
        services.workflow_create, name="mine", actor=Actor.api(owner), start=True, tasks=ONE_TASK, **kwargs
    )
    return workflow


def test_the_api_gives_the_reason_in_the_status_the_detail_and_the_list(engine, api, owner):
    _, held = key_at_its_limit(engine)
    Workflow.objects.filter(pk=held.pk).update(created_by=owner)
    paused = owned(engine, owner)
    pause(engine, paused)
    ready = owned(engine, owner)
    listed = {row["id"]: row["waiting_reason"] for row in api.get("/workflows/").json()["results"]}
    expected = {str(held.pk): "concurrency key acme: 1 of 1 running", str(paused.pk): "paused", str(ready.pk): None}
    assert listed == expected
    for workflow_id, text in expected.items():
        assert api.get(f"/execution/workflows/{workflow_id}/status").json()["waiting_reason"] == text
        assert api.get(f"/workflow/{workflow_id}").json()["waiting_reason"] == text


def test_the_list_s_queries_do_not_grow_with_the_waiting_workflows_it_shows(
    engine, api, owner, django_assert_max_num_queries
):
    services.limit_set("acme", max_running=1)

    def some(count: int) -> None:
        for i in range(count):
            workflow = owned(engine, owner, concurrency_key="acme" if i % 2 else f"k{i}")
            if i % 3 == 0:
                pause(engine, workflow)
        claim()

    some(3)
    with django_assert_max_num_queries(8) as small:
        assert api.get("/workflows/").status_code == 200
    some(20)
    with django_assert_max_num_queries(len(small.captured_queries)):
        rows = api.get("/workflows/").json()["results"]
    assert len(rows) == 23 and {row["waiting_reason"] for row in rows} >= {"paused", None}


def test_the_schema_documents_the_reason_as_a_nullable_string(api):
    schema = api.get("/schema", {"format": "json"}).json()["components"]["schemas"]
    for name in ("WorkflowStatus", "WorkflowDetail", "WorkflowList"):
        field = schema[name]["properties"]["waiting_reason"]
        assert (field["type"], field["nullable"], field["readOnly"]) == ("string", True, True)
        assert "paused" in field["description"] and "null" in field["description"]
        assert "waiting_reason" in schema[name]["required"]


def show(engine, workflow: Workflow, *options: str) -> str:
    out = StringIO()
    with engine.capture(execute=True):
        call_command("workflow", "show", str(workflow.pk), *options, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_workflow_show_prints_the_reason_and_its_json_has_it(engine):
    workflow = engine.start(tasks=ONE_TASK)
    assert "waiting:" not in show(engine, workflow)
    assert json.loads(show(engine, workflow, "--json"))["waiting_reason"] is None
    pause(engine, workflow)
    lines = show(engine, workflow).splitlines()
    assert "  waiting: paused" in lines[1:3]  # under the line with its id, name and state
    assert json.loads(show(engine, workflow, "--json"))["waiting_reason"] == "paused"


def test_the_admin_page_of_a_workflow_says_why_it_waits(engine, admin_client):
    _, held = key_at_its_limit(engine)
    ready = engine.start(tasks=ONE_TASK)
    url = reverse("admin:workflow_orchestrator_workflow_change", args=[held.pk])
    page = dom.parse(admin_client.get(url))
    assert page.one("#waiting-reason").text == "Waiting: concurrency key acme: 1 of 1 running"
    assert page.one("#workflow_form #waiting-reason")  # inside what the live page refreshes
    ready_page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[ready.pk])))
    assert ready_page.select("#waiting-reason") == []


# --- The overview ---------------------------------------------------------------------------


def a_bit_of_everything(engine, settings) -> None:
    """Running: 1 of acme, 1 of api. Waiting: 2 of acme at its limit, 1 of api rate limited;
    without a key: 1 paused, 1 due later (a retry), 1 ready."""
    services.limit_set("acme", max_running=1)
    acme = [engine.start(tasks=ONE_TASK, concurrency_key="acme") for _ in range(3)]
    claim_of(acme[0])
    rate_filled(engine)
    pause(engine, engine.start(tasks=ONE_TASK))
    later = engine.start(tasks=ONE_TASK)
    Task.objects.filter(workflow=later).update(queued_at=timezone.now() + timedelta(hours=1))
    engine.start(tasks=ONE_TASK)


def test_the_overview_counts_waiting_tasks_by_reason_and_by_key(engine, settings, admin_client):
    a_bit_of_everything(engine, settings)
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_dashboard")))
    figures = {
        name: int(page.one(f"#waiting-{name}").text)
        for name in ("running", "ready", "paused", "at-limit", "rate-limited", "due-later")
    }
    assert figures == {"running": 2, "ready": 1, "paused": 1, "at-limit": 2, "rate-limited": 1, "due-later": 1}
    rows = [[cell.text for cell in row.select("td")] for row in page.select("#overview-keys tr.key")]
    until = timezone.localtime(ConcurrencyLimit.objects.get(key="api").window_started_at + timedelta(seconds=30))
    # key, running, limits, ready, at limit, rate limited, paused, due later: the most loaded first
    window_end = rows[2].pop(5)  # when it ends in words (relative to now), then its moment with its zone
    assert window_end.startswith("1 window ends in ") and window_end.endswith(f"({until:%Y-%m-%d %H:%M:%S} UTC)")
    assert rows == [
        ["no key", "0", "—", "1", "0", "0", "1", "1"],
        ["acme", "1", "at most 1 running", "0", "2", "0", "0", "0"],
        ["api", "1", "at most 1 starts per 30 s", "0", "0", "0", "0"],
    ]
    assert page.select("#overview-keys tr.key-other") == []


def test_the_overview_lists_ten_keys_and_sums_the_rest(engine, admin_client, django_assert_max_num_queries):
    for i in range(12):
        for _ in range(12 - i):  # key k00 has the most tasks, k11 the fewest
            engine.start(tasks=ONE_TASK, concurrency_key=f"k{i:02d}")
    work = stats.waiting_work()
    assert [load.key for load in work["keys"]] == [f"k{i:02d}" for i in range(10)]
    assert (work["other"].keys, work["other"].ready) == (2, 2 + 1)
    assert work["total"].ready == sum(range(1, 13))
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_dashboard")))
    assert len(page.select("#overview-keys tr.key")) == 10
    other = page.one("#overview-keys tr.key-other")
    assert [cell.text for cell in other.select("td")][:4] == ["2 other keys", "0", "—", "3"]


# --- /metrics --------------------------------------------------------------------------------


@pytest.fixture
def scrape(client, settings):
    settings.ORCH_METRICS_TOKEN = TOKEN
    metrics._reported.clear()

    def scrape() -> tuple[str, dict]:
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200
        text = response.content.decode()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        return text, families

    return scrape


def by_key(families: dict, name: str) -> dict:
    return {sample.labels["key"]: sample.value for sample in families[name].samples}


def test_metrics_give_running_and_waiting_tasks_and_the_limit_per_key(engine, settings, scrape):
    a_bit_of_everything(engine, settings)
    _, families = scrape()
    assert by_key(families, "orchestrator_key_tasks_running") == {"acme": 1, "api": 1, "__none__": 0}
    assert by_key(families, "orchestrator_key_tasks_waiting") == {"acme": 2, "api": 1, "__none__": 3}
    assert by_key(families, "orchestrator_key_max_running") == {"acme": 1}  # api has a rate only
    assert families["orchestrator_concurrency_keys"].samples[0].value == 3


def test_metrics_keep_a_bounded_number_of_key_series_and_sum_the_rest(engine, scrape):
    services.limit_set("k24", max_running=5)  # beyond the top 20: its limit has no series
    for i in range(25):
        for _ in range(2 if i < 20 else 1):
            engine.start(tasks=ONE_TASK, concurrency_key=f"k{i:02d}")
    claim_of(Workflow.objects.filter(concurrency_key="k24").get())
    text, families = scrape()
    waiting = by_key(families, "orchestrator_key_tasks_waiting")
    assert len(waiting) == metrics.KEY_SERIES + 1
    assert {key: waiting[key] for key in ("k00", "k19", "__other__")} == {"k00": 2, "k19": 2, "__other__": 4}
    assert by_key(families, "orchestrator_key_tasks_running")["__other__"] == 1
    assert by_key(families, "orchestrator_key_max_running") == {}
    assert families["orchestrator_concurrency_keys"].samples[0].value == 25
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package provides it)")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_key_spelt_like_a_reserved_label_is_summed_with_the_others(engine, scrape):
    for key in ("__other__", "__none__", "", "plain"):
        engine.start(tasks=ONE_TASK, concurrency_key=key)
    _, families = scrape()
    assert by_key(families, "orchestrator_key_tasks_waiting") == {"plain": 1, "__none__": 1, "__other__": 2}
