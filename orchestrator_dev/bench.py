"""Helpers of `manage.py bench` (see docs/BENCHMARKS.md): the bare jobs of rounds A and C
and of the chains whose hops it times, the cluster they run on, worker memory sampling,
percentiles, and the synthetic data of `bench --api`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from workflow_orchestrator import audit, queue
from workflow_orchestrator.models import MetricCounter, MetricsHead, State, Task, Transition, Workflow

ROOT = Path(settings.BASE_DIR)
STAMP = struct.Struct("d")

# --- Rounds A and C: bare django-q2 jobs -----------------------------------------------------

CHAIN_STEP = "orchestrator_dev.bench.chain_step"
CHAIN_LENGTH = 4  # steps per round-C chain, as many as a workflow's EXECUTE tasks in round B

_counter: tuple[str, int] | None = None  # (path, fd) of this worker process's open counter file


def stamp(path: str) -> None:
    """Note the calling job's completion time in `path`.

    One 8-byte O_APPEND write per job (a single syscall; appends of this size are atomic on
    a local file system), so the file's size counts the jobs that ran and its largest
    entry is the moment the last one finished. It touches neither the database nor
    Redis, so it costs bare django-q2 nothing that would blur the comparison."""
    global _counter
    if _counter is None or _counter[0] != path:
        if _counter is not None:
            os.close(_counter[1])
        _counter = (path, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    os.write(_counter[1], STAMP.pack(time.time()))


def noop(path: str) -> None:
    """Round A's job: nothing but its stamp."""
    stamp(path)


def chain_step(path: str, step: int) -> None:
    """Round C's job: step `step` of a chain, chained by hand as a django-q2 user would
    without an orchestrator: it puts the next step's job on the broker, then stamps."""
    if step < CHAIN_LENGTH:
        queue.broker().enqueue_many([queue.package(queue.Job(CHAIN_STEP, (path, step + 1), "bench-chain_step"))])
    stamp(path)


# --- Hops: chains of HOP_LINKS links, bare django-q2 against the orchestrator ------------------

HOP_STEP = "orchestrator_dev.bench.hop_step"
HOP_LINKS = 20  # links per chain


def hop_step(path: str, step: int) -> None:
    """Link `step` of a bare django-q2 chain of HOP_LINKS jobs: it stamps its finish, then
    puts the next link's job on the broker as `async_task` would, from inside the job."""
    stamp(path)
    if step < HOP_LINKS:
        queue.broker().enqueue_many([queue.package(queue.Job(HOP_STEP, (path, step + 1), "bench-hop_step"))])


def chain_tasks(links: int = HOP_LINKS) -> list[dict]:
    """`links` noop tasks, each after the one before."""
    return [
        {"name": f"link-{number}", "type": "noop", **({"after": [f"link-{number - 1}"]} if number > 1 else {})}
        for number in range(1, links + 1)
    ]


def hops_ms(finishes: list[float]) -> list[float]:
    """A chain's hops in ms, from its links' finishing times (seconds, in order): each from
    one link's finish to the next link's finish, which with links that do nothing is the
    hand-over from one to the next."""
    return [(after - before) * 1000 for before, after in pairwise(finishes)]


def counted(path: str) -> int:
    try:
        return os.stat(path).st_size // STAMP.size
    except FileNotFoundError:
        return 0


def stamps(path: str) -> list[float]:
    """The stamps in `path`, in the order they were written."""
    data = Path(path).read_bytes()
    usable = len(data) - len(data) % STAMP.size
    return [value for (value,) in STAMP.iter_unpack(data[:usable])]


def last_stamp(path: str) -> float:
    return max(stamps(path))


# --- Figures ----------------------------------------------------------------------------------


