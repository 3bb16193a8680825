"""max_parallel: at most N of a workflow's EXECUTE tasks are queued or running at once.
The others wait, PENDING, for a slot; the statements that queue EXECUTE's tasks (entering
the phase, a retry, a release of dependents) queue only as many as fit, the first by
position, and each success queues the next to fill its slot."""

import json
import threading
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import Count, Q
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import reload, task
from tests.test_hot_path import POSTGRES, Statements
from workflow_orchestrator import selectors, services
from workflow_orchestrator.models import Actor, State, Task, Workflow
from workflow_orchestrator.registry import WorkflowDefinition, _definitions, register_definition, task_type

Status = Task.Status
ACTIVE = (Status.QUEUED, Status.RUNNING)


@task_type("tests.count_active")
def count_active(ctx, params):
    """Its workflow's EXECUTE tasks queued or running as it runs (itself included)."""
    return active(ctx.workflow_id)


def active(workflow_id) -> int:
    return Task.objects.filter(workflow_id=workflow_id, phase=State.EXECUTE, status__in=ACTIVE).count()


def statuses(workflow) -> dict[str, str]:
    return dict(workflow.tasks.filter(phase=State.EXECUTE).order_by("position").values_list("name", "status"))


def tasks(count: int, type: str = "noop") -> list[dict]:
    return [{"name": f"t{i}", "type": type} for i in range(1, count + 1)]


def claim(worker: str = "w") -> Task | None:
    return services.task_claim(None, None, 300.0, worker=worker)


def into_execute(engine, **kwargs) -> Workflow:
    """A started workflow whose PREPARE ran alone: its EXECUTE tasks queued (or held), none claimed."""
    workflow = engine.start(**kwargs)
    engine.pending()  # its PREPARE's delivery (and any other's): claimed here instead
    prepare = services.task_claim(task(workflow, "prepare").pk, 1, worker="prepare")
    engine.call(services.task_record, prepare, stored=None)
    return reload(workflow)


# --- The gate --------------------------------------------------------------------------------


def test_six_tasks_with_max_parallel_2_never_have_more_than_2_active(engine):
    workflow = into_execute(engine, tasks=tasks(6, "tests.count_active"), max_parallel=2)
    assert statuses(workflow) == {
        "t1": "QUEUED", "t2": "QUEUED", "t3": "PENDING", "t4": "PENDING", "t5": "PENDING", "t6": "PENDING",
    }  # fmt: skip
    # Each job runs one task; the success that ends it queues the next one waiting.
    while jobs := engine.pending():
        for job in jobs:
            engine.run(job, tasks=1)
            assert active(workflow.pk) <= 2
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    results = workflow.results["EXECUTE"]
    assert set(results) == {f"t{i}" for i in range(1, 7)} and max(results.values()) <= 2
    assert all(t.attempt == 1 for t in workflow.tasks.filter(phase=State.EXECUTE))  # each ran once


def test_a_chain_that_runs_every_task_keeps_to_max_parallel(engine):
    workflow = engine.start(tasks=tasks(6, "tests.count_active"), max_parallel=2)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert max(workflow.results["EXECUTE"].values()) <= 2


def test_waiting_tasks_are_queued_in_order_of_position_as_slots_free(engine):
    workflow = into_execute(engine, tasks=tasks(5), max_parallel=2)
    engine.pending()  # the deliveries of t1 and t2: claimed here instead
    first, second = claim("w1"), claim("w2")
    assert {first.name, second.name} == {"t1", "t2"}
    assert claim("w3") is None, "the others wait for a slot: nothing of them is claimable"
    engine.call(services.task_record, first, stored=None)
    assert statuses(workflow)["t3"] == Status.QUEUED and statuses(workflow)["t4"] == Status.PENDING
    [delivery] = engine.pending()  # the slot's new task comes with its delivery
    assert tuple(delivery["args"][:2]) == (task(workflow, "t3").pk, 1)
    engine.call(services.task_record, second, stored=None)
    assert [name for name, status in statuses(workflow).items() if status in ACTIVE] == ["t3", "t4"]


