"""Helpers of `manage.py bench` (see docs/BENCHMARKS.md): the bare django-q2 jobs it
compares the engine with, the cluster they run on, worker memory, the running tasks of a
limited key, percentiles, the waiting tasks the claim is timed against, and the synthetic
workflows of `bench --api`, written into the engine's own columns."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import statistics
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

import psutil
from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from workflow_orchestrator import attempts, audit, queue
from workflow_orchestrator.backends import get_backend
from workflow_orchestrator.conf import app_settings
from workflow_orchestrator.models import (
    ConcurrencyLimit,
    MetricCounter,
    MetricsHead,
    State,
    Task,
    Transition,
    Workflow,
)
from workflow_orchestrator.statements import INSERTED_TASK_COLUMNS, TRANSITION_COLUMNS, WORKFLOW_COLUMNS

ROOT = Path(settings.BASE_DIR)
STAMP = struct.Struct("d")

# --- Bare django-q2 jobs: round A's noop, round C's chains, the hops' chains --------------------

CHAIN_STEP = "orchestrator_dev.bench.chain_step"
CHAIN_LENGTH = 4  # steps per round-C chain, as many as a workflow's EXECUTE tasks in round B
HOP_LINKS = 20  # links per chain timed hop by hop

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


def chain_step(path: str, step: int, links: int) -> None:
    """Step `step` of a chain of `links` jobs, chained by hand as a django-q2 user would
    without an orchestrator: it stamps its finish, then puts the next step's job on the
    broker as `async_task` would, from inside the job."""
    stamp(path)
    if step < links:
        queue.broker().enqueue_many([queue.package(queue.Job(CHAIN_STEP, (path, step + 1, links), "bench-chain"))])


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


def stamps(path: str) -> list[float]:
    """The stamps in `path`, in the order they were written."""
    with contextlib.suppress(FileNotFoundError):
        data = Path(path).read_bytes()
        return [value for (value,) in STAMP.iter_unpack(data[: len(data) - len(data) % STAMP.size])]
    return []


def counted(path: str) -> int:
    with contextlib.suppress(FileNotFoundError):
        return os.stat(path).st_size // STAMP.size
    return 0


def percentile(values, fraction: float) -> float | None:
    """Linear interpolation between closest ranks (statistics' `inclusive` method)."""
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered[0] if ordered else None
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]


# --- The cluster under test -------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the cluster's main process before exec: get SIGTERM if the bench process dies
    (even by SIGKILL), so that a cluster never outlives the run that started it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Cluster:
    """`manage.py qcluster` in its own session, with this process's environment (so the
    same DATABASE_URL, ORCH_BROKER, ORCH_WORKERS and ORCH_CLUSTER_NAME), but for `env`."""

    def __init__(self, log_path: Path, **env: str):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the main process (it stops its own workers), then SIGKILL to the
        whole process group if it has not stopped within `grace` seconds."""
        if self.alive():
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    @contextlib.contextmanager
    def held(self):
        """The whole cluster stopped (SIGSTOP to its process group: workers, pusher,
        monitor) and continued afterwards: work sent meanwhile waits for it all at once,
        as a burst that arrives faster than any cluster could take it would."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.process.pid, signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def pids(self) -> set[int]:
        """The process ids of the cluster: its main process and every process under it."""
        with contextlib.suppress(psutil.NoSuchProcess):
            main = psutil.Process(self.process.pid)
            return {main.pid, *(child.pid for child in main.children(recursive=True))}
        return set()


