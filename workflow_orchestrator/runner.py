"""Running one claimed attempt's handler: outside any transaction, under a timeout that
holds whatever the handler does, with a heartbeat that keeps the lease and notices
cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil
from django.db import DatabaseError, connections

from . import logs, services, shutdown, values
from .backoff import backoff
from .conf import app_settings
from .context import TaskContext, Wait
from .models import Task
from .registry import UnknownTaskType, get_task_type

logger = logging.getLogger(__name__)

# How often a running attempt looks for cancellation (from this long after its start); its
# lease is renewed every third of the lease.
CANCEL_CHECK_SECONDS = 0.5
# How long a handler has, after TaskTimeout was raised in it, to stop. A worker process
# whose handler is still running then (it swallowed the exception, or it is blocked in a
# C call or a child process) fails the attempt itself and ends: see Heartbeat.
TIMEOUT_GRACE_SECONDS = 2.0
# The attempt's clock starts a moment before the handler's own timer is armed (SIGALRM, or
# asyncio's wait_for once its loop runs): a handler that ends within this much of its
# timeout ended in time by that timer, and its outcome stands.
TIMER_SLACK_SECONDS = 0.05


class TaskTimeout(BaseException):
    """Raised inside a handler that runs past its task's timeout. A BaseException, so
    that a handler's `except Exception` does not swallow it."""


class WorkerStopping(BaseException):
    """Raised inside a handler when its worker process is told to stop (SIGTERM)."""


@dataclass
class Outcome:
    stored: str | None = None  # the result, as the JSON text the database will hold
    error: str | None = None
    stopped: bool = False  # the worker was stopped mid-run: hand the attempt back
    waiting: Wait | None = None  # the handler waits (ctx.wait): the task waits, holding no worker


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(eq=False)
class Attempt:
    """A running attempt, as its heartbeat sees it."""

    task_id: int
    number: int
    workflow_id: Any
    timeout: float
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def overdue(self, now: float) -> float:
        """Seconds past its timeout at `now` (negative before)."""
        return now - self.started - self.timeout