def percentile(values, fraction: float) -> float | None:
    """Linear interpolation between closest ranks (the `inclusive` method of statistics)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values) -> float | None:
    return percentile(values, 0.5)


# --- The cluster under test -------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the cluster's main process before exec: get SIGTERM if the bench process dies
    (even by SIGKILL), so that a cluster never outlives the run that started it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Cluster:
    """`manage.py qcluster` in its own session, with this process's environment (so the
    same DATABASE_URL, ORCH_BROKER, ORCH_WORKERS and ORCH_CLUSTER_NAME)."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> Cluster:
        self.log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the main process (it stops its own workers), then SIGKILL to the
        whole process group if it has not stopped within `grace` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def rss_kb(pid: int) -> int | None:
    """The process's resident set size (VmRSS) in kB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler(threading.Thread):
    """Samples VmRSS of the cluster's worker processes every `interval` seconds.

    The workers are the sentinel's children (the sentinel is the only child of the
    cluster's main process) other than its monitor and pusher, whose pids come from
    django-q2's own cluster statistics."""

    def __init__(self, cluster_pid: int, interval: float = 0.25):
        super().__init__(name="rss-sampler", daemon=True)
        self.cluster_pid = cluster_pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time.monotonic(), pid, kB)
        self.sentinel: list[tuple[float, int]] = []  # (time.monotonic(), kB) of the process workers fork from
        self._halt = threading.Event()
        self._helpers: set[int] = set()
        self._helpers_at = 0.0

    def helpers(self) -> set[int]:
        if time.monotonic() - self._helpers_at > 5 or not self._helpers:
            from django_q.status import Stat

            with contextlib.suppress(Exception):
                for stat in Stat.get_all(broker=queue.broker()):
                    if stat.pid == self.cluster_pid:
                        self._helpers = {stat.monitor, stat.pusher}
                        self._helpers_at = time.monotonic()
        return self._helpers

    def worker_pids(self) -> list[int]:
        helpers = self.helpers()
        if not helpers:
            return []
        return [pid for sentinel in children(self.cluster_pid) for pid in children(sentinel) if pid not in helpers]

    def sample(self) -> None:
        now = time.monotonic()
        for sentinel in children(self.cluster_pid):
            kb = rss_kb(sentinel)
            if kb:
                self.sentinel.append((now, kb))
        for pid in self.worker_pids():
            kb = rss_kb(pid)
            if kb:
                self.samples.append((now, pid, kb))

    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval):
                self.sample()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def mark(self) -> float:
        return time.monotonic()

    def summary(self, periods: list[tuple[float, float]], workers: int) -> dict:
        """Worker RSS over the run: the peak; for each period (one round each of A, B and C:
        the same mix of work each time, so a trend across them is growth) the peak, and the
        RSS of the workers started in it when first seen (django-q2 recycles a worker after
        `recycle` jobs: a fresh one starts from a fork of the sentinel, whose RSS is
        reported too); how many worker processes there were."""
        samples = list(self.samples)
        if not samples:
            return {}
        mb = 1024
        first_seen: dict[int, tuple[float, int]] = {}
        for when, pid, kb in samples:
            first_seen.setdefault(pid, (when, kb))

        def peak(start: float, end: float) -> float | None:
            values = [kb for when, _, kb in samples if start <= when <= end]
            return round(max(values) / mb, 1) if values else None

        def fresh(start: float, end: float) -> float | None:
            values = [kb for when, kb in first_seen.values() if start <= when <= end]
            return round(median(values) / mb, 1) if values else None

        sentinel = [kb for _, kb in self.sentinel]
        per_period = [peak(start, end) for start, end in periods]
        return {
            "rss_peak_mb": round(max(kb for _, _, kb in samples) / mb, 1),
            "rss_start_mb": per_period[0],
            "rss_end_mb": per_period[-1],
            "rss_per_round_mb": per_period,
            "rss_fresh_worker_per_round_mb": [fresh(start, end) for start, end in periods],
            "rss_sentinel_start_mb": round(sentinel[0] / mb, 1) if sentinel else None,
            "rss_sentinel_end_mb": round(sentinel[-1] / mb, 1) if sentinel else None,
            "worker_processes_seen": len(first_seen),
            "worker_recycles": max(len(first_seen) - workers, 0),
            "rss_samples": len(samples),
        }


