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

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from .. import approvals, logs, queue, signals
from ..approvals import APPROVAL
from ..models import (
    DEADLINE_ERROR,
    PHASES,
    TERMINAL_STATES,
    Actor,
    Decision,
    State,
    Task,
    Workflow,
    WorkflowSignal,
    task_status_after,
)
from .exceptions import IdempotencyConflict, InvalidTransition
from .outcomes import end_attempt, hold_phase
from .transitions import changing, fire, record_in_place

logger = logging.getLogger("workflow_orchestrator.services")
Status = Task.Status

SIGNAL_PREFIX = "signal:"
TIMER = "timer"


def waiting_for(signal: str | None, reason: str = "") -> str:
    """What a waiting task's `waiting_for` says: its handler's reason ('approval'), else
    'timer' or 'signal:<name>'."""
    return reason or (TIMER if signal is None else f"{SIGNAL_PREFIX}{signal}")


def task_wait(
    task_id: int, attempt: int, *, workflow_id, until=None, signal: str | None = None, reason: str = ""
) -> bool:
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
            if reason == APPROVAL:
                _decide_by_deadline(workflow, task, now)
            _queue_again(task, "wait_over", attempts)
            return True
        Task.objects.filter(pk=task.pk).update(
            status=task_status_after("wait", task.status),
            wake_at=until,
            waiting_for=waiting_for(signal, reason),
            finished_at=now,
            lease_expires_at=None,
            worker="",
            slot="",
            attempts=attempts,
        )
        if until is not None:
            queue.send_with_change([queue.wake_job(task.pk, until)])
        if reason == APPROVAL:
            _tell_approvers(workflow, task, until, now)
    logger.info(
        "task %s waits for %s",
        task_id,
        waiting_for(signal, reason) + (f" until {until.isoformat()}" if until and (signal or reason) else ""),
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
    with changing(workflow_id, "wake", whole_chain=False) as workflow:
        task = Task.objects.filter(pk=task_id, status=Status.WAITING).first()
        if task is None or (due_only and (task.wake_at is None or task.wake_at > now)):
            return False
        if task.waiting_for == APPROVAL:
            _decide_by_deadline(workflow, task, now)
        _queue_again(task, "wake")
    return True


def wake_due(now=None) -> list[tuple]:
    """The waiting tasks whose timer or deadline is due (the index of the waiting), as
    (task id, workflow id)."""
    now = now or timezone.now()
    return list(Task.objects.filter(status=Status.WAITING, wake_at__lte=now).values_list("pk", "workflow_id"))


# --- Approvals -------------------------------------------------------------------------------


def task_decide(
    workflow_id, task_name: str, *, user, decision: str, data: dict | None = None, comment: str = "", actor: Actor
):
    """`user` decides the approval task `task_name`: a Decision and its audit row (event
    `decide`: who, what, the form's data, the comment). A reject, or the approval that
    reaches the quorum, wakes the task, whose handler then succeeds with the decisions as
    its result or fails with the reject's comment. Raises NotAnApprover (403) for a user the
    task does not name, ValidationError (400) for a bad decision, form or comment, and
    InvalidTransition (409) when the task is not waiting for a decision, or this user has
    decided it already. LookupError when the workflow has no such approval task (404)."""
    if decision not in approvals.DECISIONS:
        raise ValidationError({"decision": [f"decision must be one of {', '.join(approvals.DECISIONS)}"]})
    if not isinstance(comment, str) or len(comment) > approvals.MAX_COMMENT:
        raise ValidationError({"comment": [f"comment must be text of at most {approvals.MAX_COMMENT} characters"]})
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValidationError({"data": ["data must be an object: the task's form, by field name"]})
    with changing(workflow_id, "decide", whole_chain=False) as workflow:
        task = workflow.tasks.filter(name=task_name, type=APPROVAL).first()
        if task is None:
            raise LookupError(f"workflow {workflow_id} has no approval task named {task_name!r}")
        params = task.params
        if not approvals.may_decide(user, params.get("approvers", {})):
            raise NotAnApprover(f"{user} is not an approver of task {task_name}")
        if task.status != Status.WAITING or task.waiting_for != APPROVAL:
            raise InvalidTransition(workflow, "decide", f"task {task_name} is {task.status}: it waits for no decision")
        if task.decisions.filter(round=workflow.retries, user=user).exists():
            raise InvalidTransition(workflow, "decide", f"{user} has decided task {task_name} already")
        values, errors = approvals.cleaned(params.get("fields", []), data)
        if errors:
            raise ValidationError({"data": [f"{name}: {' '.join(messages)}" for name, messages in errors.items()]})
        made = _decide(workflow, task, decision, values, comment, actor, user=user)
        if approvals.verdict(params, _round(workflow, task)) is not None:
            _queue_again(task, "wake")
    return made


def _round(workflow: Workflow, task: Task) -> list[dict]:
    """The decisions of the task's current round, as approvals.verdict reads them."""
    rows = task.decisions.filter(round=workflow.retries).values_list("decision", "actor_label", "data")
    return [{"decision": decision, "by": by, "data": data} for decision, by, data in rows]


def _decide(workflow, task, decision: str, data: dict, comment: str, actor: Actor, *, user=None) -> Decision:
    now = timezone.now()
    row = record_in_place(
        workflow,
        "decide",
        actor,
        comment,
        now,
        {"task": task.name, "decision": decision, "data": data, "comment": comment},
    )
    return Decision.objects.create(
        workflow=workflow,
        task=task,
        round=workflow.retries,
        decision=decision,
        user=user,
        actor_label=actor.label,
        data=data,
        comment=comment,
        seq=row.seq,
        created_at=now,
    )


def _decide_by_deadline(workflow: Workflow, task: Task, now) -> None:
    """An approval's deadline passed before its decision: its `on_deadline` decides, as
    `system` (a reject, an approval, or a failure: a reject that fails the task)."""
    rule = task.params.get("on_deadline", "reject")
    seconds = task.params.get("deadline_seconds")
    comment = f"no decision within {seconds:g} s: {rule}" if seconds else f"deadline passed: {rule}"
    decision = "approve" if rule == "approve" else "reject"
    _decide(workflow, task, decision, {"fail": True} if rule == "fail" else {}, comment, Actor.SYSTEM)


class NotAnApprover(PermissionError):
    """The user may not decide this approval (a 403)."""


def waiting_for_user(user, *, limit: int = 200) -> list[Task]:
    """The approval tasks waiting now that `user` may decide and has not yet, oldest first
    (the admin's "Waiting for me"), each with `approved`: its approvals of this round. One
    query for the tasks and one for the user's groups, however many wait."""
    this_round = Q(decisions__round=F("workflow__retries"))
    waiting = (
        Task.objects.filter(status=Status.WAITING, waiting_for=APPROVAL)
        .select_related("workflow")
        .annotate(
            approved=Count("decisions", filter=this_round & Q(decisions__decision="approve")),
            mine=Count("decisions", filter=this_round & Q(decisions__user=user)),
        )
        .filter(mine=0)
        .order_by("finished_at", "pk")
    )
    groups = set(user.groups.values_list("name", flat=True))
    mine = [
        task for task in waiting[: limit * 5] if approvals.may_decide(user, task.params.get("approvers", {}), groups)
    ]
    return mine[:limit]


def _tell_approvers(workflow: Workflow, task: Task, until, now) -> None:
    """An approval starts waiting: an audit row (event `waiting`), a webhook `waiting` to
    the workflow's callback_url if it has one (signed and retried as every webhook), and,
    once committed, the `workflow_waiting` signal for the project to tell its approvers."""
    data = {"task": task.name, "approvers": task.params.get("approvers", {})}
    if until is not None:
        data["deadline"] = until.isoformat()
    row = record_in_place(workflow, "waiting", Actor.SYSTEM, f"task {task.name} waits for a decision", now, data)
    if workflow.callback_url:
        queue.send_with_change([queue.webhook_job(workflow.pk, row.seq, 1)])
    transaction.on_commit(lambda: signals.workflow_waiting.send(sender=Workflow, workflow=workflow, task=task))


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
                workflow.tasks.filter(status=Status.WAITING, waiting_for=waiting_for(name)).order_by("position").first()
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
        hold_phase(workflow, workflow.failed_phase)
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
