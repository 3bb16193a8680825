"""Long-lived waits: a task whose handler waits (a timer, a signal) holds no worker and no
job until it wakes; a signal sent to a workflow wakes the task waiting for it, or is kept
for the task that will; a workflow whose deadline passes fails.

Nothing polls per waiting task. A timer or a deadline is a job with its due time on the
broker (`queue.wake_job`, `queue.deadline_job`), and recovery, every half lease, wakes
what is due through a due-time index of the few waiting (`task_waiting_due`,
`workflow_deadline`): a timer due while no cluster ran fires on the next start, whatever
the broker kept.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError
from django.utils import timezone

from .. import logs, queue
from ..models import (
    DEADLINE_ERROR,
    PHASES,
    TASK_TRANSITIONS,
    TERMINAL_STATES,
    Actor,
    State,
    Task,
    Workflow,
    WorkflowSignal,
    task_status_after,
)
from .exceptions import IdempotencyConflict, InvalidTransition
from .outcomes import end_attempt
from .transitions import changing, fire, record_in_place

logger = logging.getLogger("workflow_orchestrator.services")
Status = Task.Status

SIGNAL_PREFIX = "signal:"
TIMER = "timer"


def waiting_for(until, signal: str | None) -> str:
    """What a waiting task's `waiting_for` says: 'timer', or 'signal:<name>'."""
    return TIMER if signal is None else f"{SIGNAL_PREFIX}{signal}"


def task_wait(task_id: int, attempt: int, *, workflow_id, until=None, signal: str | None = None) -> bool:
    """A handler waits (ctx.wait): its running attempt ends, not counted, and the task
    waits, holding no worker and no job, until `until` (a job with that due time wakes
    it) or the signal `signal` (services.workflow_signal wakes it). When what it waits for
    is there already (the time has come, or the signal arrived while it ran), it is
    queued again at once instead. False when the attempt no longer holds its task."""
    with changing(workflow_id, "wait", whole_chain=False) as workflow:
        task = Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt).first()
        if task is None:
            return False
        now = timezone.now()
        attempts = end_attempt(task, "waiting", now=now)
        if workflow.state != task.phase:  # cancelled or failed meanwhile: its work no longer counts
            Task.objects.filter(pk=task.pk).update(
                status=task_status_after("end_cancelled", task.status),
                finished_at=now,
                lease_expires_at=None,
                attempts=attempts,
            )
            return True
        arrived = (
            signal is not None
            and WorkflowSignal.objects.filter(workflow_id=workflow_id, name=signal, task__isnull=True).exists()
        )
        if arrived or (until is not None and until <= now):
            _queue_again(task, "wait_over", attempts)
            return True
        Task.objects.filter(pk=task.pk).update(
            status=task_status_after("wait", task.status),
            wake_at=until,
            waiting_for=waiting_for(until, signal),
            finished_at=now,
            lease_expires_at=None,
            worker="",
            slot="",
            attempts=attempts,
        )
        if until is not None:
            queue.send_with_change([queue.wake_job(task.pk, until)])
    logger.info(
        "task %s waits for %s",
        task_id,
        waiting_for(until, signal) + (f" until {until.isoformat()}" if until and signal else ""),
        extra=logs.fields(workflow_id=workflow_id, task_id=task_id, attempt=attempt, event="task_waiting"),
    )
    return True


def _queue_again(task: Task, via: str, attempts: list | None = None) -> None:
    """Queue `task` for its handler's next run, which does not count against its budget:
    `via` the task transition "wake" (from WAITING) or "wait_over" (from RUNNING: what it
    would wait for is there already)."""
    now = timezone.now()
    changes = {
        "status": task_status_after(via, task.status),
        "attempt": task.attempt + 1,
        "attempt_offset": task.attempt_offset + 1,
        "queued_at": now,
        "started_at": None,
        "finished_at": None,
        "lease_expires_at": None,
        "worker": "",
        "slot": "",
        "waiting_for": "",
    }
    if attempts is not None:
        changes["attempts"] = attempts
    Task.objects.filter(pk=task.pk).update(**changes)
    queue.send_with_change([queue.task_job(task.pk, task.attempt + 1, task.timeout)])


def task_wake(task_id: int, *, due_only: bool = True, now=None) -> bool:
    """Wake a waiting task: it is queued, and its handler runs again. `due_only`: only if
    its timer or deadline is due (a job with a due time, recovery). False when it does
    not wait (any more), or is not due."""
    now = now or timezone.now()
    workflow_id = Task.objects.filter(pk=task_id, status=Status.WAITING).values_list("workflow_id", flat=True).first()
    if workflow_id is None:
        return False
    with changing(workflow_id, "wake", whole_chain=False):
        task = Task.objects.filter(pk=task_id, status=Status.WAITING).first()
        if task is None or (due_only and (task.wake_at is None or task.wake_at > now)):
            return False
        _queue_again(task, "wake")
    return True


def wake_due(now=None) -> list[tuple]:
    """The waiting tasks whose timer or deadline is due (the index of the waiting), as
    (task id, workflow id)."""
    now = now or timezone.now()
    return list(Task.objects.filter(status=Status.WAITING, wake_at__lte=now).values_list("pk", "workflow_id"))


