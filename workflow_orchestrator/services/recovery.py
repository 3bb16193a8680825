"""Recovery: what a crash, a lost job or a stopped worker left behind, put right."""

from __future__ import annotations

import logging
from datetime import timedelta
from itertools import groupby
from operator import attrgetter

from django.db.models import F, Q
from django.utils import timezone

from .. import audit, logs, queue, statements
from ..conf import app_settings
from ..models import PHASES, Actor, BrokenChain, ConcurrencyLimit, Task, Workflow
from .exceptions import AuditBroken
from .holds import batches, hold_workflow, orphans, release_workflow, released_reason, sweep_targets
from .limits import adopt_running
from .outcomes import attempt_failed
from .transitions import changing, finish_phase, gathered
from .waits import deadline_check, deadlines_due, task_wake, wake_due

logger = logging.getLogger("workflow_orchestrator.services")
Status = Task.Status


def recover(*, now=None) -> dict:
    """Take back attempts whose worker stopped heartbeating (killed, machine lost), re-send
    jobs of attempts queued long ago whose job was lost by the broker (not while their
    workflow is paused: its resume sends them), move on workflows whose phase's work is
    done but whose worker died before it moved them on, and put right what slipped past a
    hold being set or released (`held`: workflows a hold covers but did not pause, paused
    now; `released`: workflows paused by a hold that is gone, resumed now), wake the
    waiting tasks whose timer or deadline is due (`woken`) and fail the workflows whose
    deadline passed (`deadlines`).

    Each workflow's whole audit chain is verified before anything of it is touched: one
    that does not verify is left as it is, reported (BrokenChain) and listed under
    `audit_broken`. Findings of earlier runs whose chains verify again are cleared.

    On PostgreSQL it also takes the tasks table's statistics again after a burst of
    changes, which the claim's plan depends on (Backend.refresh_statistics)."""
    now = now or timezone.now()
    run = _Recovery()
    _clear_mended_chains()
    expired = list(
        Task.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now).values_list("pk", "workflow_id", "attempt")
    )
    for task_id, workflow_id, attempt in expired:
        run.unless_broken(workflow_id, _take_back, task_id, attempt, now)
    adopted = adopt_running()
    stale_before = now - timedelta(seconds=app_settings.ORCH_REQUEUE_SECONDS)
    # A paused workflow's jobs claim nothing: its queued tasks wait for its resume, which
    # sends them again. Nor do a full key's: its next slot given back hands them on.
    full = ConcurrencyLimit.objects.filter(running__gte=F("max_running")).values("key")
    stale = Task.objects.filter(status=Status.QUEUED, queued_at__lt=stale_before, workflow__paused_at__isnull=True)
    stale = stale.exclude(concurrency_key__in=full)
    stale = stale.order_by("workflow_id", "pk")
    by_workflow = groupby(stale.only("pk", "workflow_id", "attempt", "timeout"), key=attrgetter("workflow_id"))
    requeued = sum(run.unless_broken(workflow_id, _requeue, list(tasks), now) for workflow_id, tasks in by_workflow)
    done = Workflow.objects.filter(state__in=PHASES, mode=Workflow.Mode.AUTO, unfinished=0).values_list("pk", flat=True)
    moved_on = sum(run.unless_broken(workflow_id, _move_on) for workflow_id in list(done))
    held = sum(
        run.unless_broken(workflow_id, hold_workflow, hold, Actor.SYSTEM)
        for hold, ids in sweep_targets()
        for workflow_id in ids
    )
    released = sum(_release_orphans(run, ids) for ids in batches(orphans()))
    # Timers and deadlines that came due while no job woke them (no cluster ran, the broker
    # lost the job): each a walk of an index of the few waiting.
    woken = sum(run.unless_broken(workflow_id, _wake, task_id, now) for task_id, workflow_id in wake_due(now))
    deadlines = sum(run.unless_broken(workflow_id, _deadline, now) for workflow_id in deadlines_due(now))
    if statements.refresh_statistics():
        logger.info("recovery: the tasks table's statistics taken again (many rows changed since the last time)")
    return {
        "expired": len(expired),
        "requeued": requeued,
        "moved_on": moved_on,
        "adopted": adopted,
        "held": held,
        "released": released,
        "woken": woken,
        "deadlines": deadlines,
        "audit_broken": {str(workflow_id): str(broken.link) for workflow_id, broken in run.broken.items()},
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
    with changing(workflow_id, "recover") as workflow:
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
            attempt_failed(workflow, task, error, Actor.SYSTEM, outcome="lease_expired")
            return 1
    return 0


def _requeue(workflow_id, tasks: list[Task], now) -> int:
    """Re-send the jobs of a workflow's attempts queued long ago, whose broker lost them:
    under one lock and one check of its chain. Returns how many; an attempt claimed
    meanwhile is not one (a duplicate of a job that was not lost after all loses its
    claim and does nothing)."""
    with changing(workflow_id, "recover") as workflow:
        if workflow.is_paused:  # paused meanwhile
            return 0
        lost = [
            task
            for task in tasks
            if Task.objects.filter(pk=task.pk, status=Status.QUEUED, attempt=task.attempt).update(queued_at=now)
        ]
        queue.send_with_change([queue.task_job(task.pk, task.attempt, task.timeout) for task in lost])
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
    with changing(workflow_id, "recover") as workflow:
        if workflow.state in PHASES and workflow.mode == Workflow.Mode.AUTO and workflow.unfinished == 0:
            finish_phase(workflow, Actor.SYSTEM, gathered(workflow))
            return 1
    return 0


def _wake(workflow_id, task_id: int, now) -> int:
    return int(task_wake(task_id, now=now))


def _deadline(workflow_id, now) -> int:
    return int(deadline_check(workflow_id, now=now))


def _release_orphans(run: _Recovery, ids: list) -> int:
    """Resume the workflows of `ids`, each paused by a hold that is gone (or keep it paused
    by another hold that covers it): how many were resumed."""
    labels = dict(Workflow.objects.filter(pk__in=ids).values_list("pk", "held_by"))
    return sum(run.unless_broken(workflow_id, _release_orphan, label) for workflow_id, label in labels.items())


def _release_orphan(workflow_id, label: str) -> int:
    return int(release_workflow(workflow_id, label, Actor.SYSTEM, released_reason(label)) == "resumed")
