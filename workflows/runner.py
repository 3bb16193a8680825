"""Running one claimed attempt's handler: outside any transaction, under its timeout,
with a heartbeat that keeps the lease and notices cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections

from . import services
from .models import Task
from .registry import TaskContext, UnknownTaskType, get_task_type

# How often a running attempt looks for cancellation; its lease is renewed every third
# of the lease.
CANCEL_CHECK_SECONDS = 0.5


class TaskTimeout(BaseException):
    """Raised inside a handler that runs past its task's timeout. A BaseException, so
    that a handler's `except Exception` does not swallow it."""


class WorkerStopping(BaseException):
    """Raised inside a handler when its worker process is told to stop (SIGTERM)."""


@dataclass
class Outcome:
    result: Any = None
    error: str | None = None
    stopped: bool = False  # the worker was stopped mid-run: hand the attempt back


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Renews the attempt's lease and watches for cancellation while the handler runs."""

    def __init__(self, task: Task):
        super().__init__(name=f"heartbeat-{task.pk}", daemon=True)
        self.task_id, self.attempt, self.workflow_id = task.pk, task.attempt, task.workflow_id
        self.cancelled = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        renew_every = settings.ORCH_LEASE_SECONDS / 3
        last_renewal = time.monotonic()
        try:
            while not self._halt.wait(CANCEL_CHECK_SECONDS):
                if time.monotonic() - last_renewal >= renew_every:
                    last_renewal = time.monotonic()
                    if not services.task_heartbeat(self.task_id, self.attempt):
                        self.cancelled.set()  # taken back by recovery: the result would be ignored
                if services.workflow_is_cancelled(self.workflow_id):
                    self.cancelled.set()
        except Exception:  # a lost database connection: the lease will run out and recovery takes over
            self.cancelled.set()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._halt.set()
        self.join()


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
    """Run the handler of a claimed attempt and return what happened; never raises."""
    try:
        task_type = get_task_type(task.type)
    except UnknownTaskType as exc:
        return Outcome(error=str(exc))
    heartbeat = Heartbeat(task)
    heartbeat.start()
    ctx = TaskContext(workflow=task.workflow, task=task, cancelled=heartbeat.cancelled.is_set)
    try:
        with handing_back_on_sigterm():
            result = _call(task_type.handler, ctx, task.params, task.timeout, task_type.is_async)
    except WorkerStopping:
        return Outcome(stopped=True)
    except TaskTimeout as exc:
        return Outcome(error=f"TaskTimeout: {exc}")
    except Exception:
        return Outcome(error=traceback.format_exc())
    finally:
        heartbeat.stop()
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return Outcome(error=f"the result is not JSON-serialisable: {exc}")
    return Outcome(result=result)
