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
from workflow_orchestrator import queue, services
from workflow_orchestrator.cluster import WorkerQueue, pusher
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


class Pusher:
    """The cluster's pusher in a thread, between the broker and `jobs` (the cluster's
    in-memory queue), with `free` permits of free workers to start with."""

    def __init__(self, jobs, free: int):
        self.jobs, self.free = jobs, multiprocessing.Semaphore(free)
        self.stopping = multiprocessing.Event()
        self.thread = threading.Thread(target=self._push, daemon=True)
        self.thread.start()

    def _push(self):
        try:
            pusher(self.jobs, self.stopping, queue.broker(), self.free)
        finally:
            connections.close_all()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the pusher still waits"


def job_names(names) -> list[str]:
    """Put a job per name on the broker (django-q2 would run math.floor)."""
    queue.broker().enqueue_many([queue.package(queue.Job("math.floor", (1.5,), name)) for name in names])
    return list(names)


def test_the_pusher_takes_a_job_only_for_a_free_worker(transactional_db):
    """A job stays on the broker, where every cluster can take it, until a worker of this
    cluster waits for one: each permit lets the pusher take one job, and no more."""
    broker = queue.broker()
    broker.purge_queue()
    names = job_names(["first", "second", "third"])
    jobs = Queue()
    pushing = Pusher(jobs, free=0)
    taken = []
    try:
        time.sleep(1)  # the pusher's chance to take a job without a free worker
        assert (broker.queue_size(), jobs.qsize()) == (3, 0)
        worker_queue = WorkerQueue(jobs, pushing.free)
        taken.append(worker_queue.get(timeout=30)["name"])  # waiting for a job frees a permit
        time.sleep(1)
        assert (broker.queue_size(), jobs.qsize()) == (2, 0)
        taken.append(worker_queue.get(timeout=30)["name"])
    finally:
        pushing.stop()
    assert sorted(taken + due_job_names(broker)) == sorted(names)


def test_a_stopping_pusher_gives_back_the_job_it_cannot_hand_on(transactional_db):
    """The cluster's queue is full and nothing empties it (its workers have ended): told
    to stop, the pusher gives back the job it holds instead of waiting for room for ever,
    and takes nothing more off the broker."""
    broker = queue.broker()
    broker.purge_queue()
    names = job_names(["held", "waiting"])
    full = Queue(maxsize=1)
    full.put({"name": "taken earlier"})
    pushing = Pusher(full, free=2)
    wait_for(lambda: broker.queue_size() == 1, 30, "the pusher to take a job")
    pushing.stop()
    assert Counter(due_job_names(broker)) == Counter(names)
    assert full.qsize() == 1


def test_a_group_stop_gives_back_every_job_the_cluster_took_and_did_not_run(cluster):
    """One busy worker and 1,500 jobs waiting: the cluster takes none of them ahead of its
    worker (django-q2's pusher would fill the cluster's queue and hold the next). Its whole
    group gets SIGTERM: it stops within seconds all the same, and every job is due on the
    broker, once, beside the job of the handed-back task."""
    first = cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=120)
    workflow = start_sleeper(60)
    nap = wait_for(lambda: running(workflow), 60, "the task to start")
    broker = queue.broker()
    waiting = [queue.Job("math.floor", (1.5,), f"waiting-{i}") for i in range(1500)]
    queue.enqueue(waiting)
    time.sleep(1)  # the pusher's chance to take jobs ahead of the busy worker
    assert broker.queue_size() >= len(waiting), "the cluster took jobs its worker cannot run"
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
