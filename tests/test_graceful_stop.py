"""Stopping a cluster: nothing is lost, and nothing waits for a lease when it need not."""

import contextlib
import fcntl
import multiprocessing
import os
import pty
import re
import signal
import subprocess
import termios
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from django.db import connections
from django_q.queues import Queue
from django_q.signing import SignedPackage

from tests.conftest import ROOT, alive_processes, child_env, events, free_port, wait_for
from workflow_orchestrator import queue, services, shutdown
from workflow_orchestrator.models import Actor, State, Task, Workflow

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
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(timeout=60)
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
    # Taken up again long before the 120 s lease would have run out (the rerun is awaited 60 s).
    again = wait_for(
        lambda: Task.objects.filter(pk=nap.pk, attempt=2, status=Task.Status.RUNNING).first(), 60, "a rerun"
    )
    assert again.attempts[0]["outcome"] == "handed_back", again.attempts
    assert again.worker != nap.worker and again.attempt_offset == 1, "a handed-back attempt costs no budget"
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 60, "the workflow to complete")
    assert events(Workflow.objects.get(pk=workflow.pk)) == ["start", "execute", "validate", "complete"]


def alive_in_group(pgid: int) -> list[int]:
    """The processes of a process group that still run (a zombie has ended)."""
    return alive_processes(pgid=pgid)


def budget_attempt(task: Task) -> int:
    """Which attempt of its budget the task's latest (or next) attempt is."""
    return task.attempt - task.attempt_offset


def test_sigterm_to_an_idle_clusters_whole_process_group_stops_it(cluster):
    idle = cluster(LOG_LEVEL="info")
    wait_for(lambda: "running." in idle.output(), 60, "the cluster to run")
    os.killpg(idle.process.pid, signal.SIGTERM)  # what a terminal or a plain service manager does
    assert idle.process.wait(timeout=10) == 0, idle.output()[-3000:]
    assert "has stopped" in idle.output()
    wait_for(lambda: not alive_in_group(idle.process.pid), 5, "every process of the cluster to end")


def test_sigterm_to_a_busy_clusters_whole_process_group_hands_its_task_back(cluster):
    first = cluster(ORCH_LEASE_SECONDS=120)
    workflow = start_sleeper(12)  # longer than the stop may take
    nap = wait_for(lambda: running(workflow), 60, "the task to start")
    time.sleep(0.5)  # into its handler
    os.killpg(first.process.pid, signal.SIGTERM)
    assert first.process.wait(timeout=10) == 0, first.output()[-3000:]
    wait_for(lambda: not alive_in_group(first.process.pid), 5, "every process of the cluster to end")
    handed_back = Task.objects.get(pk=nap.pk)
    assert handed_back.status == Task.Status.QUEUED, first.output()[-3000:]
    assert budget_attempt(handed_back) == 1, "a handed-back attempt costs no budget"

    cluster()
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 60, "the workflow to complete")
    done = Task.objects.get(pk=nap.pk)
    assert done.status == Task.Status.SUCCEEDED and budget_attempt(done) == 1
    assert done.worker != nap.worker, "run to the end by the second cluster"
    assert events(Workflow.objects.get(pk=workflow.pk)) == ["start", "execute", "validate", "complete"]


def due_job_names(broker) -> list[str]:
    """Take every job that is due off the broker; the names of the jobs it held."""
    names = []
    while broker.queue_size():
        for ack_id, payload in broker.dequeue() or []:
            names.append(SignedPackage.loads(payload)["name"])
            broker.acknowledge(ack_id)
    return names


def test_a_stopping_pusher_gives_back_the_job_it_cannot_hand_on(transactional_db):
    """The cluster's queue is full and nothing empties it (its workers have ended): told
    to stop, the pusher gives back the job it holds instead of waiting for room for ever,
    and takes nothing more off the broker."""
    broker = queue.broker()
    broker.purge_queue()
    broker.enqueue_many([queue.package(queue.Job("math.floor", (1.5,), name)) for name in ("held", "waiting")])
    full = Queue(maxsize=1)
    full.put({"name": "taken earlier"})
    stopping = multiprocessing.Event()

    def push():
        try:
            shutdown.giving_back_pusher(full, stopping, broker)
        finally:
            connections.close_all()

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    wait_for(lambda: broker.queue_size() == 1, 30, "the pusher to take a job")
    stopping.set()
    pusher.join(timeout=30)
    assert not pusher.is_alive(), "the pusher still waits for room in the queue"
    assert Counter(due_job_names(broker)) == Counter(["held", "waiting"])
    assert full.qsize() == 1


def test_a_group_stop_gives_back_every_job_the_cluster_took_and_did_not_run(cluster):
    """One busy worker and 1,500 jobs waiting: the cluster has taken a few of them ahead
    of its worker (its queue is full, its pusher holds the next) when the whole group
    gets SIGTERM. It stops within seconds all the same, and every job it took but did
    not run is due on the broker again, once, beside the job of the handed-back task."""
    first = cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=120)
    workflow = start_sleeper(60)
    nap = wait_for(lambda: running(workflow), 60, "the task to start")
    broker = queue.broker()
    waiting = [queue.Job("math.floor", (1.5,), f"waiting-{i}") for i in range(1500)]
    queue.enqueue(waiting)
    # At least two taken: one in the cluster's queue, the next in the pusher's hands.
    wait_for(lambda: broker.queue_size() <= len(waiting) - 2, 60, "the cluster to take jobs ahead of its worker")
    os.killpg(first.process.pid, signal.SIGTERM)
    assert first.process.wait(timeout=10) == 0, first.output()[-3000:]
    wait_for(lambda: not alive_in_group(first.process.pid), 5, "every process of the cluster to end")

    handed_back = Task.objects.get(pk=nap.pk)
    assert handed_back.status == Task.Status.QUEUED and budget_attempt(handed_back) == 1
    expected = Counter([job.name for job in waiting] + [f"task-{nap.pk}-{handed_back.attempt}"])
    found = Counter(name for name in due_job_names(broker) if name in expected)  # not the scheduler's jobs
    assert found == expected, f"missing: {expected - found}, twice: {found - expected}"