def test_a_workflow_without_max_parallel_queues_every_task_at_once(engine):
    workflow = into_execute(engine, tasks=tasks(5))
    assert set(statuses(workflow).values()) == {Status.QUEUED}


def test_dependencies_and_max_parallel_queue_the_first_by_position_of_released_and_waiting(engine):
    specs = [
        {"name": "a", "type": "noop"},
        {"name": "b", "type": "noop"},
        {"name": "c", "type": "noop", "after": ["a"]},
        {"name": "d", "type": "noop"},
        {"name": "e", "type": "noop", "after": ["a"]},
    ]
    workflow = into_execute(engine, tasks=specs, max_parallel=2)
    assert statuses(workflow) == {"a": "QUEUED", "b": "QUEUED", "c": "PENDING", "d": "PENDING", "e": "PENDING"}
    engine.pending()
    a = services.task_claim(task(workflow, "a").pk, 1, worker="w1")
    # a's success releases c and e; with d waiting already, the one slot goes to c (position 3).
    engine.call(services.task_record, a, stored=None)
    assert statuses(workflow) == {"a": "SUCCEEDED", "b": "QUEUED", "c": "QUEUED", "d": "PENDING", "e": "PENDING"}
    assert task(workflow, "e").waiting == 0
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_a_released_task_claimed_by_the_worker_takes_a_slot(engine):
    specs = [{"name": "a", "type": "noop"}, {"name": "b", "type": "noop", "after": ["a"]}, *tasks(3)]
    workflow = into_execute(engine, tasks=specs, max_parallel=2)
    engine.pending()
    a = services.task_claim(task(workflow, "a").pk, 1, worker="w1")
    recorded = engine.call(services.task_record, a, stored=None, inline=services.inline_claim("w1", 300.0))
    assert recorded.next_task is not None and recorded.next_task.status == Status.RUNNING
    assert active(workflow.pk) == 2
    engine.call(services.task_record, recorded.next_task, stored=None)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE


def test_dependencies_with_max_parallel_run_to_the_end_within_the_limit(engine):
    specs = [
        {"name": "fetch", "type": "tests.count_active"},
        *[{"name": f"part{i}", "type": "tests.count_active", "after": ["fetch"]} for i in range(4)],
        {"name": "join", "type": "tests.count_active", "after": [f"part{i}" for i in range(4)]},
    ]
    workflow = engine.start(tasks=specs, max_parallel=3)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert max(workflow.results["EXECUTE"].values()) <= 3


# --- Failures and retries --------------------------------------------------------------------


def test_a_failed_attempt_with_attempts_left_keeps_its_slot(engine):
    specs = [{"name": "flaky", "type": "fail", "params": {"times": 1}, "max_attempts": 2}, *tasks(3)]
    workflow = into_execute(engine, tasks=specs, max_parallel=2)
    engine.pending()
    flaky = services.task_claim(task(workflow, "flaky").pk, 1, worker="w1")
    engine.call(services.task_record, flaky, error="RuntimeError: once")
    assert statuses(workflow) == {"flaky": "QUEUED", "t1": "QUEUED", "t2": "PENDING", "t3": "PENDING"}
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_a_retry_queues_up_to_max_parallel_beside_the_tasks_still_running(engine):
    specs = [{"name": "bad", "type": "fail", "params": {"times": 1}, "max_attempts": 1}, *tasks(4)]
    workflow = into_execute(engine, tasks=specs, max_parallel=3)
    engine.pending()
    assert statuses(workflow) == {"bad": "QUEUED", "t1": "QUEUED", "t2": "QUEUED", "t3": "PENDING", "t4": "PENDING"}
    bad = services.task_claim(task(workflow, "bad").pk, 1, worker="w1")
    t1 = services.task_claim(task(workflow, "t1").pk, 1, worker="w2")
    engine.call(services.task_record, bad, error="RuntimeError: for good")
    assert reload(workflow).state == State.FAILED
    assert statuses(workflow) == {"bad": "FAILED", "t1": "RUNNING", "t2": "PENDING", "t3": "PENDING", "t4": "PENDING"}
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.CLI)
    # t1 still runs: two slots are free, for the first two by position.
    assert statuses(workflow) == {"bad": "QUEUED", "t1": "RUNNING", "t2": "QUEUED", "t3": "PENDING", "t4": "PENDING"}
    assert task(workflow, "t3").attempt == 0 and task(workflow, "bad").attempts_left == 0  # a fresh budget: 1
    engine.pending()
    engine.call(services.task_record, t1, stored=None)  # counted in the retried phase: its slot goes to t3
    assert statuses(workflow)["t3"] == Status.QUEUED
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert task(workflow, "bad").attempt == 2


