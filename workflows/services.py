"""The engine: every state change of a workflow goes through one of these functions.

Each one runs in `transaction.atomic()`, locks the workflow row, fires the django-fsm
transition, saves, writes the audit row through `Transition.objects.record` and
enqueues jobs with `transaction.on_commit`, so that a job never sees a rolled-back row
and an audit row exists exactly when its state change was committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from . import queue
from .models import PHASE_EVENTS, PHASES, Actor, State, Task, Transition, Workflow
from .registry import UnknownDefinition, UnknownTaskType, get_definition, get_task_type

logger = logging.getLogger(__name__)
Status = Task.Status
RESERVED_TASK_NAMES = {"prepare", "validate"}
MAX_TASKS = 1000
MAX_TASK_ATTEMPTS = 100
MAX_TASK_TIMEOUT = 7 * 24 * 3600


class WorkflowError(Exception):
    """A request the workflow cannot honour in its current state."""


class InvalidTransition(WorkflowError):
    def __init__(self, workflow: Workflow, event: str, message: str = ""):
        self.workflow = workflow
        self.event = event
        self.state = workflow.state
        self.allowed = workflow.available_events
        super().__init__(message or f"cannot {event} a workflow in state {workflow.state}")


class IdempotencyConflict(WorkflowError):
    def __init__(self, workflow: Workflow):
        self.workflow = workflow
        super().__init__(
            f"idempotency key {workflow.idempotency_key!r} was already used for a different request "
            f"(workflow {workflow.pk})"
        )


# --- Creating --------------------------------------------------------------------------


def _number(value, field: str, *, whole: bool, low: float, high: float) -> float:
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise ValueError(f"{field} must be a {'whole ' if whole else ''}number from {low} to {high}")
    return value


def _normalize_task(index: int, spec) -> dict:
    if not isinstance(spec, dict):
        raise ValueError("must be an object with at least a type")
    unknown = set(spec) - {"name", "type", "params", "max_attempts", "timeout"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    task_type = spec.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("type is required")
    get_task_type(task_type)
    name = spec.get("name") or f"{task_type}-{index + 1}"
    if not isinstance(name, str) or len(name) > 200:
        raise ValueError("name must be a string of at most 200 characters")
    if name in RESERVED_TASK_NAMES:
        raise ValueError(f"name {name!r} is reserved for the {name.upper()} phase")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise ValueError("params must be an object")
    max_attempts = spec.get("max_attempts", settings.ORCH_MAX_ATTEMPTS)
    timeout = spec.get("timeout", settings.ORCH_TASK_TIMEOUT)
    return {
        "name": name,
        "type": task_type,
        "params": params,
        "max_attempts": _number(max_attempts, "max_attempts", whole=True, low=1, high=MAX_TASK_ATTEMPTS),
        "timeout": _number(timeout, "timeout", whole=False, low=0.1, high=MAX_TASK_TIMEOUT),
    }


def normalize_tasks(specs) -> list[dict]:
    """Check a list of task specs and fill in their defaults; ValueError says what is wrong."""
    if not isinstance(specs, list | tuple):
        raise ValueError("tasks must be a list")
    if len(specs) > MAX_TASKS:
        raise ValueError(f"at most {MAX_TASKS} tasks")
    tasks, errors = [], []
    for index, spec in enumerate(specs):
        try:
            tasks.append(_normalize_task(index, spec))
        except (ValueError, UnknownTaskType) as exc:
            errors.append(f"task {index + 1}: {exc.args[0]}")
    names = [task["name"] for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        errors.append(f"task names must be unique: {', '.join(duplicates)}")
    if errors:
        raise ValueError("; ".join(errors))
    return tasks


def _phase_task(workflow: Workflow, phase: State, task_type: str, position: int) -> Task:
    return Task(
        workflow=workflow,
        phase=phase,
        position=position,
        name=phase.lower(),
        type=task_type,
        max_attempts=settings.ORCH_MAX_ATTEMPTS,
        timeout=settings.ORCH_TASK_TIMEOUT,
    )


def _create_tasks(workflow: Workflow, definition, specs: list[dict]) -> None:
    rows = [Task(workflow=workflow, phase=State.EXECUTE, position=i + 1, **spec) for i, spec in enumerate(specs)]
    if definition.prepare:
        rows.insert(0, _phase_task(workflow, State.PREPARE, definition.prepare, 0))
    if definition.validate:
        rows.append(_phase_task(workflow, State.VALIDATE, definition.validate, len(specs) + 1))
    Task.objects.bulk_create(rows)


def _fingerprint(**request) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def _validated(name, definition, mode, input, tasks) -> tuple:
    errors = {}
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        errors["name"] = ["name is required: a string of at most 200 characters"]
    try:
        definition_obj = get_definition(definition)
    except UnknownDefinition as exc:
        errors["definition"] = [str(exc.args[0])]
        definition_obj = None
    if mode not in Workflow.Mode.values:
        errors["mode"] = [f"mode must be one of {', '.join(Workflow.Mode.values)}"]
    if not isinstance(input, dict):
        errors["input"] = ["input must be a JSON object"]
    try:
        specs = tasks if tasks is not None else list(definition_obj.tasks if definition_obj else [])
        normalized = normalize_tasks(specs)
    except ValueError as exc:
        errors["tasks"] = [str(exc)]
        normalized = []
    if errors:
        raise ValidationError(errors)
    return definition_obj, normalized


def workflow_create(
    *,
    name: str,
    actor: Actor,
    definition: str = "default",
    mode: str = Workflow.Mode.AUTO,
    input: dict | None = None,
    tasks: list | None = None,
    idempotency_key: str | None = None,
    start: bool = False,
) -> tuple[Workflow, bool]:
    """Create a workflow with its tasks (and start it when asked).

    Returns the workflow and whether it was created: a repeated idempotency key with the
    same request returns the existing workflow; with a different one it raises
    IdempotencyConflict. Bad input raises ValidationError and stores nothing.
    """
    input = {} if input is None else input
    definition_obj, specs = _validated(name, definition, mode, input, tasks)
    # The creator is part of the request: another user repeating a key is a conflict,
    # never a way to read someone else's workflow.
    fingerprint = _fingerprint(
        user=actor.user.pk if actor.user else None,
        name=name,
        definition=definition,
        mode=mode,
        input=input,
        tasks=specs,
        start=start,
    )
    if idempotency_key:
        existing = _existing_for_key(idempotency_key, fingerprint)
        if existing:
            return existing, False
    try:
        with transaction.atomic():
            workflow = Workflow.objects.create(
                name=name,
                definition=definition,
                mode=mode,
                input=input,
                idempotency_key=idempotency_key or None,
                fingerprint=fingerprint,
                created_by=actor.user,
            )
            _create_tasks(workflow, definition_obj, specs)
            if start:
                _fire(workflow, "start", actor)
                _enter_phase(workflow, actor)
    except IntegrityError:
        # Another request with the same idempotency key committed first.
        existing = idempotency_key and _existing_for_key(idempotency_key, fingerprint)
        if not existing:
            raise
        return existing, False
    return workflow, True


def _existing_for_key(key: str, fingerprint: str) -> Workflow | None:
    existing = Workflow.objects.filter(idempotency_key=key).first()
    if existing and existing.fingerprint != fingerprint:
        raise IdempotencyConflict(existing)
    return existing


UPDATABLE_FIELDS = ("name", "definition", "mode", "input", "tasks")


def workflow_update(workflow_id, *, actor: Actor, **changes) -> Workflow:
    """Change a workflow that has not started: its name, definition, mode, input or tasks.
    Given tasks replace the EXECUTE tasks; a new definition brings its own PREPARE and
    VALIDATE handlers."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    with transaction.atomic():
        workflow = _locked(workflow_id)
        if workflow.state != State.INIT:
            raise InvalidTransition(
                workflow, "update", f"cannot update a workflow in state {workflow.state}: only one not yet started"
            )
        current = {field: getattr(workflow, field) for field in ("name", "definition", "mode", "input")}
        current["tasks"] = list(
            workflow.tasks.filter(phase=State.EXECUTE).values("name", "type", "params", "max_attempts", "timeout")
        )
        merged = {**current, **changes}
        definition, specs = _validated(**merged)
        for field in ("name", "definition", "mode", "input"):
            setattr(workflow, field, merged[field])
        workflow.save()
        if "tasks" in changes or "definition" in changes:
            workflow.tasks.all().delete()
            _create_tasks(workflow, definition, specs)
    return workflow


