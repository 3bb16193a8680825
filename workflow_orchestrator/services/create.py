"""Creating workflows, and changing one that has not started."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections import Counter

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import audit, queue, statements
from ..callbacks import validate_callback_url
from ..conf import app_settings
from ..models import Actor, Hold, State, Task, Transition, Workflow, task_status_after
from ..signals import send_transitioned_on_commit
from .exceptions import IdempotencyConflict, InvalidTransition
from .holds import hold_new
from .transitions import changing, fire
from .validation import check_idempotency_key, deadline, flow_control, labels_for, validate_request

Status = Task.Status


def _phase_task(workflow: Workflow, phase: State, task_type: str, position: int) -> Task:
    return Task(
        workflow=workflow,
        phase=phase,
        position=position,
        name=phase.lower(),
        type=task_type,
        max_attempts=app_settings.ORCH_MAX_ATTEMPTS,
        timeout=app_settings.ORCH_TASK_TIMEOUT,
        priority=workflow.priority,
        concurrency_key=workflow.concurrency_key,
    )


def _tasks(workflow: Workflow, definition, specs: list[dict]) -> list[Task]:
    """The workflow's tasks, in order: its definition's PREPARE handler, its EXECUTE
    tasks (each waiting for the tasks in its `after`), its definition's VALIDATE handler."""
    dependents = Counter(upstream for spec in specs for upstream in spec["after"])
    rows = [
        Task(
            workflow=workflow,
            phase=State.EXECUTE,
            position=i + 1,
            waiting=len(spec["after"]),
            dependents=dependents[spec["name"]],
            priority=workflow.priority,
            concurrency_key=workflow.concurrency_key,
            **spec,
        )
        for i, spec in enumerate(specs)
    ]
    if definition.prepare:
        rows.insert(0, _phase_task(workflow, State.PREPARE, definition.prepare, 0))
    if definition.validate:
        rows.append(_phase_task(workflow, State.VALIDATE, definition.validate, len(specs) + 1))
    return rows


def _create_tasks(workflow: Workflow, definition, specs: list[dict]) -> None:
    Task.objects.bulk_create(_tasks(workflow, definition, specs))


def _insert_started(workflow: Workflow, tasks: list[Task], actor: Actor) -> None:
    """Insert a workflow already started: in PREPARE, with its first audit row and its
    PREPARE task queued, as `start` would leave them (one statement on PostgreSQL, and
    nothing read back)."""
    now = timezone.now()
    workflow.start()
    row = Transition.objects.build(workflow=workflow, source=State.INIT, event="start", actor=actor, now=now)
    first = [task for task in tasks if task.phase == workflow.state]
    for task in first:
        task.status, task.attempt, task.queued_at = task_status_after("create_queued", None), 1, now
    workflow.unfinished = len(first)
    deadline = [queue.deadline_job(workflow.pk, workflow.deadline_at)] if workflow.deadline_at else []
    with queue.change_transaction():
        queue.send_with_change(queue.task_jobs(statements.create(workflow, tasks, row)) + deadline)
        send_transitioned_on_commit(copy.copy(workflow), row)


