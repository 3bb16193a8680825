"""Figures for the stats endpoint: what the workflows did, and what the cluster is doing."""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.core.cache import cache
from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone
from django_q.status import Stat

from . import queue
from .models import PHASES, BrokenChain, ConcurrencyLimit, State, Task, Workflow
from .selectors import key_at_limit, rate_window_end, waiting_counts

logger = logging.getLogger(__name__)

# Durations are measured over the most recent completed workflows, not all of history.
DURATION_SAMPLE = 1000


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return round(sorted_values[index], 3)


def counts(queryset, field: str, choices) -> dict[str, int]:
    """The rows of `queryset` counted by `field`, with every one of `choices` (0 if none)."""
    # COUNT(*), not COUNT(id): an index on `field` then answers alone (SQLite would
    # otherwise read each row for its UUID id: 150 ms at 100,000 workflows).
    counts = dict(queryset.order_by().values_list(field).annotate(n=Count("*")))
    return {value: counts.get(value, 0) for value in choices}


def _durations(completed) -> dict:
    recent = completed.order_by("-finished_at").values_list("started_at", "finished_at")[:DURATION_SAMPLE]
    durations = sorted((finished - started).total_seconds() for started, finished in recent)
    return {
        "median_seconds": _percentile(durations, 0.5),
        "p95_seconds": _percentile(durations, 0.95),
        "sample": len(durations),
    }


def workflow_stats(workflows=None) -> dict:
    """Counts and durations of `workflows` (all by default), and the cluster's state."""
    workflows = Workflow.objects.all() if workflows is None else workflows
    now = timezone.now()
    completed = workflows.filter(state=State.COMPLETE, started_at__isnull=False, finished_at__isnull=False)
    return {
        "workflows_by_state": counts(workflows, "state", State.values),
        "tasks_by_status": counts(Task.objects.filter(workflow__in=workflows), "status", Task.Status.values),
        "duration": _durations(completed),
        "completed_last_minute": completed.filter(finished_at__gte=now - timedelta(minutes=1)).count(),
        "completed_last_hour": completed.filter(finished_at__gte=now - timedelta(hours=1)).count(),
        **cluster_stats(),
    }


# What the overview says of the task a busy worker runs.
RUNNING_TASK_FIELDS = ("pk", "name", "started_at", "workflow_id", "workflow__name")


def running_tasks() -> dict[str, dict]:
    """The task each busy worker process runs, by its `host:pid`: its id, name and start,
    its workflow's id and name (one query)."""
    running = Task.objects.filter(status=Task.Status.RUNNING).exclude(worker="").order_by()
    keys = ("task_id", "task_name", "started_at", "workflow_id", "workflow_name")
    rows = running.values_list("worker", *RUNNING_TASK_FIELDS)
    return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}


def _cluster(stat, running: dict[str, dict]) -> dict:
    # django-q2 calls a cluster Idle whenever its internal queues are empty, even while
    # every worker runs a task: the tasks' own rows say which workers are busy.
    workers = [{"pid": pid, "task_id": None, **running.get(f"{stat.host}:{pid}", {})} for pid in sorted(stat.workers)]
    busy = sum(worker["task_id"] is not None for worker in workers)
    status = str(stat.status)
    return {
        "cluster_id": str(stat.cluster_id),
        "host": stat.host,
        "status": "Working" if busy and status == "Idle" else status,
        "workers": len(workers),
        "busy_workers": busy,
        "worker_processes": workers,
        "uptime_seconds": round(stat.uptime(), 1),
    }


def cluster_stats() -> dict:
    """Queue depth and clusters, from the broker and the shared cache; None when the
    broker cannot be reached (the workflow figures come from the database)."""
    broker = queue.broker()
    try:
        stats = Stat.get_all(broker=broker)
        depth, delayed = broker.queue_size(), broker.delayed_size()
    except Exception:
        logger.warning("stats: the broker cannot be reached", exc_info=True)
        return {"broker_available": False, "queue_depth": None, "queue_delayed": None, "clusters": [], "workers": None}
    running = running_tasks()
    clusters = [_cluster(stat, running) for stat in sorted(stats, key=lambda stat: (stat.host, str(stat.cluster_id)))]
    return {
        "broker_available": True,
        "queue_depth": depth,
        "queue_delayed": delayed,
        "clusters": clusters,
        "workers": sum(cluster["workers"] for cluster in clusters),
    }


