from datetime import timedelta

from django.db import connection
from django.utils import timezone

from tests.conftest import CaptureQueriesContext, events, reload, task
from workflow_orchestrator import jobs, services, statements
from workflow_orchestrator.models import State, Task

# What recovery reports when it finds nothing to do.
NOTHING_TO_RECOVER = {
    "expired": 0,
    "requeued": 0,
    "moved_on": 0,
    "adopted": 0,
    "held": 0,
    "released": 0,
    "woken": 0,
    "deadlines": 0,
    "audit_broken": {},
    "webhooks_taken_back": 0,
    "bulk_steps_resent": 0,
}

Status = Task.Status


def test_the_same_job_delivered_twice_records_one_outcome_and_one_transition(engine):
    workflow = engine.start(
        tasks=[{"name": "first", "type": "echo"}, {"name": "second", "type": "echo", "params": {"n": 2}}]
    )
    engine.run(engine.pending()[0])  # PREPARE, and `first`, which its worker runs itself
    [job] = engine.pending()  # `second`, through the broker
    engine.run(job)  # it ends EXECUTE, and its worker runs VALIDATE itself
    engine.run(job)  # the broker delivers it again
    second = task(workflow, "second")
    assert (second.status, second.attempt, second.result) == (Status.SUCCEEDED, 1, {"n": 2})
    assert events(reload(workflow)) == ["start", "execute", "validate", "complete"]
    assert engine.pending() == []


def test_a_worker_that_ends_a_phase_runs_the_next_phase_itself(engine):
    workflow = engine.start(tasks=[{"name": "only", "type": "noop"}])
    [job] = engine.pending()
    engine.run(job)
    assert reload(workflow).state == State.COMPLETE, "PREPARE, the task and VALIDATE in one job"
    assert engine.pending() == []
    workers = set(workflow.tasks.values_list("worker", flat=True))
    assert len(workers) == 1 and set(workflow.tasks.values_list("attempt", flat=True)) == {1}


def test_a_next_task_is_run_inline_only_if_its_timeout_fits_the_job(engine):
    workflow = engine.start(tasks=[{"name": "long", "type": "noop", "timeout": 3600}])
    engine.run(engine.pending()[0])  # PREPARE, whose job django-q2 gives 300 + 30 s
    assert task(workflow, "long").status == Status.QUEUED
    [job] = engine.pending()
    assert tuple(job["args"]) == (task(workflow, "long").pk, 1, 3600)  # a delivery with the task's budget
    engine.run(job)  # django-q2 gives this job 3,600 + 30 s: VALIDATE fits, and runs in it
    assert reload(workflow).state == State.COMPLETE


def test_a_second_claim_of_one_attempt_gets_nothing(engine):
    workflow = engine.start(tasks=[])
    prepare = task(workflow, "prepare")
    assert services.task_claim(prepare.pk, 1, worker="w1") is not None
    assert services.task_claim(prepare.pk, 1, worker="w2") is None
    assert task(workflow, "prepare").worker == "w1"


def test_an_outcome_is_recorded_once(engine):
    workflow = engine.start(tasks=[])
    prepare = task(workflow, "prepare")
    services.task_claim(prepare.pk, 1, worker="w1")
    assert engine.call(services.task_finished, prepare.pk, 1, result={"first": True}) is True
    assert engine.call(services.task_finished, prepare.pk, 1, error="second delivery failed") is False
    prepare = task(workflow, "prepare")
    assert (prepare.status, prepare.result) == (Status.SUCCEEDED, {"first": True})
    assert events(reload(workflow)) == ["start", "execute", "validate"]


def test_a_job_for_an_old_attempt_does_nothing(engine):
    workflow = engine.start(tasks=[])
    prepare = task(workflow, "prepare")
    engine.run({"func": "workflow_orchestrator.jobs.run_task", "args": (prepare.pk, 7), "kwargs": {}})
    assert task(workflow, "prepare").status == Status.QUEUED


def test_a_claim_takes_a_lease_and_names_the_worker(engine, settings):
    settings.ORCH_LEASE_SECONDS = 30
    workflow = engine.start(tasks=[])
    claimed = services.task_claim(task(workflow, "prepare").pk, 1, worker="host:1")
    assert claimed.status == Status.RUNNING and claimed.worker == "host:1"
    remaining = (claimed.lease_expires_at - timezone.now()).total_seconds()
    assert 29 < remaining <= 30
    assert services.task_heartbeat(claimed.pk, 1) is True
    assert services.task_heartbeat(claimed.pk, 2) is False