def _children(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children()
    return []


def _rss_kb(process: psutil.Process) -> int | None:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.memory_info().rss // 1024
    return None


class RssSampler(threading.Thread):
    """Samples the resident set size of the cluster's worker processes every `interval`
    seconds: the sentinel's children (the sentinel is the only child of the cluster's main
    process) other than its monitor and pusher, whose pids django-q2's cluster statistics
    give."""

    def __init__(self, cluster_pid: int, interval: float = 0.25):
        super().__init__(name="rss-sampler", daemon=True)
        self.cluster_pid = cluster_pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time.monotonic(), pid, kB)
        self.sentinel: list[int] = []  # kB of the process workers fork from
        self._halt = threading.Event()
        self._helpers: set[int] = set()

    def helpers(self) -> set[int]:
        if not self._helpers:
            from django_q.status import Stat

            with contextlib.suppress(Exception):
                for stat in Stat.get_all(broker=queue.broker()):
                    if stat.pid == self.cluster_pid:
                        self._helpers = {stat.monitor, stat.pusher}
        return self._helpers

    def sample(self) -> None:
        now, helpers = time.monotonic(), self.helpers()
        for sentinel in _children(self.cluster_pid):
            self.sentinel += filter(None, [_rss_kb(sentinel)])
            for worker in _children(sentinel.pid) if helpers else []:
                if worker.pid not in helpers and (kb := _rss_kb(worker)):
                    self.samples.append((now, worker.pid, kb))

    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval):
                self.sample()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def summary(self, periods: list[tuple[float, float]], workers: int) -> dict:
        """Worker RSS over the run: the peak; for each period (one round each of A, B and C:
        the same mix of work each time, so a trend across them is growth) the peak, and the
        RSS of the workers started in it when first seen (django-q2 recycles a worker after
        `recycle` jobs: a fresh one starts from a fork of the sentinel, whose RSS is
        reported too); how many worker processes there were."""
        samples = list(self.samples)
        if not samples:
            return {}
        first_seen: dict[int, tuple[float, int]] = {}
        for when, pid, kb in samples:
            first_seen.setdefault(pid, (when, kb))

        def mb(kb: float | None) -> float | None:
            return None if kb is None else round(kb / 1024, 1)

        def within(pairs, start: float, end: float) -> list[int]:
            return [kb for when, kb in pairs if start <= when <= end]

        peaks = [mb(max(within([(when, kb) for when, _, kb in samples], *period), default=None)) for period in periods]
        fresh = [within(first_seen.values(), *period) for period in periods]
        return {
            "rss_peak_mb": mb(max(kb for _, _, kb in samples)),
            "rss_start_mb": peaks[0],
            "rss_end_mb": peaks[-1],
            "rss_per_round_mb": peaks,
            "rss_fresh_worker_per_round_mb": [mb(statistics.median(kbs)) if kbs else None for kbs in fresh],
            "rss_sentinel_start_mb": mb(self.sentinel[0]) if self.sentinel else None,
            "rss_sentinel_end_mb": mb(self.sentinel[-1]) if self.sentinel else None,
            "worker_processes_seen": len(first_seen),
            "worker_recycles": max(len(first_seen) - workers, 0),
            "rss_samples": len(samples),
        }


class RunningSampler(threading.Thread):
    """Counts, every `interval` seconds on a connection of its own, the RUNNING tasks of
    concurrency key `key` (each count one statement, so one snapshot), and reads its
    limit's own counter of them: the largest of each is what a limit must bound."""

    def __init__(self, key: str, interval: float = 0.02):
        super().__init__(name="running-sampler", daemon=True)
        self.key = key
        self.interval = interval
        self.samples = 0
        self.peak = 0  # RUNNING tasks of the key, counted
        self.counter_peak: int | None = None  # the limit's `running`, while it has one
        self._halt = threading.Event()

    def sample(self) -> None:
        running = Task.objects.filter(status=Task.Status.RUNNING, concurrency_key=self.key).count()
        counter = ConcurrencyLimit.objects.filter(key=self.key).values_list("running", flat=True).first()
        self.samples += 1
        self.peak = max(self.peak, running)
        if counter is not None:
            self.counter_peak = max(self.counter_peak or 0, counter)

    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval):
                self.sample()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._halt.set()
        self.join()


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
# One in twenty of each: 80 % COMPLETE, 10 % FAILED, 5 % CANCELLED, 5 % still running.
LABEL_CUSTOMERS = 1000  # a generated workflow's customer label is one of this many: each has 1 in 1,000
STATE_CYCLE = [State.COMPLETE] * 16 + [State.FAILED] * 2 + [State.CANCELLED, State.EXECUTE]
TARGETS = {"start": State.PREPARE, "execute": State.EXECUTE, "validate": State.VALIDATE, "complete": State.COMPLETE}
TASKS = (  # (phase, name, type) of each generated workflow's tasks
    (State.PREPARE, "prepare", "default.prepare"),
    (State.EXECUTE, "noop-1", "noop"),
    (State.VALIDATE, "validate", "default.validate"),
)
TASK_STATUS = {  # (prepare, the EXECUTE task, validate) by final state
    State.COMPLETE: ("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"),
    State.FAILED: ("SUCCEEDED", "SUCCEEDED", "FAILED"),
    State.CANCELLED: ("SUCCEEDED", "SUCCEEDED", "CANCELLED"),
    # PENDING, not QUEUED or RUNNING: recovery must never try to run a synthetic task.
    State.EXECUTE: ("SUCCEEDED", "PENDING", "PENDING"),
}


