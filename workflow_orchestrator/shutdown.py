"""How a worker cluster stops, whoever sends the stop signal, without hanging and without
losing a job it took.

django-q2 expects SIGTERM or SIGINT at the `qcluster` main process only, which then tells
its sentinel to stop the cluster in order: the pusher stops taking jobs, the workers
finish theirs and the monitor saves the last results. honcho (`make run`), systemd's
default KillMode and `kill -TERM -- -PGID` send SIGTERM to every process of the cluster at
once instead. The sentinel would then die of it while it sleeps on the stop event, and the
main process would wait forever to wake it; the pusher, monitor and workers would die
wherever they are, a worker possibly halfway through recording an outcome. (django-q2 has
the other processes ignore SIGINT, so Ctrl-C in a terminal, which signals the whole group
too, did no harm.)

So only the main process acts on these signals. `qcluster` starts the sentinel with them
blocked, and the processes it starts (pusher, monitor, workers) inherit that. A worker
then lets them through again (`worker_started`) and remembers SIGTERM, to hand work back
rather than finish it: a running handler is interrupted and its attempt handed back
(runner), and from then on an attempt it claims is handed back unrun. Engine code between
two handlers is never interrupted. Workers ignore SIGINT, as django-q2 has them do: Ctrl-C
on a `qcluster` in a terminal lets running tasks finish.

A cluster holds jobs it took off the broker but has not run: those in its in-memory queue
(django-q2's `queue_limit` of them), and the one its pusher is trying to put there. Stopped
as django-q2 stops it, the cluster drops them: Redis removed them when they were popped,
and the ORM broker keeps their rows locked for its `retry` seconds. Worse, once the
workers have ended (handing back makes a worker end), nothing reads the queue, the pusher
waits for room in it for ever, and the sentinel for the pusher. `qcluster` therefore runs
`GivingBackSentinel`, whose stop goes:

1. The pusher (`giving_back_pusher`) is told to stop. It takes nothing more off the broker,
   waits for room in the queue only a moment at a time, and gives back to the broker
   (`give_back` of workflow_orchestrator.brokers: the head of the Redis list, or the ORM rows unlocked)
   the jobs it still holds when it sees the stop. A job that a worker hands back during
   the stop is sent to the broker, and so is safe however far the pusher got with it.
2. Meanwhile, and once the pusher has ended, the sentinel empties the in-memory queue and
   gives those jobs back too: any cluster may take them at once (from Redis, ahead of the
   jobs that waited there).
3. django-q2's own stop follows: a STOP pill per worker, each worker ends once its running
   task is done (or handed back), then the monitor ends. The pills go through the same
   bounded queue, so they too would wait for ever in a full one; in the emptied queue
   they fit, as long as `queue_limit` is at least the number of workers (django-q2's
   default is its square).

A worker that takes a job from the queue during step 2 runs it, or hands it back if it got
SIGTERM: either way the job is not lost. If the broker cannot be reached to take jobs back,
they are logged and recovery re-sends their tasks (`ORCH_REQUEUE_SECONDS`).
"""

import logging
import queue
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import current_process

import django_q.cluster
from django_q.conf import Conf, setproctitle
from django_q.signing import BadSignature, SignedPackage

logger = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

_told_to_stop = False


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in this thread, and in the processes it forks meanwhile;
    a signal that arrives is delivered when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def told_to_stop() -> bool:
    """Whether this worker process got SIGTERM: it hands back what it is given to run."""
    return _told_to_stop


def _remember_stop(signum, frame) -> None:
    global _told_to_stop
    _told_to_stop = True


def worker_started(**kwargs) -> None:
    """Connected to django-q2's post_spawn signal by `qcluster`: in a new worker process,
    SIGTERM is remembered instead of killing it (the runner interrupts a handler with it),
    and SIGINT stays ignored, as django-q2's sentinel left it."""
    signal.signal(signal.SIGTERM, _remember_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# How long the pusher waits at a time for room in the cluster's queue, and the sentinel
# for a job from it, before either looks again whether to stop.
QUEUE_WAIT_SECONDS = 0.1
# How long a pusher whose broker failed waits before it ends (the sentinel starts another).
BROKER_FAILURE_PAUSE = 10


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


def giving_back_pusher(task_queue, stopping, broker) -> None:
    """django-q2's pusher (broker to in-memory queue), but one that always stops: it takes
    nothing more off the broker once `stopping` is set, and gives back what it holds
    rather than wait for room in a queue that nobody may empty again."""
    name = current_process().name
    if setproctitle:
        setproctitle.setproctitle(f"qcluster {name} pusher")
    logger.info("%s pushing jobs at %s", name, current_process().pid)
    while not stopping.is_set():
        try:
            taken = broker.dequeue() or []
        except Exception:
            logger.exception("could not take jobs off the broker")
            stopping.wait(BROKER_FAILURE_PAUSE)  # the sentinel starts a new pusher after this one
            return
        for held, (ack_id, payload) in enumerate(taken):
            try:
                task = SignedPackage.loads(payload)
            except (TypeError, BadSignature):
                logger.exception("a job on the broker is not a signed package: dropped")
                broker.fail(ack_id)
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


class GivingBackSentinel(django_q.cluster.Sentinel):
    """django-q2's sentinel, whose stop gives back to the broker every job the cluster
    took but will not run (see this module's docstring)."""

    def spawn_pusher(self):
        return self.spawn_process(giving_back_pusher, self.task_queue, self.event_out, self.broker)

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
def giving_back_sentinel() -> Iterator[None]:
    """Have django-q2's `Cluster` start a GivingBackSentinel (it names its sentinel class
    when it starts the process)."""
    original = django_q.cluster.Sentinel
    django_q.cluster.Sentinel = GivingBackSentinel
    try:
        yield
    finally:
        django_q.cluster.Sentinel = original
