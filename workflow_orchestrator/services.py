"""The engine: every state change of a workflow goes through one of these functions.

Each one runs in `transaction.atomic()`, locks the workflow row, fires the django-fsm
transition, and commits it with `_commit_change`: the workflow row, its audit row (made
by `Transition.objects.build`) and the next phase's tasks are written together, and
their jobs are sent with the change (`_enqueue`), so that a job never sees a rolled-back
row and an audit row exists exactly when its state change was committed.

The exception is the hot path (`task_claim`, `task_record`): a worker records a success
and, when it ended a phase, fires the next transition without a lock, as a
compare-and-set on the workflow's chain head (workflow_orchestrator.statements), which loses to any
change made meanwhile. What each step costs the database is pinned by tests.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from graphlib import CycleError, TopologicalSorter
from itertools import groupby
from operator import attrgetter
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from . import audit, logs, metrics, queue, statements, values, webhooks
from .attempts import ended
from .backoff import backoff
from .conf import app_settings
from .models import (
    ENDING_STATES,
    PHASE_EVENTS,
    PHASES,
    Actor,
    BrokenChain,
    State,
    Task,
    Transition,
    Workflow,
    WorkflowDeletion,
)
from .registry import UnknownDefinition, UnknownTaskType, get_definition, get_task_type
from .signals import send_transitioned_on_commit

logger = logging.getLogger(__name__)
Status = Task.Status
RESERVED_TASK_NAMES = {"prepare", "validate"}
MAX_TASKS = 1000
MAX_TASK_ATTEMPTS = 100
MAX_TASK_TIMEOUT = 7 * 24 * 3600


class WorkflowError(Exception):
    """A request the workflow cannot honour in its current state."""


# What a user can do to a workflow (the transitions that end a phase, and `fail`, are the
# engine's own).
ACTIONS = ("start", "next", "retry", "cancel", "delete")


def available_actions(workflow: Workflow, *, may_change: bool = True, may_delete: bool = True) -> list[str]:
    """The ACTIONS the service functions below would accept for `workflow` now, from a
    caller who may change it and (`may_delete`) delete it. A workflow whose head is not
    signed can only be deleted (see AuditBroken)."""
    state = workflow.state
    may_change = may_change and audit.head_problem(workflow) is None
    allowed = {
        "start": state == State.INIT,
        "next": workflow.mode == Workflow.Mode.MANUAL and state == State.INIT or is_waiting_for_next(workflow),
        "retry": state == State.FAILED,
        "cancel": state in (State.INIT, *PHASES, State.FAILED),
    }
    actions = [action for action, ok in allowed.items() if ok and may_change]
    return [*actions, "delete"] if may_delete and state not in PHASES else actions


def is_waiting_for_next(workflow: Workflow) -> bool:
    """A manual workflow whose phase's work is done: nothing runs until someone fires `next`."""
    return workflow.mode == Workflow.Mode.MANUAL and workflow.state in PHASES and not workflow.unfinished


class InvalidTransition(WorkflowError):
    def __init__(self, workflow: Workflow, event: str, message: str = ""):
        self.workflow = workflow
        self.event = event
        self.state = workflow.state
        self.allowed = available_actions(workflow)
        super().__init__(message or f"cannot {event} a workflow in state {workflow.state}")


