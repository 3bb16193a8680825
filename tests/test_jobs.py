from datetime import timedelta

from django.utils import timezone

from tests.conftest import events, reload, task
from workflows import jobs, services
from workflows.models import State, Task

Status = Task.Status


def test_the_same_job_delivered_twice_records_one_outcome_and_one_transition(engine):
    workflow = engine.start(tasks=[{"name": "only", "type": "echo", "params": {"n": 1}}])
    engine.run(engine.pending()[0])  # PREPARE
    [job] = engine.pending()
    engine.run(job)
    engine.run(job)  # the broker delivers it again
    only = task(workflow, "only")
    assert (only.status, only.attempt) == (Status.SUCCEEDED, 1)
    assert events(reload(workflow)) == ["start", "execute", "validate"]
    engine.drain()
    assert events(reload(workflow)) == ["start", "execute", "validate", "complete"]


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
    engine.run({"func": "workflows.jobs.run_task", "args": (prepare.pk, 7), "kwargs": {}})
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
    engine.run(engine.pending()[0])  # PREPARE
    [job] = engine.pending()
    claimed = services.task_claim(job["args"][0], job["args"][1], worker="doomed:1")
    assert claimed is not None  # ...and the worker is killed here, before it records anything

    assert engine.call(services.recover) == {"expired": 0, "requeued": 0}, "the lease has not run out yet"
    later = timezone.now() + timedelta(seconds=31)
    assert engine.call(services.recover, now=later) == {"expired": 1, "requeued": 0}
    t = task(workflow, "t")
    assert (t.status, t.attempt) == (Status.QUEUED, 2)
    assert "lease expired: doomed:1 stopped heartbeating" in t.error
    engine.run(job)  # the dead worker's job, delivered again: it lost its claim
    assert task(workflow, "t").attempt == 2
    engine.drain()
    t = task(workflow, "t")
    assert (t.status, t.attempt, t.result) == (Status.SUCCEEDED, 2, {"v": 2})
    assert reload(workflow).state == State.COMPLETE


def test_recovery_fails_the_workflow_when_attempts_are_used_up(engine):
    workflow = engine.start(tasks=[{"name": "t", "type": "noop", "max_attempts": 1}])
    engine.run(engine.pending()[0])
    [job] = engine.pending()
    services.task_claim(*job["args"], worker="doomed:1")
    engine.call(services.recover, now=timezone.now() + timedelta(minutes=5))
    workflow = reload(workflow)
    assert workflow.state == State.FAILED
    assert task(workflow, "t").status == Status.FAILED
    assert workflow.transitions.get(event="fail").actor_label == "system"


def test_recovery_resends_a_job_the_broker_lost(engine, settings):
    settings.ORCH_REQUEUE_SECONDS = 60
    workflow = engine.start(tasks=[])
    assert len(engine.pending()) == 1  # taken off the broker and lost with its worker
    assert engine.call(services.recover) == {"expired": 0, "requeued": 0}
    assert engine.call(services.recover, now=timezone.now() + timedelta(seconds=61)) == {"expired": 0, "requeued": 1}
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