# --- Work by concurrency key ----------------------------------------------------------------

RUNNING, QUEUED = Task.Status.RUNNING, Task.Status.QUEUED
# Keys the overview lists one by one, the most loaded first; the rest are summed in one row.
OVERVIEW_KEYS = 10


@dataclass
class KeyLoad:
    """The tasks of a concurrency key ("": workflows without one) that run or wait now: RUNNING,
    and QUEUED by why the claim (sql/*.sql) does or does not start them, in its order of
    tests: their workflow is paused; they are due later (a retry's backoff); the key has
    no slot free; its rate window is full; none of these (ready: claimable now)."""

    key: str
    running: int = 0
    paused: int = 0
    due_later: int = 0
    at_limit: int = 0
    rate_limited: int = 0
    ready: int = 0
    limit: ConcurrencyLimit | None = None
    rate_until: datetime | None = None  # while rate_limited: when the window ends
    keys: int = 1  # how many keys it counts (more when it sums the rest)

    @property
    def waiting(self) -> int:
        """Its QUEUED tasks, whatever they wait for."""
        return self.paused + self.due_later + self.at_limit + self.rate_limited + self.ready

    @property
    def load(self) -> int:
        return self.running + self.waiting


# Its counts, which add up across keys.
COUNTED = ("running", "paused", "due_later", "at_limit", "rate_limited", "ready")


def key_loads(now: datetime | None = None) -> list[KeyLoad]:
    """Every key with tasks RUNNING or QUEUED, the most loaded first (then by key): two
    queries, the tasks counted by key in one, the limits of those keys in the other."""
    now = now or timezone.now()
    live = Task.objects.filter(status__in=(RUNNING, QUEUED)).order_by()
    rows = live.values_list("concurrency_key").annotate(
        running=Count("pk", filter=Q(status=RUNNING)),
        queued=Count("pk", filter=Q(status=QUEUED)),
        paused=Count("pk", filter=Q(status=QUEUED, workflow__paused_at__isnull=False)),
        due=Count("pk", filter=Q(status=QUEUED, workflow__paused_at__isnull=True, queued_at__lte=now)),
    )
    limits = {limit.key: limit for limit in ConcurrencyLimit.objects.filter(key__in=live.values("concurrency_key"))}
    loads = [
        _key_load(key, limits.get(key), now, running, queued, paused, due) for key, running, queued, paused, due in rows
    ]
    return sorted(loads, key=lambda load: (-load.load, load.key))


def _key_load(key, limit, now, running: int, queued: int, paused: int, due: int) -> KeyLoad:
    load = KeyLoad(key, running=running, paused=paused, due_later=queued - paused - due, limit=limit)
    if key_at_limit(limit):
        load.at_limit = due
    elif (end := rate_window_end(limit, now)) is not None:
        load.rate_limited, load.rate_until = due, end
    else:
        load.ready = due
    return load


def summed(loads: list[KeyLoad], key: str = "") -> KeyLoad:
    """One KeyLoad that counts all of `loads` (no limit of its own)."""
    total = KeyLoad(key, keys=len(loads))
    for load in loads:
        for name in COUNTED:
            setattr(total, name, getattr(total, name) + getattr(load, name))
    return total


def top_keys(loads: list[KeyLoad], count: int, rest: str = "") -> tuple[list[KeyLoad], KeyLoad | None]:
    """The first `count` of `loads` (key_loads' order), and the others summed under the key
    `rest` (None when there are none): a bounded number of rows or series, however many keys."""
    return loads[:count], (summed(loads[count:], rest) if loads[count:] else None)


def waiting_work(now: datetime | None = None) -> dict:
    """The overview's waiting work: QUEUED tasks by why they wait and RUNNING tasks, in all
    (`total`) and by key (the OVERVIEW_KEYS most loaded; `other` sums the rest)."""
    loads = key_loads(now)
    keys, other = top_keys(loads, OVERVIEW_KEYS)
    return {"total": summed(loads), "keys": keys, "other": other}


