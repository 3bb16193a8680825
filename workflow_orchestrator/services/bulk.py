"""Bulk operations: one action (retry, cancel, pause, resume) on every workflow a query
matched, however many, without a request that waits for them.

`bulk_start` keeps the ids the query matched (the N its confirmation showed) in a
BulkOperation and sends its first step. Each step (`bulk_step`, a job) works through the
next CHUNK of them, each workflow through its own service, so that each gets its own
audit row with the operation's actor and reason; a refusal (a workflow in a state the
action does not apply to) is counted by reason, not raised. The step saves its progress
and sends the next step, so no job runs long, and a crash costs at most the chunk it was
in: recovery (`bulk_resume_stalled`) sends the step again from the last saved position.

A step claims the operation at its position before it starts (a conditional update), and
saves its progress only at that position: two deliveries of one step never both work
through its chunk, nor count it twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from .. import logs, queue, values
from ..models import Actor, BulkOperation, Workflow
from .exceptions import AuditBroken, ConcurrentChange, InvalidTransition
from .transitions import workflow_cancel, workflow_next, workflow_pause, workflow_resume, workflow_retry

logger = logging.getLogger("workflow_orchestrator.services")

# Workflows a step works through: a few seconds of work at most, far within a job's timeout.
CHUNK = 200
# A step that has held its operation this long is taken for dead, and so is an operation
# whose last step saved its progress this long ago (its next step's job lost).
STALLED_SECONDS = 120
# How often bulk_run looks at an operation that another process is working through.
FOLLOW_SECONDS = 1.0
# The longest reason kept (each workflow's audit row holds it).
MAX_REASON = 1000

# What each action does to one workflow, and the word its refusals are counted under.
SERVICES: dict[str, tuple[Callable, str]] = {
    "retry": (workflow_retry, "retried"),
    "cancel": (workflow_cancel, "cancelled"),
    "next": (workflow_next, "advanced"),
    "pause": (workflow_pause, "paused"),
    "resume": (workflow_resume, "resumed"),
}


def act_on(workflow_ids: Iterable, action: str, *, actor: Actor, reason: str | None = None) -> tuple[int, Counter]:
    """`action` on each workflow through its own service (each in its own transaction):
    how many were changed, and how many were refused, by reason."""
    service, verb = SERVICES[action]
    given = {} if reason is None else {"reason": reason}
    done, skipped = 0, Counter()
    for workflow_id in workflow_ids:
        try:
            service(workflow_id, actor=actor, **given)
            done += 1
        except InvalidTransition as exc:
            skipped[refusal(exc, verb)] += 1
        except Workflow.DoesNotExist:
            skipped["deleted since"] += 1
        except ConcurrentChange:
            skipped["changed meanwhile by the engine"] += 1
    return done, skipped


def refusal(exc: InvalidTransition, verb: str) -> str:
    """A refusal as its count's reason: by state when the state alone refused it, else the
    engine's own words (which name no workflow, so that like refusals count together)."""
    if isinstance(exc, AuditBroken):
        return "its audit chain does not verify"
    if str(exc) == f"cannot {exc.event} a workflow in state {exc.state}":
        return f"{exc.state} cannot be {verb}"
    return str(exc)


