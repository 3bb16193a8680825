"""Work goes to free workers across clusters: a cluster takes a job off the broker only for
a worker free to run it, so no job waits in a busy cluster while another has a free worker,
and a cluster that stops hands its running tasks to the other at once."""

import math
import os
import signal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import wait_for
from tests.test_graceful_stop import alive_in_group, budget_attempt
from workflow_orchestrator import queue, services
from workflow_orchestrator.models import Actor, State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def sleepers(name: str, count: int, seconds: float) -> Workflow:
    workflow, _ = services.workflow_create(
        name=name,
        tasks=[{"name": f"nap-{i}", "type": "sleep", "params": {"seconds": seconds}} for i in range(1, count + 1)],
        actor=Actor.SYSTEM,
        start=True,
    )
    return workflow


def worker_pid(task: Task) -> int:
    return int(task.worker.rsplit(":", 1)[1])


def test_a_busy_cluster_takes_no_job_while_another_cluster_has_a_free_worker(cluster):
    """Cluster A's only worker runs a long task; cluster B has two free workers. Each of
    eight workflows started one after another runs in B at once: not one waits in A's
    memory for A's worker (django-q2's pusher would take up to two jobs ahead of it, and
    a job taken is out of every other cluster's reach)."""
    busy = cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=120)
    # Longer than the loop below can take on a loaded machine, within the task timeout (300 s);
    # it is cancelled at the end.
    long_one = sleepers("long", 1, 280)
    nap = wait_for(lambda: long_one.tasks.filter(status=Task.Status.RUNNING).first(), 60, "A's task to start")
    free = cluster(ORCH_WORKERS=2, ORCH_LEASE_SECONDS=120)
    ran_in = set()
    for number in range(8):
        workflow = sleepers(f"short-{number}", 1, 0.05)
        # Far below the 280 s A's worker stays busy: a job A had taken would wait that long.
        done = Workflow.objects.filter(pk=workflow.pk, state=State.COMPLETE)
        wait_for(done.exists, 30, f"workflow {number} to complete")
        ran_in |= {os.getpgid(worker_pid(task)) for task in workflow.tasks.all()}
    assert ran_in == {free.process.pid}, busy.output()[-2000:]
    assert Task.objects.get(pk=nap.pk).status == Task.Status.RUNNING
    # Cancelled, the long task returns early (the built-in sleep watches ctx.cancelled()), so that
    # both clusters stop at once when the test ends.
    services.workflow_cancel(long_one.pk, actor=Actor.SYSTEM)
    wait_for(lambda: Task.objects.get(pk=nap.pk).status == Task.Status.CANCELLED, 30, "the long task to stop")


def test_a_stopping_cluster_hands_its_tasks_to_the_other_cluster_at_once(cluster):
    """C1 (2 workers) runs two of a workflow's eight 10 s tasks and takes none of the other
    six ahead of its workers: their deliveries stay on the broker, where C2 (8 workers),
    started beside it, takes them all (django-q2's pusher would have taken up to five of
    them into C1's memory, to wait there for C1's workers). Then C1's whole process group gets SIGTERM: it exits
    within 10 s without SIGKILL, and C2 runs the two handed-back tasks at once, with the
    re-send of recovery out of reach (600 s) and the leases long (120 s)."""
    settings = {"ORCH_LEASE_SECONDS": 120, "ORCH_REQUEUE_SECONDS": 600}
    first = cluster(ORCH_WORKERS=2, **settings)
    workflow = sleepers("eight", 8, 10)
    naps = workflow.tasks.filter(phase="EXECUTE")
    wait_for(lambda: naps.filter(status=Task.Status.RUNNING).count() == 2, 60, "C1's two workers to start a task")
    assert naps.filter(status=Task.Status.QUEUED).count() == 6
    second = cluster(ORCH_WORKERS=8, **settings)
    wait_for(lambda: naps.filter(status=Task.Status.RUNNING).count() == 8, 60, "C2 to start the other six")
    queue.workers_seen.at = -math.inf  # counted again now: both clusters' workers hold deliveries back
    assert queue.workers_everywhere() == 10
    in_first = [task for task in naps if os.getpgid(worker_pid(task)) == first.process.pid]
    assert len(in_first) == 2

    os.killpg(first.process.pid, signal.SIGTERM)
    assert first.process.wait(timeout=10) == 0, first.output()[-3000:]
    wait_for(lambda: not alive_in_group(first.process.pid), 5, "every process of C1 to end")
    handed_back = Task.objects.filter(pk__in=[task.pk for task in in_first])
    # Within the 10 s the other tasks sleep: run again by C2 at once, not by recovery (600 s).
    wait_for(lambda: handed_back.filter(status=Task.Status.RUNNING).count() == 2, 15, "C2 to run the handed-back tasks")
    assert {os.getpgid(worker_pid(task)) for task in handed_back} == {second.process.pid}
    assert all(task.attempts[0]["outcome"] == "handed_back" and budget_attempt(task) == 1 for task in handed_back)
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 90, "the workflow to complete")


def test_the_workers_of_every_cluster_are_counted_at_most_every_few_seconds(db, monkeypatch):
    """queue.needed holds deliveries back against every cluster's workers, read from
    django-q2's statistics once per WORKERS_SEEN_SECONDS in a process, not per job; with no
    cluster reported, a cluster of this project's size is assumed."""
    monkeypatch.setattr(queue, "workers_seen", queue.Reading())
    with CaptureQueriesContext(connection) as first:
        assert queue.workers_everywhere() == queue.Conf.WORKERS
    with CaptureQueriesContext(connection) as again:
        assert queue.workers_everywhere() == queue.Conf.WORKERS
    assert len(again) == 0, "counted once for a while, not per job"
    monkeypatch.setattr(queue.workers_seen, "at", queue.workers_seen.at - queue.WORKERS_SEEN_SECONDS)
    with CaptureQueriesContext(connection) as later:
        queue.workers_everywhere()
    assert len(later) == len(first), "read again once the reading is stale (the database cache: a query)"
