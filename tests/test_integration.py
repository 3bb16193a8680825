"""A real `qcluster` in another process, on whatever database and broker the environment
selects (SQLite with the ORM broker by default; PostgreSQL with Redis in CI's second run)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env, events, wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Workflow
from workflow_orchestrator.statements import from_time

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

THREE_TASKS = [
    {"type": "echo", "params": {"n": 1}},
    {"type": "sleep", "params": {"seconds": 0.05}},
    {"type": "fail", "params": {"times": 1}, "max_attempts": 2},
]


def ended(*workflows) -> bool:
    ids = [w.pk for w in workflows]
    return (
        not Workflow.objects.filter(pk__in=ids)
        .exclude(state__in=[State.COMPLETE, State.FAILED, State.CANCELLED])
        .exists()
    )


def start(**kwargs) -> Workflow:
    kwargs.setdefault("name", "integration")
    workflow, _ = services.workflow_create(actor=Actor.SYSTEM, start=True, **kwargs)
    return workflow


def test_twenty_workflows_of_three_tasks_complete_on_a_real_cluster(cluster, settings):
    running = cluster(ORCH_RETRY_BACKOFF=0.05)
    workflows = [start(name=f"wf-{i}", tasks=THREE_TASKS, input={"i": i}) for i in range(20)]
    wait_for(lambda: ended(*workflows), 120, "20 workflows to end")
    for workflow in Workflow.objects.filter(pk__in=[w.pk for w in workflows]):
        assert workflow.state == State.COMPLETE, (workflow.error, running.output()[-3000:])
        assert events(workflow) == ["start", "execute", "validate", "complete"]
        assert list(workflow.transitions.values_list("seq", flat=True)) == [1, 2, 3, 4]
    tasks = Task.objects.filter(workflow__in=workflows)
    assert tasks.count() == 20 * 5
    assert set(tasks.values_list("status", flat=True)) == {Task.Status.SUCCEEDED}
    assert set(tasks.filter(type="fail").values_list("attempt", flat=True)) == {2}
    assert len(set(tasks.values_list("worker", flat=True))) >= 2, "work is spread over the worker pool"


def test_the_cli_waits_for_a_workflow_on_a_running_cluster(cluster):
    cluster()
    result = subprocess.run(
        [sys.executable, "manage.py", "workflow", "start", "--name", "demo", "--tasks",
         '[{"type":"echo","params":{"x":1}},{"type":"sleep","params":{"seconds":0.1}}]', "--wait", "60", "--json"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == State.COMPLETE
    assert [(t["seq"], t["event"]) for t in data["transitions"]] == [
        (1, "start"),
        (2, "execute"),
        (3, "validate"),
        (4, "complete"),
    ]
    failed = subprocess.run(
        [sys.executable, "manage.py", "workflow", "start", "--name", "doomed", "--tasks",
         '[{"type":"fail","max_attempts":1}]', "--wait", "60"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "ended FAILED" in failed.stderr


def test_cancel_stops_a_sleeping_task_early(cluster):
    cluster()
    workflow = start(tasks=[{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    wait_for(
        lambda: Task.objects.filter(workflow=workflow, name="long", status=Task.Status.RUNNING).exists(),
        60,
        "the sleep to start",
    )
    services.workflow_cancel(workflow.pk, actor=Actor.CLI)
    long = wait_for(
        lambda: Task.objects.filter(workflow=workflow, name="long", finished_at__isnull=False).first(),
        20,
        "the sleep to notice",
    )
    assert long.status == Task.Status.CANCELLED  # its late result kept, but not a success
    assert long.result["cancelled"] is True and long.result["slept"] < 10
    workflow.refresh_from_db()
    assert workflow.state == State.CANCELLED
    assert events(workflow) == ["start", "execute", "cancel"]


def test_stats_call_a_cluster_whose_worker_runs_a_task_working(cluster, admin_user):
    from rest_framework.test import APIClient

    cluster()
    workflow = start(tasks=[{"name": "long", "type": "sleep", "params": {"seconds": 60}}])
    long = wait_for(
        lambda: Task.objects.filter(workflow=workflow, name="long", status=Task.Status.RUNNING).first(), 60, "the sleep"
    )
    api = APIClient()
    api.force_authenticate(admin_user)

    # django-q2 alone calls it Idle: its internal queues are empty while the worker sleeps.
    def clusters():  # a cluster an earlier test stopped may linger in the stats for a moment
        return api.get("/execution/stats").json()["clusters"]

    running = wait_for(lambda: next((c for c in clusters() if c["busy_workers"]), None), 20, "a busy cluster")
    assert running["status"] == "Working"
    assert running["busy_workers"] == 1
    assert [worker["task_id"] for worker in running["worker_processes"]].count(long.pk) == 1
    services.workflow_cancel(workflow.pk, actor=Actor.CLI)
    wait_for(lambda: not any(c["status"] == "Working" for c in clusters()), 30, "the cluster idle")


def test_a_killed_worker_s_task_is_taken_back_and_run_again(cluster):
    running = cluster(ORCH_LEASE_SECONDS=2)
    workflow = start(tasks=[{"name": "victim", "type": "sleep", "params": {"seconds": 3}, "timeout": 3600}])
    victim = wait_for(
        lambda: Task.objects.filter(workflow=workflow, name="victim", status=Task.Status.RUNNING).first(),
        60,
        "the task to start",
    )
    pid = int(victim.worker.rsplit(":", 1)[1])
    assert pid != running.process.pid
    os.kill(pid, signal.SIGKILL)
    # Recovery runs from the cluster's schedule too; calling it here keeps the test short.
    wait_for(
        lambda: services.recover()["expired"] or Task.objects.get(pk=victim.pk).attempt > 1, 30, "the lease to expire"
    )
    wait_for(lambda: ended(workflow), 60, "the workflow to end")
    workflow.refresh_from_db()
    victim = Task.objects.get(pk=victim.pk)
    assert workflow.state == State.COMPLETE, running.output()[-3000:]
    assert victim.attempt == 2 and str(pid) not in victim.worker
    assert events(workflow) == ["start", "execute", "validate", "complete"]


def test_dependencies_run_in_order_on_a_real_cluster_and_a_chain_of_twenty_completes(cluster):
    cluster()
    nightly = start(
        name="nightly",
        tasks=[
            {"name": "fetch", "type": "echo", "params": {"rows": 3}},
            {"name": "transform", "type": "gather", "after": ["fetch"]},
            {"name": "flaky", "type": "fail", "params": {"times": 1}, "max_attempts": 2, "after": ["transform"]},
            {"name": "load", "type": "gather", "after": ["flaky"]},
            {"name": "notify", "type": "sleep", "params": {"seconds": 0.2}, "after": ["transform"]},
            {"name": "report", "type": "gather", "after": ["load", "notify"]},
        ],
    )
    chain = start(name="chain", tasks=[{"name": f"t{i}", "type": "noop", "after": [f"t{i - 1}"] if i else []}
                                       for i in range(20)])  # fmt: skip
    wait_for(lambda: ended(nightly, chain), 120, "both workflows to end")
    for workflow in (nightly, chain):
        workflow.refresh_from_db()
        assert workflow.state == State.COMPLETE, workflow.error
        tasks = {t.name: t for t in workflow.tasks.filter(phase=State.EXECUTE)}
        for t in tasks.values():
            first_start = from_time(t.attempts[0]["started_at"])
            for upstream in t.after:
                success = tasks[upstream].attempts[-1]
                assert success["outcome"] == "succeeded"
                assert from_time(success["finished_at"]) <= first_start, (upstream, t.name)
    flaky = nightly.tasks.get(name="flaky")
    assert [a["outcome"] for a in flaky.attempts] == ["failed", "succeeded"]
    assert nightly.tasks.get(name="report").result == {"load": {"flaky": {"attempt": 2}}, "notify": {"slept": 0.2}}
    assert all(len(t.attempts) == 1 for t in chain.tasks.all())
