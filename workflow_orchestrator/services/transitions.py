"""State changes: every transition of a workflow is written here.

A user's action (start, next, retry, cancel), recovery, a failed attempt and a worker
that ends a phase all come to `fire`: it fires the django-fsm transition in memory and
writes it with `_commit_change`, as one statement on PostgreSQL (the `transition`
statement, through statements.transition): the workflow row, compared and set on its
chain head, its audit row and the entered phase's tasks, with their jobs
(queue.send_with_change). A user's action, recovery and a failed attempt hold the
workflow's lock while they do (`changing`); a worker that ends a phase holds none, and
its compare-and-set loses to any change made meanwhile. `delete` is no transition: it
removes the workflow under the same lock. Nor are `pause` and `resume`: under the same
lock they set or clear the workflow's paused_at (and held_by, the hold that paused it:
services.holds), with an audit row in its chain that leaves its state as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from .. import audit, logs, queue, statements, values
from ..models import (
    ENDING_STATES,
    PHASE_EVENTS,
    PHASES,
    TASK_TRANSITIONS,
    Actor,
    BrokenChain,
    State,
    Task,
    Transition,
    Workflow,
    WorkflowDeletion,
    task_status_after,
)
from ..selectors import current_phase_results
from ..signals import send_transitioned_on_commit, workflow_deleting, workflows_deleting
from .exceptions import AuditBroken, ConcurrentChange, InvalidTransition

logger = logging.getLogger("workflow_orchestrator.services")
Status = Task.Status


def locked(workflow_id: UUID | str) -> Workflow:
    # Without the lock, two requests could both see a state that allows their change and
    # both make it (a `next` racing a worker, two retries); a worker ending a phase, which
    # takes no lock, loses any such race through the compare-and-set in
    # statements.transition.
    return Workflow.objects.select_for_update().get(pk=workflow_id)


def check_chain(workflow: Workflow, event: str, *, whole: bool = True) -> None:
    """Raise AuditBroken unless the workflow's audit chain verifies: `whole`, every row
    (one query); otherwise only the head on its row, which costs no query."""
    link = audit.verify(workflow) if whole else audit.head_problem(workflow)
    if link:
        raise AuditBroken(workflow, event, link)


def report_broken(broken: AuditBroken) -> None:
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
def changing(workflow_id, event: str, *, whole_chain: bool = True):
    """A transaction that holds the workflow's lock, entered only if its audit chain
    verifies (`whole_chain`: every row; otherwise the head on its row). A refusal is
    reported once the transaction has been rolled back, so that the report stays."""
    try:
        with transaction.atomic():
            workflow = locked(workflow_id)
            check_chain(workflow, event, whole=whole_chain)
            yield workflow
    except AuditBroken as broken:
        report_broken(broken)
        raise


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
    their jobs (queue.send_with_change). Returns the task claimed for `inline`."""
    now = timezone.now()
    if workflow.is_paused:  # nothing new of a paused workflow starts, not even on this worker
        inline = None
    previous_seq, previous_mac = workflow.last_seq, workflow.head_mac
    row = Transition.objects.build(
        workflow=workflow, source=source, event=event, actor=actor, reason=reason, data=data, now=now
    )
    with queue.change_transaction():
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
        busy = written.inline is not None or written.claimed is not None
        queue.send_with_change(queue.task_jobs(written.queued, busy=busy) + _webhook_jobs(workflow, row, written))
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
        # Another workflow's task, or none.
        return None if written.claimed is None else started(written.claimed)
    written.inline.workflow_row = statements.WorkflowRow.of(workflow)
    return written.inline.instance()


def started(claimed: statements.ClaimedTask) -> Task:
    """The Task a claim (a delivery's, or an outcome's for the worker's next task) took;
    when its start filled its key's rate window, the deliveries that will start the next
    window's tasks are sent, due when it opens."""
    if claimed.window_end is not None:
        queue.send(queue.deliveries(claimed.window_rate, eta=claimed.window_end))
    return claimed.instance()


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