def _fingerprint(**request) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def workflow_create(
    *,
    name: str,
    actor: Actor,
    definition: str = "default",
    mode: str = Workflow.Mode.AUTO,
    input: dict | None = None,
    tasks: list | None = None,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    start: bool = False,
    schedule=None,
    priority: int | None = None,
    concurrency_key: str | None = None,
    max_parallel: int | None = None,
    deadline_seconds: int | None = None,
    labels: dict | None = None,
) -> tuple[Workflow, bool]:
    """Create a workflow with its tasks (and start it when asked); `schedule`, the
    WorkflowSchedule that starts it, if one does. `priority`, `concurrency_key`,
    `max_parallel` and `deadline_seconds` default to the definition's; `labels` go on top of
    the definition's.

    Returns the workflow and whether it was created: a repeated idempotency key with the
    same request returns the existing workflow; with a different one it raises
    IdempotencyConflict. Bad input raises ValidationError and stores nothing. A workflow
    whose definition or key is held starts paused by that hold (services.holds).
    """
    input = {} if input is None else input
    definition_obj, specs = validate_request(name, definition, mode, input, tasks)
    priority, concurrency_key, max_parallel = flow_control(
        definition_obj, input, priority, concurrency_key, max_parallel
    )
    deadline_seconds = deadline(definition_obj, deadline_seconds)
    labels = labels_for(definition_obj, labels)
    if idempotency_key is not None:
        check_idempotency_key(str(idempotency_key))
    callback_url = validate_callback_url(callback_url)
    # The creator is part of the request, as it is of the key's scope: another user's
    # same key is another request, never a way to read or block someone else's workflow.
    fingerprint = _fingerprint(
        user=actor.user.pk if actor.user else None,
        name=name,
        definition=definition,
        mode=mode,
        input=input,
        tasks=specs,
        start=start,
        **({"callback_url": callback_url} if callback_url else {}),  # keys given before webhooks still match
        # ... and before flow control.
        **({"priority": priority} if priority else {}),
        **({"concurrency_key": concurrency_key} if concurrency_key else {}),
        **({"max_parallel": max_parallel} if max_parallel is not None else {}),
        **({"deadline_seconds": deadline_seconds} if deadline_seconds is not None else {}),
        **({"labels": labels} if labels else {}),
    )
    if idempotency_key:
        existing = _existing_for_key(idempotency_key, actor, fingerprint)
        if existing:
            return existing, False
    workflow = Workflow(
        name=name,
        definition=definition_obj.key,
        definition_version=definition_obj.version,
        mode=mode,
        input=input,
        idempotency_key=idempotency_key or None,
        idempotency_scope=_scope(actor) if idempotency_key else "",
        fingerprint=fingerprint,
        callback_url=callback_url,
        created_by=actor.user,
        schedule=schedule,
        priority=priority,
        concurrency_key=concurrency_key,
        max_parallel=max_parallel,
        deadline_seconds=deadline_seconds,
        labels=labels,
    )
    workflow.updated_at = workflow.created_at
    audit.sign_head(workflow)  # a new head: INIT, no audit row yet
    tasks = _tasks(workflow, definition_obj, specs)
    # One look-up (the holds' unique index): a held workflow is paused in the transaction
    # that inserts it, so that no worker sees it unpaused. One created while its hold is
    # being set may miss it: recovery pauses it (services.holds.sweep_targets).
    hold = Hold.objects.covering(definition, concurrency_key).first()
    # Only a repeated idempotency key can break a constraint: then a savepoint keeps an
    # enclosing transaction usable for looking up the workflow that has the key.
    try:
        with transaction.atomic() if idempotency_key or hold else contextlib.nullcontext():
            if start and any(task.phase == State.PREPARE for task in tasks):
                _insert_started(workflow, tasks, actor)
            else:
                with transaction.atomic():
                    statements.create(workflow, tasks)
                    if start:  # a definition without PREPARE work: `start` moves on at once
                        fire(workflow, "start", actor)
            if hold is not None and not workflow.pause_refusal():  # (it may have ended at once)
                hold_new(workflow, hold)
    except IntegrityError:
        # Another request with the same idempotency key committed first.
        existing = idempotency_key and _existing_for_key(idempotency_key, actor, fingerprint)
        if not existing:
            raise
        return existing, False
    return workflow, True


def _scope(actor: Actor) -> str:
    return str(actor.user.pk) if actor.user else ""


def _existing_for_key(key: str, actor: Actor, fingerprint: str) -> Workflow | None:
    """The workflow that `actor`'s user (keys are scoped to their creator) created with
    `key`; IdempotencyConflict when that was for a different request."""
    existing = Workflow.objects.filter(idempotency_key=key, idempotency_scope=_scope(actor)).first()
    if existing and existing.fingerprint != fingerprint:
        raise IdempotencyConflict(existing)
    return existing


UPDATABLE_FIELDS = ("name", "definition", "mode", "input", "tasks", "callback_url", "labels")


def workflow_update(workflow_id, *, actor: Actor, **changes) -> Workflow:
    """Change a workflow that has not started: its name, definition, mode, input or tasks.
    Given tasks replace the EXECUTE tasks; a new definition brings its own PREPARE and
    VALIDATE handlers; callback_url may change too ("" for none), and labels (replaced whole)."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    callback_url = changes.pop("callback_url", None)
    if callback_url is not None:
        callback_url = validate_callback_url(callback_url)
    labels = changes.pop("labels", None)
    if labels is not None:
        labels = labels_for(None, labels)  # checked as at create, with no definition's beneath
    with changing(workflow_id, "update") as workflow:
        if workflow.state != State.INIT:
            raise InvalidTransition(
                workflow, "update", f"cannot update a workflow in state {workflow.state}: only one not yet started"
            )
        current = {field: getattr(workflow, field) for field in ("name", "mode", "input")}
        current["definition"] = f"{workflow.definition}@{workflow.definition_version}"
        current["tasks"] = list(
            workflow.tasks.filter(phase=State.EXECUTE).values(
                "name", "type", "params", "max_attempts", "timeout", "after"
            )
        )
        merged = {**current, **changes}
        definition, specs = validate_request(**merged)
        for field in ("name", "mode", "input"):
            setattr(workflow, field, merged[field])
        workflow.definition, workflow.definition_version = definition.key, definition.version
        if callback_url is not None:
            workflow.callback_url = callback_url
        if labels is not None:
            workflow.labels = labels
        workflow.save()
        if "tasks" in changes or "definition" in changes:
            workflow.tasks.all().delete()
            _create_tasks(workflow, definition, specs)
    return workflow


# --- Transitions -----------------------------------------------------------------------
