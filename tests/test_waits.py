"""Long-lived waits: durable timers (`wait`), signals (`wait_signal`, POST
/workflows/{id}/signal, `workflow signal`) and workflow deadlines. A waiting task holds no
worker and no job; a signal, its due time or recovery wakes it, and its handler runs again."""

import json
import signal
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import events, reload, task, wait_for
from workflow_orchestrator import audit, selectors, services
from workflow_orchestrator.models import DEADLINE_ERROR, Actor, State, Task, Transition, Workflow, WorkflowSignal

Status = Task.Status


def signal_task(name="approved", **params) -> dict:
    return {"name": "gate", "type": "wait_signal", "params": {"name": name, **params}}


def timer(seconds=None, until=None, name="timer") -> dict:
    params = {"seconds": seconds} if seconds is not None else {"until": until}
    return {"name": name, "type": "wait", "params": params}


def send(workflow, name="approved", payload=None, actor=Actor.SYSTEM, key=""):
    return services.workflow_signal(workflow.pk, name=name, payload=payload or {}, actor=actor, idempotency_key=key)


# --- Timers ----------------------------------------------------------------------------------


def test_a_timer_waits_without_a_worker_and_its_job_wakes_it_when_due(engine):
    workflow = engine.start(tasks=[timer(seconds=0.5), {"name": "after", "type": "echo", "after": ["timer"]}])
    [delivery] = engine.pending()
    engine.run(delivery)
    waiting = task(workflow, "timer")
    assert waiting.status == Status.WAITING and waiting.worker == "" and waiting.lease_expires_at is None
    assert waiting.waiting_for == "timer" and waiting.wake_at > timezone.now()
    assert waiting.attempts[-1]["outcome"] == "waiting"
    assert services.workflow_progress(reload(workflow)) == {"done": 1, "total": 4}
    assert engine.pending() == [], "no job is due: the wake job waits on the broker with its due time"
    assert "waiting for a timer" in selectors.waiting_reason(reload(workflow))

    engine.drain(wait=5)
    woken = task(workflow, "timer")
    assert woken.status == Status.SUCCEEDED and woken.result == {"waited_until": waiting.wake_at.isoformat()}
    assert woken.attempt - woken.attempt_offset == 1, "waiting costs no attempt of its budget"
    assert [entry["outcome"] for entry in woken.attempts] == ["waiting", "succeeded"]
    assert reload(workflow).state == State.COMPLETE
    assert task(workflow, "after").started_at >= waiting.wake_at


def test_a_timer_due_while_nothing_woke_it_is_woken_by_recovery(engine):
    workflow = engine.start(tasks=[timer(seconds=0.5)])
    engine.run(engine.pending()[0])
    assert task(workflow, "timer").status == Status.WAITING
    engine.broker.purge_queue()  # the broker lost the wake job (Redis restarted, say)
    assert engine.call(services.recover)["woken"] == 0, "not due yet"
    time.sleep(0.6)
    assert engine.call(services.recover)["woken"] == 1
    engine.drain()
    assert task(workflow, "timer").status == Status.SUCCEEDED and reload(workflow).state == State.COMPLETE


def test_a_timer_until_a_time_already_past_does_not_wait(engine):
    workflow = engine.start(tasks=[timer(until=(timezone.now() - timedelta(minutes=1)).isoformat())])
    engine.drain()
    done = task(workflow, "timer")
    assert done.status == Status.SUCCEEDED and [entry["outcome"] for entry in done.attempts] == ["succeeded"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "either seconds or until"),
        ({"seconds": 1, "until": "2030-01-01T00:00:00Z"}, "either seconds or until"),
        ({"seconds": -1}, "params.seconds must be a number"),
        ({"seconds": "soon"}, "params.seconds must be a number"),
        ({"until": "tomorrow"}, "params.until must be a time in ISO 8601"),
    ],
)
def test_bad_timer_params_are_refused_when_the_workflow_is_created(db, params, message):
    client = staff_client()
    body = {"name": "t", "tasks": [{"name": "timer", "type": "wait", "params": params}]}
    answer = client.post("/workflow/start", body, format="json")
    assert answer.status_code == 400 and message in json.dumps(answer.json())
    assert not Workflow.objects.exists()


# --- Signals ---------------------------------------------------------------------------------