# The overview's charts: one bar per minute of the last hour, the current minute last.
CHART_MINUTES = 60
# The overview's failures: a page of them at a time, within a time window.
FAILURES_PAGE = 10
FAILURE_WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}


# A minute is closed, and its count final, this long after it ends (a task's finish time is
# taken a moment before its transaction commits).
CLOSED_AFTER = timedelta(seconds=10)


def per_minute(queryset, since, now, name: str) -> list[int]:
    """How many rows of `queryset` finished in each minute from `since` to now: one query
    over the minutes not yet counted. The closed minutes' counts are kept in the shared cache
    (one entry), so a page refreshing itself every few seconds counts only the current
    minute, however busy the hour was."""
    minutes = [since + timedelta(minutes=index) for index in range(CHART_MINUTES)]
    closed = [minute for minute in minutes if minute + timedelta(minutes=1) + CLOSED_AFTER <= now]
    key = f"orchestrator:{name}:per-minute"
    known = cache.get(key) or {}
    counts = {minute: known[minute] for minute in closed if minute in known}
    first = next(minute for minute in minutes if minute not in counts)  # the current minute at the latest
    fresh = dict(
        queryset.filter(finished_at__gte=first)
        .order_by()
        .annotate(minute=TruncMinute("finished_at", tzinfo=UTC))
        .values_list("minute")
        .annotate(n=Count("pk"))
    )
    for minute in minutes[minutes.index(first) :]:
        counts[minute] = fresh.get(minute, 0)
    if any(minute not in known for minute in closed):
        cache.set(key, {minute: counts[minute] for minute in closed}, timeout=2 * 3600)
    return [counts[minute] for minute in minutes]


def failures(now: datetime, window: str = "day", page: int = 1) -> dict:
    """The workflows that failed within the last `window` (a key of FAILURE_WINDOWS), the
    latest first, page `page` of FAILURES_PAGE: one query (one row more than a page says
    whether an older page exists)."""
    start = (page - 1) * FAILURES_PAGE
    rows = list(
        Workflow.objects.filter(state=State.FAILED, finished_at__gte=now - FAILURE_WINDOWS[window])
        .order_by("-finished_at", "pk")
        .only("id", "name", "error", "failed_phase", "finished_at")[start : start + FAILURES_PAGE + 1]
    )
    return {"window": window, "page": page, "rows": rows[:FAILURES_PAGE], "older": len(rows) > FAILURES_PAGE}


def overview(now=None, failures_window: str = "day", failures_page: int = 1) -> dict:
    """What the admin's overview shows: counts, the workflows waiting by what they wait for,
    throughput over the last hour, durations, a page of the failures of a time window and
    the clusters. A fixed number of queries, whatever the size."""
    now = now or timezone.now()
    since = now.replace(second=0, microsecond=0, tzinfo=UTC) - timedelta(minutes=CHART_MINUTES - 1)
    ended = Workflow.objects.filter(state__in=[State.COMPLETE, State.FAILED, State.CANCELLED])
    completed = Workflow.objects.filter(state=State.COMPLETE, started_at__isnull=False, finished_at__isnull=False)
    by_state = counts(Workflow.objects.all(), "state", State.values)
    return {
        "now": now,
        "since": since,
        "workflows_by_state": by_state,
        "running": sum(by_state[state] for state in PHASES),
        # Tasks that wait without a worker (timers, signals, approvals): the index of the waiting.
        "waiting_tasks": Task.objects.filter(status=Task.Status.WAITING).count(),
        # Workflows that wait for a person, an event or flow control (selectors.waiting_condition).
        "waiting_workflows": waiting_counts(),
        "audit_broken": BrokenChain.objects.count(),
        "waiting": waiting_work(now),
        "tasks_per_minute": per_minute(Task.objects.all(), since, now, "tasks-finished"),
        "workflows_per_minute": per_minute(ended, since, now, "workflows-finished"),
        "duration": _durations(completed),
        "failures": failures(now, failures_window, failures_page),
        **cluster_stats(),
    }