class AuditBroken(InvalidTransition):
    """The workflow's audit chain does not verify: the engine writes nothing over it (no
    transition, no task of it moved on by recovery) until it verifies again. Reported in
    BrokenChain, which /metrics counts and the admin's overview shows."""

    def __init__(self, workflow: Workflow, event: str, link: audit.BrokenLink):
        self.link = link
        self.reported = False
        super().__init__(
            workflow,
            event,
            f"cannot {event} workflow {workflow.pk}: its audit chain does not verify ({link}); it is left as it "
            "is: see `manage.py workflow verify`",
        )


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
    unknown = set(spec) - {"name", "type", "params", "max_attempts", "timeout", "after"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    task_type = spec.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("type is required")
    _storable_text(task_type, "type")
    get_task_type(task_type)
    name = spec.get("name") or f"{task_type}-{index + 1}"
    if not isinstance(name, str) or len(name) > 200:
        raise ValueError("name must be a string of at most 200 characters")
    _storable_text(name, "name")
    if name in RESERVED_TASK_NAMES:
        raise ValueError(f"name {name!r} is reserved for the {name.upper()} phase")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise ValueError("params must be an object")
    if problem := values.json_problem(params, "params"):
        raise ValueError(problem)
    max_attempts = spec.get("max_attempts", app_settings.ORCH_MAX_ATTEMPTS)
    timeout = spec.get("timeout", app_settings.ORCH_TASK_TIMEOUT)
    after = spec.get("after", [])
    if not isinstance(after, list) or not all(isinstance(upstream, str) for upstream in after):
        raise ValueError("after must be a list of task names")
    return {
        "name": name,
        "type": task_type,
        "params": params,
        "after": list(dict.fromkeys(after)),
        "max_attempts": _number(max_attempts, "max_attempts", whole=True, low=1, high=MAX_TASK_ATTEMPTS),
        "timeout": _number(timeout, "timeout", whole=False, low=0.1, high=MAX_TASK_TIMEOUT),
    }


def _storable_text(text: str, field: str) -> None:
    if problem := values.text_problem(text):
        raise ValueError(f"{field} {problem}")


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
    if not errors:
        errors += _dependency_errors(tasks)
    if errors:
        raise ValueError("; ".join(errors))
    return tasks


def _dependency_errors(tasks: list[dict]) -> list[str]:
    """What is wrong with the tasks' `after`: unknown names, a task naming itself, cycles."""
    names = {task["name"] for task in tasks}
    errors = []
    for task in tasks:
        if task["name"] in task["after"]:
            errors.append(f"task {task['name']}: after names the task itself")
        unknown = [upstream for upstream in task["after"] if upstream not in names]
        if unknown:
            errors.append(f"task {task['name']}: after names unknown tasks: {', '.join(unknown)}")
    if errors:
        return errors
    try:
        TopologicalSorter({task["name"]: task["after"] for task in tasks}).prepare()
    except CycleError as cycle:
        return [f"tasks depend on each other in a cycle: {' → '.join(cycle.args[1])}"]
    return []


def _phase_task(workflow: Workflow, phase: State, task_type: str, position: int) -> Task:
    return Task(
        workflow=workflow,
        phase=phase,
        position=position,
        name=phase.lower(),
        type=task_type,
        max_attempts=app_settings.ORCH_MAX_ATTEMPTS,
        timeout=app_settings.ORCH_TASK_TIMEOUT,
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
        task.status, task.attempt, task.queued_at = Status.QUEUED, 1, now
    workflow.unfinished = len(first)
    with _with_its_jobs():
        _enqueue(_jobs(statements.create(workflow, tasks, row)))
        send_transitioned_on_commit(copy.copy(workflow), row)


def _fingerprint(**request) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def validate_request(name, definition, mode, input, tasks) -> tuple:
    """The definition and normalized tasks of a workflow request; ValidationError naming each bad field."""
    errors = {}
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        errors["name"] = ["name is required: a string of at most 200 characters"]
    elif problem := values.text_problem(name):
        errors["name"] = [f"name {problem}"]
    try:
        definition_obj = get_definition(definition)
    except UnknownDefinition as exc:
        errors["definition"] = [str(exc.args[0])]
        definition_obj = None
    if mode not in Workflow.Mode.values:
        errors["mode"] = [f"mode must be one of {', '.join(Workflow.Mode.values)}"]
    if not isinstance(input, dict):
        errors["input"] = ["input must be a JSON object"]
    elif problem := values.json_problem(input, "input"):
        errors["input"] = [problem]
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
    callback_url: str | None = None,
    start: bool = False,
    schedule=None,
) -> tuple[Workflow, bool]:
    """Create a workflow with its tasks (and start it when asked); `schedule`, the
    WorkflowSchedule that starts it, if one does.

    Returns the workflow and whether it was created: a repeated idempotency key with the
    same request returns the existing workflow; with a different one it raises
    IdempotencyConflict. Bad input raises ValidationError and stores nothing.
    """
    input = {} if input is None else input
    definition_obj, specs = validate_request(name, definition, mode, input, tasks)
    if idempotency_key is not None:
        _check_idempotency_key(str(idempotency_key))
    callback_url = webhooks.validate_callback_url(callback_url)
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
    )
    if idempotency_key:
        existing = _existing_for_key(idempotency_key, actor, fingerprint)
        if existing:
            return existing, False
    workflow = Workflow(
        name=name,
        definition=definition,
        mode=mode,
        input=input,
        idempotency_key=idempotency_key or None,
        idempotency_scope=_scope(actor) if idempotency_key else "",
        fingerprint=fingerprint,
        callback_url=callback_url,
        created_by=actor.user,
        schedule=schedule,
    )
    workflow.updated_at = workflow.created_at
    audit.sign_head(workflow)  # a new head: INIT, no audit row yet
    tasks = _tasks(workflow, definition_obj, specs)
    # Only a repeated idempotency key can break a constraint: then a savepoint keeps an
    # enclosing transaction usable for looking up the workflow that has the key.
    try:
        with transaction.atomic() if idempotency_key else contextlib.nullcontext():
            if start and any(task.phase == State.PREPARE for task in tasks):
                _insert_started(workflow, tasks, actor)
            else:
                with transaction.atomic():
                    statements.create(workflow, tasks)
                    if start:  # a definition without PREPARE work: `start` moves on at once
                        _fire(workflow, "start", actor)
    except IntegrityError:
        # Another request with the same idempotency key committed first.
        existing = idempotency_key and _existing_for_key(idempotency_key, actor, fingerprint)
        if not existing:
            raise
        return existing, False
    return workflow, True


