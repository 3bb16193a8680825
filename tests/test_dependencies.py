"""Dependencies inside EXECUTE (`after`), results passed downstream (`ctx.upstream`,
`gather`), and every attempt kept (`Task.attempts`)."""

import json
import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import events, reload, task
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Workflow

Status = Task.Status

# fetch → transform → load, notify in parallel with load, joined by a gather.
NIGHTLY = [
    {"name": "fetch", "type": "echo", "params": {"rows": 3}},
    {"name": "transform", "type": "gather", "after": ["fetch"]},
    {"name": "load", "type": "gather", "after": ["transform"]},
    {"name": "notify", "type": "noop", "after": ["transform"]},
    {"name": "report", "type": "gather", "after": ["load", "notify"]},
]


def started_order(workflow) -> list[str]:
    """EXECUTE's tasks in the order their (first) attempts started."""
    tasks = workflow.tasks.filter(phase=State.EXECUTE)
    return [t.name for t in sorted(tasks, key=lambda t: t.attempts[0]["started_at"])]


def test_tasks_run_after_the_tasks_they_name_and_see_their_results(engine):
    workflow = engine.start(tasks=NIGHTLY)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    order = started_order(workflow)
    assert order.index("fetch") < order.index("transform") < order.index("load") < order.index("report")
    assert order.index("transform") < order.index("notify") < order.index("report")
    assert task(workflow, "transform").result == {"fetch": {"rows": 3}}
    assert task(workflow, "report").result == {"load": {"transform": {"fetch": {"rows": 3}}}, "notify": None}
    assert workflow.results["EXECUTE"]["report"] == task(workflow, "report").result
    assert [(t.name, t.after, t.dependents) for t in workflow.tasks.filter(phase=State.EXECUTE)] == [
        ("fetch", [], 1),
        ("transform", ["fetch"], 2),
        ("load", ["transform"], 1),
        ("notify", ["transform"], 1),
        ("report", ["load", "notify"], 0),
    ]


def test_only_tasks_without_dependencies_are_queued_when_execute_begins(engine):
    workflow = engine.start(tasks=NIGHTLY + [{"name": "alone", "type": "noop"}])
    (prepare,) = engine.pending()
    engine.call(services.task_record, services.task_claim(prepare["args"][0], 1, worker="test"))
    queued = {job["args"][0] for job in engine.pending()}
    assert queued == {task(workflow, "fetch").pk, task(workflow, "alone").pk}
    waiting = dict(workflow.tasks.filter(status=Status.PENDING).values_list("name", "waiting"))
    assert waiting == {"transform": 1, "load": 1, "notify": 1, "report": 2, "validate": 0}


def test_a_task_waits_for_all_it_names_and_runs_once(engine):
    tasks = [
        {"name": "a", "type": "noop"},
        {"name": "b", "type": "noop"},
        {"name": "c", "type": "noop", "after": ["a", "b"]},
    ]
    workflow = engine.start(tasks=tasks)
    (prepare,) = engine.pending()
    engine.call(services.task_record, services.task_claim(prepare["args"][0], 1, worker="test"))
    jobs = {job["args"][0]: job for job in engine.pending()}
    a, b, c = (task(workflow, name) for name in "abc")
    assert set(jobs) == {a.pk, b.pk}
    engine.run(jobs[a.pk], tasks=1)
    assert task(workflow, "c").status == Status.PENDING and not engine.pending()
    # b's success releases c: with no worker to hand it to, c is queued with its job.
    engine.call(services.task_record, services.task_claim(b.pk, 1, worker="test"))
    (released,) = engine.pending()
    assert tuple(released["args"][:2]) == (c.pk, 1)
    engine.run(released)
    engine.run(released)  # delivered twice: runs once
    engine.drain()
    assert task(workflow, "c").attempt == 1 and len(task(workflow, "c").attempts) == 1
    assert reload(workflow).state == State.COMPLETE


def test_the_worker_that_releases_a_task_runs_it_itself(engine):
    workflow = engine.start(tasks=[{"name": f"t{i}", "type": "noop", "after": [f"t{i - 1}"] if i else []}
                                   for i in range(20)])  # fmt: skip
    (prepare,) = engine.pending()
    engine.run(prepare, tasks=8)  # PREPARE, then the chain, each link handed to the same worker
    tasks = list(workflow.tasks.filter(phase=State.EXECUTE).order_by("position"))
    assert all(t.status == Status.SUCCEEDED and t.attempt == 1 for t in tasks[:7])
    assert len({t.attempts[0]["worker"] for t in tasks[:7]}) == 1
    # A job that has run its INLINE_LIMIT of tasks in a row hands the next link to the broker.
    (next_link,) = engine.pending()
    assert tuple(next_link["args"][:2]) == (tasks[7].pk, 1)
    engine.run(next_link)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert started_order(workflow) == [f"t{i}" for i in range(20)]


