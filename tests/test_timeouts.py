"""A task's timeout holds whatever its handler does. A result that comes back after the
timeout fails the attempt; a handler that does not stop within a short grace after it
(it swallows the TaskTimeout, or it is blocked in a C call or a child process) has its
attempt failed by its worker's heartbeat, its child processes killed and its worker
process replaced. Either way the attempt fails with TaskTimeout, once, and is retried
like any failed attempt."""

import random

import psutil
import pytest
from django_q.models import OrmQ
from django_q.signing import SignedPackage

import tests.timeout_tasks  # noqa: F401  (registers the task types in this process too)
from tests.conftest import events, reload, task, wait_for
from workflow_orchestrator import jobs, queue, services
from workflow_orchestrator.models import Actor, State, Task

Status = Task.Status
TASK_MODULES = "tests.timeout_tasks"


def only(type_: str, *, timeout: float, max_attempts: int = 1, **params) -> list[dict]:
    return [{"name": "only", "type": type_, "params": params, "timeout": timeout, "max_attempts": max_attempts}]


def start(tasks: list[dict]):
    workflow, _ = services.workflow_create(name="timeouts", actor=Actor.SYSTEM, tasks=tasks, start=True)
    return workflow


def ended(workflow) -> bool:
    return reload(workflow).state in (State.COMPLETE, State.FAILED, State.CANCELLED)