# --- Transitions -----------------------------------------------------------------------


def _locked(workflow_id: UUID | str) -> Workflow:
    # Without the lock, two deliveries of the last EXECUTE task's job, or a `next` racing
    # a worker, could both see the phase finished and advance the workflow twice.
    return Workflow.objects.select_for_update().get(pk=workflow_id)


# What a transition (or the end of a phase) may change on the workflow row.
TRANSITION_FIELDS = ["state", "results", "error", "retries", "failed_phase", "started_at", "finished_at", "updated_at"]


def _save_and_record(workflow: Workflow, source: str, event: str, actor: Actor, reason: str = "", data=None):
    workflow.save(update_fields=TRANSITION_FIELDS)
    Transition.objects.record(workflow=workflow, source=source, event=event, actor=actor, reason=reason, data=data)


def _fire(workflow: Workflow, event: str, actor: Actor, *, reason: str = "", data=None, **kwargs) -> None:
    source = workflow.state
    try:
        getattr(workflow, event)(**kwargs)
    except TransitionNotAllowed:
        raise InvalidTransition(workflow, event) from None
    _save_and_record(workflow, source, event, actor, reason, data)


def _send(jobs: list[queue.Job]) -> None:
    try:
        queue.enqueue(jobs)
    except Exception:
        # The state change is committed and its tasks are QUEUED in the database, which is
        # the source of truth: recovery re-sends their jobs once the broker answers again.
        logger.warning("could not reach the broker: %d job(s) will be re-sent by recovery", len(jobs), exc_info=True)


