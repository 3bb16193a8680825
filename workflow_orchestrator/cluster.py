"""The worker cluster's sentinel and pusher: django-q2's, except that a job leaves the
broker only for a worker free to run it, and that a stopping cluster gives back to the
broker every job it took but did not run.

**A job is taken for a free worker.** django-q2's pusher moves jobs off the broker into
its cluster's in-memory queue whether or not a worker is free, up to `queue_limit` of them
(the square of the workers by default). Once taken, a job is out of every other cluster's
reach: the ORM broker locks its row for `retry` seconds, and Redis has removed it from its
list. Two clusters on one broker then share work badly: one holds jobs in memory for
workers that are busy with long tasks, while the other's workers sit idle. And the jobs
are deliveries (workflow_orchestrator.jobs), which a free worker turns into the next ready
task: a delivery held by a busy cluster is a free worker elsewhere left without one.

So each worker says when it is free: every time it waits for its next job
(`WorkerQueue.get`) it releases one permit of the cluster's `free` semaphore, and the
pusher takes a job off the broker only with a permit in hand (`pusher`). The in-memory
queue then never holds more jobs than the cluster has free workers, and a job waits on the
broker, where every cluster's free workers look, until a worker somewhere is free. Taking
it costs the one broker round trip django-q2's pusher made anyway; a worker that records
an outcome claims its next task itself and does not go back to the broker at all.

A worker that dies while it waits (killed by hand) leaves its permit behind, so its
cluster may take one job too many until one of its workers is free again; the sentinel
starts a new worker in its place, which comes with a permit of its own.

**A stopping cluster gives back what it took** (see workflow_orchestrator.shutdown for the
signals). It holds jobs taken for free workers that have not picked them up yet, and the
one its pusher is handing on. Stopped as django-q2 stops it, the cluster would drop them:
Redis removed them when they were popped, and the ORM broker keeps their rows locked for
its `retry` seconds. Worse, once the workers have ended (handing back makes a worker end),
nothing reads the queue, the pusher may wait for room in it for ever, and the sentinel for
the pusher. `qcluster` therefore runs this module's `Sentinel`, whose stop goes:

1. The pusher is told to stop. It takes nothing more off the broker, waits for room in the
   queue only a moment at a time, and gives back to the broker (`give_back` of
   workflow_orchestrator.brokers: the head of the Redis list, or the ORM rows unlocked) the
   jobs it still holds when it sees the stop. A job that a worker hands back during the
   stop is sent to the broker, and so is safe however far the pusher got with it.
2. Meanwhile, and once the pusher has ended, the sentinel empties the in-memory queue and
   gives those jobs back too: any cluster may take them at once (from Redis, ahead of the
   jobs that waited there).
3. django-q2's own stop follows: a STOP pill per worker, each worker ends once its running
   task is done (or handed back), then the monitor ends. The pills go through the same
   bounded queue; in the emptied queue they fit, as long as `queue_limit` is at least the
   number of workers (django-q2's default is its square).

A worker that takes a job from the queue during step 2 runs it, or hands it back if it got
SIGTERM: either way the job is not lost. If the broker cannot be reached to take jobs back,
they are logged and recovery re-sends their tasks (`ORCH_REQUEUE_SECONDS`).
"""

import logging
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import current_process

import django_q.cluster
from django_q.conf import Conf, setproctitle
from django_q.signing import BadSignature, SignedPackage

logger = logging.getLogger(__name__)

# How long the pusher waits at a time for a free worker or for room in the cluster's queue,
# and the sentinel for a job from it, before either looks again whether to stop.
QUEUE_WAIT_SECONDS = 0.1
# How long a pusher whose broker failed waits before it ends (the sentinel starts another).
BROKER_FAILURE_PAUSE = 10


class WorkerQueue:
    """The cluster's in-memory queue as a worker sees it: each time the worker waits for
    its next job, it first releases a permit of `free`, which the pusher needs to take a
    job off the broker (django-q2's worker reads nothing but `get`)."""

    def __init__(self, jobs, free):
        self.jobs = jobs
        self.free = free

    def get(self, *args, **kwargs):
        self.free.release()
        return self.jobs.get(*args, **kwargs)


def give_back(broker, taken: list[tuple]) -> None:
    """Make jobs that were taken off `broker` but not run due again at once, for any
    cluster. If the broker cannot be reached, recovery re-sends their tasks later."""
    if not taken:
        return
    try:
        broker.give_back(taken)
    except Exception:
        logger.exception("could not give %d job(s) back to the broker: recovery re-sends their tasks", len(taken))
    else:
        logger.info("gave %d job(s) back to the broker", len(taken))


