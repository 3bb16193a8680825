"""Figures for the stats endpoint: what the workflows did, and what the cluster is doing."""

import logging
from datetime import timedelta

from django.db.models import Count
from django.utils import timezone
from django_q.status import Stat

from . import queue
from .models import State, Task, Workflow

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


def workflow_stats(workflows=None) -> dict:
    """Counts and durations of `workflows` (all by default), and the cluster's state."""
    workflows = Workflow.objects.all() if workflows is None else workflows
    now = timezone.now()
    completed = workflows.filter(state=State.COMPLETE, started_at__isnull=False, finished_at__isnull=False)
    recent = completed.order_by("-finished_at").values_list("started_at", "finished_at")[:DURATION_SAMPLE]
    durations = sorted((finished - started).total_seconds() for started, finished in recent)
    return {
        "workflows_by_state": counts(workflows, "state", State.values),
        "tasks_by_status": counts(Task.objects.filter(workflow__in=workflows), "status", Task.Status.values),
        "duration": {
            "median_seconds": _percentile(durations, 0.5),
            "p95_seconds": _percentile(durations, 0.95),
            "sample": len(durations),
        },
        "completed_last_minute": completed.filter(finished_at__gte=now - timedelta(minutes=1)).count(),
        "completed_last_hour": completed.filter(finished_at__gte=now - timedelta(hours=1)).count(),
        **cluster_stats(),
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
    clusters = [
        {
            "cluster_id": str(stat.cluster_id),
            "host": stat.host,
            "status": str(stat.status),
            "workers": len(stat.workers),
            "uptime_seconds": round(stat.uptime(), 1),
        }
        for stat in stats
    ]
    return {
        "broker_available": True,
        "queue_depth": depth,
        "queue_delayed": delayed,
        "clusters": clusters,
        "workers": sum(cluster["workers"] for cluster in clusters),
    }
