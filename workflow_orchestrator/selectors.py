"""Reads of the engine's state: what a workflow offers, how far it got, its phases' results.

Reads change nothing; the service functions (`workflow_orchestrator.services`) make the
changes, and refuse what these say is not on offer.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import NamedTuple

from django.db import connections
from django.db.models import Count, F, Min, Q, Subquery
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact
from django.utils import timezone

from . import audit, statements
from .approvals import APPROVAL
from .models import DEADLINE_ERROR, PHASE_EVENTS, PHASES, ConcurrencyLimit, State, Task, Workflow, hold_text


def available_actions(workflow: Workflow, *, may_change: bool = True, may_delete: bool = True) -> list[str]:
    """The ACTIONS the service functions would accept for `workflow` now, from a caller
    who may change it and (`may_delete`) delete it: those its transitions allow
    (Workflow.offered_actions), and `delete` while it is not running. A workflow whose
    head is not signed can only be deleted (see services.AuditBroken)."""
    may_change = may_change and audit.head_problem(workflow) is None
    actions = workflow.offered_actions() if may_change else []
    return [*actions, "delete"] if may_delete and not workflow.is_running else actions


def with_labels(workflows, labels: dict[str, str]):
    """The workflows of the queryset `workflows` that carry every one of `labels`. On
    PostgreSQL that is one containment test (labels @> '{...}'), which the GIN index
    workflow_labels answers; SQLite compares each key's text."""
    if not labels:
        return workflows
    if connections[workflows.db].vendor == "postgresql":
        return workflows.filter(labels__contains=labels)
    # KeyTextTransform takes the key whole (a keyword lookup would split one holding "__"),
    # and compares its text (a JSON lookup would parse the wanted value as JSON).
    return workflows.filter(*(Exact(KeyTextTransform(key, "labels"), value) for key, value in labels.items()))


def is_waiting_for_next(workflow: Workflow) -> bool:
    """A manual workflow whose phase's work is done: nothing runs until someone fires `next`."""
    return workflow.waiting_for_next


def current_phase_results(workflow: Workflow):
    """The results of the current phase's tasks: by task name for EXECUTE, the one
    handler's result for PREPARE and VALIDATE."""
    rows = statements.results(workflow.pk, workflow.state)
    if workflow.state == State.EXECUTE:
        return dict(rows)
    results = [result for _, result in rows]
    return results[0] if len(results) == 1 else results or None


def workflow_is_cancelled(workflow_id) -> bool:
    """Whether a running handler of the workflow should stop: it was cancelled, or failed
    because its deadline passed."""
    stopped = Q(state=State.CANCELLED) | Q(state=State.FAILED, error=DEADLINE_ERROR)
    return Workflow.objects.filter(stopped, pk=workflow_id).exists()


def workflow_progress(workflow: Workflow) -> dict:
    """Tasks done (succeeded) out of all the workflow's tasks."""
    counts = workflow.tasks.aggregate(total=Count("pk"), done=Count("pk", filter=Q(status=Task.Status.SUCCEEDED)))
    return {"done": counts["done"], "total": counts["total"]}


# --- Why is it waiting? ----------------------------------------------------------------------
#
# A running workflow (PREPARE, EXECUTE or VALIDATE) none of whose tasks runs or may be
# claimed now says why, in the first of these that holds (docs/API.md lists them):
#
#   max_parallel 4 reached                              EXECUTE's tasks wait for a slot: 4 of them are queued
#                                                       or running (what runs is about its limit, not a reason)
#   paused                                              it was paused
#   paused (definition billing held)                    a hold of its definition (or key) paused it
#   waiting for next (manual mode)                      its phase's work is done: someone fires `next`
#   concurrency key KEY: R of M running                 its ready tasks' key has no slot free
#   rate limit of key KEY until 2026-12-05 12:00:03 UTC its ready tasks' key started `rate` tasks this window
#   retry due at 2026-12-05 12:00:03 UTC                its queued tasks wait out a retry's backoff
#
# A task that may be claimed but that no worker has taken yet is not waiting for a reason of
# its own (there is no free worker, or a delivery is on its way): no reason. The tests are the
# claim's (sql/*.sql): QUEUED and due, its workflow not paused, its key within its limits.

PAUSED = "paused"
WAITING_FOR_NEXT = "waiting for next (manual mode)"
RETRY_DUE = "retry due at"


def paused_reason(workflow: Workflow) -> str:
    """`paused`, naming the hold that paused it, if one did: `paused (key acme held)`."""
    return f"{PAUSED} ({hold_text(workflow.held_by)} held)" if workflow.held_by else PAUSED