def test_a_failed_task_holds_back_what_depends_on_it_and_retry_resumes_in_order(engine):
    tasks = [
        {"name": "fetch", "type": "noop"},
        {"name": "flaky", "type": "fail", "params": {"times": 1}, "max_attempts": 1, "after": ["fetch"]},
        {"name": "load", "type": "noop", "after": ["flaky"]},
        {"name": "report", "type": "gather", "after": ["load"]},
        {"name": "side", "type": "noop", "after": ["fetch"]},
    ]
    workflow = engine.start(tasks=tasks)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.FAILED
    statuses = dict(workflow.tasks.filter(phase=State.EXECUTE).values_list("name", "status"))
    assert statuses["flaky"] == Status.FAILED
    assert (statuses["load"], statuses["report"]) == (Status.PENDING, Status.PENDING)  # never ran
    assert not task(workflow, "load").attempts and not task(workflow, "report").attempts
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.CLI)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert task(workflow, "fetch").attempt == 1  # succeeded: not run again
    order = [t.name for t in sorted(workflow.tasks.filter(name__in=["flaky", "load", "report"]),
                                    key=lambda t: t.attempts[-1]["started_at"])]  # fmt: skip
    assert order == ["flaky", "load", "report"]
    assert [a["outcome"] for a in task(workflow, "flaky").attempts] == ["failed", "succeeded"]


@pytest.mark.parametrize(
    "tasks, message",
    [
        ([{"name": "a", "type": "noop", "after": ["nope"]}], "task a: after names unknown tasks: nope"),
        ([{"name": "a", "type": "noop", "after": ["a"]}], "task a: after names the task itself"),
        (
            [{"name": "a", "type": "noop", "after": ["c"]}, {"name": "b", "type": "noop", "after": ["a"]},
             {"name": "c", "type": "noop", "after": ["b"]}],
            "tasks depend on each other in a cycle: ",
        ),
        ([{"name": "a", "type": "noop", "after": "b"}], "after must be a list of task names"),
        ([{"name": "a", "type": "noop", "after": [1]}], "after must be a list of task names"),
    ],
)  # fmt: skip
def test_bad_dependencies_are_refused_at_creation_and_store_nothing(db, tasks, message):
    with pytest.raises(ValidationError) as refused:
        services.workflow_create(name="bad", tasks=tasks, actor=Actor.CLI)
    assert list(refused.value.message_dict) == ["tasks"]
    assert message in refused.value.message_dict["tasks"][0]
    assert not Workflow.objects.exists()


def test_a_cycle_is_named_task_by_task(db):
    tasks = [{"name": "x", "type": "noop"}, {"name": "a", "type": "noop", "after": ["b", "x"]},
             {"name": "b", "type": "noop", "after": ["a"]}]  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        services.workflow_create(name="bad", tasks=tasks, actor=Actor.CLI)
    (message,) = refused.value.message_dict["tasks"]
    cycle = message.split(": ", 1)[1].split(" → ")
    assert set(cycle) == {"a", "b"} and cycle[0] == cycle[-1] and "x" not in cycle


# --- Attempts -----------------------------------------------------------------------------------


def test_every_attempt_is_kept_with_its_worker_times_and_outcome(engine):
    workflow = engine.start(tasks=[{"name": "t", "type": "fail", "params": {"times": 2}, "max_attempts": 3}])
    engine.drain()
    attempts = task(reload(workflow), "t").attempts
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert all(a["worker"] and a["started_at"] <= a["finished_at"] for a in attempts)
    assert "failed on attempt 1 as asked" in attempts[0]["error"] and "error" not in attempts[2]


def test_attempts_taken_back_handed_back_and_cancelled_say_so(engine):
    workflow = engine.start(tasks=[{"name": "t", "type": "noop"}, {"name": "u", "type": "noop"}])
    (prepare,) = engine.pending()
    engine.call(services.task_record, services.task_claim(prepare["args"][0], 1, worker="test"))
    engine.pending()
    t = services.task_claim(task(workflow, "t").pk, 1, worker="w1")
    engine.call(services.recover, now=timezone.now() + timedelta(days=1))  # w1 stopped heartbeating
    t = services.task_claim(t.pk, 2, worker="w2")
    assert engine.call(services.task_hand_back, t.pk, 2, workflow_id=workflow.pk)  # w2 is stopping
    t = services.task_claim(t.pk, 3, worker="w3")
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI)
    engine.call(services.task_record, t, stored="1")
    attempts = task(workflow, "t").attempts
    assert [(a["attempt"], a["worker"], a["outcome"]) for a in attempts] == [
        (1, "w1", "lease_expired"),
        (2, "w2", "handed_back"),
        (3, "w3", "cancelled"),
    ]
    assert "lease expired" in attempts[0]["error"]
    assert events(reload(workflow)) == ["start", "execute", "cancel"]