# --- bench --api: synthetic workflows ---------------------------------------------------------

# Each generated workflow's history: ten valid transitions ending in its state, so that
# 100,000 workflows carry 1,000,000 audit rows (the sizes).
RETRIES = ["fail", "retry"]
HISTORIES = {
    State.COMPLETE: ["start", "execute", *RETRIES * 3, "validate", "complete"],
    State.FAILED: ["start", "execute", *RETRIES * 3, "validate", "fail"],
    State.CANCELLED: ["start", "execute", *RETRIES * 3, "validate", "cancel"],
    State.EXECUTE: ["start", "execute", *RETRIES * 4],
}
TRANSITIONS_PER_WORKFLOW = 10
# One in twenty of each: 80 % COMPLETE, 10 % FAILED, 5 % CANCELLED, 5 % still running.
STATE_CYCLE = [State.COMPLETE] * 16 + [State.FAILED] * 2 + [State.CANCELLED, State.EXECUTE]
TARGETS = {"start": State.PREPARE, "execute": State.EXECUTE, "validate": State.VALIDATE, "complete": State.COMPLETE}


def walk(events: list[str]) -> list[tuple[str, str, str]]:
    """(source, target, event) of each event, through the real state machine's edges."""
    state, failed_phase, steps = State.INIT, "", []
    for event in events:
        if event == "fail":
            failed_phase, target = state, State.FAILED
        elif event == "retry":
            target = failed_phase
        elif event == "cancel":
            target = State.CANCELLED
        else:
            target = TARGETS[event]
        steps.append((state, target, event))
        state = target
    return steps


WALKS = {state: walk(events) for state, events in HISTORIES.items()}
assert all(len(steps) == TRANSITIONS_PER_WORKFLOW for steps in WALKS.values())
assert all(steps[-1][1] == state for state, steps in WALKS.items())

TASK_STATUS = {  # (prepare, the EXECUTE task, validate) by final state
    State.COMPLETE: ("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"),
    State.FAILED: ("SUCCEEDED", "SUCCEEDED", "FAILED"),
    State.CANCELLED: ("SUCCEEDED", "SUCCEEDED", "CANCELLED"),
    # PENDING, not QUEUED or RUNNING: recovery must never try to run a synthetic task.
    State.EXECUTE: ("SUCCEEDED", "PENDING", "PENDING"),
}