class Heartbeat:
    """Renews the running attempt's lease, watches for its workflow's cancellation, and
    holds its timeout when the handler does not stop.

    One thread per worker process, started with its first attempt, which looks at an
    attempt only once it has run for CANCEL_CHECK_SECONDS: a short task costs neither a
    query nor a thread. A database error here is transient (a dropped connection, a
    restart): the thread reconnects and tries again with backoff while the lease lasts,
    and never takes it for a cancellation. Only a committed cancel, or recovery taking
    the attempt back, sets `Attempt.cancelled`.

    In a worker process (`ends_overdue_workers`, set when django-q2 spawns one), a handler
    still running TIMEOUT_GRACE_SECONDS after its timeout cannot be stopped from inside:
    the heartbeat fails the attempt with TaskTimeout itself, kills the processes the
    handler started, and ends the worker process, which django-q2 replaces.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._attempt: Attempt | None = None
        self._thread: threading.Thread | None = None
        self.ends_overdue_workers = False

    def watch(self, task: Task) -> Attempt:
        attempt = Attempt(task.pk, task.attempt, task.workflow_id, task.timeout)
        with self._condition:
            self._attempt = attempt
            if self._thread is None or not self._thread.is_alive():  # none yet, or forked without it
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            self._condition.notify()
        return attempt

    def release(self, attempt: Attempt) -> None:
        """The handler has ended. Blocks for good if the heartbeat is ending this process
        for that attempt: its outcome is recorded there, once."""
        with self._condition:
            if self._attempt is attempt:
                self._attempt = None
                self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._attempt is None:
                    connections.close_all()  # this thread's own: idle workers hold no second connection
                self._condition.wait_for(lambda: self._attempt is not None)
                attempt = self._attempt
            self._keep(attempt)

    def _running(self, attempt: Attempt, until: float | None) -> bool:
        """Wait until `until` (a time.monotonic(); None: no limit); False as soon as the
        attempt has ended."""
        timeout = None if until is None else max(until - time.monotonic(), 0)
        with self._condition:
            return not self._condition.wait_for(lambda: self._attempt is not attempt, timeout=timeout)

    def _keep(self, attempt: Attempt) -> None:
        renew_every = app_settings.ORCH_LEASE_SECONDS / 3
        renewed = attempt.started  # the claim took the first lease
        check_at: float | None = attempt.started + CANCEL_CHECK_SECONDS
        stop_at = attempt.started + attempt.timeout + TIMEOUT_GRACE_SECONDS if self.ends_overdue_workers else None
        failures = 0
        while self._running(attempt, _earliest(check_at, stop_at)):
            now = time.monotonic()
            if stop_at is not None and now >= stop_at:
                self._end_overdue(attempt)
                return  # it ended just in time: its runner records the timeout
            if check_at is None or now < check_at:
                continue
            try:
                if now - renewed >= renew_every:
                    if not services.task_heartbeat(attempt.task_id, attempt.number):
                        # Taken back by recovery: its outcome would not be recorded. Nothing
                        # is left to renew or look for, but its timeout still holds.
                        attempt.cancelled.set()
                        check_at = None
                        continue
                    renewed = time.monotonic()
                if not attempt.cancelled.is_set() and services.workflow_is_cancelled(attempt.workflow_id):
                    attempt.cancelled.set()
                failures, check_at = 0, time.monotonic() + CANCEL_CHECK_SECONDS
            except DatabaseError as exc:
                failures += 1
                delay = backoff(failures, base=2 * CANCEL_CHECK_SECONDS, cap=renew_every / 2)
                logger.warning(
                    "heartbeat of task %s: %s; trying again in %.1f s",
                    attempt.task_id,
                    exc,
                    delay,
                    extra=_fields(attempt),
                )
                connections.close_all()
                check_at = time.monotonic() + delay

    def _end_overdue(self, attempt: Attempt) -> None:
        """The handler did not stop within TIMEOUT_GRACE_SECONDS of its timeout: fail the
        attempt with TaskTimeout, kill what it started, and end this worker process.

        The heartbeat's lock is held from the moment it takes the attempt over until the
        process ends, so that a handler returning meanwhile finds its runner waiting in
        `release`: the attempt's outcome is recorded here, and only here."""
        with self._condition:
            if self._attempt is not attempt:
                return
            try:
                killed = kill_descendants()
                error = (
                    f"TaskTimeout: timed out after {attempt.timeout:g} s; the handler did not stop within "
                    f"{TIMEOUT_GRACE_SECONDS:g} s, so its worker process {worker_name()} was ended"
                    + (f", with {killed} child process(es)" if killed else "")
                )
                logger.error(
                    "task %s, attempt %s: %s",
                    attempt.task_id,
                    attempt.number,
                    error,
                    extra=_fields(attempt, "timed_out"),
                )
                _record_overdue(attempt, error)
            finally:
                os._exit(1)  # django-q2 spawns a new worker in its place


def _fields(attempt: Attempt, event: str | None = None) -> dict:
    return logs.fields(workflow_id=attempt.workflow_id, task_id=attempt.task_id, attempt=attempt.number, event=event)


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)


def _record_overdue(attempt: Attempt, error: str) -> None:
    """Fail an overdue attempt through the same service as any failed attempt (retried if
    it has attempts left). If the database cannot be reached, the attempt's lease runs out
    and recovery fails it instead."""
    for tries_left in (1, 0):
        try:
            services.task_finished(attempt.task_id, attempt.number, error=error)
            return
        except Exception:
            logger.warning(
                "could not record the timeout of task %s", attempt.task_id, exc_info=True, extra=_fields(attempt)
            )
            connections.close_all()
            if not tries_left:
                return


def kill_descendants() -> int:
    """SIGKILL the processes this one started, and theirs (a handler's `os.system`, its
    subprocesses). They share the cluster's process group, so they are found as this
    process's descendants: each is stopped first, so that none can start another or
    outlive its parent unseen, then all are killed. Returns how many."""
    found: dict[int, psutil.Process] = {}
    for _ in range(5):  # new ones may have been started while the last were being stopped
        new = [child for child in psutil.Process().children(recursive=True) if child.pid not in found]
        if not new:
            break
        for child in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.suspend()
            found[child.pid] = child
    for child in found.values():
        with contextlib.suppress(psutil.NoSuchProcess):  # psutil checks it is still the process found
            child.kill()
    return len(found)