def _enqueue_on_commit(jobs: list[queue.Job]) -> None:
    if jobs:
        transaction.on_commit(lambda: _send(jobs))


def _queue_tasks(
    tasks: list[Task], *, fresh_budget: bool = False, charge: bool = True, eta=None, error: str | None = None
) -> None:
    """Move tasks to QUEUED for their next attempt (one UPDATE) and send their jobs after
    commit. `fresh_budget` starts a new budget of attempts (workflow retry); `charge=False`
    keeps the attempt from counting against it (a handed-back attempt)."""
    changes = {
        "status": Status.QUEUED,
        "attempt": F("attempt") + 1,
        "queued_at": eta or timezone.now(),
        "started_at": None,
        "finished_at": None,
        "lease_expires_at": None,
        "worker": "",
    }
    if fresh_budget:
        changes["attempt_offset"] = F("attempt")  # SQL reads the attempt before this UPDATE's increment
    if not charge:
        changes["attempt_offset"] = F("attempt_offset") + 1
    if error is not None:
        changes["error"] = error
    Task.objects.filter(pk__in=[task.pk for task in tasks]).update(**changes)
    _enqueue_on_commit([queue.task_job(task.pk, task.attempt + 1, task.timeout, eta) for task in tasks])


def _phase_finished(workflow: Workflow) -> bool:
    return not workflow.tasks.filter(phase=workflow.state).exclude(status=Status.SUCCEEDED).exists()


def _enter_phase(workflow: Workflow, actor: Actor, *, fresh_budget: bool = False) -> None:
    """Queue the work of the phase the workflow just entered; a phase with nothing left
    to run is finished at once."""
    runnable = list(workflow.tasks.filter(phase=workflow.state).exclude(status__in=[Status.SUCCEEDED, Status.RUNNING]))
    if runnable:
        _queue_tasks(runnable, fresh_budget=fresh_budget)
    elif _phase_finished(workflow):
        _finish_phase(workflow, actor)


def _finish_phase(workflow: Workflow, actor: Actor) -> None:
    """Store the phase's results; in automatic mode, move on to the next phase."""
    phase = workflow.state
    rows = workflow.tasks.filter(phase=phase).values_list("name", "result")
    workflow.results = {**workflow.results, phase: dict(rows) if phase == State.EXECUTE else _single(rows)}
    if workflow.mode == Workflow.Mode.MANUAL:
        workflow.save(update_fields=["results", "updated_at"])
        return
    _advance(workflow, actor)


def _single(rows):
    results = [result for _, result in rows]
    return results[0] if len(results) == 1 else results or None


def _advance(workflow: Workflow, actor: Actor) -> None:
    _fire(workflow, PHASE_EVENTS[workflow.state], actor)
    if workflow.state in PHASES:
        _enter_phase(workflow, actor)


def workflow_start(workflow_id, *, actor: Actor) -> Workflow:
    with transaction.atomic():
        workflow = _locked(workflow_id)
        _fire(workflow, "start", actor)
        _enter_phase(workflow, actor)
    return workflow