def test_the_api_shows_after_and_attempts(engine, admin_user):
    workflow = engine.start(tasks=NIGHTLY)
    engine.drain()
    api = APIClient()
    api.force_authenticate(admin_user)
    tasks = {t["name"]: t for t in api.get(f"/workflows/{workflow.pk}/tasks").json()}
    assert tasks["report"]["after"] == ["load", "notify"]
    (attempt,) = tasks["report"]["attempts"]
    assert attempt["attempt"] == 1 and attempt["outcome"] == "succeeded" and attempt["error"] == ""
    assert attempt["started_at"].endswith("Z") and attempt["finished_at"] >= attempt["started_at"]
    detail = api.get(f"/workflow/{workflow.pk}").json()
    assert {t["name"]: t["attempts"] for t in detail["tasks"]} == {n: t["attempts"] for n, t in tasks.items()}
    refused = api.post("/workflow/start", {"name": "x", "tasks": [{"type": "noop", "after": "x"}]}, format="json")
    assert refused.status_code == 400 and list(refused.json()) == ["tasks"]
    cycle = [{"name": "a", "type": "noop", "after": ["b"]}, {"name": "b", "type": "noop", "after": ["a"]}]
    refused = api.post("/workflow/start", {"name": "x", "tasks": cycle}, format="json")
    assert refused.status_code == 400 and "cycle" in refused.json()["tasks"][0]


def test_the_cli_takes_and_shows_dependencies_and_attempts(engine):
    out = StringIO()
    with engine.capture(execute=True):
        call_command("workflow", "start", "--name", "n", "--tasks", json.dumps(NIGHTLY), "--json", stdout=out)
    workflow_id = json.loads(out.getvalue())["id"]
    engine.drain()
    shown = StringIO()
    call_command("workflow", "show", workflow_id, stdout=shown)
    lines = shown.getvalue().splitlines()
    assert any(line.split()[:2] == ["task", "report"] and line.endswith("after load, notify") for line in lines)
    assert sum("attempt 1  succeeded" in line for line in lines) == 7  # PREPARE, five tasks, VALIDATE
    with pytest.raises(CommandError, match="tasks: .*cycle"):
        cycle = [{"name": "a", "type": "noop", "after": ["b"]}, {"name": "b", "type": "noop", "after": ["a"]}]
        call_command("workflow", "start", "--name", "c", "--tasks", json.dumps(cycle), stdout=StringIO())


def test_the_admin_add_form_takes_dependencies_and_refuses_a_cycle(admin_client):
    add = reverse("admin:workflow_orchestrator_workflow_add")
    form = {"name": "from the admin", "definition": "default", "mode": "auto", "input": "{}"}
    cycle = [{"name": "a", "type": "noop", "after": ["b"]}, {"name": "b", "type": "noop", "after": ["a"]}]
    refused = admin_client.post(add, {**form, "tasks": json.dumps(cycle)})
    assert refused.status_code == 200 and "cycle" in " ".join(refused.context["form"].errors["tasks"])
    assert not Workflow.objects.exists()
    assert admin_client.post(add, {**form, "tasks": json.dumps(NIGHTLY)}).status_code == 302
    assert Workflow.objects.get().tasks.get(name="report").after == ["load", "notify"]


def test_the_documented_dependency_example_runs(engine):
    reference = (Path(__file__).resolve().parent.parent / "docs" / "TASK_TYPES.md").read_text()
    block = re.search(r'```python\n(@task_type\("etl\.transform"\).*?)```', reference, re.S).group(1)
    exec(f"from workflow_orchestrator.registry import WorkflowDefinition, register_definition, task_type\n{block}", {})
    workflow = engine.start(definition="etl", tasks=None)
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE, workflow.error
    assert workflow.results["EXECUTE"]["report"] == {"load": {"transform": {"rows": ["A", "B"]}}, "notify": None}


def test_an_attempt_handed_back_after_its_workflow_failed_says_so(engine):
    workflow = engine.start(tasks=[{"name": "t", "type": "noop"},
                                   {"name": "f", "type": "fail", "max_attempts": 1}])  # fmt: skip
    (prepare,) = engine.pending()
    engine.call(services.task_record, services.task_claim(prepare["args"][0], 1, worker="test"))
    engine.pending()
    t = services.task_claim(task(workflow, "t").pk, 1, worker="stopping")
    f = services.task_claim(task(workflow, "f").pk, 1, worker="w")
    engine.call(services.task_record, f, error="boom")
    assert reload(workflow).state == State.FAILED
    assert engine.call(services.task_hand_back, t.pk, 1, workflow_id=workflow.pk)
    assert [a["outcome"] for a in task(workflow, "t").attempts] == ["handed_back"]
