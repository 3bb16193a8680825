from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.conftest import events, reload, task
from workflow_orchestrator import queue, services
from workflow_orchestrator.models import Actor, State, Task, Transition, Workflow

Status = Task.Status
THREE_TASKS = [{"type": "echo", "params": {"n": 1}}, {"type": "noop"}, {"type": "sleep", "params": {"seconds": 0}}]


def test_auto_workflow_runs_every_phase_to_complete(engine):
    workflow = engine.start(tasks=THREE_TASKS, input={"x": 1})
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert events(workflow) == ["start", "execute", "validate", "complete"]
    assert list(workflow.transitions.values_list("seq", flat=True)) == [1, 2, 3, 4]
    assert workflow.results["PREPARE"] == {"input_keys": ["x"]}
    assert workflow.results["EXECUTE"]["echo-1"] == {"n": 1}
    assert workflow.results["VALIDATE"] == {"tasks": 3, "succeeded": 3}
    assert set(workflow.tasks.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert workflow.started_at <= workflow.finished_at


def test_the_worker_ending_prepare_runs_one_execute_task_and_fans_out_the_rest_in_one_batch(engine):
    workflow = engine.start(tasks=THREE_TASKS)
    [prepare_job] = engine.pending()
    engine.run(prepare_job, tasks=2)
    first, *others = workflow.tasks.filter(phase=State.EXECUTE).order_by("position")
    assert first.status == Status.SUCCEEDED and first.worker == task(workflow, "prepare").worker
    assert sorted(job["args"][0] for job in engine.pending()) == [t.pk for t in others]
    assert reload(workflow).state == State.EXECUTE


def test_transitions_record_the_actor(engine):
    workflow, _ = engine.call(services.workflow_create, name="w", actor=Actor.CLI, tasks=[{"type": "noop"}])
    engine.call(services.workflow_start, workflow.pk, actor=Actor.CLI)
    engine.drain()
    labels = list(reload(workflow).transitions.values_list("actor_label", flat=True))
    assert labels == ["cli", "worker", "worker", "worker"]


def test_a_failure_inside_a_service_leaves_neither_state_change_nor_audit_row(engine, monkeypatch):
    workflow, _ = engine.call(services.workflow_create, name="w", actor=Actor.SYSTEM, tasks=[{"type": "noop"}])

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(queue, "send_with_change", broken)  # after the change, in its transaction
    with pytest.raises(RuntimeError):
        engine.call(services.workflow_start, workflow.pk, actor=Actor.SYSTEM)
    assert reload(workflow).state == State.INIT
    assert not Transition.objects.filter(workflow=workflow).exists()
    assert engine.pending() == []


def test_an_audit_row_is_written_for_each_committed_change(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    engine.call(services.workflow_delete, workflow.pk, actor=Actor.SYSTEM)
    assert not Transition.objects.filter(workflow_id=workflow.pk).exists()


def test_bad_input_is_refused_and_nothing_is_stored(engine):
    with pytest.raises(ValidationError) as error:
        engine.start(
            name="",
            definition="nope",
            mode="sometimes",
            input=[1],
            tasks=[{"type": "no-such-type"}, {"type": "noop", "params": []}, {"type": "noop", "max_attempts": 0}],
        )
    messages = error.value.message_dict
    assert set(messages) == {"name", "definition", "mode", "input", "tasks"}
    assert "unknown workflow definition 'nope'" in messages["definition"][0]
    assert "task 1: unknown task type 'no-such-type'" in messages["tasks"][0]
    assert "task 2: params must be an object" in messages["tasks"][0]
    assert "task 3: max_attempts must be a whole number" in messages["tasks"][0]
    assert not Workflow.objects.exists() and not Task.objects.exists()


def test_task_names_must_be_unique_and_not_reserved(engine):
    with pytest.raises(ValidationError, match="unique: a"):
        engine.start(tasks=[{"name": "a", "type": "noop"}, {"name": "a", "type": "noop"}])
    with pytest.raises(ValidationError, match="reserved"):
        engine.start(tasks=[{"name": "prepare", "type": "noop"}])


def test_definition_default_tasks_are_used_when_none_are_given(engine):
    workflow = engine.start()
    assert list(workflow.tasks.values_list("name", "phase")) == [
        ("prepare", "PREPARE"),
        ("noop", "EXECUTE"),
        ("validate", "VALIDATE"),
    ]


def test_an_empty_task_list_moves_through_execute_at_once(engine):
    workflow = engine.start(tasks=[])
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_idempotency_key_returns_the_same_workflow_for_the_same_request(engine):
    first, created = engine.call(services.workflow_create, name="w", actor=Actor.SYSTEM, idempotency_key="k1")
    again, created_again = engine.call(services.workflow_create, name="w", actor=Actor.SYSTEM, idempotency_key="k1")
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    with pytest.raises(services.IdempotencyConflict):
        engine.call(services.workflow_create, name="other", actor=Actor.SYSTEM, idempotency_key="k1")
    assert Workflow.objects.count() == 1


# --- Step retries, timeouts, results ----------------------------------------------------


def test_a_failing_task_is_retried_with_backoff_until_it_succeeds(engine, settings):
    settings.ORCH_RETRY_BACKOFF = 0.4
    workflow = engine.start(tasks=[{"name": "flaky", "type": "fail", "params": {"times": 2}, "max_attempts": 3}])
    [job] = engine.pending()
    before = timezone.now()
    engine.run(job)  # PREPARE, then attempt 1 of flaky (run by the same worker) fails
    after = timezone.now()
    flaky = task(workflow, "flaky")
    assert (flaky.status, flaky.attempt) == (Status.QUEUED, 2)
    assert "failed on attempt 1" in flaky.error
    # The first backoff is half fixed, half jitter: due 0.2 to 0.4 s after the failure.
    assert (flaky.queued_at - before).total_seconds() >= 0.2
    assert (flaky.queued_at - after).total_seconds() <= 0.4
    if timezone.now() < flaky.queued_at:
        assert engine.pending() == [], "the retry is not delivered before its backoff"
    engine.drain()
    flaky = task(workflow, "flaky")
    assert (flaky.status, flaky.attempt, flaky.result) == (Status.SUCCEEDED, 3, {"attempt": 3})
    assert reload(workflow).state == State.COMPLETE


def test_backoff_grows_exponentially_with_jitter_and_a_cap(settings):
    settings.ORCH_RETRY_BACKOFF = 1
    settings.ORCH_RETRY_BACKOFF_MAX = 5
    for attempt, full in [(1, 1), (2, 2), (3, 4), (4, 5), (9, 5)]:
        delays = [services.backoff_delay(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def test_a_task_whose_attempts_run_out_fails_the_workflow(engine):
    workflow = engine.start(
        tasks=[{"type": "noop"}, {"name": "bad", "type": "fail", "params": {"message": "disk full"}}]
    )
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.FAILED
    assert workflow.failed_phase == State.EXECUTE
    assert workflow.error == "bad: builtin_tasks.TaskFailed: disk full".replace(
        "builtin_tasks", "workflow_orchestrator.builtin_tasks"
    )
    bad = task(workflow, "bad")
    assert (bad.status, bad.attempt) == (Status.FAILED, 3)
    assert "Traceback" in bad.error
    fail_row = workflow.transitions.get(event="fail")
    assert fail_row.data["task_name"] == "bad" and fail_row.data["attempt"] == 3
    assert fail_row.actor_label == "worker"


def test_per_task_max_attempts_overrides_the_default(engine):
    workflow = engine.start(tasks=[{"name": "once", "type": "fail", "max_attempts": 1}])
    engine.drain()
    assert task(workflow, "once").attempt == 1
    assert reload(workflow).state == State.FAILED


def test_a_task_past_its_timeout_counts_as_a_failed_attempt(engine):
    workflow = engine.start(
        tasks=[{"name": "slow", "type": "tests.swallow", "params": {"seconds": 5}, "timeout": 0.2, "max_attempts": 2}]
    )
    engine.drain()
    slow = task(workflow, "slow")
    assert (slow.status, slow.attempt) == (Status.FAILED, 2)
    assert "TaskTimeout: timed out after 0.2 s" in slow.error
    assert reload(workflow).state == State.FAILED


def test_async_handlers_run_and_time_out(engine):
    workflow = engine.start(
        tasks=[
            {"name": "quick", "type": "tests.async_echo", "params": {"a": 1}},
            {"name": "slow", "type": "tests.async_slow", "timeout": 0.1, "max_attempts": 1},
        ]
    )
    engine.drain()
    assert task(workflow, "quick").result == {"async": True, "a": 1}
    assert "TaskTimeout" in task(workflow, "slow").error


def test_a_result_that_is_not_json_fails_the_attempt(engine):
    workflow = engine.start(tasks=[{"name": "odd", "type": "tests.not_json", "max_attempts": 1}])
    engine.drain()
    assert "not JSON-serialisable" in task(workflow, "odd").error


# --- Workflow retry ----------------------------------------------------------------------


def test_retry_resumes_the_failed_phase_without_rerunning_succeeded_tasks(engine):
    workflow = engine.start(
        tasks=[
            {"name": "ok", "type": "echo"},
            {"name": "once", "type": "fail", "params": {"times": 1}, "max_attempts": 1},
        ]
    )
    engine.drain()
    assert (reload(workflow).state, reload(workflow).failed_phase) == (State.FAILED, State.EXECUTE)
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.CLI)
    assert (reload(workflow).state, reload(workflow).failed_phase) == (State.EXECUTE, "")
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    assert workflow.retries == 1 and workflow.error == "" and workflow.failed_phase == ""
    assert workflow.transitions.get(event="retry").data == {"phase": "EXECUTE"}  # the history keeps it
    assert task(workflow, "ok").attempt == 1
    once = task(workflow, "once")
    assert (once.status, once.attempt, once.attempt_offset) == (Status.SUCCEEDED, 2, 1)
    assert events(workflow) == ["start", "execute", "fail", "retry", "validate", "complete"]
    assert workflow.transitions.get(event="retry").actor_label == "cli"


def test_retry_grants_a_fresh_budget_of_attempts(engine):
    workflow = engine.start(tasks=[{"name": "t", "type": "fail", "params": {"times": 4}, "max_attempts": 2}])
    engine.drain()
    assert task(workflow, "t").attempt == 2
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert task(workflow, "t").attempt == 4 and reload(workflow).state == State.FAILED
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert task(workflow, "t").attempt == 5 and reload(workflow).state == State.COMPLETE


def test_retry_of_a_workflow_that_did_not_fail_is_refused_with_its_state(engine):
    workflow = engine.start(tasks=[])
    engine.drain()
    with pytest.raises(services.InvalidTransition) as error:
        engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    assert error.value.state == State.COMPLETE
    assert error.value.allowed == ["delete"]
    assert events(reload(workflow)) == ["start", "execute", "validate", "complete"]


def test_queued_siblings_wait_for_the_retry_when_a_task_fails(engine):
    workflow = engine.start(
        tasks=[
            {"name": "bad", "type": "fail", "params": {"times": 1}, "max_attempts": 1},
            {"name": "later", "type": "noop"},
        ]
    )
    engine.run(engine.pending()[0])  # PREPARE, then `bad` (run by the same worker) fails the workflow
    assert task(workflow, "later").status == Status.PENDING
    [later_job] = engine.pending()
    engine.run(later_job)  # the sibling's job arrives after the failure: it must do nothing
    assert task(workflow, "later").status == Status.PENDING
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert task(workflow, "later").status == Status.SUCCEEDED


# --- Cancel, delete ------------------------------------------------------------------------


def test_cancel_during_execute_cancels_waiting_tasks_and_ignores_late_results(engine):
    workflow = engine.start(
        tasks=[
            {"name": "first", "type": "noop"},
            {"name": "a", "type": "echo", "params": {"v": 1}},
            {"name": "b", "type": "noop"},
        ]
    )
    engine.run(engine.pending()[0], tasks=2)  # PREPARE, and `first` by the same worker
    running = services.task_claim(task(workflow, "a").pk, 1, worker="test")
    assert running is not None
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI, reason="no longer needed")
    assert task(workflow, "b").status == Status.CANCELLED
    assert task(workflow, "a").status == Status.RUNNING
    assert engine.call(services.task_finished, running.pk, 1, result={"late": True}) is True
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.CANCELLED
    assert (task(workflow, "a").status, task(workflow, "a").result) == (Status.CANCELLED, {"late": True})
    assert events(workflow) == ["start", "execute", "cancel"]
    assert workflow.transitions.get(event="cancel").reason == "no longer needed"
    assert "EXECUTE" not in workflow.results


@pytest.mark.parametrize("outcome", ["success", "last success of the phase", "failure", "lease expired"])
def test_a_task_running_when_its_workflow_was_cancelled_ends_cancelled(engine, outcome):
    tasks = [{"name": "a", "type": "noop"}]
    if outcome != "last success of the phase":
        tasks.append({"name": "b", "type": "noop"})
    workflow = engine.start(tasks=tasks)
    (prepare,) = engine.pending()
    engine.call(services.task_record, services.task_claim(prepare["args"][0], 1, worker="test"))
    engine.pending()  # EXECUTE's jobs: this test plays the worker
    running = services.task_claim(task(workflow, "a").pk, 1, worker="test")
    assert running.snapshot.last_of_phase(State.EXECUTE) == (outcome == "last success of the phase")
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI)
    if outcome == "failure":
        assert engine.call(services.task_record, running, error="boom").recorded
    elif outcome == "lease expired":
        assert engine.call(services.recover, now=timezone.now() + timedelta(days=1))["expired"] == 1
    else:
        assert engine.call(services.task_record, running, stored='{"late": true}').recorded
    a = task(workflow, "a")
    assert a.status == Status.CANCELLED
    if "success" in outcome:
        assert (a.result, a.error) == ({"late": True}, "")  # the late result is kept
    else:
        assert a.error and a.result is None
    assert events(reload(workflow)) == ["start", "execute", "cancel"]


def test_cancel_of_a_finished_workflow_is_refused(engine):
    workflow = engine.start(tasks=[])
    engine.drain()
    with pytest.raises(services.InvalidTransition, match="cannot cancel a workflow in state COMPLETE"):
        engine.call(services.workflow_cancel, workflow.pk, actor=Actor.SYSTEM)


def test_a_running_workflow_cannot_be_deleted(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    with pytest.raises(services.InvalidTransition, match="cancel it first"):
        engine.call(services.workflow_delete, workflow.pk, actor=Actor.SYSTEM)
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.SYSTEM)
    engine.call(services.workflow_delete, workflow.pk, actor=Actor.SYSTEM)
    assert not Workflow.objects.filter(pk=workflow.pk).exists()
    assert not Task.objects.filter(workflow_id=workflow.pk).exists()


# --- Manual mode ------------------------------------------------------------------------------


def test_manual_mode_stops_after_each_phase_until_next(engine):
    workflow, _ = engine.call(
        services.workflow_create, name="m", actor=Actor.SYSTEM, mode="manual", tasks=[{"type": "noop"}]
    )
    nxt = lambda: engine.call(services.workflow_next, workflow.pk, actor=Actor.CLI)  # noqa: E731
    nxt()
    assert reload(workflow).state == State.PREPARE
    with pytest.raises(services.InvalidTransition, match="PREPARE phase's work has not finished"):
        nxt()
    for expected in [State.EXECUTE, State.VALIDATE, State.COMPLETE]:
        engine.drain()
        nxt()
        assert reload(workflow).state == expected
    with pytest.raises(services.InvalidTransition, match="no next step"):
        nxt()
    workflow = reload(workflow)
    assert events(workflow) == ["start", "execute", "validate", "complete"]
    assert set(workflow.transitions.values_list("actor_label", flat=True)) == {"cli"}
    assert workflow.results["EXECUTE"] == {"noop-1": None}


def test_next_is_refused_in_auto_mode(engine):
    workflow = engine.start(tasks=[])
    with pytest.raises(services.InvalidTransition, match="only for workflows in manual mode") as error:
        engine.call(services.workflow_next, workflow.pk, actor=Actor.SYSTEM)
    assert error.value.state == State.PREPARE
    assert error.value.allowed == ["cancel", "pause"]