def workflow_next(workflow_id, *, actor: Actor) -> Workflow:
    """Manual mode: fire the next transition once the current phase's work is done."""
    with transaction.atomic():
        workflow = _locked(workflow_id)
        if workflow.mode != Workflow.Mode.MANUAL:
            raise InvalidTransition(workflow, "next", "next is only for workflows in manual mode")
        if workflow.state not in PHASE_EVENTS:
            raise InvalidTransition(workflow, "next", f"a workflow in state {workflow.state} has no next step")
        if workflow.state in PHASES and not _phase_finished(workflow):
            raise InvalidTransition(workflow, "next", f"the {workflow.state} phase's work has not finished")
        _advance(workflow, actor)
    return workflow


def workflow_retry(workflow_id, *, actor: Actor) -> Workflow:
    """Resume a FAILED workflow at the phase that failed: tasks that succeeded are not
    run again, the others get a fresh budget of attempts."""
    with transaction.atomic():
        workflow = _locked(workflow_id)
        _fire(workflow, "retry", actor, data={"phase": workflow.failed_phase})
        _enter_phase(workflow, actor, fresh_budget=True)
    return workflow


def workflow_cancel(workflow_id, *, actor: Actor, reason: str = "") -> Workflow:
    """Cancel: tasks not yet running are cancelled at once; running ones see
    `ctx.cancelled()` and their late results change nothing."""
    with transaction.atomic():
        workflow = _locked(workflow_id)
        _fire(workflow, "cancel", actor, reason=reason)
        workflow.tasks.filter(status__in=[Status.PENDING, Status.QUEUED]).update(
            status=Status.CANCELLED, finished_at=timezone.now()
        )
    return workflow


def workflow_delete(workflow_id, *, actor: Actor) -> None:
    """Delete a workflow that is not running, with its tasks and history."""
    with transaction.atomic():
        workflow = _locked(workflow_id)
        if workflow.is_running:
            raise InvalidTransition(
                workflow, "delete", f"cannot delete a workflow in state {workflow.state}: cancel it first"
            )
        workflow.delete()


# --- Tasks (called by jobs) ------------------------------------------------------------


def task_claim(task_id: int, attempt: int, *, worker: str) -> Task | None:
    """Take a queued attempt for this worker. None when another delivery of the same job
    got there first, or the attempt is no longer wanted."""
    now = timezone.now()
    claimed = Task.objects.filter(pk=task_id, status=Status.QUEUED, attempt=attempt).update(
        status=Status.RUNNING,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=settings.ORCH_LEASE_SECONDS),
        worker=worker,
    )
    if claimed != 1:
        return None
    return Task.objects.select_related("workflow").get(pk=task_id)


def task_heartbeat(task_id: int, attempt: int) -> bool:
    """Renew a running attempt's lease; False when the attempt was taken back."""
    lease = timezone.now() + timedelta(seconds=settings.ORCH_LEASE_SECONDS)
    return Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt).update(lease_expires_at=lease) == 1


def task_hand_back(task_id: int, attempt: int, *, workflow_id) -> bool:
    """A stopping worker gives its running attempt back: the task is queued again at once,
    and the interrupted attempt does not count against its budget."""
    with transaction.atomic():
        workflow = _locked(workflow_id)
        task = Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt).first()
        if task is None:
            return False
        if workflow.state != task.phase:  # cancelled or failed meanwhile: nothing to hand back
            Task.objects.filter(pk=task.pk).update(
                status=Status.CANCELLED, finished_at=timezone.now(), lease_expires_at=None
            )
            return True
        _queue_tasks([task], charge=False)
    return True


def workflow_is_cancelled(workflow_id) -> bool:
    return Workflow.objects.filter(pk=workflow_id, state=State.CANCELLED).exists()


def backoff_delay(failed_attempts: int) -> float:
    """Exponential backoff with jitter: half the delay is fixed, half random."""
    delay = min(settings.ORCH_RETRY_BACKOFF * 2 ** (failed_attempts - 1), settings.ORCH_RETRY_BACKOFF_MAX)
    return delay / 2 + random.uniform(0, delay / 2)


