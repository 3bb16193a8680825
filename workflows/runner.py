"""Running one claimed attempt's handler: outside any transaction, under its timeout,
with a heartbeat that keeps the lease and notices cancellation."""

from __future__ import annotations

import asyncio
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

from django.conf import settings
from django.db import DatabaseError, connections

from . import services, shutdown
from .models import Task
from .registry import TaskContext, UnknownTaskType, get_task_type

logger = logging.getLogger(__name__)

# How often a running attempt looks for cancellation (from this long after its start); its
# lease is renewed every third of the lease.
CANCEL_CHECK_SECONDS = 0.5


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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(eq=False)
class Attempt:
    """A running attempt, as its heartbeat sees it."""

    task_id: int
    number: int
    workflow_id: Any
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)


class Heartbeat:
    """Renews the running attempt's lease and watches for its workflow's cancellation.

    One thread per worker process, started with its first attempt, which looks at an
    attempt only once it has run for CANCEL_CHECK_SECONDS: a short task costs neither a
    query nor a thread. A database error here is transient (a dropped connection, a
    restart): the thread reconnects and tries again with backoff while the lease lasts,
    and never takes it for a cancellation. Only a committed cancel, or recovery taking
    the attempt back, sets `Attempt.cancelled`.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._attempt: Attempt | None = None
        self._thread: threading.Thread | None = None

    def watch(self, task: Task) -> Attempt:
        attempt = Attempt(task.pk, task.attempt, task.workflow_id)
        with self._condition:
            self._attempt = attempt
            if self._thread is None or not self._thread.is_alive():  # none yet, or forked without it
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            self._condition.notify()
        return attempt

    def release(self, attempt: Attempt) -> None:
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

    def _running(self, attempt: Attempt, delay: float) -> bool:
        """Wait `delay` seconds; False as soon as the attempt has ended."""
        with self._condition:
            return not self._condition.wait_for(lambda: self._attempt is not attempt, timeout=max(delay, 0))

    def _keep(self, attempt: Attempt) -> None:
        renew_every = settings.ORCH_LEASE_SECONDS / 3
        renewed = attempt.started  # the claim took the first lease
        delay = attempt.started + CANCEL_CHECK_SECONDS - time.monotonic()
        failures = 0
        while self._running(attempt, delay):
            try:
                if time.monotonic() - renewed >= renew_every:
                    if not services.task_heartbeat(attempt.task_id, attempt.number):
                        attempt.cancelled.set()  # taken back by recovery: its outcome would not be recorded
                        return
                    renewed = time.monotonic()
                if not attempt.cancelled.is_set() and services.workflow_is_cancelled(attempt.workflow_id):
                    attempt.cancelled.set()
                failures, delay = 0, CANCEL_CHECK_SECONDS
            except DatabaseError as exc:
                failures += 1
                delay = min(CANCEL_CHECK_SECONDS * 2**failures, renew_every / 2)
                logger.warning("heartbeat of task %s: %s; trying again in %.1f s", attempt.task_id, exc, delay)
                connections.close_all()


HEARTBEAT = Heartbeat()


def storable_text(text: str) -> str:
    """Text as the database can hold it: NUL characters and lone surrogates (which
    PostgreSQL refuses, and which no encoding can write) become escapes."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _unstorable(value, path: str = "$") -> str | None:
    """Where `value` holds a string the database cannot store, and why."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path} contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path} contains a lone surrogate"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable(key, f"{path} (a key)") or _unstorable(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _unstorable(item, f"{path}[{index}]")
            if found:
                return found
    return None


def storable(result) -> tuple[str | None, str | None]:
    """(the JSON text the database will hold, None), or (None, why it cannot be stored).
    None stays SQL NULL, as Django's JSONField stores it."""
    if result is None:
        return None, None
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        # json.dumps writes NUL as an escape and lets lone surrogates through: PostgreSQL's
        # jsonb refuses both, and a surrogate cannot even be encoded.
        where = _unstorable(result) if "\\u0000" in text or not _encodes(text) else None
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
    and the worker goes on serving."""
    try:
        task_type = get_task_type(task.type)
    except UnknownTaskType as exc:
        return Outcome(error=str(exc))
    attempt = HEARTBEAT.watch(task)
    ctx = TaskContext(task=task, cancelled=attempt.cancelled.is_set)
    try:
        with handing_back_on_sigterm():
            result = _call(task_type.handler, ctx, task.params, task.timeout, task_type.is_async)
    except WorkerStopping:
        return Outcome(stopped=True)
    except TaskTimeout as exc:
        return Outcome(error=f"TaskTimeout: {exc}")
    except (Exception, SystemExit, KeyboardInterrupt):
        return Outcome(error=storable_text(traceback.format_exc()))
    finally:
        HEARTBEAT.release(attempt)
    stored, problem = storable(result)
    if problem:
        return Outcome(error=problem)
    return Outcome(stored=stored)