def test_tasks_handed_back_by_a_group_stop_run_on_the_next_start_without_recovery(cluster):
    """Two workers each run a task when the whole group gets SIGTERM: both hand their
    attempt back, and the jobs that re-send them are not lost to the stopping cluster,
    which may take them again meanwhile. The next cluster, whose recovery would not
    re-send a queued task for ten minutes, runs both."""
    first = cluster(ORCH_WORKERS=2, ORCH_LEASE_SECONDS=120)
    workflow, _ = services.workflow_create(
        name="two sleepers",
        tasks=[{"name": f"nap-{i}", "type": "sleep", "params": {"seconds": 12}} for i in (1, 2)],
        actor=Actor.SYSTEM,
        start=True,
    )
    naps = workflow.tasks.filter(phase="EXECUTE")
    wait_for(lambda: naps.filter(status=Task.Status.RUNNING).count() == 2, 60, "both tasks to start")
    time.sleep(0.5)  # into their handlers
    os.killpg(first.process.pid, signal.SIGTERM)
    assert first.process.wait(timeout=10) == 0, first.output()[-3000:]
    wait_for(lambda: not alive_in_group(first.process.pid), 5, "every process of the cluster to end")
    assert list(naps.values_list("status", flat=True)) == [Task.Status.QUEUED] * 2, first.output()[-3000:]

    cluster(ORCH_REQUEUE_SECONDS=600, ORCH_LEASE_SECONDS=120)
    wait_for(lambda: naps.filter(status=Task.Status.RUNNING).count() == 2, 60, "both tasks to run again")
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 60, "the workflow to complete")
    assert all(budget_attempt(nap) == 1 for nap in naps), "handed-back attempts cost no budget"
    assert events(Workflow.objects.get(pk=workflow.pk)) == ["start", "execute", "validate", "complete"]


def web_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class MakeRun:
    """`make run` in a session of its own, its output in `log_path`: without a terminal, or on
    a pseudo-terminal, as in a reader's shell, where the test can type Ctrl-C."""

    def __init__(self, log_path: Path, env: dict, *, terminal: bool):
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.terminal = None
        output = self.log
        if terminal:
            self.terminal, output = pty.openpty()
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdin=output if terminal else subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,  # a session and a process group, as a terminal's shell gives a job
            preexec_fn=self._take_terminal if terminal else None,
        )
        if terminal:
            os.close(output)
            threading.Thread(target=self._copy_terminal, daemon=True).start()

    @staticmethod
    def _take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pseudo-terminal becomes the session's terminal

    def _copy_terminal(self) -> None:
        while True:
            try:
                chunk = os.read(self.terminal, 4096)
            except OSError:  # every process holding the terminal has ended
                return
            if not chunk:
                return
            self.log.write(chunk)
            self.log.flush()

    def type_ctrl_c(self) -> None:
        os.write(self.terminal, b"\x03")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Nothing of the session may outlive the test."""
        for pid in alive_in_session(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        if self.terminal is not None:
            os.close(self.terminal)
        self.log.close()


def alive_in_session(sid: int) -> list[int]:
    return alive_processes(sid=sid)


# How each stop reaches `make run`, and how make ends: Ctrl-C is the way to stop it, so make
# reports nothing and exits 0; a SIGTERM to make's process group ends make as it ends any
# program, once its recipe has stopped.
STOPS = {
    "Ctrl-C": (True, MakeRun.type_ctrl_c, 0),
    "SIGTERM": (False, lambda run: os.killpg(run.process.pid, signal.SIGTERM), -signal.SIGTERM),
    "SIGTERM on a terminal": (True, lambda run: os.killpg(run.process.pid, signal.SIGTERM), -signal.SIGTERM),
}


@pytest.mark.parametrize("stop", STOPS)
def test_stopping_make_run_stops_the_web_server_and_the_cluster_without_sigkill(cluster, tmp_path, stop):
    """`make run` runs honcho, which gives each process of the Procfile a process group of
    its own, sends them SIGTERM when it is stopped and SIGKILL five seconds later."""
    terminal, send_stop, make_ends = STOPS[stop]
    port = free_port()
    env = child_env(PORT=port, ORCH_WORKERS=2, ORCH_LEASE_SECONDS=120)
    run = MakeRun(tmp_path / "make-run.log", env, terminal=terminal)
    try:
        workflow = start_sleeper(30)
        nap = wait_for(lambda: running(workflow), 90, "the task to start")
        wait_for(lambda: web_answers(port), 30, "the web server to answer")
        time.sleep(0.5)  # into its handler
        send_stop(run)
        assert run.process.wait(timeout=10) == make_ends, run.output()[-3000:]
        output = run.output()
        assert "SIGKILL" not in output, output[-3000:]
        if make_ends == 0:
            assert "make: ***" not in output, output[-3000:]
        stopped = dict(re.findall(r"(\S+) stopped \(rc=(-?\d+)\)", output))
        # runserver ends with the SIGTERM honcho sends it; the cluster stops by itself.
        assert stopped == {"web.1": "-15", "worker.1": "0"}, output[-3000:]
        wait_for(lambda: not alive_in_session(run.process.pid), 5, "every process to end")
    finally:
        run.stop()
    handed_back = Task.objects.get(pk=nap.pk)
    assert handed_back.status == Task.Status.QUEUED and budget_attempt(handed_back) == 1