def _check_idempotency_key(key: str) -> None:
    longest = Workflow._meta.get_field("idempotency_key").max_length
    problem = values.text_problem(key) or (
        f"must be at most {longest} characters (it has {len(key)})" if len(key) > longest else None
    )
    if problem:
        raise ValidationError({"idempotency_key": [f"idempotency_key {problem}"]})


def _scope(actor: Actor) -> str:
    return str(actor.user.pk) if actor.user else ""


def _existing_for_key(key: str, actor: Actor, fingerprint: str) -> Workflow | None:
    """The workflow that `actor`'s user (keys are scoped to their creator) created with
    `key`; IdempotencyConflict when that was for a different request."""
    existing = Workflow.objects.filter(idempotency_key=key, idempotency_scope=_scope(actor)).first()
    if existing and existing.fingerprint != fingerprint:
        raise IdempotencyConflict(existing)
    return existing


UPDATABLE_FIELDS = ("name", "definition", "mode", "input", "tasks", "callback_url")


def workflow_update(workflow_id, *, actor: Actor, **changes) -> Workflow:
    """Change a workflow that has not started: its name, definition, mode, input or tasks.
    Given tasks replace the EXECUTE tasks; a new definition brings its own PREPARE and
    VALIDATE handlers; callback_url may change too ("" for none)."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    callback_url = changes.pop("callback_url", None)
    if callback_url is not None:
        callback_url = webhooks.validate_callback_url(callback_url)
    with _changing(workflow_id, "update") as workflow:
        if workflow.state != State.INIT:
            raise InvalidTransition(
                workflow, "update", f"cannot update a workflow in state {workflow.state}: only one not yet started"
            )
        current = {field: getattr(workflow, field) for field in ("name", "definition", "mode", "input")}
        current["tasks"] = list(
            workflow.tasks.filter(phase=State.EXECUTE).values(
                "name", "type", "params", "max_attempts", "timeout", "after"
            )
        )
        merged = {**current, **changes}
        definition, specs = validate_request(**merged)
        for field in ("name", "definition", "mode", "input"):
            setattr(workflow, field, merged[field])
        if callback_url is not None:
            workflow.callback_url = callback_url
        workflow.save()
        if "tasks" in changes or "definition" in changes:
            workflow.tasks.all().delete()
            _create_tasks(workflow, definition, specs)
    return workflow


# --- Transitions -----------------------------------------------------------------------


def _locked(workflow_id: UUID | str) -> Workflow:
    # Without the lock, two requests could both see a state that allows their change and
    # both make it (a `next` racing a worker, two retries); a worker ending a phase, which
    # takes no lock, loses any such race through the compare-and-set in
    # statements.transition.
    return Workflow.objects.select_for_update().get(pk=workflow_id)


def _check_chain(workflow: Workflow, event: str, *, whole: bool = True) -> None:
    """Raise AuditBroken unless the workflow's audit chain verifies: `whole`, every row
    (one query); otherwise only the head on its row, which costs no query."""
    link = audit.verify(workflow) if whole else audit.head_problem(workflow)
    if link:
        raise AuditBroken(workflow, event, link)


def _report(broken: AuditBroken) -> None:
    """Log and keep the finding that a workflow's chain is broken (once per refusal)."""
    if broken.reported:
        return
    broken.reported = True
    workflow_id = broken.workflow.pk
    logger.error(
        "workflow %s: audit chain broken, %s refused, the workflow is left as it is: %s",
        workflow_id,
        broken.event,
        broken.link,
        extra=logs.fields(workflow_id=workflow_id, event="audit_broken"),
    )
    BrokenChain.objects.report(workflow_id=workflow_id, problem=str(broken.link), refused=broken.event)


@contextlib.contextmanager
def _changing(workflow_id, event: str, *, whole_chain: bool = True):
    """A transaction that holds the workflow's lock, entered only if its audit chain
    verifies (`whole_chain`: every row; otherwise the head on its row). A refusal is
    reported once the transaction has been rolled back, so that the report stays."""
    try:
        with transaction.atomic():
            workflow = _locked(workflow_id)
            _check_chain(workflow, event, whole=whole_chain)
            yield workflow
    except AuditBroken as broken:
        _report(broken)
        raise


class ConcurrentChange(WorkflowError):
    """The workflow changed between reading it and writing a transition computed from it."""

    def __init__(self, message: str, *, recorded: bool = True):
        super().__init__(message)
        self.recorded = recorded  # a success given with the transition was recorded all the same