def test_tasks_held_through_a_failure_and_a_retry_run_once_each_afterwards(engine):
    specs = [{"name": "bad", "type": "fail", "params": {"times": 1}, "max_attempts": 1}, *tasks(2)]
    workflow = into_execute(engine, tasks=specs, max_parallel=1)
    assert statuses(workflow) == {"bad": "QUEUED", "t1": "PENDING", "t2": "PENDING"}
    engine.drain()  # bad fails for good: the others never ran
    assert reload(workflow).state == State.FAILED
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.CLI)
    assert statuses(workflow) == {"bad": "QUEUED", "t1": "PENDING", "t2": "PENDING"}
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    attempts = dict(workflow.tasks.filter(phase=State.EXECUTE).values_list("name", "attempt"))
    assert attempts == {"bad": 2, "t1": 1, "t2": 1}


def test_a_cancel_cancels_the_tasks_waiting_for_a_slot(engine):
    workflow = into_execute(engine, tasks=tasks(4), max_parallel=1)
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI)
    assert set(statuses(workflow).values()) == {Status.CANCELLED}


# --- Races ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_successes_recorded_at_once_never_fill_more_than_max_parallel(engine):
    """Workers that end their tasks at the same moment: each success counts the slots free
    under the workflow's lock, so that none fills a slot another one filled (too many), nor
    misses one filled meanwhile (a slot left empty while tasks wait for one)."""
    workflow = into_execute(engine, tasks=tasks(40), max_parallel=3)
    engine.pending()
    seen, errors, barrier = [], [], threading.Barrier(4)
    execute = Task.objects.filter(workflow=workflow, phase=State.EXECUTE)

    def worker(n):
        barrier.wait()
        try:
            while (claimed := claim(f"w{n}")) is not None or reload(workflow).state != State.COMPLETE:
                if claimed is not None:
                    services.task_record(claimed, stored=None)
                # One query: both counts of one moment.
                seen.append(
                    execute.aggregate(
                        active=Count("pk", filter=Q(status__in=ACTIVE)),
                        waiting=Count("pk", filter=Q(status=Status.PENDING)),
                    )
                )
        except Exception as exc:  # reported below: a thread's assertion would be lost
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert reload(workflow).state == State.COMPLETE
    assert max(counts["active"] for counts in seen) <= 3
    assert all(counts["active"] == 3 for counts in seen if counts["waiting"]), "a slot was left empty"
    assert set(statuses(workflow).values()) == {Status.SUCCEEDED}


