"""Figures for Prometheus (`GET /metrics`), from the stores that every cluster shares.

Gauges are read at each scrape: workflows by state from the database, the queue's depth
and the live clusters and workers from the broker and the shared cache (workflow_orchestrator.stats).
The tasks running and waiting per concurrency key are bounded in number of series, however
many keys there are: the KEY_SERIES keys with the most tasks running or waiting have their
own, the others are summed under the key OTHER_KEY (tasks of workflows without a key count
under NO_KEY), and the limit of each key shown.

Counters (transitions by event and target state, task attempts by type and outcome, and
the histogram of attempt durations) count the engine's history, which the database keeps:
the audit log (append-only, with increasing ids) and each task's `attempts`. Counting all
of it at each scrape would read every workflow's history; instead a scrape adds what is
new since the last one to a small stored aggregate (MetricCounter) and moves the
watermarks on (MetricsHead), under the head's lock:

- transitions with an id above the watermark;
- attempts that ended after the watermark's time, found among the tasks that finished
  since, or that have been queued again since (an index on Task.finished_at).

A row gets its id or its end time a moment before its transaction commits, so it may show
up after a row with a later id or time: the watermarks only move up to SETTLE ago, and
what is newer is counted at each scrape without being stored. Deleting a workflow adds its
history that is not stored yet to the aggregate, in the deleting transaction
(`count_deleted`), so that no counter goes backwards; a scrape that races a deletion could
still see it half-done, so a process never reports a counter lower than it did before.

Nothing here runs in a task's job: the hot path pays no statement for it.
"""

import bisect
import functools
import json
import math
import threading
from collections import Counter
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import stats
from .attempts import time_of
from .models import BrokenChain, MetricCounter, MetricsHead, State, Task, Transition, Workflow

# How long a row may take from getting its id or end time to being committed (a
# transaction, SQLite's wait for its write lock included), plus the clocks' drift between
# machines: older rows are stored, newer ones counted afresh at each scrape.
SETTLE = timedelta(seconds=60)
# Seconds; an attempt's duration is its start to its end, whatever its outcome.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, math.inf)
BOUNDS = [floatToGoString(bound) for bound in BUCKETS]
MICROSECOND = timedelta(microseconds=1)

# The concurrency keys with series of their own; the rest are summed under OTHER_KEY, and the
# tasks of workflows without a key are counted under NO_KEY.
KEY_SERIES = 20
OTHER_KEY = "__other__"
NO_KEY = "__none__"

TRANSITIONS = "orchestrator_transitions"
ATTEMPTS = "orchestrator_task_attempts"
DURATION = "orchestrator_task_duration_seconds"

# Tasks whose attempts one query reads.
BATCH = 2000
UNFINISHED = (Task.Status.PENDING, Task.Status.QUEUED, Task.Status.RUNNING)

Key = tuple[str, str]  # a series: its sample's name and its labels as sorted JSON


def _key(name: str, **labels) -> Key:
    return _series(name, *sorted(labels.items()))


@functools.lru_cache(maxsize=4096)
def _series(name: str, *labels: tuple[str, str]) -> Key:
    # Cached: the first scrape of a large history makes a key for each of millions of samples.
    return name, json.dumps(dict(labels), sort_keys=True)


class Counts(Counter):
    """Increments of counter series (Key → amount)."""

    def transitions(self, event: str, target: str, count: int) -> None:
        if count:
            self[_key(f"{TRANSITIONS}_total", event=event, target=target)] += count

    def attempts(self, tally: "Attempts") -> "Counts":
        for (task_type, outcome), count in tally.outcomes.items():
            self[_key(f"{ATTEMPTS}_total", type=task_type, outcome=outcome)] += count
        for (task_type, index), count in tally.durations.items():
            self[_key(f"{DURATION}_count", type=task_type)] += count
            for bound in BOUNDS[index:]:  # buckets are cumulative: each one an attempt fits in counts it
                self[_key(f"{DURATION}_bucket", type=task_type, le=bound)] += count
        for task_type, microseconds in tally.microseconds.items():  # the exposition shows seconds
            self[_key(f"{DURATION}_sum", type=task_type)] += microseconds
        return self