def _commit_change(
    workflow: Workflow,
    source: str,
    event: str,
    actor: Actor,
    *,
    reason="",
    data=None,
    inline=None,
    succeeded=None,
    phase_results=statements.UNCHANGED,
) -> Task | None:
    """Write the change `workflow` has made in memory: the workflow row, its audit row and,
    when it entered a phase, that phase's tasks' next attempts (one statement on
    PostgreSQL, with `succeeded` the success of the task that ended the phase too), and
    their jobs (see _enqueue). Returns the task claimed for `inline`."""
    now = timezone.now()
    previous_seq, previous_mac = workflow.last_seq, workflow.head_mac
    row = Transition.objects.build(
        workflow=workflow, source=source, event=event, actor=actor, reason=reason, data=data, now=now
    )
    with _with_its_jobs():
        written = statements.transition(
            workflow=workflow,
            row=row,
            previous_seq=previous_seq,
            previous_mac=previous_mac,
            now=now,
            queue_phase=workflow.state in PHASES,
            fresh_budget=event == "retry",
            inline=inline,
            succeeded=succeeded,
            phase_results=phase_results,
        )
        if written.unfinished is not None:
            workflow.unfinished, workflow.updated_at = written.unfinished, now
            _after_change(workflow, row, written)
        _enqueue(_jobs(written.queued) + _webhook_jobs(workflow, row, written))
    if written.unfinished is None:  # outside the transaction: a success recorded with it stays
        raise ConcurrentChange(
            f"workflow {workflow.pk} changed while {event} was being written", recorded=written.recorded
        )
    task = (data or {}).get("task")
    logger.info(
        "workflow %s: %s, %s -> %s",
        workflow.pk,
        event,
        source,
        workflow.state,
        extra=logs.fields(workflow_id=workflow.pk, event=event, task_id=task, attempt=(data or {}).get("attempt")),
    )
    if written.inline is None:
        return None
    written.inline.workflow_row = statements.WorkflowRow.of(workflow)
    return written.inline.instance()


def _after_change(workflow: Workflow, row: Transition, written: statements.Written) -> None:
    """What follows a change once it commits: the workflow_transitioned signal, with the
    workflow as this change left it (the engine may move it on before the commit)."""
    workflow.callback_url = written.callback_url  # returned by the change: never deferred
    send_transitioned_on_commit(copy.copy(workflow), row)


def _webhook_jobs(workflow: Workflow, row: Transition, written: statements.Written) -> list[queue.Job]:
    """The call of the workflow's callback_url, when the change ended it; the URL comes
    back from the change's own statement, so a change that does not end a workflow, or
    one without a URL, costs nothing more."""
    if written.unfinished is None or not written.callback_url or workflow.state not in ENDING_STATES:
        return []
    return [queue.webhook_job(workflow.pk, row.seq, 1)]


def _fire(
    workflow: Workflow,
    event: str,
    actor: Actor,
    *,
    reason="",
    data=None,
    inline=None,
    succeeded=None,
    phase_results=statements.UNCHANGED,
    **arguments,
):
    """Fire the django-fsm transition `event` (with its `arguments`, such as a fail's
    error) and commit it (see _commit_change); a phase it enters with nothing left to run
    is finished at once. Returns the task claimed for `inline`, if any."""
    source = workflow.state
    _check_chain(workflow, event, whole=False)  # the last guard of every path, the hot one included
    try:
        getattr(workflow, event)(**arguments)
    except TransitionNotAllowed:
        raise InvalidTransition(workflow, event) from None
    claimed = _commit_change(
        workflow,
        source,
        event,
        actor,
        reason=reason,
        data=data,
        inline=inline,
        succeeded=succeeded,
        phase_results=phase_results,
    )
    if workflow.state in PHASES and workflow.unfinished == 0:
        nothing = statements.GATHER if workflow.state == State.EXECUTE else json.dumps(None)
        return _finish_phase(workflow, actor, nothing, inline=inline)
    return claimed


def _send(jobs: list[queue.Job]) -> None:
    try:
        queue.enqueue(jobs)
    except Exception as exc:
        # The state change is committed and its tasks are QUEUED in the database, which is
        # the source of truth: recovery re-sends their jobs once the broker answers again.
        # An outage is one line; its traceback is for debugging.
        reason = " ".join(str(exc).split())
        logger.warning("could not reach the broker (%s): %d job(s) will be re-sent by recovery", reason, len(jobs))
        logger.debug("the broker's error", exc_info=True)


def _enqueue(jobs: list[queue.Job]) -> None:
    """Send the jobs of a change. The ORM broker keeps them in this database: they go in
    the change's own transaction, so that a change rolled back takes its jobs with it
    and one committed cannot lose them. Any other broker gets them once the change is
    committed, so that a job never sees a row that was rolled back."""
    if not jobs:
        return
    if queue.in_database():
        queue.enqueue(jobs)
    else:
        transaction.on_commit(lambda: _send(jobs))


def _jobs(queued: list[statements.ClaimedTask]) -> list[queue.Job]:
    return [queue.task_job(task.values["id"], task.values["attempt"], task.values["timeout"]) for task in queued]