# --- What it costs -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # autocommit, as in a worker
def test_a_success_of_a_limited_workflow_locks_it_first_and_others_pay_nothing(engine):
    limited = into_execute(engine, tasks=tasks(3), max_parallel=1)
    free = into_execute(engine, tasks=tasks(2))
    engine.pending()
    mine = services.task_claim(task(limited, "t1").pk, 1, worker="w1")
    theirs = services.task_claim(task(free, "t1").pk, 1, worker="w2")
    with Statements() as steps:
        engine.call(services.task_record, theirs, stored=None)
    assert steps.steps == (["succeed"] if POSTGRES else [("succeed", "count_out")])
    with Statements() as steps:
        engine.call(services.task_record, mine, stored=None)
    if POSTGRES:  # its statement's snapshot must come after the lock, so the lock comes first
        assert steps.steps[0][:2] == ("lock_workflow", "succeed")
    else:  # one writer at a time: the next waiting task is queued in the success's transaction
        assert steps.steps[0][:3] == ("succeed", "count_out", "queue_held")
    assert statuses(limited)["t2"] == Status.QUEUED


# --- Setting it, and seeing it -------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1001, -1, 1.5, True, "2"])
def test_a_bad_max_parallel_is_refused_naming_the_field_and_stores_nothing(engine, value):
    with pytest.raises(ValidationError) as refused:
        engine.start(tasks=tasks(2), max_parallel=value)
    assert "max_parallel" in refused.value.message_dict
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("path", ["/workflow/start", "/workflows/"])
@pytest.mark.parametrize("value", [0, 1001, "3", True, 2.5])
def test_the_api_refuses_a_bad_max_parallel_with_a_400_naming_it(engine, admin_user, path, value):
    client = APIClient()
    client.force_authenticate(admin_user)
    response = client.post(path, {"name": "x", "tasks": tasks(2), "max_parallel": value}, format="json")
    assert response.status_code == 400
    assert "max_parallel" in response.json()
    assert not Workflow.objects.exists()


def test_the_api_sets_max_parallel_and_shows_it_and_put_refuses_it(engine, admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    response = client.post("/workflow/start", {"name": "x", "tasks": tasks(3), "max_parallel": 2}, format="json")
    assert response.status_code == 201, response.json()
    workflow_id = response.json()["id"]
    assert Workflow.objects.get(pk=workflow_id).max_parallel == 2
    assert client.get(f"/workflow/{workflow_id}").json()["max_parallel"] == 2
    assert client.get(f"/execution/workflows/{workflow_id}/status").json()["max_parallel"] == 2
    [listed] = client.get("/workflows/").json()["results"]
    assert listed["max_parallel"] == 2
    created = client.post("/workflows/", {"name": "y", "tasks": tasks(1)}, format="json").json()
    assert created["max_parallel"] is None
    patched = client.patch(f"/workflows/{created['id']}", {"max_parallel": 3}, format="json")
    assert patched.status_code == 400 and "max_parallel" in patched.json()
    assert Workflow.objects.get(pk=created["id"]).max_parallel is None


def test_the_cli_starts_with_max_parallel_shows_it_and_refuses_a_bad_one(engine):
    out = StringIO()
    noop = '[{"type": "noop"}]'
    call_command("workflow", "start", "--name", "cli", "--tasks", noop, "--max-parallel", "4", stdout=out)
    workflow = Workflow.objects.get()
    assert workflow.max_parallel == 4 and "max_parallel 4" in out.getvalue()
    shown = StringIO()
    call_command("workflow", "show", str(workflow.pk), stdout=shown)
    assert "max_parallel 4" in shown.getvalue()
    with pytest.raises(CommandError, match="max_parallel: max_parallel must be a whole number from 1 to 1000"):
        call_command("workflow", "start", "--name", "bad", "--max-parallel", "0", stdout=StringIO())
    assert Workflow.objects.count() == 1


def test_the_browsable_form_sends_max_parallel_and_shows_it_back_with_its_error(admin_user):
    browser = Client(HTTP_ACCEPT="text/html")
    browser.force_login(admin_user)
    form = dom.parse(browser.get("/workflow/start")).one("#start-workflow-form")
    assert form.one("input[name=max_parallel]").get("value") == ""
    body = json.dumps({"name": "x", "max_parallel": 0})
    response = browser.post("/workflow/start", body, content_type="application/json")
    assert response.status_code == 400
    form = dom.parse(response).one("#start-workflow-form")
    [group] = form.select(".form-group.has-error")
    assert group.one("input[name=max_parallel]")["value"] == "0" and "greater than or equal to 1" in group.text
    assert not Workflow.objects.exists()


ADD_WORKFLOW = reverse("admin:workflow_orchestrator_workflow_add")
ADD_VALID = {"name": "from the admin", "definition": "default", "mode": "auto", "input": "{}", "tasks": ""}


def test_the_admin_add_form_takes_max_parallel_and_the_page_shows_it(admin_client):
    form = dom.parse(admin_client.get(ADD_WORKFLOW)).one("#content form[method=post]")
    assert form.one("input[name=max_parallel]")["type"] == "number"
    response = admin_client.post(ADD_WORKFLOW, {**ADD_VALID, "max_parallel": "3"})
    assert response.status_code == 302, response.context and response.context["form"].errors
    workflow = Workflow.objects.get()
    assert workflow.max_parallel == 3
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])))
    fieldset = page.one("fieldset", contains="Flow control")
    assert fieldset.one(".form-row.field-max_parallel .readonly").text == "3"


