"""An outcome the database cannot store fails its attempt at once, saying why, instead of
leaving the task RUNNING until its lease runs out; whatever a handler raises, SystemExit
and KeyboardInterrupt included, fails only its attempt, and the worker goes on."""

import pytest

import tests.outcome_tasks  # noqa: F401  (registers the task types in this process too)
from tests.conftest import reload, task, wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task

Status = Task.Status


def only(type_: str, **params) -> list[dict]:
    return [{"name": "only", "type": type_, "params": params, "max_attempts": 1}]


@pytest.mark.parametrize(
    "kind, why",
    [
        ("nul", "$.text contains a NUL character"),
        ("surrogate", "$.items[1] contains a lone surrogate"),
        ("surrogate key", "a key of $ contains a lone surrogate"),
        ("nan", "it is not JSON-serialisable: Out of range float values are not JSON compliant"),
        ("infinity", "it is not JSON-serialisable: Out of range float values are not JSON compliant"),
        ("deep", "it is nested too deeply"),
    ],
)
def test_a_result_the_database_cannot_store_fails_the_attempt_at_once(engine, kind, why):
    workflow = engine.start(tasks=only("tests.unstorable", kind=kind))
    engine.drain()
    failed = task(workflow, "only")
    assert (failed.status, failed.attempt, failed.result) == (Status.FAILED, 1, None)
    assert failed.error.startswith(f"the result cannot be stored: {why}"), failed.error
    workflow = reload(workflow)
    assert workflow.state == State.FAILED and workflow.error.startswith("only: the result cannot be stored")


def test_an_error_the_database_cannot_store_as_it_is_is_kept_escaped(engine):
    workflow = engine.start(tasks=only("tests.raises", kind="text"))
    engine.drain()
    failed = task(workflow, "only")
    assert failed.status == Status.FAILED
    assert "ValueError: bad\\x00bytes and a lone \\ud800 surrogate" in failed.error
    assert reload(workflow).error == "only: ValueError: bad\\x00bytes and a lone \\ud800 surrogate"


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_handler_raising_systemexit_or_keyboardinterrupt_fails_its_attempt(engine, kind):
    workflow = engine.start(tasks=only("tests.raises", kind=kind))
    engine.drain()  # the job returns: nothing escapes into the worker
    failed = task(workflow, "only")
    assert failed.status == Status.FAILED and kind in failed.error.strip().splitlines()[-1]
    assert reload(workflow).state == State.FAILED


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_worker_whose_handler_raised_systemexit_serves_the_next_job(cluster):
    cluster(ORCH_WORKERS=1, ORCH_TASK_MODULES="tests.outcome_tasks")
    quits, _ = services.workflow_create(
        name="quits", actor=Actor.SYSTEM, tasks=only("tests.raises", kind="SystemExit"), start=True
    )
    wait_for(lambda: reload(quits).state == State.FAILED, 60, "the workflow to fail")
    after, _ = services.workflow_create(name="after", actor=Actor.SYSTEM, tasks=[{"type": "noop"}], start=True)
    wait_for(lambda: reload(after).state == State.COMPLETE, 60, "the next workflow to complete")
    assert task(after, "noop-1").worker == task(quits, "only").worker, "the same worker process"