def _with_its_jobs():
    """A transaction for a change and its jobs, when the jobs live in the database too;
    a single statement needs none."""
    return transaction.atomic(savepoint=False) if queue.in_database() else contextlib.nullcontext()


def _queue_tasks(
    tasks: list[Task], *, charge: bool = True, eta=None, error: str | None = None, attempts: list | None = None
) -> None:
    """Move tasks to QUEUED for their next attempt (one UPDATE) and send their jobs (see
    _enqueue). `charge=False` keeps the attempt from counting against the budget (a
    handed-back attempt)."""
    changes = {
        "status": Status.QUEUED,
        "attempt": F("attempt") + 1,
        "queued_at": eta or timezone.now(),
        "started_at": None,
        "finished_at": None,
        "lease_expires_at": None,
        "worker": "",
    }
    if not charge:
        changes["attempt_offset"] = F("attempt_offset") + 1
    if error is not None:
        changes["error"] = error
    if attempts is not None:
        changes["attempts"] = attempts
    Task.objects.filter(pk__in=[task.pk for task in tasks]).update(**changes)
    _enqueue([queue.task_job(task.pk, task.attempt + 1, task.timeout, eta) for task in tasks])


def _phase_results(workflow: Workflow):
    """The results of the current phase's tasks: by task name for EXECUTE, the one
    handler's result for PREPARE and VALIDATE."""
    rows = statements.results(workflow.pk, workflow.state)
    if workflow.state == State.EXECUTE:
        return dict(rows)
    results = [result for _, result in rows]
    return results[0] if len(results) == 1 else results or None


def _gathered(workflow: Workflow):
    """The current phase's results for a transition: EXECUTE's are gathered by its
    statement; PREPARE's and VALIDATE's are read here."""
    return statements.GATHER if workflow.state == State.EXECUTE else json.dumps(_phase_results(workflow))


def _finish_phase(workflow: Workflow, actor: Actor, phase_results, *, inline=None, succeeded=None) -> Task | None:
    """The current phase's work is done (or, with `succeeded`, will be with that success):
    add its results (JSON text, or statements.GATHER) to the workflow's and, in
    automatic mode, move on to the next phase. Returns the task claimed for `inline`."""
    if workflow.mode == Workflow.Mode.MANUAL:
        _keep_results(workflow.pk, workflow.state, workflow.last_seq)
        return None
    return _advance(workflow, actor, inline=inline, succeeded=succeeded, phase_results=phase_results)


def _keep_results(workflow_id, phase: str, last_seq: int) -> None:
    """A manual workflow waits for `next` with its phase's results in view."""
    with _changing(workflow_id, "keep its results", whole_chain=False) as workflow:
        if (workflow.state, workflow.last_seq) != (phase, last_seq):
            raise ConcurrentChange(f"workflow {workflow_id} changed while its {phase} results were being kept")
        workflow.results = {**workflow.results, phase: _phase_results(workflow)}
        workflow.save(update_fields=["results", "updated_at"])


def _advance(workflow: Workflow, actor: Actor, **commit) -> Task | None:
    return _fire(workflow, PHASE_EVENTS[workflow.state], actor, **commit)


def workflow_start(workflow_id, *, actor: Actor) -> Workflow:
    with _changing(workflow_id, "start") as workflow:
        _fire(workflow, "start", actor)
    return workflow


def workflow_next(workflow_id, *, actor: Actor) -> Workflow:
    """Manual mode: fire the next transition once the current phase's work is done."""
    with _changing(workflow_id, "next") as workflow:
        if workflow.mode != Workflow.Mode.MANUAL:
            raise InvalidTransition(workflow, "next", "next is only for workflows in manual mode")
        if workflow.state not in PHASE_EVENTS:
            raise InvalidTransition(workflow, "next", f"a workflow in state {workflow.state} has no next step")
        if workflow.state in PHASES and workflow.unfinished:
            raise InvalidTransition(workflow, "next", f"the {workflow.state} phase's work has not finished")
        _advance(workflow, actor)
    return workflow


def workflow_retry(workflow_id, *, actor: Actor) -> Workflow:
    """Resume a FAILED workflow at the phase that failed: tasks that succeeded are not
    run again, the others get a fresh budget of attempts."""
    with _changing(workflow_id, "retry") as workflow:
        _fire(workflow, "retry", actor, data={"phase": workflow.failed_phase})
    return workflow


def workflow_cancel(workflow_id, *, actor: Actor, reason: str = "") -> Workflow:
    """Cancel: tasks not yet running are cancelled at once; running ones see
    `ctx.cancelled()` and their late results change nothing."""
    if problem := values.text_problem(reason):
        raise ValidationError({"reason": [f"reason {problem}"]})
    with _changing(workflow_id, "cancel") as workflow:
        _fire(workflow, "cancel", actor, reason=reason)
        workflow.tasks.filter(status__in=[Status.PENDING, Status.QUEUED]).update(
            status=Status.CANCELLED, finished_at=timezone.now()
        )
    return workflow


