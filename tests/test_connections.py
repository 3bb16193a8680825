"""A dropped database connection loses no finished work: a worker whose connection the
database dropped (a restart, a failover, a proxy) records its outcome, or hands its
attempt back, on a fresh connection, instead of leaving the task RUNNING until its lease
runs out and the work is done again."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction

from tests.conftest import reload, task, wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Workflow

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite has no connection to drop: it runs in-process"
    ),
]

LEASE = 30


def start_nap(seconds: float) -> Workflow:
    workflow, _ = services.workflow_create(
        name="nap",
        actor=Actor.SYSTEM,
        tasks=[{"name": "nap", "type": "sleep", "params": {"seconds": seconds}}],
        start=True,
    )
    return workflow


def running(workflow) -> Task | None:
    return Task.objects.filter(workflow=workflow, name="nap", status=Task.Status.RUNNING).first()


def terminate_backends(where: str = "") -> list[int]:
    """Drop the connections of every other process to the test database (the cluster's),
    as a restarted server would; `where` narrows them down."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()" + where
        )
        return [pid for pid, _ in cursor.fetchall()]


def recorded_once(workflow, seconds: float) -> Task:
    """The nap, after its workflow completed: one attempt, which succeeded; its outcome
    recorded long before the lease would have run out (no take-back, no second run)."""
    wait_for(lambda: reload(workflow).state == State.COMPLETE, 90, "the workflow to complete")
    nap = task(workflow, "nap")
    assert nap.attempt == 1 and [each["outcome"] for each in nap.attempts] == ["succeeded"], nap.attempts
    assert nap.result == {"slept": seconds}
    after_the_work = nap.finished_at - nap.started_at - timedelta(seconds=seconds)
    assert after_the_work < timedelta(seconds=LEASE / 3), f"recorded {after_the_work} after the work ended"
    return nap


def test_a_connection_dropped_while_the_handler_runs_loses_no_work(cluster):
    cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=LEASE)
    workflow = start_nap(4)
    wait_for(lambda: running(workflow), 60, "the task to start")
    time.sleep(1)  # into its handler, its heartbeat connected too
    assert terminate_backends(), "the worker's connections were dropped"
    recorded_once(workflow, 4)


def test_a_connection_dropped_while_the_outcome_is_recorded_loses_no_work(cluster):
    """The test holds the workflow's row lock when the nap ends, so that the statement
    recording its success (which locks the workflow first) waits; the connection is
    dropped under it."""
    cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=LEASE)
    workflow = start_nap(2)
    wait_for(lambda: running(workflow), 60, "the task to start")
    with transaction.atomic():
        Workflow.objects.select_for_update().get(pk=workflow.pk)
        dropped = wait_for(
            lambda: terminate_backends(" AND wait_event_type = 'Lock'"), 30, "the recording to wait for the lock"
        )
    assert len(dropped) == 1
    recorded_once(workflow, 2)


def test_a_worker_stopped_after_its_connection_dropped_still_hands_its_attempt_back(cluster):
    cluster(ORCH_LEASE_SECONDS=120)
    workflow = start_nap(30)
    nap = wait_for(lambda: running(workflow), 60, "the task to start")
    time.sleep(0.5)  # into its handler
    assert terminate_backends()
    os.kill(int(nap.worker.rsplit(":", 1)[1]), signal.SIGTERM)
    # Handed back, not left for the 120 s lease to run out (the rerun is awaited 60 s).
    again = wait_for(lambda: Task.objects.filter(pk=nap.pk, attempt=2).exclude(worker="").first(), 60, "a rerun")
    assert again.attempt_offset == 1 and again.attempts[0]["outcome"] == "handed_back"
    services.workflow_cancel(workflow.pk, actor=Actor.SYSTEM)  # the rerun's nap ends, and the cluster with it