def fire(
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
    check_chain(workflow, event, whole=False)  # the last guard of every path, the hot one included
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
    if event in DEADLINE_EVENTS:
        arm_deadline(workflow)
    if workflow.state in PHASES and workflow.unfinished == 0:
        nothing = statements.GATHER if workflow.state == State.EXECUTE else json.dumps(None)
        # The worker has its next task already when this change claimed one.
        return finish_phase(workflow, actor, nothing, inline=None if claimed else inline) or claimed
    return claimed


# The transitions that set a workflow's deadline (Workflow._set_deadline).
DEADLINE_EVENTS = ("start", "retry")


def arm_deadline(workflow: Workflow) -> None:
    """After a start or a retry set the workflow's deadline (in memory), which the
    transition's statement does not write: write it, and send the job that checks it when
    it is due (services.waits.deadline_check). Within the change's transaction, if any."""
    if workflow.deadline_at is None:
        return
    with queue.change_transaction():
        Workflow.objects.filter(pk=workflow.pk).update(deadline_at=workflow.deadline_at)
        queue.send_with_change([queue.deadline_job(workflow.pk, workflow.deadline_at)])


def queue_tasks(
    tasks: list[Task], *, charge: bool = True, eta=None, error: str | None = None, attempts: list | None = None
) -> None:
    """Move tasks to QUEUED for their next attempt (one UPDATE) and send their jobs with
    the change (queue.send_with_change). `charge=False` keeps the attempt from counting against the budget (a
    handed-back attempt)."""
    changes = {
        "status": task_status_after("retry_later" if charge else "hand_back", *{task.status for task in tasks}),
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
    queue.send_with_change([queue.task_job(task.pk, task.attempt + 1, task.timeout, eta) for task in tasks])


def gathered(workflow: Workflow):
    """The current phase's results for a transition: EXECUTE's are gathered by its
    statement; PREPARE's and VALIDATE's are read here."""
    return statements.GATHER if workflow.state == State.EXECUTE else json.dumps(current_phase_results(workflow))


def finish_phase(workflow: Workflow, actor: Actor, phase_results, *, inline=None, succeeded=None) -> Task | None:
    """The current phase's work is done (or, with `succeeded`, will be with that success):
    add its results (JSON text, or statements.GATHER) to the workflow's and, in
    automatic mode, move on to the next phase. Returns the task claimed for `inline`."""
    if workflow.mode == Workflow.Mode.MANUAL:
        _keep_results(workflow.pk, workflow.state, workflow.last_seq)
        return None
    return _advance(workflow, actor, inline=inline, succeeded=succeeded, phase_results=phase_results)


def _keep_results(workflow_id, phase: str, last_seq: int) -> None:
    """A manual workflow waits for `next` with its phase's results in view."""
    with changing(workflow_id, "keep its results", whole_chain=False) as workflow:
        if (workflow.state, workflow.last_seq) != (phase, last_seq):
            raise ConcurrentChange(f"workflow {workflow_id} changed while its {phase} results were being kept")
        workflow.results = {**workflow.results, phase: current_phase_results(workflow)}
        workflow.save(update_fields=["results", "updated_at"])


def _advance(workflow: Workflow, actor: Actor, **commit) -> Task | None:
    return fire(workflow, PHASE_EVENTS[workflow.state], actor, **commit)


def workflow_start(workflow_id, *, actor: Actor) -> Workflow:
    with changing(workflow_id, "start") as workflow:
        fire(workflow, "start", actor)
    return workflow


def workflow_next(workflow_id, *, actor: Actor) -> Workflow:
    """Manual mode: fire the next transition once the current phase's work is done."""
    with changing(workflow_id, "next") as workflow:
        if refusal := workflow.next_refusal():
            raise InvalidTransition(workflow, "next", refusal)
        _advance(workflow, actor)
    return workflow


def workflow_retry(workflow_id, *, actor: Actor, reason: str = "") -> Workflow:
    """Resume a FAILED workflow at the phase that failed: tasks that succeeded are not
    run again, the others get a fresh budget of attempts."""
    check_reason(reason)
    with changing(workflow_id, "retry") as workflow:
        fire(workflow, "retry", actor, reason=reason, data={"phase": workflow.failed_phase})
    return workflow


def check_reason(reason: str) -> None:
    if problem := values.text_problem(reason):
        raise ValidationError({"reason": [f"reason {problem}"]})


def workflow_cancel(workflow_id, *, actor: Actor, reason: str = "") -> Workflow:
    """Cancel: tasks not yet running are cancelled at once; running ones see
    `ctx.cancelled()` and their late results change nothing. A paused workflow is
    cancelled too, and is no longer paused (nor held)."""
    check_reason(reason)
    with changing(workflow_id, "cancel") as workflow:
        fire(workflow, "cancel", actor, reason=reason)
        cancel = TASK_TRANSITIONS["cancel"]
        workflow.tasks.filter(status__in=cancel.sources).update(status=cancel.target, finished_at=timezone.now())
        if workflow.is_paused:
            workflow.paused_at, workflow.held_by = None, ""
            Workflow.objects.filter(pk=workflow.pk).update(paused_at=None, held_by="")
    return workflow


def workflow_pause(workflow_id, *, actor: Actor, reason: str = "") -> Workflow:
    """Hold a workflow (not started yet, or in a phase): its running tasks finish and their
    outcomes are recorded (it may still move on to its next phase, whose tasks are
    queued), but nothing new of it starts until it is resumed: no claim of its tasks, no
    inline claim for it, no job of it re-sent by recovery."""
    check_reason(reason)
    with changing(workflow_id, "pause") as workflow:
        if refusal := workflow.pause_refusal():
            raise InvalidTransition(workflow, "pause", refusal)
        pause_in_place(workflow, actor, reason)
    return workflow


def workflow_resume(workflow_id, *, actor: Actor, reason: str = "") -> Workflow:
    """Let a paused workflow's work start again: the jobs of its queued tasks are sent
    again (the jobs sent while it was paused claimed nothing). A workflow a hold paused is
    resumed too, if someone asks for it: it is no longer held (services.holds)."""
    check_reason(reason)
    with changing(workflow_id, "resume") as workflow:
        if refusal := workflow.resume_refusal():
            raise InvalidTransition(workflow, "resume", refusal)
        resume_in_place(workflow, actor, reason)
    return workflow


def pause_in_place(workflow: Workflow, actor: Actor, reason: str, *, held_by: str = "") -> None:
    """Pause `workflow` (by the hold labelled `held_by`, if one): call it under its lock
    (`changing`) once pause_refusal has nothing against it, or in the transaction that
    inserts it."""
    now = timezone.now()
    workflow.paused_at, workflow.held_by = now, held_by
    record_in_place(workflow, "pause", actor, reason, now, {"hold": held_by} if held_by else None)


def resume_in_place(workflow: Workflow, actor: Actor, reason: str, *, held_by: str = "") -> None:
    """Resume `workflow` (as the hold labelled `held_by` is released, if one): call it under
    its lock once resume_refusal has nothing against it."""
    now = timezone.now()
    workflow.paused_at, workflow.held_by = None, ""
    record_in_place(workflow, "resume", actor, reason, now, {"hold": held_by} if held_by else None)
    _send_queued(workflow, now)


def record_in_place(workflow: Workflow, event: str, actor: Actor, reason: str, now, data=None) -> Transition:
    """Write a change of the workflow that leaves its state as it is (pause, resume, a
    signal): its paused_at and held_by, and an audit row from its state to the same,
    chained to its head. Returns the audit row."""
    row = Transition.objects.build(
        workflow=workflow, source=workflow.state, event=event, actor=actor, reason=reason, data=data, now=now
    )
    workflow.updated_at = now
    workflow.save(update_fields=["paused_at", "held_by", "last_seq", "last_digest", "head_mac", "updated_at"])
    row.save()
    logger.info(
        "workflow %s: %s in %s",
        workflow.pk,
        event,
        workflow.state,
        extra=logs.fields(workflow_id=workflow.pk, event=event),
    )
    return row


def _send_queued(workflow: Workflow, now) -> None:
    """Send again the jobs of the workflow's queued tasks: due now (queued_at = now), or
    at their due time when a retry's backoff has not run out yet."""
    queued = list(workflow.tasks.filter(status=Status.QUEUED).only("pk", "attempt", "timeout", "queued_at"))
    later = {task.pk: task.queued_at for task in queued if task.queued_at and task.queued_at > now}
    Task.objects.filter(pk__in=[task.pk for task in queued if task.pk not in later]).update(queued_at=now)
    queue.send_with_change([queue.task_job(task.pk, task.attempt, task.timeout, later.get(task.pk)) for task in queued])


def workflow_delete(workflow_id, *, actor: Actor) -> None:
    """Delete a workflow that is not running, with its tasks and history, and record the
    deletion (who, when, the workflow's final state and chain head) in the deletion log,
    in the same transaction."""
    with transaction.atomic():
        workflow = locked(workflow_id)
        if workflow.is_running:
            raise InvalidTransition(
                workflow, "delete", f"cannot delete a workflow in state {workflow.state}: cancel it first"
            )
        workflows_delete_locked([workflow], actor=actor)


def workflows_delete_locked(workflows: list[Workflow], *, actor: Actor) -> None:
    """Delete `workflows`, which the caller's transaction has locked (all of them, before
    this) and found not running, and append the deletion of each to the deletion log, in
    their order (services.retention deletes a batch this way)."""
    workflows_deleting.send(sender=Workflow, workflows=workflows)  # the metrics keep their history
    for workflow in workflows:
        workflow_deleting.send(sender=Workflow, workflow=workflow)
    Workflow.objects.filter(pk__in=[workflow.pk for workflow in workflows]).delete()
    # The log's head is taken last, so that deletions wait for one another only as
    # long as it takes to append the rows and commit.
    for workflow in workflows:
        WorkflowDeletion.objects.record(workflow=workflow, actor=actor)