def workflow_delete(workflow_id, *, actor: Actor) -> None:
    """Delete a workflow that is not running, with its tasks and history, and record the
    deletion (who, when, the workflow's final state and chain head) in the deletion log,
    in the same transaction."""
    with transaction.atomic():
        workflow = _locked(workflow_id)
        if workflow.is_running:
            raise InvalidTransition(
                workflow, "delete", f"cannot delete a workflow in state {workflow.state}: cancel it first"
            )
        # The log's head is taken last, so that deletions wait for one another only as
        # long as it takes to append a row and commit.
        metrics.count_deleted(workflow.pk)  # its history stays in the counters
        Workflow.objects.filter(pk=workflow.pk).delete()
        WorkflowDeletion.objects.record(workflow=workflow, actor=actor)


# --- Tasks (called by jobs) ------------------------------------------------------------


def _lease(now):
    return now + timedelta(seconds=app_settings.ORCH_LEASE_SECONDS)


def task_claim(task_id: int, attempt: int, *, worker: str) -> Task | None:
    """Take a queued attempt for this worker. None when another delivery of the same job
    got there first, or the attempt is no longer wanted."""
    now = timezone.now()
    claimed = statements.claim(task_id, attempt, worker=worker, now=now, lease=_lease(now))
    return claimed.instance() if claimed else None


def inline_claim(worker: str, max_timeout: float) -> statements.Inline:
    """Ask a transition to claim the entered phase's first task (if its timeout is at
    most `max_timeout`) for `worker`, which will run it itself."""
    return statements.Inline(worker=worker, lease=_lease(timezone.now()), max_timeout=max_timeout)


def task_heartbeat(task_id: int, attempt: int) -> bool:
    """Renew a running attempt's lease; False when the attempt was taken back."""
    lease = timezone.now() + timedelta(seconds=app_settings.ORCH_LEASE_SECONDS)
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
            now = timezone.now()
            outcome = "cancelled" if workflow.state == State.CANCELLED else "handed_back"
            Task.objects.filter(pk=task.pk).update(
                status=Status.CANCELLED,
                finished_at=now,
                lease_expires_at=None,
                attempts=_end_attempt(task, outcome, now=now),
            )
            return True
        _queue_tasks([task], charge=False, attempts=_end_attempt(task, "handed_back"))
    return True


def workflow_is_cancelled(workflow_id) -> bool:
    return Workflow.objects.filter(pk=workflow_id, state=State.CANCELLED).exists()


def backoff_delay(failed_attempts: int) -> float:
    """The wait before a step's next attempt: ORCH_RETRY_BACKOFF doubling, at most
    ORCH_RETRY_BACKOFF_MAX, with jitter."""
    return backoff(
        failed_attempts, base=app_settings.ORCH_RETRY_BACKOFF, cap=app_settings.ORCH_RETRY_BACKOFF_MAX, jitter=True
    )


@dataclass
class Recorded:
    recorded: bool  # False: a second delivery, or an attempt taken back by recovery
    next_task: Task | None = None  # claimed for the worker by the transition this outcome caused


def task_record(task: Task, *, stored: str | None = None, error: str | None = None, inline=None):
    """Record the outcome of one attempt of `task` (claimed), once, and move the workflow on.

    A success is its result as the JSON text to store (`stored`, see runner.storable;
    None for no result); a failure is `error`. A result that arrives after the workflow
    left the task's phase (cancelled, failed) is recorded and changes nothing. With `inline`
    (services.inline_claim), a transition this outcome causes may claim the next phase's
    first task for the same worker.

    A success that ends its phase moves the workflow on without a lock: the change is
    computed from the workflow's row as a statement returned it, and written as a
    compare-and-set on its chain head, which loses to any change made meanwhile (a
    cancel, recovery), and then this worker stops there. When the claim already showed
    this task to be the last of its phase, the success and the change are one statement.
    A workflow whose head does not verify is not moved on (AuditBroken): the success alone
    is recorded.
    """
    if error is not None:
        return Recorded(_record_failure(task.pk, task.attempt, error, task.workflow_id))
    now = timezone.now()
    snapshot = task.snapshot
    if snapshot is not None and snapshot.last_of_phase(task.phase) and _head_signed(snapshot, task.workflow_id):
        succeeded = statements.Succeeded(task.pk, task.attempt, stored)
        workflow = snapshot.workflow(task.workflow_id)
        try:
            return Recorded(
                True, _finish_phase(workflow, Actor.WORKER, _results(task, stored), inline=inline, succeeded=succeeded)
            )
        except ConcurrentChange as lost:
            if not lost.recorded:
                return Recorded(False)
            fan_in = statements.count_out(task.workflow_id, task.phase)  # recorded: count it out as usual
    else:
        # A task others wait for queues those it releases, with their jobs (see _enqueue),
        # and hands one of them to this worker (`inline`).
        with _with_its_jobs() if task.dependents else contextlib.nullcontext():
            fan_in = statements.succeed(
                task.pk,
                task.attempt,
                workflow_id=task.workflow_id,
                result=stored,
                now=now,
                name=task.name,
                dependents=task.dependents,
                inline=inline,
            )
            if fan_in is None:
                return Recorded(False)
            _enqueue(_jobs(fan_in.released))
        if fan_in.inline is not None:
            return Recorded(True, fan_in.inline.instance())
    if not fan_in.phase_done:
        return Recorded(True)
    workflow = fan_in.workflow_row.workflow(task.workflow_id)
    try:
        return Recorded(True, _finish_phase(workflow, Actor.WORKER, _results(task, stored), inline=inline))
    except ConcurrentChange:
        return Recorded(True)
    except AuditBroken as broken:
        _report(broken)
        return Recorded(True)