def task_finished(task_id: int, attempt: int, *, result=None, error: str | None = None, workflow_id=None) -> bool:
    """Record the outcome of one attempt, once, and move the workflow on.

    Returns False when the outcome was not recorded (a second delivery of the job, or an
    attempt taken back by recovery). A result that arrives after the workflow left the
    task's phase (cancelled, failed) is recorded and changes nothing. Jobs pass the
    workflow's id, which spares a query on the hot path.
    """
    if workflow_id is None:
        workflow_id = Task.objects.filter(pk=task_id).values_list("workflow_id", flat=True).first()
        if workflow_id is None:
            return False
    with transaction.atomic():
        workflow = _locked(workflow_id)
        running = Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt)
        if error is not None:
            task = running.first()
            if task is None:
                return False
            _attempt_failed(workflow, task, error, Actor.WORKER)
            return True
        # A success is one conditional update: it matches only while this attempt holds the task.
        outcome = {"status": Status.SUCCEEDED, "result": result, "error": "", "lease_expires_at": None}
        outcome["finished_at"] = timezone.now()
        if running.filter(phase=workflow.state).update(**outcome):
            if _phase_finished(workflow):
                _finish_phase(workflow, Actor.WORKER)
            return True
        return running.update(**outcome) == 1  # late: recorded, and the workflow stays where it is


def _attempt_failed(workflow: Workflow, task: Task, error: str, actor: Actor) -> None:
    """A failed attempt: queue the next one after a backoff, or, with the budget spent,
    fail the task and its workflow."""
    task.error = error
    task.finished_at, task.lease_expires_at = timezone.now(), None
    in_phase = workflow.state == task.phase
    if in_phase and task.attempts_left > 0:
        eta = timezone.now() + timedelta(seconds=backoff_delay(task.attempt - task.attempt_offset))
        _queue_tasks([task], eta=eta, error=error)
        return
    task.status = Status.FAILED
    task.save(update_fields=["status", "error", "finished_at", "lease_expires_at"])
    if not in_phase:
        return
    last_line = error.strip().splitlines()[-1] if error.strip() else "failed"
    _fire(
        workflow,
        "fail",
        actor,
        reason=f"task {task.name} failed after {task.attempt - task.attempt_offset} attempt(s): {last_line}",
        data={"task": task.pk, "task_name": task.name, "attempt": task.attempt, "error": last_line},
        error=f"{task.name}: {last_line}",
    )
    # Siblings waiting for their turn wait for a retry instead; running ones finish.
    workflow.tasks.filter(phase=task.phase, status=Status.QUEUED).update(status=Status.PENDING, queued_at=None)


# --- Recovery ----------------------------------------------------------------------------


def recover(*, now=None) -> dict:
    """Take back attempts whose worker stopped heartbeating (killed, machine lost) and
    re-send jobs of attempts queued long ago whose job was lost by the broker."""
    now = now or timezone.now()
    expired = list(
        Task.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now).values_list("pk", "workflow_id", "attempt")
    )
    for task_id, workflow_id, attempt in expired:
        _take_back(task_id, workflow_id, attempt, now)
    stale_before = now - timedelta(seconds=settings.ORCH_REQUEUE_SECONDS)
    requeued = 0
    for task in Task.objects.filter(status=Status.QUEUED, queued_at__lt=stale_before).only("pk", "attempt", "timeout"):
        # A duplicate of a job that was not lost after all loses its claim and does nothing.
        with transaction.atomic():
            if Task.objects.filter(pk=task.pk, status=Status.QUEUED, attempt=task.attempt).update(queued_at=now):
                requeued += 1
                _enqueue_on_commit([queue.task_job(task.pk, task.attempt, task.timeout)])
    return {"expired": len(expired), "requeued": requeued}


def _take_back(task_id: int, workflow_id, attempt: int, now) -> None:
    with transaction.atomic():
        workflow = _locked(workflow_id)
        task = Task.objects.filter(
            Q(lease_expires_at__lt=now), pk=task_id, status=Status.RUNNING, attempt=attempt
        ).first()
        if task:  # still expired now that we hold the lock
            worker = task.worker or "unknown worker"
            _attempt_failed(
                workflow, task, f"lease expired: {worker} stopped heartbeating (attempt {attempt})", Actor.SYSTEM
            )


def workflow_progress(workflow: Workflow) -> dict:
    """Tasks done (succeeded) out of all the workflow's tasks."""
    counts = workflow.tasks.aggregate(total=Count("pk"), done=Count("pk", filter=Q(status=Status.SUCCEEDED)))
    return {"done": counts["done"], "total": counts["total"]}