def walk(events: list[str]) -> list[tuple[str, str, str]]:
    """(source, target, event) of each event, through the real state machine's edges."""
    state, failed_phase, steps = State.INIT, "", []
    for event in events:
        if event == "fail":
            failed_phase, target = state, State.FAILED
        elif event == "retry":
            target = failed_phase
        else:
            target = State.CANCELLED if event == "cancel" else TARGETS[event]
        steps.append((state, target, event))
        state = target
    return steps


WALKS = {state: walk(events) for state, events in HISTORIES.items()}


class Rows:
    """Inserts rows into the columns the engine's own create statement writes
    (workflow_orchestrator.statements), with PostgreSQL's COPY or one `executemany`. A row
    gives the values it sets; every other column gets its field's default. Values are
    adapted by their fields as the ORM adapts them, but only where the database needs it
    (times, UUIDs, JSON) and defaults once: `bulk_create`, which prepares every value of
    every row, measured 6,000 rows/s here, less than the insert costs."""

    ADAPTED = {"DateTimeField", "UUIDField", "JSONField", "ForeignKey"}

    def __init__(self, model, columns: tuple[str, ...]):
        fields = [model._meta.get_field(column.removesuffix("_id")) for column in columns]
        self.columns = columns
        self.defaults = {column: field.get_db_prep_save(field.get_default(), connection)
                         for column, field in zip(columns, fields, strict=True)}  # fmt: skip
        self.adapt = {column: field.get_db_prep_save for column, field in zip(columns, fields, strict=True)
                      if field.get_internal_type() in self.ADAPTED}  # fmt: skip
        self.table = model._meta.db_table
        self.rows: list[tuple] = []

    def add(self, **values) -> None:
        assert not values.keys() - self.defaults.keys(), (
            f"not a column the engine writes: {values.keys() - self.defaults.keys()}"
        )
        for column, value in values.items():
            if column in self.adapt:
                values[column] = self.adapt[column](value, connection)
        self.rows.append(
            tuple(values[column] if column in values else self.defaults[column] for column in self.columns)
        )

    def insert(self) -> int:
        rows, self.rows = self.rows, []
        names = ", ".join(self.columns)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {self.table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            elif rows:
                cursor.executemany(
                    f"INSERT INTO {self.table} ({names}) VALUES ({', '.join(['%s'] * len(rows[0]))})", rows
                )
        return len(rows)


def labels(index: int) -> dict[str, str]:
    """A generated workflow's labels: one customer in LABEL_CUSTOMERS, and an environment."""
    return {"customer": f"c{index % LABEL_CUSTOMERS}", "env": ("prod", "staging")[index % 2]}


@dataclass
class Generator:
    """Bulk-inserts synthetic workflows, three tasks each, and their audit rows with real
    digest chains and signed heads (`workflow_orchestrator.audit`, so `audit.verify` accepts
    them), in batches of `batch` workflows per transaction."""

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
        self.workflows = Rows(Workflow, WORKFLOW_COLUMNS)
        self.tasks = Rows(Task, INSERTED_TASK_COLUMNS)
        self.history = Rows(Transition, TRANSITION_COLUMNS)

    def _add(self, index: int, state: str, steps, total: int):
        """One workflow's rows, added to the batch; its id."""
        pk = uuid4()
        created = self.origin + self.span * (index / max(total, 1))
        previous = ""
        for seq, (source, target, event) in enumerate(steps, start=1):
            at = created + timedelta(seconds=seq)
            row = SimpleNamespace(workflow_id=pk, seq=seq, source=source, target=target, event=event, actor_id=None,
                                  actor_label="worker", reason="", data={}, created_at=at)  # fmt: skip
            previous = audit.digest(row, previous)
            self.history.add(**{**vars(row), "digest": previous})
        finished = created + timedelta(seconds=len(steps)) if state != State.EXECUTE else None
        self.workflows.add(
            id=pk, name=f"{self.tag}-{index}", state=state, input={"i": index}, labels=labels(index),
            error="validate: synthetic failure" if state == State.FAILED else "",
            retries=sum(event == "retry" for _, _, event in steps),
            failed_phase=State.VALIDATE if state == State.FAILED else "", created_by_id=self.owner.pk,
            created_at=created, updated_at=finished or created, started_at=created + timedelta(seconds=1),
            finished_at=finished, unfinished=int(state == State.EXECUTE), last_seq=len(steps), last_digest=previous,
            head_mac=audit.head_mac(SimpleNamespace(pk=pk, state=state, last_seq=len(steps), last_digest=previous)),
        )  # fmt: skip
        for position, ((phase, name, kind), status) in enumerate(zip(TASKS, TASK_STATUS[state], strict=True)):
            ran = {}
            if status != "PENDING":
                began, ended = created + timedelta(seconds=position + 1), created + timedelta(seconds=position + 2)
                entry = attempts.ended(attempts.started(1, "", began), status.lower(), ended)
                queued = created + timedelta(seconds=position)
                ran = {
                    "attempt": 1,
                    "queued_at": queued,
                    "started_at": began,
                    "finished_at": ended,
                    "attempts": [entry],
                }
            self.tasks.add(workflow_id=pk, phase=phase, position=position, name=name, type=kind, status=status,
                           timeout=300.0, **ran)  # fmt: skip
        return pk

    def long_history(self, transitions: int = 50):
        """One COMPLETE workflow with `transitions` audit rows (an even number ≥ 4); its id."""
        steps = walk(["start", "execute", *RETRIES * ((transitions - 4) // 2), "validate", "complete"])
        started = time.perf_counter()
        pk = self._add(self.made, State.COMPLETE, steps, self.made + 1)
        self._insert(started)
        return pk

    def grow(self, to: int, total: int, progress=None) -> None:
        """Add workflows until `to` of them exist (counting those made before)."""
        while self.made < to:
            started, count = time.perf_counter(), min(self.batch, to - self.made)
            for index in range(self.made, self.made + count):
                state = STATE_CYCLE[index % len(STATE_CYCLE)]
                self._add(index, state, WALKS[state], total)
            self._insert(started)
            if progress:
                progress(count)

    def _insert(self, started: float) -> None:
        """Insert the batch in one transaction; `seconds` counts building and inserting."""
        with transaction.atomic():
            workflows, tasks, transitions = self.workflows.insert(), self.tasks.insert(), self.history.insert()
        self.rows += workflows + tasks + transitions
        self.seconds += time.perf_counter() - started
        self.made += workflows
        self.transitions += transitions


def vacuum(*, full: bool) -> None:
    """PostgreSQL: refresh the planner's statistics after a bulk load, as autovacuum would
    shortly do by itself; with `full`, also give back the space of deleted rows at once (a
    million dead audit rows would slow whatever runs next). SQLite is left as it is."""
    if connection.vendor == "postgresql" and (not full or connection.get_autocommit()):
        tables = ", ".join(model._meta.db_table for model in (Workflow, Task, Transition))
        with connection.cursor() as cursor:
            cursor.execute(f"{'VACUUM ANALYZE' if full else 'ANALYZE'} {tables}")


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
    counters, heads = list(MetricCounter.objects.all()), list(MetricsHead.objects.all())
    try:
        yield
    finally:
        with transaction.atomic():
            for model, rows in ((MetricCounter, counters), (MetricsHead, heads)):
                model.objects.all().delete()
                model.objects.bulk_create(rows)


# --- The claim's cost: the claim statement against many waiting tasks ---------------------

CLAIM_KEYS = 10  # the waiting tasks' concurrency keys (without limits), which take turns


class Waiting:
    """QUEUED `noop` tasks, bulk-inserted (as Generator inserts its rows) for timing the
    claim against: each in a workflow of its own in EXECUTE, as a flood of one-task
    workflows leaves them, the workflows' concurrency keys cycling through CLAIM_KEYS keys,
    so that the database's trigger gives them interleaved turns as it would to keys
    sending work side by side. Nothing may run them: the bench times the claim while no
    cluster runs."""

    def __init__(self, tag: str, batch: int = 5000):
        self.name = f"{tag}-claim"
        self.keys = [f"{tag}-claim-{number}" for number in range(CLAIM_KEYS)]
        self.batch = batch
        self.waiting = 0  # QUEUED now: inserted, less those the timed claims took
        self.made = 0
        self.seconds = 0.0
        self.workflows = Rows(Workflow, WORKFLOW_COLUMNS)
        self.tasks = Rows(Task, INSERTED_TASK_COLUMNS)

    def fill(self, to: int) -> None:
        """Insert tasks until `to` of them wait, `batch` workflows per transaction."""
        started = time.perf_counter()
        while self.waiting < to:
            count, now = min(self.batch, to - self.waiting), timezone.now()
            for _ in range(count):
                self._add(now)
            with transaction.atomic():
                self.workflows.insert()
                self.tasks.insert()
            self.waiting += count
        self.seconds += time.perf_counter() - started
        vacuum(full=False)  # as autovacuum would after a bulk load (PostgreSQL)

    def _add(self, now) -> None:
        pk, key = uuid4(), self.keys[self.made % CLAIM_KEYS]
        self.workflows.add(id=pk, name=self.name, state=State.EXECUTE, created_at=now, updated_at=now,
                           started_at=now, unfinished=1, concurrency_key=key)  # fmt: skip
        self.tasks.add(workflow_id=pk, phase=State.EXECUTE, position=1, name="noop-1", type="noop", status="QUEUED",
                       attempt=1, timeout=app_settings.ORCH_TASK_TIMEOUT, queued_at=now - timedelta(seconds=1),
                       concurrency_key=key)  # fmt: skip
        self.made += 1

    def claim_params(self) -> dict:
        """The parameters a delivery's claim has (no task of its own, the project's budget)."""
        now = timezone.now()
        lease = now + timedelta(seconds=app_settings.ORCH_LEASE_SECONDS)
        budget = queue.budget(app_settings.ORCH_TASK_TIMEOUT)
        return get_backend().claim_params(None, None, "bench-claim", now, lease, budget, False)

    def time_claims(self, count: int) -> tuple[list[float], int]:
        """`count` claims, one after the other, each its own transaction as a worker's is:
        the ms each statement took (sent, run, its rows read back), and how many claimed a
        task (each then RUNNING, no longer waiting)."""
        sql, times, claimed = get_backend().sql["claim"], [], 0
        for _ in range(count):
            params = self.claim_params()
            with connection.cursor() as cursor:
                started = time.perf_counter()
                cursor.execute(sql, params)
                rows = cursor.fetchall()
                times.append((time.perf_counter() - started) * 1000)
            claimed += len(rows)
        self.waiting -= claimed
        return times, claimed

    @contextlib.contextmanager
    def blocked(self):
        """Every waiting task's key at its limit (a limit of 1 with 1 running), so that a
        claim finds nothing: it must look past all of them to say so."""
        ConcurrencyLimit.objects.bulk_create(ConcurrencyLimit(key=key, max_running=1, running=1) for key in self.keys)
        try:
            yield
        finally:
            ConcurrencyLimit.objects.filter(key__in=self.keys).delete()

    def plan(self) -> list[str]:
        """The claim's plan: PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)`, run in a
        transaction that is rolled back (so it claims nothing); SQLite's `EXPLAIN QUERY PLAN`."""
        sql = get_backend().sql["claim"]
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", self.claim_params())
                lines = [line for (line,) in cursor.fetchall()]
            else:
                cursor.execute(f"EXPLAIN QUERY PLAN {sql}", self.claim_params())
                lines = [detail for *_, detail in cursor.fetchall()]
            transaction.set_rollback(True)
        return lines

    @staticmethod
    def full_reads(plan: list[str]) -> list[str]:
        """The steps of a plan that read a whole table (PostgreSQL's `Seq Scan`, SQLite's
        `SCAN` without an index) or sort what it found (SQLite's `USE TEMP B-TREE`),
        without their costs: what a claim should do only with a table of a few rows."""
        whole = re.compile(r"Seq Scan on |^SCAN (?!.* USING (COVERING )?INDEX )|^USE TEMP B-TREE")
        return [line.strip().removeprefix("->  ").split("  (")[0] for line in plan if whole.search(line.strip())]

    def delete(self) -> None:
        """Delete the waiting tasks and their workflows (children first, each in one statement)."""
        Task.objects.filter(workflow__name=self.name)._raw_delete(connection.alias)
        Workflow.objects.filter(name=self.name)._raw_delete(connection.alias)
        ConcurrencyLimit.objects.filter(key__in=self.keys).delete()
        vacuum(full=True)


# --- Work spread over two clusters (bench --spread) -------------------------------------------


def idle_waits(tasks: list[tuple[float, float, float]], workers: int) -> list[float]:
    """For each task, given as (runnable, started, finished) in seconds, how long it waited
    to start while fewer than `workers` tasks ran: the part of its wait that a free worker,
    in any cluster, could have spared it. A worker runs one task at a time, so the tasks
    running at a moment are the busy workers."""
    changes = sorted([(started, 1) for _, started, _ in tasks] + [(finished, -1) for _, _, finished in tasks])
    idle, busy, since = [], 0, float("-inf")
    for moment, step in changes:
        if busy < workers and moment > since:
            idle.append((since, moment))
        busy += step
        since = moment
    idle.append((since, float("inf")))  # after the last finish, every worker is free
    return [
        sum(max(0.0, min(started, end) - max(runnable, begin)) for begin, end in idle if begin < started)
        for runnable, started, _ in tasks
    ]