def _head_signed(row: statements.WorkflowRow, workflow_id) -> bool:
    return audit.head_problem(row.workflow(workflow_id)) is None


def _results(task: Task, stored: str | None):
    """The results of the phase `task` ends: PREPARE and VALIDATE have one task, whose
    result is the phase's; EXECUTE's are gathered by the transition's statement."""
    return statements.GATHER if task.phase == State.EXECUTE else stored


def task_finished(task_id: int, attempt: int, *, result=None, error: str | None = None) -> bool:
    """Record the outcome of one attempt (for callers that hold no claimed Task); False
    when it was not recorded."""
    task = Task.objects.filter(pk=task_id).only("pk", "workflow_id", "phase", "name").first()
    if task is None:
        return False
    task.attempt = attempt
    if error is not None:
        return task_record(task, error=error).recorded
    return task_record(task, stored=None if result is None else json.dumps(result)).recorded


def _record_failure(task_id: int, attempt: int, error: str, workflow_id) -> bool:
    """A failed attempt, recorded under the workflow's lock; not recorded (False) when the
    attempt no longer holds its task, or the workflow's head does not verify (the attempt
    then stays as it is, its lease runs out and recovery leaves it too)."""
    try:
        with _changing(workflow_id, "record a failure", whole_chain=False) as workflow:
            task = Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt).first()
            if task is None:
                return False
            _attempt_failed(workflow, task, error, Actor.WORKER)
    except AuditBroken:
        return False
    return True


def _outcome_of(error: str) -> str:
    """How a failed attempt ended (see attempts.OUTCOMES), from its error."""
    lines = error.strip().splitlines()
    return "timed_out" if lines and lines[-1].startswith("TaskTimeout:") else "failed"


def _end_attempt(task: Task, outcome: str, error: str = "", *, now=None) -> list:
    """`task.attempts` with its latest attempt ended `now` (for an UPDATE). Give the time
    written to the task's finished_at: the metrics find ended attempts by it."""
    attempts = list(task.attempts or [])
    if attempts:
        attempts[-1] = ended(attempts[-1], outcome, now or timezone.now(), error)
    return attempts


def _attempt_failed(workflow: Workflow, task: Task, error: str, actor: Actor, outcome: str = "") -> None:
    """A failed attempt: queue the next one after a backoff, or, with the budget spent,
    fail the task and its workflow."""
    cancelled = workflow.state == State.CANCELLED
    task.error = error
    task.finished_at, task.lease_expires_at = timezone.now(), None
    task.attempts = _end_attempt(
        task, "cancelled" if cancelled else outcome or _outcome_of(error), error, now=task.finished_at
    )
    in_phase = workflow.state == task.phase
    if in_phase and task.attempts_left > 0:
        eta = timezone.now() + timedelta(seconds=backoff_delay(task.attempt - task.attempt_offset))
        _queue_tasks([task], eta=eta, error=error, attempts=task.attempts)
        return
    # An attempt that ends after its workflow was cancelled ends the task as CANCELLED.
    task.status = Status.CANCELLED if cancelled else Status.FAILED
    task.save(update_fields=["status", "error", "finished_at", "lease_expires_at", "attempts"])
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
    """Take back attempts whose worker stopped heartbeating (killed, machine lost), re-send
    jobs of attempts queued long ago whose job was lost by the broker, and move on
    workflows whose phase's work is done but whose worker died before it moved them on.

    Each workflow's whole audit chain is verified before anything of it is touched: one
    that does not verify is left as it is, reported (BrokenChain) and listed under
    `audit_broken`. Findings of earlier runs whose chains verify again are cleared."""
    now = now or timezone.now()
    run = _Recovery()
    _clear_mended_chains()
    expired = list(
        Task.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now).values_list("pk", "workflow_id", "attempt")
    )
    for task_id, workflow_id, attempt in expired:
        run.unless_broken(workflow_id, _take_back, task_id, attempt, now)
    stale_before = now - timedelta(seconds=app_settings.ORCH_REQUEUE_SECONDS)
    stale = Task.objects.filter(status=Status.QUEUED, queued_at__lt=stale_before).order_by("workflow_id", "pk")
    by_workflow = groupby(stale.only("pk", "workflow_id", "attempt", "timeout"), key=attrgetter("workflow_id"))
    requeued = sum(run.unless_broken(workflow_id, _requeue, list(tasks), now) for workflow_id, tasks in by_workflow)
    done = Workflow.objects.filter(state__in=PHASES, mode=Workflow.Mode.AUTO, unfinished=0).values_list("pk", flat=True)
    moved_on = sum(run.unless_broken(workflow_id, _move_on) for workflow_id in list(done))
    return {
        "expired": len(expired),
        "requeued": requeued,
        "moved_on": moved_on,
        "audit_broken": {str(workflow_id): str(broken.link) for workflow_id, broken in run.broken.items()},
        "webhooks_taken_back": webhooks.take_back_stalled(now),
    }