def bulk_reason(reason: str) -> str:
    """The reason of a bulk operation, stripped: required, since each audit row keeps it."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["A reason is required: it is kept in each workflow's audit row."]})
    if len(reason) > MAX_REASON:
        raise ValidationError({"reason": [f"At most {MAX_REASON} characters."]})
    if problem := values.text_problem(reason):
        raise ValidationError({"reason": [f"reason {problem}"]})
    return reason


def check_bulk(action: str, reason: str) -> str:
    """The reason, stripped, or ValidationError naming the field that is wrong."""
    if action not in BulkOperation.Action.values:
        raise ValidationError({"action": [f"Choose one of {', '.join(BulkOperation.Action.values)}, not {action!r}."]})
    return bulk_reason(reason)


def bulk_start(action: str, workflows, *, actor: Actor, reason: str, criteria: dict, send: bool = True):
    """Start `action` on the workflows of the queryset `workflows` (or a list of ids), as
    they are now: their ids are kept, and the first step is sent once this commits
    (`send=False`: the caller runs the steps itself, as the CLI does). Two statements
    (three with the ORM broker), however many workflows match."""
    reason = check_bulk(action, reason)
    if isinstance(workflows, QuerySet):
        workflows = workflows.order_by().values_list("pk", flat=True)
    ids = [str(pk) for pk in workflows]
    now = timezone.now()
    operation = BulkOperation.objects.create(
        action=action,
        reason=reason,
        actor=actor.user,
        actor_label=actor.label,
        criteria=criteria,
        workflow_ids=ids,
        total=len(ids),
        created_at=now,
        progressed_at=now,
        # Nothing matched: nothing to do, and finished already.
        **({} if ids else {"status": BulkOperation.Status.FINISHED, "started_at": now, "finished_at": now}),
    )
    logger.info(
        "bulk %s: %s of %d workflow(s) by %s",
        operation.pk,
        action,
        len(ids),
        actor.label,
        extra=logs.fields(event="bulk_start"),
    )
    if ids and send:
        queue.send_with_change([queue.bulk_job(operation.pk, 0)])
    return operation


def bulk_step(operation_id, position: int, *, send: bool = True) -> BulkOperation | None:
    """Work through the operation's next chunk from `position`, save its progress, and
    send the step after it (`send=False`: the caller runs it). Does nothing (None) when
    the operation is not at `position` (this step was done already) or another delivery
    of it holds the operation."""
    now = timezone.now()
    claim = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    claimed = BulkOperation.objects.filter(claim, pk=operation_id, position=position).exclude(
        status=BulkOperation.Status.FINISHED
    )
    if not claimed.update(claimed_until=now + timedelta(seconds=STALLED_SECONDS), status=BulkOperation.Status.RUNNING):
        return None
    operation = BulkOperation.objects.select_related("actor").get(pk=operation_id)
    if operation.started_at is None:
        BulkOperation.objects.filter(pk=operation_id, started_at__isnull=True).update(started_at=now)
    chunk = operation.workflow_ids[position : position + CHUNK]
    actor = Actor(operation.actor_label, operation.actor)
    done, skipped = act_on(chunk, operation.action, actor=actor, reason=operation.reason)
    after = position + len(chunk)
    saved = BulkOperation.objects.filter(pk=operation_id, position=position).update(
        position=after,
        done=F("done") + done,
        skipped=dict(Counter(operation.skipped) + skipped),
        claimed_until=None,
        progressed_at=timezone.now(),
    )
    if not saved:  # recovery took it for dead and another step saved this chunk first
        return None
    if after >= operation.total:
        _finish(operation_id, after)
    elif send:
        queue.send([queue.bulk_job(operation_id, after)])
    return BulkOperation.objects.defer("workflow_ids").get(pk=operation_id)


def _finish(operation_id, position: int) -> None:
    now = timezone.now()
    BulkOperation.objects.filter(pk=operation_id, position=position).update(
        status=BulkOperation.Status.FINISHED, finished_at=now
    )


def bulk_run(operation: BulkOperation, progress: Callable[[BulkOperation], None] = lambda operation: None):
    """Run an operation's steps in this process (the CLI's way, which no request timeout
    bounds), calling `progress` after each; returns the operation as it ended."""
    while not operation.is_finished:
        stepped = bulk_step(operation.pk, operation.position, send=False)
        if stepped is None:  # another process holds it (recovery sent it on): follow its progress
            time.sleep(FOLLOW_SECONDS)
            stepped = BulkOperation.objects.defer("workflow_ids").get(pk=operation.pk)
        operation = stepped
        progress(operation)
    return operation


def bulk_resume_stalled(now=None) -> int:
    """Send again the next step of each unfinished operation whose step died holding it,
    or whose next step's job was lost: from its last saved position. Returns how many."""
    now = now or timezone.now()
    old = now - timedelta(seconds=STALLED_SECONDS)
    stalled = BulkOperation.objects.exclude(status=BulkOperation.Status.FINISHED).filter(
        Q(claimed_until__lt=now) | Q(claimed_until__isnull=True, progressed_at__lt=old)
    )
    jobs = []
    for operation_id, position in stalled.values_list("pk", "position"):
        # Only once per stall: the step sent here claims it, or another has since.
        if (
            BulkOperation.objects.filter(pk=operation_id, position=position)
            .filter(Q(claimed_until__lt=now) | Q(claimed_until__isnull=True, progressed_at__lt=old))
            .update(claimed_until=None, progressed_at=now)
        ):
            jobs.append(queue.bulk_job(operation_id, position))
    queue.send(jobs)
    return len(jobs)