def test_recovery_requeues_a_task_whose_lease_expired(engine):
    workflow = engine.start(tasks=[{"name": "t", "type": "echo", "params": {"v": 2}}])
    [job] = engine.pending()
    claimed = services.task_claim(job["args"][0], job["args"][1], worker="doomed:1")
    assert claimed is not None  # ...and the worker is killed here, before it records anything

    assert engine.call(jobs.recover)["expired"] == 0, "the lease has not run out yet"
    later = timezone.now() + timedelta(seconds=31)
    assert engine.call(jobs.recover, now=later) == {**NOTHING_TO_RECOVER, "expired": 1}
    prepare = task(workflow, "prepare")
    assert (prepare.status, prepare.attempt) == (Status.QUEUED, 2)
    assert "lease expired: doomed:1 stopped heartbeating" in prepare.error
    engine.run(job)  # the dead worker's job, delivered again: it lost its claim
    assert task(workflow, "prepare").attempt == 2
    engine.drain()
    t = task(workflow, "t")
    assert (task(workflow, "prepare").status, t.status, t.result) == (Status.SUCCEEDED, Status.SUCCEEDED, {"v": 2})
    assert reload(workflow).state == State.COMPLETE


def test_recovery_fails_the_workflow_when_attempts_are_used_up(engine):
    workflow = engine.start(tasks=[{"type": "noop"}, {"name": "t", "type": "noop", "max_attempts": 1}])
    engine.run(engine.pending()[0], tasks=2)  # PREPARE, and noop-1 by the same worker
    [job] = engine.pending()
    services.task_claim(*job["args"], worker="doomed:1")
    engine.call(jobs.recover, now=timezone.now() + timedelta(minutes=5))
    workflow = reload(workflow)
    assert workflow.state == State.FAILED
    assert task(workflow, "t").status == Status.FAILED
    assert workflow.transitions.get(event="fail").actor_label == "system"


def test_recovery_moves_on_a_workflow_whose_worker_died_after_the_last_success(engine):
    workflow = engine.start(tasks=[{"name": "a", "type": "echo", "params": {"v": 1}}, {"name": "b", "type": "noop"}])
    prepare = services.task_claim(task(workflow, "prepare").pk, 1, worker="w:1")
    assert engine.call(services.task_record, prepare, stored='{"p": 1}').recorded
    engine.pending()  # the EXECUTE jobs: taken by two workers at once
    a, b = (services.task_claim(task(workflow, name).pk, 1, worker=f"w:{name}") for name in "ab")
    assert engine.call(services.task_record, a, stored='{"v": 1}').recorded
    # b's worker records the success that ends EXECUTE, and is killed before it fires the
    # transition to VALIDATE.
    assert statements.succeed(b.pk, 1, workflow_id=workflow.pk, result=None, now=timezone.now()).phase_done
    assert reload(workflow).state == State.EXECUTE
    assert engine.call(jobs.recover) == {**NOTHING_TO_RECOVER, "moved_on": 1}
    workflow = reload(workflow)
    assert (workflow.state, workflow.results["EXECUTE"]) == (State.VALIDATE, {"a": {"v": 1}, "b": None})
    assert workflow.transitions.get(event="validate").actor_label == "system"
    assert engine.call(jobs.recover)["moved_on"] == 0
    engine.drain()
    assert events(reload(workflow)) == ["start", "execute", "validate", "complete"]


def test_recovery_resends_a_job_the_broker_lost(engine, settings):
    settings.ORCH_REQUEUE_SECONDS = 60
    workflow = engine.start(tasks=[])
    assert len(engine.pending()) == 1  # taken off the broker and lost with its worker
    assert engine.call(jobs.recover) == NOTHING_TO_RECOVER
    found = engine.call(jobs.recover, now=timezone.now() + timedelta(seconds=61))
    assert found == {**NOTHING_TO_RECOVER, "requeued": 1}
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_recovery_resends_a_workflow_s_lost_jobs_reading_its_chain_once(engine, settings):
    """After a broker outage, a fan-out's lost jobs come back together: one lock and one
    read of the workflow's audit chain, however many tasks it has."""
    workflow = engine.start(tasks=[{"type": "noop"}] * 6)
    engine.run(engine.pending()[0], tasks=2)  # PREPARE: EXECUTE's six jobs are queued (one run here)
    lost = engine.pending()
    assert len(lost) == 5
    with CaptureQueriesContext(connection) as queries:
        found = engine.call(jobs.recover, now=timezone.now() + timedelta(seconds=61))
    assert found["requeued"] == 5
    chain_reads = [q for q in queries.captured_queries if 'FROM "workflow_orchestrator_transition"' in q["sql"]]
    assert len(chain_reads) == 1
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_the_minute_schedule_queues_recovery_every_half_lease(engine, settings):
    settings.ORCH_LEASE_SECONDS = 20
    engine.call(jobs.recover_minute)
    assert engine.broker.delayed_size() == 5  # at +10, +20, +30, +40, +50 s


def test_the_recovery_schedule_exists_once(db):
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)
    assert Schedule.objects.filter(name=jobs.RECOVER_SCHEDULE).count() == 1