class Rows:
    """Inserts rows of one model in bulk, each value adapted for the database the way the
    ORM adapts it (constants once, not once per row): PostgreSQL's COPY, one
    `executemany` elsewhere.

    `bulk_create` measured 6,000 rows/s here: it prepares every value of every row through
    its field, which costs more than the insert. This writes the same columns in the same
    representation several times faster (COPY is a further three times faster than
    INSERT on PostgreSQL, whose deferred foreign-key checks run at each batch's commit)."""

    def __init__(self, model, names: list[str]):
        self.fields = [model._meta.get_field(name) for name in names]
        quote = connection.ops.quote_name
        self.table = quote(model._meta.db_table)
        self.columns = ", ".join(quote(field.column) for field in self.fields)
        marks = ", ".join(["%s"] * len(self.fields))
        self.sql = f"INSERT INTO {self.table} ({self.columns}) VALUES ({marks})"

    def insert(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {self.table} ({self.columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany(self.sql, rows)


class Adapt:
    """The database representation of the few non-trivial values the generator writes."""

    def __init__(self):
        self.uuid = Workflow._meta.pk.get_db_prep_value
        self.json_field = Workflow._meta.get_field("input")
        self.datetime = connection.ops.adapt_datetimefield_value
        self.empty = self.json({})
        self.empty_list = self.json([])

    def json(self, value):
        return self.json_field.get_db_prep_save(value, connection)

    def id(self, value):
        return self.uuid(value, connection)

    def when(self, value):
        return None if value is None else self.datetime(value)


def attempt_entry(status: str, began, ended) -> dict:
    """A generated task's one attempt, as the engine records it in `Task.attempts`."""
    return {
        "attempt": 1,
        "worker": "",
        "started_at": began.isoformat(),
        "finished_at": ended.isoformat(),
        "outcome": status.lower(),
        "error": "",
    }


WORKFLOW_COLUMNS = [
    "id", "name", "definition", "state", "mode", "input", "results", "error", "retries", "failed_phase",
    "idempotency_key", "idempotency_scope", "fingerprint", "created_by", "created_at", "updated_at", "started_at",
    "finished_at", "unfinished", "last_seq", "last_digest", "head_mac",
]  # fmt: skip
TASK_COLUMNS = [
    "workflow", "phase", "position", "name", "type", "params", "status", "attempt", "attempt_offset",
    "max_attempts", "timeout", "result", "error", "queued_at", "started_at", "finished_at", "lease_expires_at",
    "worker", "after", "waiting", "dependents", "attempts",
]  # fmt: skip
TRANSITION_COLUMNS = [
    "workflow", "seq", "source", "target", "event", "actor", "actor_label", "reason", "data", "created_at", "digest",
]  # fmt: skip
TASKS = (  # (phase, name, type) of each generated workflow's tasks
    (State.PREPARE, "prepare", "default.prepare"),
    (State.EXECUTE, "noop-1", "noop"),
    (State.VALIDATE, "validate", "default.validate"),
)


@dataclass
class Generator:
    """Bulk-inserts synthetic workflows, three tasks each, and their audit rows with real
    digest chains and signed heads (`workflow_orchestrator.audit`, so `audit.verify` accepts them), in
    batches of `batch` workflows per transaction."""

    owner: object
    tag: str
    span: timedelta = timedelta(days=30)
    batch: int = 5000
    made: int = 0
    rows: int = 0
    transitions: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        self.origin = timezone.now() - self.span
        self.adapt = Adapt()
        self.tables = (Rows(Workflow, WORKFLOW_COLUMNS), Rows(Task, TASK_COLUMNS), Rows(Transition, TRANSITION_COLUMNS))

    def _rows(self, index: int, state: str, steps, total: int) -> tuple:
        adapt, when = self.adapt, self.adapt.when
        pk = uuid4()
        workflow_id = adapt.id(pk)
        created = self.origin + self.span * (index / max(total, 1))
        retries = sum(1 for _, _, event in steps if event == "retry")
        failed_phase = State.VALIDATE if state == State.FAILED else ""
        finished = created + timedelta(seconds=len(steps)) if state != State.EXECUTE else None
        history, previous = [], ""
        for seq, (source, target, event) in enumerate(steps, start=1):
            at = created + timedelta(seconds=seq)
            row = SimpleNamespace(
                workflow_id=pk, seq=seq, source=source, target=target, event=event, actor_id=None,
                actor_label="worker", reason="", data={}, created_at=at,
            )  # fmt: skip
            previous = audit.digest(row, previous)
            history.append(
                (workflow_id, seq, source, target, event, None, "worker", "", adapt.empty, when(at), previous)
            )
        workflow = (
            workflow_id, f"{self.tag}-{index}", "default", state, "auto", adapt.json({"i": index}), adapt.empty,
            "validate: synthetic failure" if state == State.FAILED else "", retries, failed_phase,
            None, "", "", self.owner.pk, when(created), when(finished or created), when(created + timedelta(seconds=1)),
            when(finished), int(state == State.EXECUTE), len(steps), previous,
            audit.head_mac(SimpleNamespace(pk=pk, state=state, last_seq=len(steps), last_digest=previous)),
        )  # fmt: skip
        tasks = []
        for position, ((phase, name, kind), status) in enumerate(zip(TASKS, TASK_STATUS[state], strict=True)):
            ran = status != "PENDING"
            began, ended = created + timedelta(seconds=position + 1), created + timedelta(seconds=position + 2)
            attempts = [attempt_entry(status, began, ended)] if ran else []
            tasks.append(
                (
                    workflow_id,
                    phase,
                    position,
                    name,
                    kind,
                    adapt.empty,
                    status,
                    int(ran),
                    0,
                    3,
                    300.0,
                    None,
                    "",
                    when(created + timedelta(seconds=position)) if ran else None,
                    when(began) if ran else None,
                    when(ended) if ran else None,
                    None,
                    "",
                    adapt.empty_list,
                    0,
                    0,
                    adapt.json(attempts),
                )  # fmt: skip
            )
        return workflow, tasks, history, pk

    def long_history(self, transitions: int = 50):
        """One COMPLETE workflow with `transitions` audit rows (an even number ≥ 4); its id."""
        started = time.perf_counter()
        steps = walk(["start", "execute", *RETRIES * ((transitions - 4) // 2), "validate", "complete"])
        workflow, tasks, history, pk = self._rows(self.made, State.COMPLETE, steps, self.made + 1)
        self._insert([workflow], tasks, history, started)
        return pk

    def grow(self, to: int, total: int, progress=None) -> None:
        """Add workflows until `to` of them exist (counting those made before)."""
        while self.made < to:
            started = time.perf_counter()
            count = min(self.batch, to - self.made)
            workflows, tasks, history = [], [], []
            for index in range(self.made, self.made + count):
                state = STATE_CYCLE[index % len(STATE_CYCLE)]
                workflow, its_tasks, its_history, _ = self._rows(index, state, WALKS[state], total)
                workflows.append(workflow)
                tasks += its_tasks
                history += its_history
            self._insert(workflows, tasks, history, started)
            if progress:
                progress(count)

    def _insert(self, workflows, tasks, history, started: float) -> None:
        """Insert one batch in one transaction; `seconds` counts building and inserting."""
        with transaction.atomic():
            for table, rows in zip(self.tables, (workflows, tasks, history), strict=True):
                table.insert(rows)
        self.seconds += time.perf_counter() - started
        self.made += len(workflows)
        self.transitions += len(history)
        self.rows += len(workflows) + len(tasks) + len(history)


def analyze() -> None:
    """Refresh the planner's statistics after a bulk load, as PostgreSQL's autovacuum would
    shortly do by itself (SQLite keeps none unless asked, and is left as it is)."""
    if connection.vendor == "postgresql":
        tables = [model._meta.db_table for model in (Workflow, Task, Transition)]
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {', '.join(tables)}")


def vacuum() -> None:
    """Give PostgreSQL back the space of the deleted rows at once: a million dead audit
    rows would otherwise slow down whatever runs next on the database until autovacuum
    gets round to them."""
    if connection.vendor == "postgresql" and connection.get_autocommit():
        tables = [model._meta.db_table for model in (Workflow, Task, Transition)]
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {', '.join(tables)}")


def delete_generated(owner) -> int:
    """Delete the workflows of `owner` with their tasks and audit rows (children first, each
    in one statement)."""
    Transition.objects.filter(workflow__created_by=owner)._raw_delete(connection.alias)
    Task.objects.filter(workflow__created_by=owner)._raw_delete(connection.alias)
    return Workflow.objects.filter(created_by=owner)._raw_delete(connection.alias)


@contextlib.contextmanager
def metrics_kept():
    """The stored metrics (counters and watermarks) as they were before, afterwards: a
    scrape during the run counts generated workflows, which delete_generated removes
    without counting them as deleted history."""
    counters = list(MetricCounter.objects.all())
    heads = list(MetricsHead.objects.all())
    try:
        yield
    finally:
        with transaction.atomic():
            MetricCounter.objects.all().delete()
            MetricCounter.objects.bulk_create(counters)
            MetricsHead.objects.all().delete()
            MetricsHead.objects.bulk_create(heads)