def moment_text(moment: datetime) -> str:
    """A moment as the reasons write it: in UTC, to the second, rounded up (by the second
    it names, it has passed)."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def key_at_limit(limit: ConcurrencyLimit | None) -> bool:
    """The key runs as many tasks as its limit allows: the claim starts none of its tasks."""
    return limit is not None and limit.max_running is not None and limit.running >= limit.max_running


def rate_window_end(limit: ConcurrencyLimit | None, now: datetime) -> datetime | None:
    """When the key's rate window ends, if the window has had all the starts its rate allows
    (the claim starts none of its tasks until then); None when a start is allowed now."""
    if limit is None or limit.rate is None or limit.window_started_at is None or limit.window_starts < limit.rate:
        return None
    end = limit.window_started_at + timedelta(seconds=limit.per_seconds)
    return end if end > now else None


def key_hold(limit: ConcurrencyLimit | None, now: datetime) -> str | None:
    """Why the claim starts no task of the key now (its running limit first: a window that
    ends frees nothing while every slot is taken); None when it may start one."""
    if key_at_limit(limit):
        return f"concurrency key {limit.key}: {limit.running} of {limit.max_running} running"
    if (end := rate_window_end(limit, now)) is not None:
        return f"rate limit of key {limit.key} until {moment_text(end)}"
    return None


class _Tasks(NamedTuple):
    """A workflow's RUNNING and QUEUED tasks of one concurrency key, counted, and its
    EXECUTE tasks waiting for a slot of its max_parallel."""

    key: str
    running: int
    due: int  # QUEUED and due now
    due_next: datetime | None  # the earliest due time of those QUEUED for later
    queued: int  # QUEUED, due or not
    held: int  # EXECUTE's, PENDING with no task to wait for: waiting for a slot (in EXECUTE)
    waiting: int  # WAITING: for a timer or a signal (services.waits)
    waiting_on: str | None  # what one of those waits for ("timer", "signal:<name>")
    wake_next: datetime | None  # the earliest time one of those wakes


def waiting_reason(workflow: Workflow, now: datetime | None = None) -> str | None:
    """Why nothing of `workflow` runs or may start now (see above); None when something does,
    or when it has not started or has ended. At most two queries."""
    return waiting_reasons([workflow], now)[workflow.pk]


def waiting_reasons(workflows, now: datetime | None = None) -> dict:
    """waiting_reason of each of `workflows` (a page of them), by id: at most two queries
    whatever their number (their tasks counted by key, then the limits of the keys that
    have tasks due)."""
    now = now or timezone.now()
    workflows = list(workflows)
    running = [workflow.pk for workflow in workflows if workflow.state in PHASES]
    tasks = defaultdict(list)
    if running:
        # Tasks waiting for a slot are counted only for the workflows that may have some.
        gated = [w.pk for w in workflows if w.state == State.EXECUTE and w.max_parallel is not None]
        held = Q(status=Task.Status.PENDING, phase=State.EXECUTE, waiting=0, workflow__in=gated)
        rows = (
            Task.objects.filter(Q(status__in=ACTIVE_STATUSES) | held, workflow__in=running)
            .order_by()
            .values_list("workflow_id", "concurrency_key")
            .annotate(
                running=Count("pk", filter=Q(status=Task.Status.RUNNING)),
                due=Count("pk", filter=Q(status=Task.Status.QUEUED, queued_at__lte=now)),
                due_next=Min("queued_at", filter=Q(status=Task.Status.QUEUED, queued_at__gt=now)),
                queued=Count("pk", filter=Q(status=Task.Status.QUEUED)),
                held=Count("pk", filter=held),
                waiting=Count("pk", filter=Q(status=Task.Status.WAITING)),
                waiting_on=Min("waiting_for", filter=Q(status=Task.Status.WAITING)),
                wake_next=Min("wake_at", filter=Q(status=Task.Status.WAITING)),
            )
        )
        for workflow_id, *counts in sorted(rows, key=lambda row: row[1]):
            tasks[workflow_id].append(_Tasks(*counts))
    keys = {group.key for groups in tasks.values() for group in groups if group.due and group.key}
    limits = {limit.key: limit for limit in ConcurrencyLimit.objects.filter(key__in=keys)} if keys else {}
    return {workflow.pk: _reason(workflow, tasks.get(workflow.pk, []), limits, now) for workflow in workflows}


def _reason(workflow: Workflow, tasks: list[_Tasks], limits: dict, now: datetime) -> str | None:
    if workflow.state not in PHASES:
        return None
    if (limit := max_parallel_reached(workflow, tasks)) is not None:
        return limit
    if any(group.running for group in tasks):
        return None
    if workflow.is_paused:
        return paused_reason(workflow)
    holds = [key_hold(limits.get(group.key), now) for group in tasks if group.due]
    if None in holds:  # a task due now whose key lets it start: claimable
        return None
    if workflow.waiting_for_next:
        return WAITING_FOR_NEXT
    if holds:
        return holds[0]
    if waits := [group for group in tasks if group.waiting]:
        return waiting_text(waits)
    due_next = [group.due_next for group in tasks if group.due_next is not None]
    if due_next:
        return f"{RETRY_DUE} {moment_text(min(due_next))}"
    # Nothing queued, nothing running: the engine is between two steps (a phase's last
    # success moving the workflow on), which takes no wait of its own.
    return None


# The statuses of a workflow's tasks that tell why it waits, or that it does not.
ACTIVE_STATUSES = (Task.Status.RUNNING, Task.Status.QUEUED, Task.Status.WAITING)


def waiting_text(waits: list[_Tasks]) -> str:
    """What a workflow's waiting tasks wait for: the signal one waits for, or its timer,
    and the earliest time one wakes."""
    count = sum(group.waiting for group in waits)
    on = min(group.waiting_on for group in waits if group.waiting_on)
    wakes = [group.wake_next for group in waits if group.wake_next is not None]
    what = f"signal {on.removeprefix('signal:')}" if on.startswith("signal:") else "a timer" if on == "timer" else on
    text = f"{count} task(s) waiting: for {what}" if count > 1 else f"waiting for {what}"
    return text + (f" (wakes at {moment_text(min(wakes))})" if wakes else "")


def max_parallel_reached(workflow: Workflow, tasks: list[_Tasks]) -> str | None:
    """Why EXECUTE's tasks that wait for a slot of the workflow's max_parallel wait (its
    slots are all taken), unless the workflow is paused (that says more); None otherwise."""
    if workflow.state != State.EXECUTE or workflow.max_parallel is None or workflow.is_paused:
        return None
    active = sum(group.running + group.queued + group.waiting for group in tasks)
    if any(group.held for group in tasks) and active >= workflow.max_parallel:
        return f"max_parallel {workflow.max_parallel} reached"
    return None


# --- Which workflows wait? --------------------------------------------------------------------
#
# The same reasons as waiting_reason's, as conditions on the workflows table, so that a list
# can be filtered by them and the overview can count them in one query. By what they wait for:
#
#   next       a manual workflow whose phase's work is done: someone fires `next`
#   approval   a task waits for a person's decision
#   signal     a task waits for a signal
#   timer      a task waits for its timer
#   flow       flow control: paused (by hand or by a hold), a task ready to run whose key has
#              no slot free, or EXECUTE tasks waiting for a slot of the workflow's max_parallel
#
# A workflow may wait for more than one of these (a signal and a timer); it is WAITING once.
# The conditions are the claim's tests, read from the rows; a rate window's end is not one of
# them (it passes within its per_seconds): waiting_reason says it on the workflow's page.

WAITING_REASONS = {
    "next": "for Next (manual mode)",
    "approval": "for an approval",
    "signal": "for a signal",
    "timer": "for a timer",
    "flow": "flow control (paused, held, limits)",
}


# Each condition reads its rows once (`id IN (SELECT …)`, which the database hashes), not once
# per running workflow (EXISTS): 15,000 running workflows are counted in tens of milliseconds.


def _task_waits(**lookups) -> Q:
    return Q(pk__in=Task.objects.filter(status=Task.Status.WAITING, **lookups).values("workflow_id"))


def waiting_condition(reason: str | None = None) -> Q:
    """The running workflows that wait for `reason` (a key of WAITING_REASONS), or for any
    of them (None)."""
    if reason is None:
        return reduce(operator.or_, (waiting_condition(each) for each in WAITING_REASONS))
    return Q(state__in=PHASES) & _WAITING[reason]()


def _waits_for_next() -> Q:
    return Q(mode=Workflow.Mode.MANUAL, state__in=list(PHASE_EVENTS), unfinished=0)


def _waits_for_flow_control() -> Q:
    full = ConcurrencyLimit.objects.filter(max_running__isnull=False, running__gte=F("max_running")).values("key")
    at_limit = Task.objects.filter(status=Task.Status.QUEUED, concurrency_key__in=Subquery(full))
    for_a_slot = Task.objects.filter(
        status=Task.Status.PENDING,
        phase=State.EXECUTE,
        waiting=0,
        workflow__state=State.EXECUTE,
        workflow__max_parallel__isnull=False,
    )
    return (
        Q(paused_at__isnull=False)
        | Q(pk__in=at_limit.values("workflow_id"))
        | Q(pk__in=for_a_slot.values("workflow_id"))
    )


_WAITING = {
    "next": _waits_for_next,
    "approval": lambda: _task_waits(waiting_for=APPROVAL),
    "signal": lambda: _task_waits(waiting_for__startswith="signal:"),
    "timer": lambda: _task_waits(waiting_for="timer"),
    "flow": _waits_for_flow_control,
}


def is_waiting(reason: str | None) -> bool:
    """Whether a waiting_reason is one of WAITING_REASONS': a retry's backoff is not (it is over
    in seconds, and nobody acts on it)."""
    return bool(reason) and not reason.startswith(RETRY_DUE)


def waiting_counts() -> dict[str, int]:
    """How many running workflows wait, in all (`all`) and for each reason: one query."""
    conditions = {"all": waiting_condition(), **{reason: waiting_condition(reason) for reason in WAITING_REASONS}}
    running = Workflow.objects.filter(state__in=PHASES).order_by()
    return running.aggregate(**{name: Count("pk", filter=condition) for name, condition in conditions.items()})
