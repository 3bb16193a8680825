"""What a handler knows of its surroundings: the `ctx` it is called with (see
`workflow_orchestrator.registry` for how handlers are registered)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.utils import timezone

from . import logs
from .models import Decision, Task, Workflow, WorkflowSignal
from .statements import workflow_input


class Wait(BaseException):
    """Raised by `TaskContext.wait` to end a handler's run while its task waits: for a time
    (`until`), for a signal named `signal`, or for a signal at most until a time. A
    BaseException, so that a handler's `except Exception` does not swallow it. The worker
    records the wait (the task goes WAITING, holding no worker and no job) and moves on;
    when the task wakes, its handler runs again from the start."""

    def __init__(self, *, until: datetime | None = None, signal: str | None = None, reason: str = ""):
        super().__init__(reason or (f"waiting until {until}" if signal is None else f"waiting for signal {signal!r}"))
        self.until = until
        self.signal = signal
        self.reason = reason


class TaskContext:
    """What a handler knows of its surroundings. The workflow (and with it `input` and
    `results`) is read from the database when a handler first asks for it: a handler that
    needs none of it costs no query."""

    def __init__(self, *, task, cancelled: Callable[[], bool]):
        self.task = task
        self.workflow_id = task.workflow_id
        self.attempt = task.attempt
        # A handler's records carry its workflow, task and attempt (shown by JSON logs).
        fields = logs.fields(workflow_id=task.workflow_id, task_id=task.pk, attempt=task.attempt)
        self.logger = logging.LoggerAdapter(logging.getLogger(f"workflow_orchestrator.task.{task.type}"), fields)
        self._cancelled = cancelled
        self._workflow = None
        self._read = None
        self._upstream = None

    @property
    def workflow(self):
        if self._workflow is None:
            self._workflow = Workflow.objects.get(pk=self.workflow_id)
        return self._workflow

    @property
    def input(self) -> dict:
        return self._input_and_results()[0]

    @property
    def results(self) -> dict:
        """The results of the phases before this one, by phase."""
        return self._input_and_results()[1]

    def _input_and_results(self) -> tuple[dict, dict]:
        if self._workflow is not None:
            return self._workflow.input, self._workflow.results
        if self._read is None:
            # A PREPARE or VALIDATE task's claim brought them (Task.read); else they are read now.
            self._read = getattr(self.task, "read", None) or workflow_input(self.workflow_id)
        return self._read

    @property
    def upstream(self) -> dict:
        """The results of the tasks named in this task's `after`, by name (read when first
        asked for)."""
        if self._upstream is None:
            after = list(getattr(self.task, "after", None) or [])
            self._upstream = {}
            if after:
                found = dict(
                    Task.objects.filter(workflow_id=self.workflow_id, name__in=after).values_list("name", "result")
                )
                self._upstream = {name: found.get(name) for name in after}
        return self._upstream

    def cancelled(self) -> bool:
        """True once the workflow's cancel was committed, its deadline passed, or recovery
        took this attempt back: a long handler should check it and return early."""
        return self._cancelled()

    def wait(
        self,
        *,
        seconds: float | None = None,
        until: datetime | None = None,
        signal: str | None = None,
        reason: str = "",
    ):
        """Wait without holding a worker: for `seconds` (counted from the first time this
        task waited), until the time `until`, or for the signal named `signal` (at most
        until the time, if one is given too). Returns the signal's payload once it has
        come (a signal sent before the task waited is kept for it), None once the time has
        come; otherwise raises Wait, which ends this run: the task waits, and its handler
        runs again, from the start, when it wakes. So call it before work that must not
        be done twice. `reason` names what else wakes it (the built-in `approval`'s
        "approval": a decision), shown while it waits."""
        if signal is not None:
            payload = self._signal(signal)
            if payload is not None:
                return payload
        due = until
        if seconds is not None:
            due = self._waiting_since_due(seconds)
        if due is not None and timezone.now() >= due:
            return None
        raise Wait(until=due, signal=signal, reason=reason)

    def decisions(self) -> list[dict]:
        """The decisions on this task (an `approval`) in its workflow's current round (a
        retry asks again), oldest first."""
        rows = Decision.objects.filter(task_id=self.task.pk, round=self.workflow.retries).order_by("seq")
        return [
            {"decision": row.decision, "by": row.actor_label, "comment": row.comment, "data": row.data,
             "at": row.created_at.isoformat()}
            for row in rows
        ]  # fmt: skip

    def _signal(self, name: str):
        """The payload of the signal `name` delivered to this task, or of the oldest one
        sent and not yet delivered (taken for this task now); None without one."""
        mine = WorkflowSignal.objects.filter(workflow_id=self.workflow_id, name=name)
        found = mine.filter(task_id=self.task.pk).order_by("seq").values_list("payload", flat=True).first()
        if found is not None:
            return found
        for signal_id, payload in mine.filter(task__isnull=True).order_by("seq").values_list("pk", "payload"):
            if WorkflowSignal.objects.filter(pk=signal_id, task__isnull=True).update(
                task_id=self.task.pk, delivered_at=timezone.now()
            ):
                return payload
        return None

    def _waiting_since_due(self, seconds: float) -> datetime:
        """When a wait of `seconds` ends: counted from this task's first wait, whose end its
        row keeps (wake_at), or from now."""
        kept = Task.objects.filter(pk=self.task.pk).values_list("wake_at", flat=True).first()
        return kept or timezone.now() + timedelta(seconds=seconds)