def test_a_signal_wakes_the_task_waiting_for_it_and_its_payload_is_the_result(engine):
    workflow = engine.start(tasks=[signal_task(), {"name": "next", "type": "gather", "after": ["gate"]}])
    engine.run(engine.pending()[0])
    gate = task(workflow, "gate")
    assert (gate.status, gate.waiting_for, gate.wake_at) == (Status.WAITING, "signal:approved", None)
    assert engine.pending() == [] and engine.broker.delayed_size() == 0, "nothing on the broker while it waits"
    assert selectors.waiting_reason(reload(workflow)) == "waiting for signal approved"

    signal, sent = engine.call(send, workflow, payload={"by": "finance"})
    assert sent and signal.task_id == gate.pk and signal.delivered_at is not None
    engine.drain()
    assert task(workflow, "gate").result == {"by": "finance"}
    assert task(workflow, "next").result == {"gate": {"by": "finance"}}, "downstream reads it from ctx.upstream"
    done = reload(workflow)
    assert done.state == State.COMPLETE
    row = Transition.objects.get(workflow=done, event="signal")
    assert (row.source, row.target, row.actor_label) == (State.EXECUTE, State.EXECUTE, "system")
    assert row.data == {"name": "approved", "payload": {"by": "finance"}, "task": "gate"} and row.seq == signal.seq
    assert audit.verify(done) is None


def test_a_signal_sent_before_the_task_waits_is_kept_and_taken_without_waiting(engine):
    workflow = engine.start(tasks=[signal_task()], mode=Workflow.Mode.MANUAL)
    signal, sent = engine.call(send, workflow, payload={"early": True})
    assert sent and signal.task is None, "kept: no task waits yet"
    engine.drain()
    engine.call(services.workflow_next, workflow.pk, actor=Actor.SYSTEM)  # on to EXECUTE
    engine.drain()
    gate = task(workflow, "gate")
    assert gate.status == Status.SUCCEEDED and gate.result == {"early": True}
    assert [entry["outcome"] for entry in gate.attempts] == ["succeeded"], "it never waited"
    assert WorkflowSignal.objects.get(pk=signal.pk).task_id == gate.pk


def test_each_signal_is_delivered_once_to_one_task(engine):
    workflow = engine.start(tasks=[signal_task(), {**signal_task(), "name": "gate-2"}])
    engine.drain()
    first, _ = engine.call(send, workflow, payload={"n": 1})
    second, _ = engine.call(send, workflow, payload={"n": 2})
    engine.drain()
    assert {task(workflow, "gate").result["n"], task(workflow, "gate-2").result["n"]} == {1, 2}
    assert {first.task_id, second.task_id} == {task(workflow, "gate").pk, task(workflow, "gate-2").pk}
    assert reload(workflow).state == State.COMPLETE


def test_an_idempotency_key_sends_a_signal_once(engine):
    workflow = engine.start(tasks=[signal_task()])
    first, sent = engine.call(send, workflow, payload={"a": 1}, key="k-1")
    again, sent_again = engine.call(send, workflow, payload={"a": 1}, key="k-1")
    assert sent and not sent_again and again.pk == first.pk
    assert Transition.objects.filter(workflow=workflow, event="signal").count() == 1
    with pytest.raises(services.IdempotencyConflict):
        engine.call(send, workflow, payload={"a": 2}, key="k-1")


def test_a_wait_signal_deadline_fails_the_task_when_no_signal_came(engine, settings):
    settings.ORCH_MAX_ATTEMPTS = 1
    workflow = engine.start(tasks=[signal_task(deadline_seconds=0.3)])
    engine.drain(wait=5)
    gate = task(workflow, "gate")
    assert gate.status == Status.FAILED and "no signal 'approved' within 0.3 s" in gate.error
    assert reload(workflow).state == State.FAILED


def test_signals_to_an_ended_workflow_are_refused_and_unknown_names_to_a_failed_one(engine, settings):
    settings.ORCH_MAX_ATTEMPTS = 1
    done = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    with pytest.raises(services.InvalidTransition, match="cannot signal a workflow in state COMPLETE"):
        engine.call(send, done)
    failed = engine.start(tasks=[signal_task(), {"name": "boom", "type": "fail"}])
    engine.drain()
    assert reload(failed).state == State.FAILED
    assert task(failed, "gate").status == Status.PENDING, "its wait ended with its phase: a retry waits again"
    with pytest.raises(services.InvalidTransition, match="no task of this FAILED workflow waits for"):
        engine.call(send, failed, name="unheard-of")
    kept, sent = engine.call(send, failed)  # a known name is kept for the retry
    assert sent and kept.task is None


# --- Deadlines -------------------------------------------------------------------------------


