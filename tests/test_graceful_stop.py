"""Stopping a cluster: nothing is lost, and nothing waits for a lease when it need not."""

import os
import signal
import time

import pytest

from tests.conftest import events, wait_for
from workflows import services
from workflows.models import Actor, State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def start_sleeper(seconds: float) -> Workflow:
    workflow, _ = services.workflow_create(
        name="sleeper",
        tasks=[{"name": "nap", "type": "sleep", "params": {"seconds": seconds}}],
        actor=Actor.SYSTEM,
        start=True,
    )
    return workflow


def running(workflow) -> Task | None:
    return Task.objects.filter(workflow=workflow, name="nap", status=Task.Status.RUNNING).first()


def test_sigterm_to_a_cluster_lets_its_running_task_finish(cluster):
    first = cluster(ORCH_LEASE_SECONDS=60)
    workflow = start_sleeper(2)
    wait_for(lambda: running(workflow), 60, "the task to start")
    stopping = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(timeout=60)
    assert time.monotonic() - stopping < 45
    nap = Task.objects.get(workflow=workflow, name="nap")
    assert (nap.status, nap.attempt) == (Task.Status.SUCCEEDED, 1), first.output()[-2000:]
    cluster()  # the next phase's job waits on the broker for the next cluster
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 60, "the workflow to complete")
    assert set(Task.objects.filter(workflow=workflow).values_list("attempt", flat=True)) == {1}


def test_sigterm_to_a_busy_worker_hands_its_task_back_at_once(cluster):
    cluster(ORCH_LEASE_SECONDS=120)
    workflow = start_sleeper(3)
    nap = wait_for(lambda: running(workflow), 60, "the task to start")
    time.sleep(0.5)  # into its handler: a worker killed between claim and handler waits for its lease
    os.kill(int(nap.worker.rsplit(":", 1)[1]), signal.SIGTERM)
    handed_back = time.monotonic()
    again = wait_for(
        lambda: Task.objects.filter(pk=nap.pk, attempt=2, status=Task.Status.RUNNING).first(), 60, "a rerun"
    )
    assert time.monotonic() - handed_back < 60, "taken up again long before the 120 s lease would have run out"
    assert again.worker != nap.worker and again.attempt_offset == 1, "a handed-back attempt costs no budget"
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 60, "the workflow to complete")
    assert events(Workflow.objects.get(pk=workflow.pk)) == ["start", "execute", "validate", "complete"]