def worker_pid(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_running(*argv: str) -> list[int]:
    """Live processes whose command line is exactly `argv` (a zombie has none)."""
    return [process.pid for process in psutil.process_iter(["cmdline"]) if process.info["cmdline"] == list(argv)]


# --- In the test process: a late result --------------------------------------------------


@pytest.mark.parametrize("type_", ["tests.stubborn", "tests.async_late"])
def test_a_result_returned_after_the_timeout_fails_the_attempt(engine, type_):
    workflow = engine.start(tasks=only(type_, timeout=0.2, seconds=0.5))
    engine.drain()
    late = task(workflow, "only")
    assert (late.status, late.result) == (Status.FAILED, None), "the late result is discarded"
    assert late.error.startswith("TaskTimeout: timed out after 0.2 s"), late.error
    assert "the handler returned" in late.error
    workflow = reload(workflow)
    assert workflow.state == State.FAILED and workflow.error.startswith("only: TaskTimeout: timed out after 0.2 s")


def test_an_exception_raised_after_the_timeout_is_a_timeout(engine):
    workflow = engine.start(tasks=only("tests.raises_late", timeout=0.2, seconds=0.4))
    engine.drain()
    failed = task(workflow, "only")
    assert failed.status == Status.FAILED
    assert "ValueError: too late to matter" in failed.error, "the handler's own error is kept"
    assert failed.error.strip().splitlines()[-1].startswith("TaskTimeout: timed out after 0.2 s"), failed.error
    assert reload(workflow).error.startswith("only: TaskTimeout: timed out after 0.2 s")


def test_a_handler_that_ends_in_time_is_not_touched(engine):
    workflow = engine.start(tasks=only("tests.stubborn", timeout=5, seconds=0.3))
    engine.drain()
    assert task(workflow, "only").status == Status.SUCCEEDED
    assert reload(workflow).state == State.COMPLETE


# --- On a real cluster -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_handler_that_swallows_its_timeout_fails_and_its_worker_is_replaced(cluster):
    running = cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=60, ORCH_TASK_MODULES=TASK_MODULES)
    # It would return, SUCCEEDED, after 30 s; its timeout is 1 s, django-q2's backstop 31 s.
    workflow = start(only("tests.stubborn", timeout=1, seconds=30))
    first = wait_for(Task.objects.filter(workflow=workflow, status=Status.RUNNING).first, 60, "the attempt to start")
    wait_for(lambda: ended(workflow), 20, "the timeout to end the workflow")
    stubborn = task(workflow, "only")
    assert (stubborn.status, stubborn.attempt, stubborn.result) == (Status.FAILED, 1, None), running.output()[-3000:]
    assert stubborn.error.startswith("TaskTimeout: timed out after 1 s"), stubborn.error
    workflow = reload(workflow)
    assert workflow.state == State.FAILED and workflow.error.startswith("only: TaskTimeout")
    assert events(workflow) == ["start", "execute", "fail"]
    assert workflow.transitions.get(event="fail").actor_label == "worker"

    # The worker process that ran it is gone; its replacement serves the next workflow.
    after = start([{"name": "next", "type": "noop"}])
    wait_for(lambda: reload(after).state == State.COMPLETE, 60, "the next workflow to complete")
    assert worker_pid(task(after, "next").worker) != worker_pid(first.worker)
    wait_for(lambda: not alive(worker_pid(first.worker)), 10, "the old worker process to end")

    # The job the dead worker held (PREPARE's: the same worker ran the task next, inline)
    # is delivered again, by the ORM broker after its `retry` seconds (Redis lost it with
    # the worker); and so may the task's own job be. Neither claims or records anything.
    prepare = task(workflow, "prepare")
    if queue.in_database():
        stale = [SignedPackage.loads(row.payload)["name"] for row in OrmQ.objects.all()]
        assert f"task-{prepare.pk}-1" in stale, "left on the broker, locked until `retry`"
    jobs.run_task(prepare.pk, 1)
    jobs.run_task(stubborn.pk, 1)
    again = task(workflow, "only")
    assert (again.status, again.attempt, again.error) == (Status.FAILED, 1, stubborn.error)
    assert events(reload(workflow)) == ["start", "execute", "fail"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_attempt_ended_by_its_timeout_is_retried_and_the_workflow_flows_on(cluster):
    running = cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=60, ORCH_RETRY_BACKOFF=0.05, ORCH_TASK_MODULES=TASK_MODULES)
    # Run inline by the worker that ran PREPARE; its sibling goes through the broker.
    workflow = start(
        [
            {
                "name": "stubborn",
                "type": "tests.stubborn",
                "params": {"seconds": 30, "behaves_on": 2},
                "timeout": 1,
                "max_attempts": 2,
            },
            {"name": "sibling", "type": "echo", "params": {"x": 1}},
        ]
    )
    running_first = Task.objects.filter(workflow=workflow, name="stubborn", status=Status.RUNNING, attempt=1)
    first = wait_for(running_first.first, 60, "the first attempt")
    wait_for(lambda: ended(workflow), 40, "the workflow to end")
    assert reload(workflow).state == State.COMPLETE, running.output()[-3000:]
    stubborn = task(workflow, "stubborn")
    assert (stubborn.status, stubborn.attempt) == (Status.SUCCEEDED, 2)
    assert stubborn.result["previous_error"].startswith("TaskTimeout: timed out after 1 s")
    assert stubborn.result["pid"] != worker_pid(first.worker), "the second attempt ran in a new worker process"
    assert task(workflow, "sibling").result == {"x": 1}
    assert events(reload(workflow)) == ["start", "execute", "validate", "complete"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_handler_blocked_in_a_child_process_fails_and_the_child_is_killed(cluster):
    running = cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=60, ORCH_TASK_MODULES=TASK_MODULES)
    seconds = f"40.{random.randrange(10**6):06d}"  # names this test's `sleep` among all processes
    workflow = start(only("tests.shell_sleep", timeout=1, seconds=seconds))
    wait_for(lambda: processes_running("sleep", seconds), 60, "the child process to start")
    wait_for(lambda: ended(workflow), 20, "the timeout to end the workflow")  # the child sleeps 40 s
    blocked = task(workflow, "only")
    assert (blocked.status, blocked.result) == (Status.FAILED, None), running.output()[-3000:]
    assert blocked.error.startswith("TaskTimeout: timed out after 1 s"), blocked.error
    assert reload(workflow).error.startswith("only: TaskTimeout")
    wait_for(lambda: not processes_running("sleep", seconds), 5, "the child process to be killed")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_handler_that_returns_late_on_a_cluster_is_never_succeeded(cluster):
    running = cluster(ORCH_WORKERS=1, ORCH_TASK_MODULES=TASK_MODULES)
    workflow = start(only("tests.stubborn", timeout=1, seconds=1.5))
    wait_for(lambda: ended(workflow), 60, "the workflow to end")
    late = task(workflow, "only")
    assert (late.status, late.result) == (Status.FAILED, None), running.output()[-3000:]
    assert late.error.startswith("TaskTimeout: timed out after 1 s"), late.error
    assert reload(workflow).state == State.FAILED