def _put_unless_stopping(task_queue, task: dict, stopping) -> bool:
    """Put `task` in the cluster's queue; False if the cluster is stopping while the
    queue is full (its workers may have ended, and then nothing empties it)."""
    while True:
        try:
            task_queue.put(task, timeout=QUEUE_WAIT_SECONDS)
            return True
        except queue.Full:
            if stopping.is_set():
                return False


def _free_worker(free, stopping) -> bool:
    """Wait for a permit of `free` (a worker waiting for a job); False once the cluster
    is stopping."""
    while not stopping.is_set():
        if free.acquire(timeout=QUEUE_WAIT_SECONDS):
            return True
    return False


def pusher(task_queue, stopping, broker, free) -> None:
    """django-q2's pusher (broker to in-memory queue), but one that takes a job only for a
    free worker (a permit of `free`), and that always stops: it takes nothing more off the
    broker once `stopping` is set, and gives back what it holds rather than wait for room
    in a queue that nobody may empty again."""
    name = current_process().name
    if setproctitle:
        setproctitle.setproctitle(f"qcluster {name} pusher")
    logger.info("%s pushing jobs at %s", name, current_process().pid)
    while _free_worker(free, stopping):
        try:
            taken = broker.dequeue() or []
        except Exception:
            free.release()
            logger.exception("could not take jobs off the broker")
            stopping.wait(BROKER_FAILURE_PAUSE)  # the sentinel starts a new pusher after this one
            return
        if not taken:
            free.release()  # the worker is still free: look again
            continue
        for held, (ack_id, payload) in enumerate(taken):
            # A broker that returns several jobs at once (django-q2's `bulk`): each needs
            # a free worker of its own, or goes back.
            if held and not free.acquire(block=False):
                give_back(broker, taken[held:])
                break
            try:
                task = SignedPackage.loads(payload)
            except (TypeError, BadSignature):
                logger.exception("a job on the broker is not a signed package: dropped")
                broker.fail(ack_id)
                free.release()
                continue
            task["cluster"] = Conf.CLUSTER_NAME
            task["ack_id"] = ack_id
            if not _put_unless_stopping(task_queue, task, stopping):
                give_back(broker, taken[held:])
                break
    logger.info("%s stopped pushing jobs", name)


def _as_taken(task: dict) -> tuple:
    """A job from the cluster's queue, as the broker's `dequeue` returned it. The pusher
    added its ack id and the cluster's name; the name may stay, as a pusher sets it on
    every job it takes."""
    package = dict(task)
    return package.pop("ack_id"), SignedPackage.dumps(package)


class Sentinel(django_q.cluster.Sentinel):
    """django-q2's sentinel, whose pusher takes a job only for a free worker, and whose
    stop gives back to the broker every job the cluster took but will not run (see this
    module's docstring)."""

    def spawn_cluster(self):
        # Before the first worker starts: each worker releases a permit as it waits for a job.
        self.free = django_q.cluster.get_mp_context().Semaphore(0)
        super().spawn_cluster()

    def spawn_worker(self):
        jobs = WorkerQueue(self.task_queue, self.free)
        self.spawn_process(
            django_q.cluster.worker, jobs, self.result_queue, django_q.cluster.Value("f", -1), self.timeout
        )

    def spawn_pusher(self):
        return self.spawn_process(pusher, self.task_queue, self.event_out, self.broker, self.free)

    def stop(self):
        self.event_out.set()  # the pusher's stop event
        taken = []
        # Emptied while the pusher ends too: a pusher process ends only once what it put
        # in the queue has been written to the queue's pipe, which holds a few dozen jobs.
        while self.pusher.is_alive():
            taken += self._take_queued()
        taken += self._take_queued()
        give_back(self.broker, taken)
        super().stop()

    def _take_queued(self) -> list[tuple]:
        taken = []
        while True:
            try:
                taken.append(_as_taken(self.task_queue.get(timeout=QUEUE_WAIT_SECONDS)))
            except queue.Empty:
                return taken


@contextmanager
def sentinel() -> Iterator[None]:
    """Have django-q2's `Cluster` start this module's Sentinel (it names its sentinel
    class when it starts the process)."""
    original = django_q.cluster.Sentinel
    django_q.cluster.Sentinel = Sentinel
    try:
        yield
    finally:
        django_q.cluster.Sentinel = original