class Attempts:
    """Ended attempts, tallied by plain tuples and made into series once (the first scrape
    of a large history tallies millions)."""

    def __init__(self):
        self.outcomes = Counter()  # (type, outcome) → attempts
        self.durations = Counter()  # (type, index of the smallest bucket it fits in) → attempts
        # type → microseconds: whole numbers, so that a sum is the same in any order
        # (stored, or counted afresh) and never seems to go backwards.
        self.microseconds = Counter()

    def add(self, task_type: str, entry: dict, ended: datetime) -> None:
        self.outcomes[task_type, entry.get("outcome", "")] += 1
        started = time_of(entry.get("started_at"))
        if started is not None:
            microseconds = max((ended - started) // MICROSECOND, 0)
            self.durations[task_type, bisect.bisect_left(BUCKETS, microseconds / 1e6)] += 1
            self.microseconds[task_type] += microseconds


# --- Counting the history ------------------------------------------------------------------


def _settled_transition_id(after_id: int, cutoff: datetime) -> int:
    """The highest id up to which every transition above `after_id` is older than `cutoff`."""
    newer = Transition.objects.filter(pk__gt=after_id).aggregate(
        last=Max("pk"), first_unsettled=Min("pk", filter=Q(created_at__gt=cutoff))
    )
    if newer["first_unsettled"] is not None:
        return newer["first_unsettled"] - 1
    return newer["last"] or after_id


def _ended_attempts(after: datetime | None, tasks=None):
    """(task type, attempt entry, end) of every attempt that ended after `after`."""
    tasks = Task.objects.all() if tasks is None else tasks
    if after is not None:
        # A task's finished_at is its latest attempt's end, and is cleared when it is
        # queued again: a task queued since holds an attempt ended at any time. Both
        # halves are read by index (task_finished; the status indexes: a task without
        # finished_at is PENDING, QUEUED or RUNNING).
        tasks = tasks.filter(
            Q(finished_at__gt=after) | Q(status__in=UNFINISHED, finished_at__isnull=True, attempt__gt=0)
        )
    # The ids first, then their attempts in batches: a server-side cursor (iterator()) would
    # have PostgreSQL plan for the first rows, a scan of every task instead of the index.
    ids = list(tasks.order_by().values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH):
        batch = Task.objects.filter(pk__in=ids[start : start + BATCH]).order_by().values_list("type", "attempts")
        yield from _ended_after(after, batch)


def _ended_after(after: datetime | None, tasks):
    for task_type, attempts in tasks:
        for entry in attempts or ():
            ended = time_of(entry.get("finished_at")) if entry.get("outcome") != "running" else None
            if ended is not None and (after is None or ended > after):
                yield task_type, entry, ended


def _stored() -> Counts:
    return Counts({(name, labels): value for name, labels, value in MetricCounter.objects.values_list(
        "name", "labels", "value"
    )})  # fmt: skip


def _store(totals: Counts) -> None:
    rows = [MetricCounter(name=name, labels=labels, value=value) for (name, labels), value in totals.items()]
    MetricCounter.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["name", "labels"], update_fields=["value"]
    )


def count_history(settle: timedelta = SETTLE) -> Counts:
    """Every counter series: the stored aggregate, with what is new added to it (and
    stored, up to `settle` ago), and what is newer still."""
    cutoff = timezone.now() - settle
    live = Counts()
    with transaction.atomic():
        head = MetricsHead.objects.locked()
        totals, added = _stored(), Counts()
        upto = _settled_transition_id(head.transition_id, cutoff)
        rows = Transition.objects.filter(pk__gt=head.transition_id).order_by().values_list("event", "target")
        split = rows.annotate(settled=Count("pk", filter=Q(pk__lte=upto)), newer=Count("pk", filter=Q(pk__gt=upto)))
        for event, target, settled, newer in split:
            added.transitions(event, target, settled)
            live.transitions(event, target, newer)
        until = max(cutoff, head.attempts_until) if head.attempts_until else cutoff
        settled, newer = Attempts(), Attempts()
        for task_type, entry, ended in _ended_attempts(head.attempts_until):
            (settled if ended <= until else newer).add(task_type, entry, ended)
        added.attempts(settled)
        live.attempts(newer)
        if added:
            totals.update(added)
            _store(Counts({key: totals[key] for key in added}))
        if upto != head.transition_id or until != head.attempts_until:
            head.transition_id, head.attempts_until = upto, until
            head.save()
    totals.update(live)
    return totals


def count_deleted(workflow_ids: list) -> None:
    """Add to the stored counters the history of workflows about to be deleted that they
    do not hold yet. Called in the deleting transaction, before the delete, by the
    `workflows_deleting` signal (connected by the app's `ready`)."""
    head = MetricsHead.objects.locked()
    added = Counts()
    newer = Transition.objects.filter(workflow_id__in=workflow_ids, pk__gt=head.transition_id).order_by()
    for event, target, count in newer.values_list("event", "target").annotate(n=Count("pk")):
        added.transitions(event, target, count)
    tally = Attempts()
    tasks = Task.objects.filter(workflow_id__in=workflow_ids)
    for task_type, entry, ended in _ended_attempts(head.attempts_until, tasks):
        tally.add(task_type, entry, ended)
    added.attempts(tally)
    if added:
        totals = _stored()
        totals.update(added)
        _store(Counts({key: totals[key] for key in added}))


# --- Never lower -----------------------------------------------------------------------------

_reported = Counts()
_reported_lock = threading.Lock()


def _never_lower(totals: Counts) -> Counts:
    """`totals`, with no series lower than this process reported it before."""
    with _reported_lock:
        for key, value in totals.items():
            _reported[key] = max(value, _reported[key])
        return Counts(_reported)