def end_overdue_workers(**kwargs) -> None:
    """Connected to django-q2's post_spawn signal: a worker process, which django-q2
    replaces when it ends, ends itself when a handler outlives its timeout. Elsewhere (a
    shell, a test) only a late outcome is refused."""
    HEARTBEAT.ends_overdue_workers = True


HEARTBEAT = Heartbeat()


def storable_text(text: str) -> str:
    """Text as the database can hold it: NUL characters and lone surrogates (which
    PostgreSQL refuses, and which no encoding can write) become escapes."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def storable(result) -> tuple[str | None, str | None]:
    """(the JSON text the database will hold, None), or (None, why it cannot be stored).
    None stays SQL NULL, as Django's JSONField stores it."""
    if result is None:
        return None, None
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        # json.dumps writes NUL as an escape and lets lone surrogates through: PostgreSQL's
        # jsonb refuses both, and a surrogate cannot even be encoded.
        where = values.json_problem(result, max_depth=None) if "\\u0000" in text or not _encodes(text) else None
    except (TypeError, ValueError) as exc:
        return None, f"the result cannot be stored: it is not JSON-serialisable: {exc}"
    except RecursionError:
        return None, "the result cannot be stored: it is nested too deeply"
    if where:
        return None, f"the result cannot be stored: {where}"
    return text, None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def deadline(seconds: float):
    """Raise TaskTimeout in the running code after `seconds` (main thread only: elsewhere
    the lease and django-q2's own job timeout are the limits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TaskTimeout(f"timed out after {seconds:g} s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, expire)
    # django-q2 arms the same timer for its own job timeout: put it back afterwards.
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            remaining = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001))


@contextmanager
def handing_back_on_sigterm():
    """While a handler runs, SIGTERM to this worker process (a service manager stopping
    every process of the cluster) interrupts it, so the attempt can be handed back to
    another worker at once instead of waiting for its lease to run out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise WorkerStopping("the worker was told to stop")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if shutdown.told_to_stop():  # between two handlers (see shutdown): this one does not start
            raise WorkerStopping("the worker was told to stop")
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _call(handler, ctx: TaskContext, params: dict, timeout: float, is_async: bool):
    if is_async:
        try:
            return asyncio.run(asyncio.wait_for(handler(ctx, params), timeout))
        except TimeoutError:
            raise TaskTimeout(f"timed out after {timeout:g} s") from None
    with deadline(timeout):
        return handler(ctx, params)


def run_handler(task: Task) -> Outcome:
    """Run the handler of a claimed attempt and return what happened; never raises.
    Whatever the handler raises (SystemExit and KeyboardInterrupt too) fails the attempt,
    and the worker goes on serving. An attempt whose handler ends after its timeout,
    however it ends, fails with TaskTimeout."""
    try:
        task_type = get_task_type(task.type)
    except UnknownTaskType as exc:
        return Outcome(error=str(exc))
    attempt = HEARTBEAT.watch(task)
    ctx = TaskContext(task=task, cancelled=attempt.cancelled.is_set)
    error = None
    try:
        with handing_back_on_sigterm():
            result = _call(task_type.handler, ctx, task.params, task.timeout, task_type.is_async)
    except WorkerStopping:
        return Outcome(stopped=True)
    except Wait as wait:
        return Outcome(waiting=wait)
    except TaskTimeout as exc:
        return Outcome(error=f"TaskTimeout: {exc}")
    except (Exception, SystemExit, KeyboardInterrupt):
        error = storable_text(traceback.format_exc())
    finally:
        ended = time.monotonic()
        HEARTBEAT.release(attempt)
    late = attempt.overdue(ended)
    if late >= TIMER_SLACK_SECONDS:
        return Outcome(error=_ignored_timeout(task.timeout, late, error))
    if error is not None:
        return Outcome(error=error)
    stored, problem = storable(result)
    if problem:
        return Outcome(error=problem)
    return Outcome(stored=stored)


def _ignored_timeout(timeout: float, late: float, error: str | None) -> str:
    """The error of an attempt whose handler ended `late` seconds past its timeout, with
    `error` or with a result (which is discarded): TaskTimeout, on the last line."""
    if error is None:
        return f"TaskTimeout: timed out after {timeout:g} s; the handler returned {late:.1f} s later, result discarded"
    return (
        f"{error.rstrip()}\nTaskTimeout: timed out after {timeout:g} s; the handler raised the above {late:.1f} s later"
    )
