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

A cluster also holds jobs it took off the broker but has not run: its sentinel gives them
back when it stops (workflow_orchestrator.cluster).
"""

import signal
from collections.abc import Iterator
from contextlib import contextmanager

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