def test_a_deadline_fails_a_workflow_still_running_and_a_retry_gives_a_new_one(engine):
    workflow = engine.start(tasks=[timer(seconds=30)], deadline_seconds=1)
    first_deadline = reload(workflow).deadline_at
    assert first_deadline == reload(workflow).started_at + timedelta(seconds=1)
    engine.run(engine.pending()[0])
    engine.drain(wait=3)  # the deadline's job falls due before the timer's
    failed = reload(workflow)
    assert (failed.state, failed.error, failed.failed_phase) == (State.FAILED, DEADLINE_ERROR, State.EXECUTE)
    fail = failed.transitions.get(event="fail")
    assert fail.actor_label == "system" and fail.data["deadline_seconds"] == 1
    assert task(workflow, "timer").status == Status.PENDING and task(workflow, "timer").wake_at is None
    assert services.workflow_is_cancelled(workflow.pk), "running handlers are told to stop"

    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    retried = reload(workflow)
    assert retried.deadline_at > first_deadline and retried.state == State.EXECUTE
    assert not services.workflow_is_cancelled(workflow.pk)


def test_a_deadline_that_passed_while_no_job_checked_it_is_applied_by_recovery(engine):
    workflow = engine.start(tasks=[timer(seconds=600)], deadline_seconds=5)
    engine.run(engine.pending()[0])
    engine.broker.purge_queue()
    assert engine.call(services.recover)["deadlines"] == 0
    assert engine.call(services.recover, now=timezone.now() + timedelta(seconds=6))["deadlines"] == 1
    assert reload(workflow).error == DEADLINE_ERROR


def test_a_workflow_that_completes_in_time_keeps_its_deadline_job_harmless(engine):
    workflow = engine.start(tasks=[{"type": "noop"}], deadline_seconds=1)
    engine.drain(wait=3)
    done = reload(workflow)
    assert done.state == State.COMPLETE and events(done) == ["start", "execute", "validate", "complete"]


def test_deadline_seconds_is_checked_and_defaults_to_the_definitions(db):
    client = staff_client()
    for bad in (0, -5, "soon", 10**9):
        answer = client.post("/workflow/start", {"name": "d", "deadline_seconds": bad}, format="json")
        assert answer.status_code == 400 and "deadline_seconds" in answer.json(), bad
    answer = client.post("/workflows/", {"name": "d", "deadline_seconds": 90}, format="json")
    assert answer.status_code == 201 and answer.json()["deadline_seconds"] == 90
    assert answer.json()["deadline_at"] is None, "set when it starts"


# --- The API and the CLI ---------------------------------------------------------------------


