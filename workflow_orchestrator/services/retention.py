"""Retention: ended workflows older than a cutoff, deleted through the audited deletion path.

Every ended state goes: COMPLETE, CANCELLED and FAILED. A FAILED workflow could still be
retried, but one nobody retried for as long as the retention period has been given up;
keeping it would let the table grow without bound. A retry clears finished_at, so a
workflow that is being retried is never purged.

The candidates are read in batches (PURGE_BATCH), in (finished_at, id) order from where
the last batch ended, so that a purge visits each workflow once and always ends. Each
batch is deleted in one transaction, as `workflow_delete` deletes one workflow
(`workflows_delete_locked`: each workflow's history counted into the metrics, the rows
deleted, one row per workflow appended to the deletion log): a bounded transaction
whatever the backlog, 3 statements a workflow where deleting them one by one takes 21
(docs/BENCHMARKS.md, "Issue 24: retention"), and one commit per batch.
"""

from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from ..models import Actor, State, Workflow
from .transitions import workflows_delete_locked

ENDED_STATES = (State.COMPLETE, State.CANCELLED, State.FAILED)
# Workflows read per batch: what one job run of the scheduled purge deletes at most.
PURGE_BATCH = 500


def workflows_to_purge(older_than: timedelta, *, states=ENDED_STATES, now: datetime | None = None) -> QuerySet:
    """The workflows in one of `states` that finished more than `older_than` before `now`,
    oldest first."""
    cutoff = _cutoff(now or timezone.now(), older_than)
    if cutoff is None:
        return Workflow.objects.none()
    return Workflow.objects.filter(state__in=states, finished_at__lt=cutoff).order_by("finished_at", "pk")


def _cutoff(now: datetime, older_than: timedelta) -> datetime | None:
    try:
        return now - older_than
    except OverflowError:  # before the year 1: nothing finished that long ago
        return None


def purge_actor(actor: Actor, older_than: timedelta) -> Actor:
    """`actor`, with the reason the deletion log keeps in its label ("system (retention:
    older than 30 days)"): the log has no column of its own for a reason."""
    return Actor(f"{actor.label} (retention: older than {age_in_words(older_than)})", actor.user)


def age_in_words(age: timedelta) -> str:
    if age % timedelta(days=1):
        return f"{age.total_seconds():g} seconds"
    return f"{age.days} day{'' if age.days == 1 else 's'}"


def workflows_purge(
    older_than: timedelta,
    *,
    actor: Actor,
    states=ENDED_STATES,
    batch: int = PURGE_BATCH,
    limit: int | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the workflows of `workflows_to_purge`, at most `limit` of them, `batch` read at
    a time, each recorded in the deletion log with `actor` and the reason; the number
    deleted. `dry_run`: delete nothing, the number that would go. `progress` is called with
    the number deleted so far after each batch."""
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, got {older_than}")
    now = now or timezone.now()
    candidates = workflows_to_purge(older_than, states=states, now=now)
    if dry_run:
        return candidates.count() if limit is None else candidates[:limit].count()
    recorded_as, cutoff = purge_actor(actor, older_than), _cutoff(now, older_than)
    purged, after = 0, None
    while limit is None or purged < limit:
        size = batch if limit is None else min(batch, limit - purged)
        listed = list(_after(candidates, after).values_list("finished_at", "pk")[:size])
        if listed:
            purged += _purge_batch([workflow_id for _, workflow_id in listed], cutoff, states, recorded_as)
        if progress and listed:
            progress(purged)
        if len(listed) < size:
            break
        after = listed[-1]
    return purged


def _after(candidates: QuerySet, after: tuple | None) -> QuerySet:
    if after is None:
        return candidates
    finished_at, workflow_id = after
    return candidates.filter(Q(finished_at__gt=finished_at) | Q(finished_at=finished_at, pk__gt=workflow_id))


def _purge_batch(workflow_ids: list, cutoff: datetime, states, actor: Actor) -> int:
    """Delete, in one transaction, those of `workflow_ids` that still qualify under their
    locks; how many."""
    with transaction.atomic():
        # Listed a moment ago, some may have been deleted, or retried (and even ended again)
        # since. All are locked, in id order, before anything is written: a deletion by hand
        # takes its workflow, then the logs' heads, so the two never wait for each other.
        still = Workflow.objects.filter(pk__in=workflow_ids, state__in=states, finished_at__lt=cutoff)
        workflows = list(still.select_for_update().order_by("pk"))
        if workflows:
            workflows_delete_locked(workflows, actor=actor)
        return len(workflows)