# --- Signals -----------------------------------------------------------------------------


def workflow_signal(
    workflow_id, *, name: str, payload: dict | None = None, actor: Actor, idempotency_key: str = ""
) -> tuple[WorkflowSignal, bool]:
    """Send the signal `name` to a workflow: an audit row, and the signal kept for its
    `wait_signal` task (the first by position waiting for that name is woken with it; if
    none waits yet, the first that will takes it). Returns the signal and whether it was
    sent now: a repeated `idempotency_key` returns the first signal sent with it (or
    raises IdempotencyConflict for a different name or payload). A workflow that has
    ended (COMPLETE, CANCELLED) takes no signal, nor one FAILED a signal that none of its
    tasks waits for: InvalidTransition, a 409."""
    payload = {} if payload is None else payload
    try:
        with changing(workflow_id, "signal", whole_chain=False) as workflow:
            if idempotency_key:
                existing = workflow.signals.filter(idempotency_key=idempotency_key).first()
                if existing is not None:
                    if (existing.name, existing.payload) != (name, payload):
                        raise IdempotencyConflict(workflow)
                    return existing, False
            _check_signal(workflow, name)
            now = timezone.now()
            waiting = (
                workflow.tasks.filter(status=Status.WAITING, waiting_for=waiting_for(None, name))
                .order_by("position")
                .first()
            )
            row = record_in_place(
                workflow,
                "signal",
                actor,
                "",
                now,
                {"name": name, "payload": payload, **({"task": waiting.name} if waiting else {})},
            )
            signal = WorkflowSignal.objects.create(
                workflow=workflow,
                name=name,
                payload=payload,
                sent_by=actor.label,
                idempotency_key=idempotency_key,
                seq=row.seq,
                created_at=now,
                task=waiting,
                delivered_at=now if waiting else None,
            )
            if waiting is not None:
                _queue_again(waiting, "wake")
    except IntegrityError:  # the same key, sent twice at once: the first one won
        existing = WorkflowSignal.objects.filter(workflow_id=workflow_id, idempotency_key=idempotency_key).first()
        if existing is None or not idempotency_key:
            raise
        if (existing.name, existing.payload) != (name, payload):
            raise IdempotencyConflict(existing.workflow) from None
        return existing, False
    return signal, True


def _check_signal(workflow: Workflow, name: str) -> None:
    if workflow.state in TERMINAL_STATES:
        raise InvalidTransition(workflow, "signal", f"cannot signal a workflow in state {workflow.state}")
    if workflow.state == State.FAILED and name not in signal_names(workflow):
        raise InvalidTransition(
            workflow, "signal", f"no task of this {workflow.state} workflow waits for a signal named {name!r}"
        )


def signal_names(workflow: Workflow) -> set[str]:
    """The signal names the workflow's tasks wait for, or will: those of its `wait_signal`
    tasks' params, and those its waiting tasks wait for now."""
    names = {
        params.get("name")
        for params in workflow.tasks.filter(type="wait_signal").values_list("params", flat=True)
        if isinstance(params, dict)
    }
    waiting = workflow.tasks.filter(status=Status.WAITING, waiting_for__startswith=SIGNAL_PREFIX)
    names |= {value.removeprefix(SIGNAL_PREFIX) for value in waiting.values_list("waiting_for", flat=True)}
    return {name for name in names if isinstance(name, str)}


# --- Deadlines -----------------------------------------------------------------------------


def deadline_check(workflow_id, *, now=None) -> bool:
    """Fail the workflow if its deadline has passed and it is still in a phase: recorded
    by `system`, with the error 'deadline exceeded'; its waiting and queued tasks wait for
    a retry (which gives it a new deadline), its running handlers see ctx.cancelled().
    True when it failed it."""
    now = now or timezone.now()
    with changing(workflow_id, "deadline", whole_chain=False) as workflow:
        if workflow.state not in PHASES or workflow.deadline_at is None:
            return False
        if workflow.deadline_at > now:  # moved by a retry, or the job came early: check again then
            queue.send_with_change([queue.deadline_job(workflow.pk, workflow.deadline_at)])
            return False
        fire(
            workflow,
            "fail",
            Actor.SYSTEM,
            reason=f"its deadline ({workflow.deadline_seconds} s) passed in {workflow.state}",
            data={"deadline_at": workflow.deadline_at.isoformat(), "deadline_seconds": workflow.deadline_seconds},
            error=DEADLINE_ERROR,
        )
        hold = TASK_TRANSITIONS["hold"]
        workflow.tasks.filter(phase=workflow.failed_phase, status__in=hold.sources).update(
            status=hold.target, queued_at=None, wake_at=None, waiting_for=""
        )
    logger.warning(
        "workflow %s failed: its deadline passed",
        workflow_id,
        extra=logs.fields(workflow_id=workflow_id, event="deadline_exceeded"),
    )
    return True


def deadlines_due(now=None) -> list:
    """The workflows in a phase whose deadline has passed (the index of deadlines)."""
    now = now or timezone.now()
    return list(Workflow.objects.filter(deadline_at__lte=now, state__in=PHASES).values_list("pk", flat=True))