@pytest.mark.parametrize(("value", "says"), [("0", "greater than or equal to 1"), ("1001", "less than or equal")])
def test_the_admin_add_form_shows_a_bad_max_parallel_on_its_field(admin_client, value, says):
    response = admin_client.post(ADD_WORKFLOW, {**ADD_VALID, "max_parallel": value})
    assert response.status_code == 200
    [row] = dom.parse(response).select(".form-row.errors")
    assert "field-max_parallel" in row.classes and says in row.one(".errorlist").text
    assert not Workflow.objects.exists()


def test_the_definition_gives_the_default_and_a_request_overrides_it(engine):
    register_definition(WorkflowDefinition(key="throttled", prepare="noop", tasks=tuple(tasks(3)), max_parallel=2))
    try:
        by_default = engine.start(definition="throttled")
        given = engine.start(definition="throttled", max_parallel=1)
        assert (by_default.max_parallel, given.max_parallel) == (2, 1)
    finally:
        _definitions.pop("throttled")


def test_an_idempotency_key_tells_a_different_max_parallel_apart(engine):
    first = engine.start(tasks=tasks(2), idempotency_key="k", max_parallel=2)
    assert engine.start(tasks=tasks(2), idempotency_key="k", max_parallel=2).pk == first.pk
    with pytest.raises(services.IdempotencyConflict):
        engine.start(tasks=tasks(2), idempotency_key="k", max_parallel=3)


# --- Why is it waiting? ------------------------------------------------------------------------


def test_the_waiting_reason_says_max_parallel_is_reached_while_tasks_wait_for_a_slot(engine):
    workflow = into_execute(engine, tasks=tasks(4), max_parallel=2)
    engine.pending()
    assert selectors.waiting_reason(reload(workflow)) == "max_parallel 2 reached"
    first, second = claim("w1"), claim("w2")
    assert selectors.waiting_reason(reload(workflow)) == "max_parallel 2 reached"  # t3, t4 wait while 2 run
    engine.call(services.task_record, first, stored=None)
    engine.call(services.task_record, second, stored=None)
    # t3 and t4 are queued now: none waits for a slot.
    assert selectors.waiting_reason(reload(workflow)) is None
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.CLI)
    assert selectors.waiting_reason(reload(workflow)) == "paused"


def test_waiting_reasons_of_a_page_stay_within_two_queries(engine, django_assert_max_num_queries):
    workflows = [into_execute(engine, tasks=tasks(3), max_parallel=1) for _ in range(3)]
    workflows += [into_execute(engine, tasks=tasks(2))]
    with django_assert_max_num_queries(2):
        reasons = selectors.waiting_reasons(workflows)
    assert [reasons[w.pk] for w in workflows] == ["max_parallel 1 reached"] * 3 + [None]