def staff_client(username="ops"):
    user = get_user_model().objects.create_user(username, is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_signal_endpoint_sends_once_per_idempotency_key_and_checks_its_body(engine):
    workflow = engine.start(tasks=[signal_task()])
    engine.drain()
    client = staff_client()
    url = f"/workflows/{workflow.pk}/signal"
    assert client.post(url, {"payload": {}}, format="json").json() == {"name": ["This field is required."]}
    assert "payload" in client.post(url, {"name": "approved", "payload": [1]}, format="json").json()
    assert client.post(f"/workflows/{Workflow().pk}/signal", {"name": "x"}, format="json").status_code == 404
    with engine.capture(execute=True):
        first = client.post(url, {"name": "approved", "payload": {"ok": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="abc")
        again = client.post(url, {"name": "approved", "payload": {"ok": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="abc")
        other = client.post(url, {"name": "approved", "payload": {"ok": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert first.json()["task"] == "gate" and first.json()["sent_by"] == "api:ops" and again.json() == first.json()
    engine.drain()
    assert task(workflow, "gate").result == {"ok": 1}
    ended = client.post(url, {"name": "approved"}, format="json")
    assert ended.status_code == 409 and ended.json()["state"] == State.COMPLETE


def test_a_user_who_may_not_change_the_workflow_cannot_signal_it(engine):
    workflow = engine.start(tasks=[signal_task()])
    outsider = get_user_model().objects.create_user("outsider")
    client = APIClient()
    client.force_authenticate(outsider)
    assert client.post(f"/workflows/{workflow.pk}/signal", {"name": "approved"}, format="json").status_code == 404
    assert not WorkflowSignal.objects.exists()


def test_the_cli_sends_a_signal_and_starts_with_a_deadline(engine):
    out = StringIO()
    with engine.capture(execute=True):
        call_command(
            "workflow", "start", "--name", "c", "--tasks", json.dumps([signal_task()]), "--deadline-seconds", "60",
            "--json", stdout=out,
        )  # fmt: skip
    workflow = Workflow.objects.get(pk=json.loads(out.getvalue())["id"])
    assert workflow.deadline_seconds == 60 and workflow.deadline_at is not None
    engine.drain(wait=0)  # the deadline's job is due in a minute: not waited for
    out = StringIO()
    with engine.capture(execute=True):
        call_command("workflow", "signal", str(workflow.pk), "approved", "--payload", '{"by": "cli"}', stdout=out)
    assert "delivered to task gate" in out.getvalue()
    engine.drain(wait=0)  # the deadline's job is due in a minute: not waited for
    assert task(workflow, "gate").result == {"by": "cli"}
    assert Transition.objects.get(workflow=workflow, event="signal").actor_label == "cli"
    with pytest.raises(CommandError, match="--payload must be a JSON object"):
        call_command("workflow", "signal", str(workflow.pk), "approved", "--payload", "[1]")
    with pytest.raises(CommandError, match="cannot signal a workflow in state COMPLETE"):
        call_command("workflow", "signal", str(workflow.pk), "approved")


# --- On real clusters ------------------------------------------------------------------------


def started(name: str, tasks: list, **kwargs) -> Workflow:
    workflow, _ = services.workflow_create(name=name, tasks=tasks, actor=Actor.SYSTEM, start=True, **kwargs)
    return workflow


def states(workflows) -> set:
    return set(Workflow.objects.filter(pk__in=[w.pk for w in workflows]).values_list("state", flat=True))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_ten_timers_hold_no_worker_while_other_workflows_run_on_one(cluster):
    cluster(ORCH_WORKERS=1)
    timers = [started(f"timer-{i}", [timer(seconds=6)]) for i in range(10)]
    wait_for(lambda: Task.objects.filter(status=Status.WAITING).count() == 10, 60, "the ten timers to wait")
    others = [started(f"other-{i}", [{"type": "noop"}, {"type": "noop"}]) for i in range(5)]
    wait_for(lambda: states(others) == {State.COMPLETE}, 60, "the other workflows to complete")
    assert Task.objects.filter(workflow__in=timers, name="timer", status=Status.WAITING).count() == 10, (
        "the one worker ran the others while every timer still waited"
    )
    wait_for(lambda: states(timers) == {State.COMPLETE}, 60, "the timers to fire")
    for workflow in timers:
        fired = task(workflow, "timer")
        assert fired.finished_at >= fired.wake_at and fired.attempt - fired.attempt_offset == 1


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_timer_and_a_deadline_due_while_no_cluster_ran_fire_on_the_next_start(cluster):
    first = cluster(ORCH_WORKERS=2)
    sleeper = started("timer", [timer(seconds=3)])
    late = started("late", [signal_task()], deadline_seconds=4)
    wait_for(lambda: Task.objects.filter(status=Status.WAITING).count() == 2, 60, "both to wait")
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(timeout=60)
    time.sleep(4.5)  # both come due while no cluster runs
    assert task(sleeper, "timer").status == Status.WAITING and reload(late).state == State.EXECUTE
    cluster(ORCH_WORKERS=2)
    wait_for(lambda: reload(sleeper).state == State.COMPLETE, 60, "the timer to fire on the next start")
    wait_for(lambda: reload(late).state == State.FAILED, 60, "the deadline to fail the workflow")
    failed = reload(late)
    assert failed.error == DEADLINE_ERROR and failed.transitions.get(event="fail").actor_label == "system"
    assert task(late, "gate").status == Status.PENDING


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_signal_sent_before_its_task_waits_is_taken_when_it_runs(cluster):
    cluster(ORCH_WORKERS=2)
    workflow = started("early", [{"name": "first", "type": "sleep", "params": {"seconds": 2}},
                                 {**signal_task(), "after": ["first"]}])  # fmt: skip
    wait_for(lambda: task(workflow, "first").status == Status.RUNNING, 60, "the first task to run")
    signal_row, sent = services.workflow_signal(workflow.pk, name="approved", payload={"early": 1}, actor=Actor.SYSTEM)
    assert sent and signal_row.task is None and task(workflow, "gate").status == Status.PENDING
    wait_for(lambda: reload(workflow).state == State.COMPLETE, 60, "the workflow to complete")
    gate = task(workflow, "gate")
    assert gate.result == {"early": 1} and [entry["outcome"] for entry in gate.attempts] == ["succeeded"]