class _Recovery:
    """One run of recovery: the workflows it found with a broken audit chain, each met
    once, however many of its tasks recovery would have touched."""

    def __init__(self):
        self.broken: dict = {}

    def unless_broken(self, workflow_id, step, *args) -> int:
        """`step(workflow_id, *args)`, what it recovered; 0 when the workflow's chain was
        found broken (it is left as it is) or the workflow is gone."""
        if workflow_id in self.broken:
            return 0
        try:
            return step(workflow_id, *args)
        except AuditBroken as broken:
            self.broken[workflow_id] = broken
        except Workflow.DoesNotExist:  # deleted meanwhile: nothing to recover
            pass
        return 0


def _clear_mended_chains() -> None:
    """Forget the findings of chains that verify again."""
    for finding in BrokenChain.objects.select_related("workflow"):
        if audit.verify(finding.workflow) is None:
            BrokenChain.objects.filter(pk=finding.pk, found_at=finding.found_at).delete()
            logger.info(
                "workflow %s: its audit chain verifies again",
                finding.pk,
                extra=logs.fields(workflow_id=finding.pk, event="audit_mended"),
            )


def _take_back(workflow_id, task_id: int, attempt: int, now) -> int:
    with _changing(workflow_id, "recover") as workflow:
        task = Task.objects.filter(
            Q(lease_expires_at__lt=now), pk=task_id, status=Status.RUNNING, attempt=attempt
        ).first()
        if task:  # still expired now that we hold the lock
            worker = task.worker or "unknown worker"
            error = f"lease expired: {worker} stopped heartbeating (attempt {attempt})"
            logger.warning(
                "recovery: task %s, %s",
                task_id,
                error,
                extra=logs.fields(workflow_id=workflow_id, task_id=task_id, attempt=attempt, event="lease_expired"),
            )
            _attempt_failed(workflow, task, error, Actor.SYSTEM, outcome="lease_expired")
            return 1
    return 0


def _requeue(workflow_id, tasks: list[Task], now) -> int:
    """Re-send the jobs of a workflow's attempts queued long ago, whose broker lost them:
    under one lock and one check of its chain. Returns how many; an attempt claimed
    meanwhile is not one (a duplicate of a job that was not lost after all loses its
    claim and does nothing)."""
    with _changing(workflow_id, "recover"):
        lost = [
            task
            for task in tasks
            if Task.objects.filter(pk=task.pk, status=Status.QUEUED, attempt=task.attempt).update(queued_at=now)
        ]
        _enqueue([queue.task_job(task.pk, task.attempt, task.timeout) for task in lost])
    for task in lost:
        logger.info(
            "recovery: task %s, attempt %s re-sent (its job was lost)",
            task.pk,
            task.attempt,
            extra=logs.fields(workflow_id=workflow_id, task_id=task.pk, attempt=task.attempt, event="requeued"),
        )
    return len(lost)


def _move_on(workflow_id) -> int:
    """A worker records the success that ends a phase and then, in a second statement,
    fires the transition; killed in between, it leaves an automatic workflow whose phase
    is done and that nothing moves on. (Caught in the act instead, the worker's
    compare-and-set loses to this, and nothing happens twice.)"""
    with _changing(workflow_id, "recover") as workflow:
        if workflow.state in PHASES and workflow.mode == Workflow.Mode.AUTO and workflow.unfinished == 0:
            _finish_phase(workflow, Actor.SYSTEM, _gathered(workflow))
            return 1
    return 0


def workflow_progress(workflow: Workflow) -> dict:
    """Tasks done (succeeded) out of all the workflow's tasks."""
    counts = workflow.tasks.aggregate(total=Count("pk"), done=Count("pk", filter=Q(status=Status.SUCCEEDED)))
    return {"done": counts["done"], "total": counts["total"]}