# --- The exposition --------------------------------------------------------------------------


def _labels(key: Key) -> dict:
    return json.loads(key[1])


def _counter(name: str, documentation: str, labels: list[str], totals: Counts) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(totals.items()):
        if key[0] == f"{name}_total":
            family.add_metric([_labels(key)[label] for label in labels], value)
    return family


def _histogram(totals: Counts) -> HistogramMetricFamily:
    family = HistogramMetricFamily(DURATION, "Seconds each task attempt ran, by task type.", labels=["type"])
    types = sorted(_labels(key)["type"] for key in totals if key[0] == f"{DURATION}_count")
    for task_type in types:
        buckets = [(bound, totals[_key(f"{DURATION}_bucket", type=task_type, le=bound)]) for bound in BOUNDS]
        family.add_metric([task_type], buckets, totals[_key(f"{DURATION}_sum", type=task_type)] / 1e6)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _key_gauges() -> list[GaugeMetricFamily]:
    """Tasks running and waiting by concurrency key, and the keys' limits: KEY_SERIES keys at
    most, the rest summed (see the module's docstring)."""
    loads = stats.key_loads()
    # A key spelt like one of the reserved labels is counted with the others: its own series
    # would be a second one with the same labels, which Prometheus refuses.
    shown = [load for load in loads if load.key not in (OTHER_KEY, NO_KEY)][:KEY_SERIES]
    others = [load for load in loads if not any(load is listed for listed in shown)]
    rest = stats.summed(others, OTHER_KEY) if others else None
    explained = f"the {KEY_SERIES} keys with the most tasks running or waiting; {OTHER_KEY}: the others summed"
    running = GaugeMetricFamily(
        "orchestrator_key_tasks_running", f"Tasks RUNNING, by concurrency key ({explained}).", labels=["key"]
    )
    waiting = GaugeMetricFamily(
        "orchestrator_key_tasks_waiting",
        f"Tasks QUEUED, whatever they wait for, by concurrency key ({explained}).",
        labels=["key"],
    )
    limits = GaugeMetricFamily(
        "orchestrator_key_max_running",
        "The limit of tasks RUNNING at once, of each concurrency key shown that has one.",
        labels=["key"],
    )
    for load in [*shown, *([rest] if rest else [])]:
        key = load.key or NO_KEY
        running.add_metric([key], load.running)
        waiting.add_metric([key], load.waiting)
        if load.limit is not None and load.limit.max_running is not None:
            limits.add_metric([key], load.limit.max_running)
    keys = _gauge(
        "orchestrator_concurrency_keys",
        "Concurrency keys with tasks running or waiting (no key counts as one).",
        len(loads),
    )
    return [running, waiting, limits, keys]


def _gauges() -> list[GaugeMetricFamily]:
    by_state = GaugeMetricFamily("orchestrator_workflows", "Workflows by state.", labels=["state"])
    for state, count in stats.counts(Workflow.objects.all(), "state", State.values).items():
        by_state.add_metric([state], count)
    cluster = stats.cluster_stats()
    broken = _gauge(
        "orchestrator_audit_broken_workflows",
        "Workflows the engine found with an audit chain that does not verify, and left as they are.",
        BrokenChain.objects.count(),
    )
    gauges = [
        by_state,
        broken,
        *_key_gauges(),
        _gauge("orchestrator_broker_up", "1 if the broker answered.", cluster["broker_available"]),
    ]
    if cluster["broker_available"]:
        gauges += [
            _gauge("orchestrator_queue_depth", "Jobs waiting on the broker, due now.", cluster["queue_depth"]),
            _gauge(
                "orchestrator_queue_delayed",
                "Jobs waiting on the broker for a later due time.",
                cluster["queue_delayed"] or 0,
            ),  # fmt: skip
            _gauge("orchestrator_clusters", "Worker clusters alive, on every machine.", len(cluster["clusters"])),
            _gauge("orchestrator_workers", "Worker processes of the live clusters.", cluster["workers"]),
            _gauge(
                "orchestrator_busy_workers",
                "Worker processes running a task.",
                sum(each["busy_workers"] for each in cluster["clusters"]),
            ),  # fmt: skip
        ]
    return gauges


class _Figures:
    """A prometheus_client collector over figures read once per scrape."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def exposition() -> bytes:
    """The Prometheus text exposition of every figure."""
    totals = _never_lower(count_history())
    families = [
        *_gauges(),
        _counter(TRANSITIONS, "Workflow transitions, by event and target state.", ["event", "target"], totals),
        _counter(ATTEMPTS, "Task attempts that ended, by task type and outcome.", ["type", "outcome"], totals),
        _histogram(totals),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(families))
    return generate_latest(registry)


def on_workflows_deleting(sender, workflows, **kwargs) -> None:
    count_deleted([workflow.pk for workflow in workflows])
