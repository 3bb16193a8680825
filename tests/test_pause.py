"""Pausing and resuming one workflow: its running tasks finish, nothing new of it starts
until it is resumed, and both are rows in its audit chain."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.conftest import events, reload, task
from workflow_orchestrator import audit, services
from workflow_orchestrator.models import Actor, State, Task, Workflow

Status = Task.Status


def run_prepare(engine, workflow: Workflow) -> None:
    """Play the worker of the PREPARE job: its success moves the workflow to EXECUTE,
    whose jobs stay on the broker for the test to run."""
    (job,) = engine.pending()
    engine.call(services.task_record, services.task_claim(*job["args"], worker="w1"))
    assert reload(workflow).state == State.EXECUTE


def inline():
    return services.inline_claim("w1", 100.0)


def test_pause_and_resume_are_rows_of_the_audit_chain_with_actor_and_reason(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    paused = engine.call(services.workflow_pause, workflow.pk, actor=Actor.CLI, reason="deploy")
    assert paused.paused_at is not None and reload(workflow).paused_at == paused.paused_at
    assert services.available_actions(reload(workflow)) == ["cancel", "resume"]
    resumed = engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM, reason="deployed")
    assert resumed.paused_at is None and reload(workflow).paused_at is None
    rows = list(reload(workflow).transitions.order_by("seq").values_list("event", "source", "target", "actor_label",
                                                                          "reason"))  # fmt: skip
    assert rows == [
        ("start", State.INIT, State.PREPARE, "system", ""),
        ("pause", State.PREPARE, State.PREPARE, "cli", "deploy"),
        ("resume", State.PREPARE, State.PREPARE, "system", "deployed"),
    ]
    assert audit.verify(reload(workflow)) is None
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE and audit.verify(workflow) is None


def test_a_job_for_a_paused_workflows_task_claims_nothing_until_the_resume_sends_it_again(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    assert engine.drain() == 1  # PREPARE's job: it claims nothing and ends
    prepare = task(workflow, "prepare")
    assert (prepare.status, prepare.attempt, prepare.attempts) == (Status.QUEUED, 1, [])
    assert reload(workflow).state == State.PREPARE
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert reload(workflow).state == State.COMPLETE
    assert events(reload(workflow)) == ["start", "pause", "resume", "execute", "validate", "complete"]


def test_a_running_task_of_a_paused_workflow_finishes_and_moves_it_on_but_starts_nothing(engine):
    workflow = engine.start(tasks=[{"name": "a", "type": "noop"}, {"name": "b", "type": "noop"}])
    (job,) = engine.pending()
    running = services.task_claim(*job["args"], worker="w1")
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    recorded = engine.call(services.task_record, running, stored='{"ready": true}', inline=inline())
    assert recorded.recorded and recorded.next_task is None  # no inline claim for a paused workflow
    workflow = reload(workflow)
    assert (workflow.state, workflow.results["PREPARE"]) == (State.EXECUTE, {"ready": True})
    assert task(workflow, "prepare").status == Status.SUCCEEDED
    assert engine.drain() == 2  # EXECUTE's jobs claim nothing
    assert {task(workflow, name).status for name in "ab"} == {Status.QUEUED}
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert reload(workflow).state == State.COMPLETE
    assert audit.verify(reload(workflow)) is None


def test_a_task_released_by_a_success_is_not_handed_to_the_worker_of_a_paused_workflow(engine):
    workflow = engine.start(tasks=[{"name": "a", "type": "noop"}, {"name": "b", "type": "noop", "after": ["a"]}])
    run_prepare(engine, workflow)
    (job,) = engine.pending()
    running = services.task_claim(*job["args"], worker="w1")
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    recorded = engine.call(services.task_record, running, stored=None, inline=inline())
    assert recorded.recorded and recorded.next_task is None
    assert (task(workflow, "a").status, task(workflow, "b").status) == (Status.SUCCEEDED, Status.QUEUED)
    assert engine.drain() == 1 and task(workflow, "b").status == Status.QUEUED
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_pause_and_resume_are_refused_when_not_allowed_saying_why(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    with pytest.raises(services.InvalidTransition, match="the workflow is not paused") as refused:
        engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    assert refused.value.allowed == ["cancel", "pause"]
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    with pytest.raises(services.InvalidTransition, match="paused already") as refused:
        engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    assert (refused.value.state, refused.value.allowed) == (State.PREPARE, ["cancel", "resume"])
    with pytest.raises(ValidationError):
        engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM, reason="a\x00b")
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    with pytest.raises(services.InvalidTransition, match="a workflow in state COMPLETE cannot be paused"):
        engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    assert events(reload(workflow)) == ["start", "pause", "resume", "execute", "validate", "complete"]


def test_a_paused_workflow_moves_on_to_its_end_and_is_then_no_longer_resumed(engine):
    workflow = engine.start(tasks=[])
    (prepare,) = engine.pending()
    engine.call(services.task_record, services.task_claim(*prepare["args"], worker="w1"))
    (validate,) = engine.pending()  # EXECUTE had nothing to run
    running = services.task_claim(*validate["args"], worker="w1")
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    engine.call(services.task_record, running, stored=None)
    workflow = reload(workflow)
    assert (workflow.state, workflow.is_paused) == (State.COMPLETE, True)
    assert services.available_actions(workflow) == ["delete"]
    with pytest.raises(services.InvalidTransition, match="a workflow in state COMPLETE cannot be resumed"):
        engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    assert events(workflow) == ["start", "execute", "validate", "pause", "complete"]
    assert audit.verify(workflow) is None


def test_cancel_of_a_paused_workflow_ends_the_pause(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    cancelled = engine.call(services.workflow_cancel, workflow.pk, actor=Actor.SYSTEM)
    workflow = reload(workflow)
    assert (workflow.state, workflow.paused_at, cancelled.paused_at) == (State.CANCELLED, None, None)
    assert task(workflow, "prepare").status == Status.CANCELLED
    assert services.available_actions(workflow) == ["delete"]


def test_a_retry_of_a_workflow_that_failed_while_paused_starts_nothing_until_resumed(engine):
    workflow = engine.start(tasks=[{"name": "bad", "type": "fail", "params": {"times": 1}, "max_attempts": 1}])
    run_prepare(engine, workflow)
    (job,) = engine.pending()
    running = services.task_claim(*job["args"], worker="w1")
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    assert engine.call(services.task_record, running, error="boom").recorded
    workflow = reload(workflow)
    assert workflow.state == State.FAILED and workflow.is_paused
    assert services.available_actions(workflow) == ["retry", "cancel", "resume", "delete"]
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    assert engine.drain() == 1  # the retried task's job claims nothing
    workflow = reload(workflow)
    assert (workflow.state, workflow.is_paused, task(workflow, "bad").status) == (
        State.EXECUTE,
        True,
        Status.QUEUED,
    )
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert reload(workflow).state == State.COMPLETE
    assert audit.verify(reload(workflow)) is None


def test_recovery_does_not_resend_a_paused_workflows_jobs_but_takes_back_its_expired_leases(engine, settings):
    settings.ORCH_REQUEUE_SECONDS = 60
    workflow = engine.start(tasks=[{"name": "a", "type": "noop"}, {"name": "b", "type": "noop"}])
    run_prepare(engine, workflow)
    a_job, _ = sorted(engine.pending(), key=lambda job: job["args"][0])  # b's job is lost
    running = services.task_claim(*a_job["args"], worker="w1")  # and a's worker dies
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    found = engine.call(services.recover, now=timezone.now() + timedelta(days=1))
    assert (found["expired"], found["requeued"]) == (1, 0)
    a = task(workflow, "a")
    assert (a.status, a.attempt) == (Status.QUEUED, running.attempt + 1)
    engine.drain()  # a's next attempt claims nothing
    assert {task(workflow, name).status for name in "ab"} == {Status.QUEUED}
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_a_resume_keeps_a_retry_waiting_for_its_backoff(engine, settings):
    settings.ORCH_RETRY_BACKOFF, settings.ORCH_RETRY_BACKOFF_MAX = 600, 600
    workflow = engine.start(tasks=[{"name": "flaky", "type": "fail", "params": {"times": 1}}])
    run_prepare(engine, workflow)
    (job,) = engine.pending()
    running = services.task_claim(*job["args"], worker="w1")
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.SYSTEM)
    assert engine.call(services.task_record, running, error="boom").recorded  # attempt 2 is due in 5 minutes or more
    due = task(workflow, "flaky").queued_at
    assert due > timezone.now() + timedelta(minutes=4)
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.SYSTEM)
    assert task(workflow, "flaky").queued_at == due
    assert engine.pending() == []  # its job is sent again for when it is due, not now
