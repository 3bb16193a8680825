"""A task's attempts: claimed by a worker, kept alive, handed back, and their outcomes
recorded, which moves the workflow on (the hot path: see `task_record`)."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from .. import audit, queue, statements
from ..attempts import ended
from ..backoff import backoff
from ..conf import app_settings
from ..models import TASK_TRANSITIONS, Actor, State, Task, Workflow, task_status_after
from .exceptions import AuditBroken, ConcurrentChange
from .transitions import changing, finish_phase, fire, locked, queue_tasks, report_broken, started
from .validation import MAX_TASK_TIMEOUT

logger = logging.getLogger("workflow_orchestrator.services")
Status = Task.Status


def _lease(now):
    return now + timedelta(seconds=app_settings.ORCH_LEASE_SECONDS)


def task_claim(
    task_id: int | None, attempt: int | None, budget: float | None = None, *, worker: str, exact: bool | None = None
) -> Task | None:
    """Take a task for this worker: attempt `attempt` of `task_id`; or, not `exact` (the
    default without a `task_id`), the first ready task in the claim's order (see
    sql/*.sql: not paused, within its key's limits, priority, turns, age) whose timeout is
    at most `budget`, where `task_id`'s attempt, if given, counts as due (a delivery of
    its job). None when nothing is claimable: another delivery got there first, the
    attempt is no longer wanted, its workflow is paused or its key is at its limits.

    A claim that fills its key's rate window sends the deliveries that will start the
    next window's tasks, due when it opens: waiting for a window costs nothing meanwhile."""
    now, budget = timezone.now(), MAX_TASK_TIMEOUT if budget is None else budget
    exact = task_id is not None if exact is None else exact
    claimed = statements.claim(task_id, attempt, worker=worker, now=now, lease=_lease(now), budget=budget, exact=exact)
    return None if claimed is None else started(claimed)


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
        workflow = locked(workflow_id)
        task = Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt).first()
        if task is None:
            return False
        if workflow.state != task.phase:  # cancelled or failed meanwhile: nothing to hand back
            now = timezone.now()
            outcome = "cancelled" if workflow.state == State.CANCELLED else "handed_back"
            Task.objects.filter(pk=task.pk).update(
                status=task_status_after("end_cancelled", task.status),
                finished_at=now,
                lease_expires_at=None,
                attempts=end_attempt(task, outcome, now=now),
            )
            return True
        queue_tasks([task], charge=False, attempts=end_attempt(task, "handed_back"))
    return True


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

    A success that ends its phase moves the workflow on without holding a lock (its
    `succeed` statement locks the workflow's row only to count it out): the change is
    computed from the workflow's row as that statement returned it, and written as a
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
                True, finish_phase(workflow, Actor.WORKER, _results(task, stored), inline=inline, succeeded=succeeded)
            )
        except ConcurrentChange as lost:
            if not lost.recorded:
                return Recorded(False)
            fan_in = statements.count_out(task.workflow_id, task.phase)  # recorded: count it out as usual
    else:
        # A task others wait for queues those it releases, with their jobs (sent with the
        # change: queue.send_with_change), and hands one of them to this worker (`inline`);
        # one of a workflow with max_parallel queues those waiting for the slot it frees.
        gated = _gated(task)
        with queue.change_transaction() if task.dependents or gated else contextlib.nullcontext():
            fan_in = statements.succeed(
                task.pk,
                task.attempt,
                workflow_id=task.workflow_id,
                result=stored,
                now=now,
                name=task.name,
                dependents=task.dependents,
                inline=inline,
                gated=gated,
            )
            if fan_in is None:
                return Recorded(False)
            queue.send_with_change(queue.task_jobs(fan_in.released, busy=fan_in.inline is not None))
        if fan_in.inline is not None:
            return Recorded(True, fan_in.inline.instance())
        if fan_in.claimed is not None:
            return Recorded(True, started(fan_in.claimed))
    if not fan_in.phase_done:
        return Recorded(True)
    workflow = fan_in.workflow_row.workflow(task.workflow_id)
    try:
        return Recorded(True, finish_phase(workflow, Actor.WORKER, _results(task, stored), inline=inline))
    except ConcurrentChange:
        return Recorded(True)
    except AuditBroken as broken:
        report_broken(broken)
        return Recorded(True)


def _gated(task: Task) -> bool:
    """Whether the success of `task` may fill slots of its workflow's max_parallel: an
    EXECUTE task of a workflow with max_parallel, as its claim saw it (immutable once
    created), or not known."""
    if task.phase != State.EXECUTE:
        return False
    return task.snapshot is None or task.snapshot.values.get("max_parallel") is not None


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
        with changing(workflow_id, "record a failure", whole_chain=False) as workflow:
            task = Task.objects.filter(pk=task_id, status=Status.RUNNING, attempt=attempt).first()
            if task is None:
                return False
            attempt_failed(workflow, task, error, Actor.WORKER)
    except AuditBroken:
        return False
    return True


def _outcome_of(error: str) -> str:
    """How a failed attempt ended (see attempts.OUTCOMES), from its error."""
    lines = error.strip().splitlines()
    return "timed_out" if lines and lines[-1].startswith("TaskTimeout:") else "failed"


def end_attempt(task: Task, outcome: str, error: str = "", *, now=None) -> list:
    """`task.attempts` with its latest attempt ended `now` (for an UPDATE). Give the time
    written to the task's finished_at: the metrics find ended attempts by it."""
    attempts = list(task.attempts or [])
    if attempts:
        attempts[-1] = ended(attempts[-1], outcome, now or timezone.now(), error)
    return attempts


def attempt_failed(workflow: Workflow, task: Task, error: str, actor: Actor, outcome: str = "") -> None:
    """A failed attempt: queue the next one after a backoff, or, with the budget spent,
    fail the task and its workflow."""
    cancelled = workflow.state == State.CANCELLED
    task.error = error
    task.finished_at, task.lease_expires_at = timezone.now(), None
    task.attempts = end_attempt(
        task, "cancelled" if cancelled else outcome or _outcome_of(error), error, now=task.finished_at
    )
    in_phase = workflow.state == task.phase
    if in_phase and task.attempts_left > 0:
        eta = timezone.now() + timedelta(seconds=backoff_delay(task.attempt - task.attempt_offset))
        queue_tasks([task], eta=eta, error=error, attempts=task.attempts)
        return
    # An attempt that ends after its workflow was cancelled ends the task as CANCELLED.
    task.status = task_status_after("end_cancelled" if cancelled else "fail", task.status)
    task.save(update_fields=["status", "error", "finished_at", "lease_expires_at", "attempts"])
    if not in_phase:
        return
    last_line = error.strip().splitlines()[-1] if error.strip() else "failed"
    fire(
        workflow,
        "fail",
        actor,
        reason=f"task {task.name} failed after {task.attempt - task.attempt_offset} attempt(s): {last_line}",
        data={"task": task.pk, "task_name": task.name, "attempt": task.attempt, "error": last_line},
        error=f"{task.name}: {last_line}",
    )
    # Siblings waiting for their turn wait for a retry instead; running ones finish.
    hold_phase(workflow, task.phase)


def hold_phase(workflow: Workflow, phase: str) -> None:
    """The phase failed: its tasks queued or waiting (their waits end) are held for a retry."""
    hold = TASK_TRANSITIONS["hold"]
    workflow.tasks.filter(phase=phase, status__in=hold.sources).update(
        status=hold.target, queued_at=None, wake_at=None, waiting_for=""
    )


# --- Recovery ----------------------------------------------------------------------------
