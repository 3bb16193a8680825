"""`manage.py bench`: the orchestrator against bare django-q2 (single jobs, and chains of
jobs that each enqueue the next, also timed hop by hop against chains of dependent tasks)
on one cluster, a noisy neighbour against a limited key, the claim's cost against many
waiting tasks, and the API and admin at scale (`--api`).
What it measures and how: docs/BENCHMARKS.md.

django-q2 names its queue (and signs its jobs) after the cluster name, which the
settings read from ORCH_CLUSTER_NAME once, at start-up. So that a run has a queue of its
own, `bench` starts itself again as a child process with ORCH_CLUSTER_NAME=bench<pid>;
that child starts `manage.py qcluster` with the same environment, measures, and stops
it. Both processes therefore share the run's queue and nothing else's.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from statistics import median

import psutil
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, reset_queries
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Max, Q
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from django_q.conf import Conf
from django_q.status import Stat
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator_dev.bench import (
    CHAIN_LENGTH,
    CHAIN_STEP,
    HOP_LINKS,
    ROOT,
    STATE_CYCLE,
    Cluster,
    Generator,
    RssSampler,
    RunningSampler,
    Waiting,
    chain_tasks,
    counted,
    delete_generated,
    hops_ms,
    idle_waits,
    metrics_kept,
    percentile,
    stamps,
    vacuum,
)
from workflow_orchestrator import audit, queue, services
from workflow_orchestrator.models import Actor, State, Task, Workflow, WorkflowDeletion

RUN_ENV = "ORCH_BENCH_RUN"  # set by the launcher to the run's cluster name
NOOP_JOB = "orchestrator_dev.bench.noop"
FOUR_NOOPS = [{"name": f"noop-{i}", "type": "noop"} for i in range(1, 5)]
TASKS_PER_WORKFLOW = len(FOUR_NOOPS) + 2  # PREPARE and VALIDATE run a task each too
ONE_NOOP = [{"type": "noop"}]
# neighbour_limit None: as many as the cluster has workers.
SIZES = {
    "default": {"rounds": 3, "jobs": 3000, "workflows": 250, "chains": 250, "latency_samples": 30, "hop_chains": 20,
                "flood": 2000, "neighbours": 20, "neighbour_limit": None, "claims": 50, "claim_small": 1000,
                "claim_large": 100_000, "api_size": 100_000, "spread_workflows": 5, "spread_tasks": 16,
                "spread_workers": 8, "spread_stream": 8, "spread_interval_ms": 700},
    "quick": {"rounds": 2, "jobs": 300, "workflows": 30, "chains": 30, "latency_samples": 8, "hop_chains": 3,
              "flood": 200, "neighbours": 5, "neighbour_limit": None, "claims": 20, "claim_small": 1000,
              "claim_large": 10_000, "api_size": 2_000, "spread_workflows": 2, "spread_tasks": 6,
              "spread_workers": 2, "spread_stream": 3, "spread_interval_ms": 700},
}  # fmt: skip
API_SMALL = 1000
API_LONG_HISTORY = 50
API_REQUESTS = {
    "list": "/workflows/?state=COMPLETE",
    "list by label": "/workflows/?label=customer:c7",
    "list by two labels": "/workflows/?label=customer:c7&label=env:staging",
    "detail": "/workflow/{id}",
    "changelist": "/admin/workflow_orchestrator/workflow/",
    "overview": "/admin/workflow_orchestrator/workflow/dashboard/",
    "metrics": "/metrics",
}
# The bearer token of /metrics during the run.
METRICS_TOKEN = secrets.token_urlsafe(16)
STALL_SECONDS = 90  # give up when nothing has progressed for this long
SPREAD_CLUSTERS = 2
SPREAD_TASK_SECONDS = 1  # each task of `bench --spread` sleeps this long
SPREAD_SLOW_WAIT = 0.5  # a wait (with a worker free somewhere) longer than this counts as slow
ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)
# `bench --retention`: ended workflows purged (--quick: fewer), generated as having
# finished more than RETENTION_AGE ago, and purged with that cutoff.
RETENTION_SIZES = {"default": 10_000, "quick": 1_000}
RETENTION_AGE = timedelta(days=365)


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1)}  # fmt: skip
    with contextlib.suppress(OSError):  # psutil does not name the CPU
        models = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        info["cpu_model"] = models[0] if models else platform.processor()
    return info


def setup() -> dict:
    db = settings.DATABASES["default"]
    return {
        "database": connection.vendor,
        "database_name": str(db["NAME"]),
        "broker": settings.ORCH_BROKER,
        "workers": settings.ORCH_WORKERS,
        "poll": settings.Q_CLUSTER["poll"],
        "conn_max_age": db.get("CONN_MAX_AGE", 0),
        "recycle": settings.Q_CLUSTER.get("recycle"),
        "save_limit": settings.Q_CLUSTER.get("save_limit"),
        "debug": settings.DEBUG,
        "machine": machine(),
    }


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def spread(prefix: str, values: list[float], digits: int) -> dict:
    """The p50 and p95 of `values` (ms) as `<prefix>_p50_ms` and `<prefix>_p95_ms` (with
    no prefix, `p50_ms` and `p95_ms`)."""
    start = f"{prefix}_" if prefix else ""
    return {f"{start}p{p}_ms": round(percentile(values, p / 100), digits) for p in (50, 95)}


def overdue(started: float, limit: float = 60) -> bool:
    return time.time() - started > limit


class Command(BaseCommand):
    help = (
        "Benchmark the orchestrator against bare django-q2 jobs and chains on a cluster of its own "
        "(alternating rounds), or with --api the REST API and the admin at 1,000 and 100,000 workflows."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
        parser.add_argument("--quick", action="store_true", help="Small sizes, two rounds: well under a minute.")
        parser.add_argument("--rounds", type=positive, help="Rounds of each of A, B, C (default 3; --quick 2).")
        parser.add_argument("--jobs", type=positive, help="Bare django-q2 noop jobs per A round (default 3000).")
        parser.add_argument("--workflows", type=positive, help="Workflows of 4 noop tasks per B round (default 250).")
        parser.add_argument(
            "--chains", type=positive, help="Bare django-q2 chains of 4 jobs per C round (default 250)."
        )
        parser.add_argument(
            "--latency-samples", type=positive, help="1-task workflows timed one at a time (default 30)."
        )
        parser.add_argument("--hop-chains", type=positive, help=f"Chains of {HOP_LINKS} noop tasks, and of {HOP_LINKS} "
                            "bare django-q2 jobs, timed hop by hop (default 20; --quick 3).")  # fmt: skip
        neighbour = parser.add_argument_group("noisy neighbour")
        neighbour.add_argument("--flood", type=positive, help="1-task workflows key A floods (default 2000).")
        neighbour.add_argument("--neighbours", type=positive, help="1-task workflows key B starts then (default 20).")
        neighbour.add_argument("--neighbour-limit", type=positive, help="Key A's limit of running tasks (default: "
                               "as many as the cluster has workers).")  # fmt: skip
        claim = parser.add_argument_group("the claim's cost")
        claim.add_argument("--claims", type=positive, help="Claims timed at each size (default 50).")
        claim.add_argument("--claim-small", type=positive, help="Waiting tasks, the smaller size (default 1000).")
        claim.add_argument("--claim-large", type=positive, help="Waiting tasks, the larger size (default 100000).")
        parser.add_argument("--keep", action="store_true", help="Keep the workflows the run created.")
        api = parser.add_argument_group("API and admin at scale")
        api.add_argument("--api", action="store_true", help="Time the API and the admin on generated workflows.")
        api.add_argument("--api-size", type=positive, help="Workflows to generate (default 100000; --quick 2000).")
        api.add_argument("--yes", action="store_true", help="Run --api even if the database holds workflows.")
        kept = parser.add_argument_group("retention")
        kept.add_argument("--retention", action="store_true", help="Time `workflow purge` on generated ended "
                          "workflows (each leaves its row in the deletion log: use a scratch database).")  # fmt: skip
        kept.add_argument("--retention-size", type=positive, help="Ended workflows to purge (default 10000; --quick "
                          "1000).")  # fmt: skip
        spreading = parser.add_argument_group("work spread over two clusters")
        spreading.add_argument("--spread", action="store_true", help="Two clusters on one queue: how long tasks "
                               "wait to start while a worker is free in either.")  # fmt: skip
        spreading.add_argument("--spread-workflows", type=positive, help="Workflows started at once in the burst "
                               "round (default 5).")  # fmt: skip
        spreading.add_argument("--spread-stream", type=positive, help="Workflows started one after another in the "
                               "stream round (default 8).")  # fmt: skip
        spreading.add_argument("--spread-tasks", type=positive, help=f"Tasks of {SPREAD_TASK_SECONDS} s per workflow "
                               "(default 16).")  # fmt: skip
        spreading.add_argument("--spread-workers", type=positive, help="Workers per cluster (default 8).")
        spreading.add_argument("--spread-interval-ms", type=positive, help="Between one workflow's start and the "
                               "next in the stream round (default 700).")  # fmt: skip

    def handle(self, *args, **options):
        self.options = options
        defaults = SIZES["quick" if options["quick"] else "default"]
        self.sizes = {key: options.get(key) or default for key, default in defaults.items()}
        if not self.sizes["claims"] <= self.sizes["claim_small"] <= self.sizes["claim_large"]:
            raise CommandError("--claims must be at most --claim-small, and --claim-small at most --claim-large")
        self.console = Console(stderr=True)
        if options["api"]:
            return self.emit(self.api_bench())
        if options["retention"]:
            return self.emit(self.retention_bench())
        if os.environ.get(RUN_ENV) and os.environ[RUN_ENV] == settings.ORCH_CLUSTER_NAME:
            return self.emit(self.spread_run() if options["spread"] else self.throughput())
        return self.relaunch()

    # --- Launching ---------------------------------------------------------------------------

    def relaunch(self) -> None:
        """Run the benchmark in a child process whose settings name the run's own queue."""
        name = f"bench{os.getpid()}"
        args = [sys.executable, str(ROOT / "manage.py"), "bench"]
        args += [f"--{flag}" for flag in ("json", "quick", "keep", "spread", "traceback") if self.options.get(flag)]
        for key in SIZES["default"]:
            if self.options.get(key):
                args += [f"--{key.replace('_', '-')}", str(self.options[key])]
        env = {**os.environ, "ORCH_CLUSTER_NAME": name, RUN_ENV: name}
        # Straight to the terminal when ours is the process's stdout (rich sees a terminal);
        # through self.stdout otherwise (call_command with stdout=…).
        inherit = getattr(self.stdout, "_out", None) is sys.stdout
        child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=None if inherit else subprocess.PIPE, text=True)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
        try:
            for line in [] if inherit else child.stdout:
                self.stdout.write(line, ending="")
            code = child.wait()
        except KeyboardInterrupt:  # the child got the same SIGINT: let it stop its cluster
            code = child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code:
            raise CommandError(f"the benchmark did not finish (exit status {code}); see above")

    def ensure_migrated(self) -> None:
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            self.console.print("[bench] applying migrations first", markup=False)
            call_command("migrate", interactive=False, verbosity=0)

    def emit(self, report: dict) -> None:
        if self.options["json"]:
            self.stdout.write(json.dumps(report, default=str))
            return
        console = Console(file=getattr(self.stdout, "_out", sys.stdout), width=max(Console().width, 110))
        for table in self.tables(report):
            console.print(table)

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
        )

    # --- Throughput: A/B/C rounds, latency, hops, memory ---------------------------------------

    def throughput(self) -> dict:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        self.ensure_migrated()
        self.tag = settings.ORCH_CLUSTER_NAME
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.cluster = None
        self.clusters = []
        self.sizes["neighbour_limit"] = self.sizes["neighbour_limit"] or settings.ORCH_WORKERS
        sizes = {key: value for key, value in self.sizes.items() if key != "api_size"}
        report = {"kind": "throughput", "cluster": self.tag, **setup(), **sizes}
        started, sampler, failed = time.monotonic(), None, True
        try:
            with self.progress() as self.bar:
                claim = self.claim_cost()  # before the cluster starts: no worker may take the waiting tasks
                self.cluster = Cluster(self.workdir / "qcluster.log")
                self.clusters = [self.cluster]
                self.warm_up()
                sampler = RssSampler(self.cluster.process.pid)
                sampler.start()
                a_rounds, b_rounds, c_rounds, periods = [], [], [], []
                for number in range(1, self.sizes["rounds"] + 1):
                    began = time.monotonic()
                    a_rounds.append(self.round_a(number))
                    b_rounds.append(self.round_b(number))
                    c_rounds.append(self.round_c(number))
                    periods.append((began, time.monotonic()))
                latency, hops = self.latency(), self.hops()
                memory = sampler.summary(periods, settings.ORCH_WORKERS)
                neighbour = self.noisy_neighbour()
            failed = False
        finally:
            if sampler is not None:
                sampler.stop()
            if self.cluster is not None:
                self.cluster.stop()
            self.clean_up(keep_log=failed)
        a, b, c = (median(r[key] for r in rounds) for rounds, key in
                   ((a_rounds, "jobs_per_s"), (b_rounds, "tasks_per_s"), (c_rounds, "steps_per_s")))  # fmt: skip
        report.update(
            {
                "a_jobs_per_s": round(a, 1),
                "b_tasks_per_s": round(b, 1),
                "b_workflows_per_s": round(median(r["workflows_per_s"] for r in b_rounds), 1),
                "c_steps_per_s": round(c, 1),
                "ratio": round(b / a, 3),
                "ratio_per_round": [
                    round(rb["tasks_per_s"] / ra["jobs_per_s"], 3) for ra, rb in zip(a_rounds, b_rounds, strict=True)
                ],
                "ratio_chain": round(b / c, 3),
                "ratio_chain_per_round": [
                    round(rb["tasks_per_s"] / rc["steps_per_s"], 3) for rb, rc in zip(b_rounds, c_rounds, strict=True)
                ],
                "tasks_per_workflow": TASKS_PER_WORKFLOW,
                "steps_per_chain": CHAIN_LENGTH,
                **latency,
                **hops,
                **memory,
                **neighbour,
                **claim,
                # Latency: PREPARE, the task, VALIDATE; hops: a workflow of HOP_LINKS tasks and
                # its PREPARE and VALIDATE, and a django-q2 chain of HOP_LINKS jobs.
                "jobs_run_total": sum(r["jobs"] for r in a_rounds)
                + sum(r["tasks"] for r in b_rounds)
                + sum(r["steps"] for r in c_rounds)
                + latency["latency_samples"] * 3
                + hops["hop_chains"] * (HOP_LINKS + 2 + HOP_LINKS),
                "a_rounds": a_rounds,
                "b_rounds": b_rounds,
                "c_rounds": c_rounds,
                "duration_s": round(time.monotonic() - started, 1),
            }
        )
        return report

    def wait(self, description: str, total: int, done: Callable[[], int], interval: float) -> int:
        """Poll `done()` until it reaches `total`, on the progress bar; fail when the cluster
        died or nothing moved for STALL_SECONDS. Returns the progress bar's task."""
        task = self.bar.add_task(description, total=total, note="")
        last, moved = -1, time.monotonic()
        while (count := done()) < total:
            self.bar.update(task, completed=count)
            if count != last:
                last, moved = count, time.monotonic()
            for cluster in self.clusters:
                if not cluster.alive():
                    raise CommandError(f"a cluster stopped during {description}:\n{cluster.log_tail()}")
            if time.monotonic() - moved > STALL_SECONDS:
                logs = "\n".join(f"{c.log_path} ends:\n{c.log_tail()}" for c in self.clusters)
                raise CommandError(f"{description}: stuck at {count}/{total} for {STALL_SECONDS} s; {logs}")
            time.sleep(interval)
        self.bar.update(task, completed=total)
        return task

    def settle(self) -> None:
        """Let the previous round's last jobs be acknowledged, then purge the queue."""
        broker = queue.broker()
        deadline = time.monotonic() + 30
        while broker.queue_size() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        broker.purge_queue()

    def enqueue(self, func: str, path: Path, args: tuple, count: int, batch: int = 500) -> None:
        """Put `count` jobs `func(path, *args)` on the broker, packaged as django-q2's
        async_task does, in bulk (like the engine's own fan-out)."""
        job = queue.Job(func, (str(path), *args), f"bench-{func.rsplit('.', 1)[1]}")
        broker = queue.broker()
        for start in range(0, count, batch):
            broker.enqueue_many([queue.package(job) for _ in range(min(batch, count - start))])

    def start_workflows(self, name: str, count: int, tasks: list[dict]) -> None:
        for _ in range(count):
            services.workflow_create(name=name, actor=Actor.CLI, tasks=tasks, start=True)

    def warm_up(self) -> None:
        """Wait for the cluster and run a few jobs of every kind, so that no round pays for
        start-up or first imports."""
        self.settle()
        path, workers = self.workdir / "warm-up", settings.ORCH_WORKERS
        self.enqueue(NOOP_JOB, path, (), 4 * workers)
        self.enqueue(CHAIN_STEP, path, (1, CHAIN_LENGTH), workers)
        self.wait("cluster start-up", (4 + CHAIN_LENGTH) * workers, lambda: counted(path), 0.05)
        self.start_workflows(f"{self.tag}-warm-up", workers, FOUR_NOOPS)
        self.wait("warm-up workflows", workers, lambda: self.ended(f"{self.tag}-warm-up"), 0.05)

    def ended(self, name: str) -> int:
        counts = Workflow.objects.filter(name=name).aggregate(
            ended=Count("pk", filter=Q(state__in=ENDED)), failed=Count("pk", filter=Q(state=State.FAILED))
        )
        if counts["failed"]:
            error = Workflow.objects.filter(name=name, state=State.FAILED).values_list("error", flat=True).first()
            raise CommandError(f"{counts['failed']} benchmark workflow(s) failed: {error}")
        return counts["ended"]

    def stamped_round(self, name: str, unit: str, func: str, args: tuple, count: int, total: int) -> float:
        """Rounds A and C: `count` jobs `func(path, *args)` put on the broker in bulk, done
        when the round's file holds `total` stamps (`unit`). Returns the seconds from the
        first enqueue to the last stamp."""
        self.settle()
        path = self.workdir / name.lower()
        path.touch()
        started = time.time()
        self.enqueue(func, path, args, count)
        task = self.wait(f"{name} django-q2 {unit}", total, lambda: counted(path), 0.01)
        seconds = max(stamps(path)) - started
        self.bar.update(task, note=f"{rate(total, seconds):.0f} {unit}/s")
        return seconds

    def round_a(self, number: int) -> dict:
        """Bare django-q2: `jobs` noop jobs, from the first enqueue to the last job's end."""
        jobs = self.sizes["jobs"]
        seconds = self.stamped_round(f"A{number}", "jobs", NOOP_JOB, (), jobs, jobs)
        return {"round": number, "jobs": jobs, "seconds": round(seconds, 3), "jobs_per_s": rate(jobs, seconds)}

    def round_c(self, number: int) -> dict:
        """Bare django-q2 chains: the first steps of `chains` chains enqueued in bulk, each
        step's job enqueuing the next; from the first enqueue to the last step's end."""
        chains = self.sizes["chains"]
        steps = chains * CHAIN_LENGTH
        seconds = self.stamped_round(f"C{number}", "chain steps", CHAIN_STEP, (1, CHAIN_LENGTH), chains, steps)
        return {"round": number, "chains": chains, "steps": steps, "seconds": round(seconds, 3),
                "steps_per_s": rate(steps, seconds)}  # fmt: skip

    def round_b(self, number: int) -> dict:
        """The orchestrator: `workflows` workflows of 4 noop tasks, from the first
        workflow_create(start=True) to the last one's finished_at."""
        self.settle()
        count, name = self.sizes["workflows"], f"{self.tag}-b{number}"
        started = time.time()
        self.start_workflows(name, count, FOUR_NOOPS)
        created = time.time() - started
        task = self.wait(f"B{number} orchestrator workflows", count, lambda: self.ended(name), 0.05)
        seconds = Workflow.objects.filter(name=name).aggregate(last=Max("finished_at"))["last"].timestamp() - started
        tasks = Task.objects.filter(workflow__name=name, status=Task.Status.SUCCEEDED).count()
        self.bar.update(task, note=f"{rate(tasks, seconds):.0f} tasks/s")
        return {"round": number, "workflows": count, "tasks": tasks, "seconds": round(seconds, 3),
                "create_seconds": round(created, 3), "tasks_per_s": rate(tasks, seconds),
                "workflows_per_s": rate(count, seconds)}  # fmt: skip

    def pause(self) -> None:
        """Up to one broker poll, at random: so that starts do not line up with the ORM
        broker's polling."""
        time.sleep(random.uniform(0, settings.Q_CLUSTER["poll"] if settings.ORCH_BROKER == "orm" else 0.05))

    def latency(self) -> dict:
        """Single 1-task workflows (PREPARE, the task, VALIDATE: three jobs in a row), one at
        a time on the idle cluster, each after a pause."""
        self.settle()
        samples = self.sizes["latency_samples"]
        total, observed, engine = [], [], []
        task = self.bar.add_task("latency (1-task workflows)", total=samples, note="")
        for _ in range(samples):
            self.pause()
            started = time.time()
            workflow, _ = services.workflow_create(
                name=f"{self.tag}-latency", actor=Actor.CLI, tasks=[{"type": "noop"}], start=True
            )
            began, finished, seen = self.completed(workflow.pk, started, "a latency sample", interval=0.002)
            total.append((finished.timestamp() - started) * 1000)
            observed.append((seen - started) * 1000)
            engine.append((finished - began).total_seconds() * 1000)
            self.bar.advance(task)
        self.bar.update(task, note=f"p50 {median(total):.0f} ms")
        return {"latency_samples": samples, **spread("latency", total, 1),
                **spread("latency_observed", observed, 1), **spread("latency_engine", engine, 1)}  # fmt: skip

    def completed(self, workflow_id, started: float, what: str, interval: float) -> tuple:
        """Poll the workflow every `interval` s until it has ended; its started_at and
        finished_at, and the wall clock at which the poll saw it end. Fails unless it
        ended COMPLETE."""
        while True:
            row = Workflow.objects.values_list("state", "started_at", "finished_at").get(pk=workflow_id)
            if row[0] in ENDED:
                break
            if not self.cluster.alive() or overdue(started):
                raise CommandError(f"{what} did not complete:\n{self.cluster.log_tail()}")
            time.sleep(interval)
        if row[0] != State.COMPLETE:
            raise CommandError(f"{what} ended {row[0]}")
        return row[1], row[2], time.time()

    def hops(self) -> dict:
        """Chains of HOP_LINKS noop tasks, each after the one before, and bare django-q2
        chains of HOP_LINKS jobs, each enqueuing the next: one chain at a time on the idle
        cluster, alternating, each after a pause. A hop runs from one link's finish to the
        next link's finish (see hops_ms)."""
        self.settle()
        chains = self.sizes["hop_chains"]
        engine, bare, inline = [], [], 0
        task = self.bar.add_task(f"chains of {HOP_LINKS} links (hops)", total=chains, note="")
        for number in range(1, chains + 1):
            self.pause()
            hops, ran_inline = self.task_chain(number)
            engine += hops
            inline += ran_inline
            self.pause()
            bare += self.job_chain(number)
            self.bar.advance(task)
        self.bar.update(task, note=f"p50 {median(engine):.1f} ms against {median(bare):.1f} ms")
        return {"hop_chains": chains, "hop_links": HOP_LINKS, "hops": len(engine), "hops_inline": inline,
                **spread("hop", engine, 2), "q2_hops": len(bare), **spread("q2_hop", bare, 2)}  # fmt: skip

    def task_chain(self, number: int) -> tuple[list[float], int]:
        """One workflow whose EXECUTE is a chain of HOP_LINKS noop tasks: its hops, from the
        tasks' finished_at, and how many of them the worker that ran a link took straight
        on (the next link's started_at is then the moment its predecessor's success was
        recorded)."""
        started = time.time()
        workflow, _ = services.workflow_create(
            name=f"{self.tag}-hops", actor=Actor.CLI, tasks=chain_tasks(HOP_LINKS), start=True
        )
        self.completed(workflow.pk, started, f"chain {number} of {HOP_LINKS} tasks", interval=0.005)
        links = list(
            Task.objects.filter(workflow=workflow, phase=State.EXECUTE)
            .order_by("position")
            .values_list("started_at", "finished_at")
        )
        inline = sum(after[0] == before[1] for before, after in pairwise(links))
        return hops_ms([finished.timestamp() for _, finished in links]), inline

    def job_chain(self, number: int) -> list[float]:
        """One bare django-q2 chain of HOP_LINKS jobs: its hops, from the jobs' stamps."""
        path = self.workdir / f"hops-{number}"
        started = time.time()
        self.enqueue(CHAIN_STEP, path, (1, HOP_LINKS), 1)
        while counted(path) < HOP_LINKS:
            if not self.cluster.alive() or overdue(started):
                raise CommandError(f"django-q2 chain {number} did not complete:\n{self.cluster.log_tail()}")
            time.sleep(0.005)
        return hops_ms(stamps(path))

    def noisy_neighbour(self) -> dict:
        """Key A floods `flood` 1-task workflows, then key B starts `neighbours`: B's
        start→COMPLETE with A under a limit of `neighbour_limit` running tasks (keys take
        turns), against the same load without keys, claimed oldest first (FIFO)."""
        fifo = self.neighbour_round("fifo", keyed=False)
        fair = self.neighbour_round("fair", keyed=True)
        return {
            "neighbour_b_p50_ms": fair["b_p50_ms"],
            "neighbour_b_p95_ms": fair["b_p95_ms"],
            "neighbour_fifo_b_p50_ms": fifo["b_p50_ms"],
            "neighbour_fifo_b_p95_ms": fifo["b_p95_ms"],
            "neighbour_a_running_max": fair["a_running_max"],
            "neighbour_rounds": {"fifo": fifo, "fair": fair},
        }

    def neighbour_round(self, variant: str, keyed: bool) -> dict:
        """One noisy-neighbour round: A's flood is created while the cluster is held, so
        that all of it waits when B starts, as soon as the cluster goes on (created one
        by one, the flood would otherwise be no faster than the workers take it). A
        separate connection counts A's RUNNING tasks every 20 ms throughout (without
        keys: those of no key, A's and B's)."""
        self.settle()
        flood, count, limit = self.sizes["flood"], self.sizes["neighbours"], self.sizes["neighbour_limit"]
        name_a, name_b = f"{self.tag}-{variant}-a", f"{self.tag}-{variant}-b"
        key_a, key_b = (f"{self.tag}-A", f"{self.tag}-B") if keyed else ("", "")
        if keyed:
            services.limit_set(key_a, max_running=limit)
        sampler = RunningSampler(key_a)
        sampler.start()
        try:
            started = time.time()
            task = self.bar.add_task(f"{variant}: A floods", total=flood, note="cluster held")
            with self.cluster.held():
                for _ in range(flood):
                    services.workflow_create(name=name_a, actor=Actor.CLI, tasks=ONE_NOOP, start=True,
                                             concurrency_key=key_a or None)  # fmt: skip
                    self.bar.advance(task)
            created = time.time() - started
            self.bar.update(task, note="")
            backlog = flood - self.ended(name_a)
            b_started = {}
            for _ in range(count):
                began = time.time()
                workflow, _ = services.workflow_create(name=name_b, actor=Actor.CLI, tasks=ONE_NOOP, start=True,
                                                       concurrency_key=key_b or None)  # fmt: skip
                b_started[workflow.pk] = began
            task = self.wait(f"{variant}: B's workflows", count, lambda: self.ended(name_b), 0.01)
            finished = dict(Workflow.objects.filter(name=name_b).values_list("pk", "finished_at"))
            b_ms = [(finished[pk].timestamp() - began) * 1000 for pk, began in b_started.items()]
            self.bar.update(task, note=f"p50 {median(b_ms):.0f} ms")
            self.wait(f"{variant}: A's flood", flood, lambda: self.ended(name_a), 0.05)
        finally:
            sampler.stop()
            if keyed:
                services.limit_remove(key_a)
        last = Workflow.objects.filter(name=name_a).aggregate(last=Max("finished_at"))["last"]
        return {"flood": flood, "neighbours": count, "limit": limit if keyed else None, "key_a": key_a,
                "key_b": key_b, **spread("b", b_ms, 1), "b_max_ms": round(max(b_ms), 1),
                "backlog_at_b_start": backlog, "flood_create_seconds": round(created, 3),
                "flood_seconds": round(last.timestamp() - started, 3), "a_running_max": sampler.peak,
                "a_limit_counter_max": sampler.counter_peak, "a_running_samples": sampler.samples}  # fmt: skip

    def claim_cost(self) -> dict:
        """The claim statement a delivery runs, timed `claims` times against `claim_small`
        and then `claim_large` waiting tasks (bulk-inserted; deleted afterwards): each
        claim takes the first in the claim's order. Then as many claims that find nothing,
        every waiting task's key being at its limit. At the larger size, the claim's plan."""
        waiting, rounds = Waiting(self.tag), []
        claims = self.sizes["claims"]
        task = self.bar.add_task("claim cost", total=self.sizes["claim_large"], note="")
        try:
            for size in (self.sizes["claim_small"], self.sizes["claim_large"]):
                self.bar.update(task, note=f"inserting {size} waiting tasks")
                waiting.fill(size)
                self.bar.update(task, completed=size, note=f"{claims} claims at {size}")
                times, claimed = waiting.time_claims(claims)
                with waiting.blocked():
                    blocked, found = waiting.time_claims(claims)
                rounds.append({"waiting": size, "claims": claims, "claimed": claimed, **spread("", times, 3),
                               "blocked_claimed": found, **spread("blocked", blocked, 3)})  # fmt: skip
            plan = waiting.plan()
            self.bar.update(task, note=f"p50 {rounds[0]['p50_ms']:.2f} ms, then {rounds[1]['p50_ms']:.2f} ms")
        finally:
            waiting.delete()
        small, large = rounds
        return {
            "claim_small_p50_ms": small["p50_ms"],
            "claim_large_p50_ms": large["p50_ms"],
            "claim_ratio": round(large["p50_ms"] / small["p50_ms"], 2),
            "claim_blocked_small_p50_ms": small["blocked_p50_ms"],
            "claim_blocked_large_p50_ms": large["blocked_p50_ms"],
            "claim_plan_uses_index": any("task_claim_order" in line for line in plan),
            "claim_plan_full_reads": Waiting.full_reads(plan),
            "claim_plan": plan,
            "claim_fill_seconds": round(waiting.seconds, 1),
            "claim_rounds": rounds,
        }

    def clean_up(self, keep_log: bool) -> None:
        try:
            queue.broker().purge_queue()
            if not self.options["keep"]:
                Workflow.objects.filter(name__startswith=f"{self.tag}-").delete()
        finally:
            if keep_log and self.clusters:
                kept = ", ".join(str(cluster.log_path) for cluster in self.clusters)
                self.console.print(f"[bench] the clusters' logs are kept: {kept}", markup=False)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # --- Work spread over two clusters -----------------------------------------------------------

    def spread_run(self) -> dict:
        """Two clusters of `spread_workers` workers on the run's queue, and two rounds of
        workflows of `spread_tasks` tasks that each sleep SPREAD_TASK_SECONDS: a burst of
        `spread_workflows` started at once, then a stream of `spread_stream` started
        `spread_interval_ms` apart (so that work arrives while some workers are busy). For
        every task, the part of its wait from runnable (queued_at) to started during which
        a worker was free in either cluster (idle_waits), and its whole wait."""
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        self.ensure_migrated()
        self.tag = settings.ORCH_CLUSTER_NAME
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.cluster, self.clusters = None, []
        workers, size = self.sizes["spread_workers"], self.sizes["spread_tasks"]
        rounds = {"burst": (self.sizes["spread_workflows"], 0),
                  "stream": (self.sizes["spread_stream"], self.sizes["spread_interval_ms"])}  # fmt: skip
        report = {"kind": "spread", "cluster": self.tag, **setup(), "workers": workers, "clusters": SPREAD_CLUSTERS,
                  "spread_tasks": size, "task_seconds": SPREAD_TASK_SECONDS}  # fmt: skip
        began, failed, figures = time.monotonic(), True, {}
        try:
            with self.progress() as self.bar:
                self.settle()
                self.clusters = [
                    Cluster(self.workdir / f"qcluster-{number}.log", ORCH_WORKERS=str(workers))
                    for number in range(1, SPREAD_CLUSTERS + 1)
                ]
                self.cluster = self.clusters[0]
                self.wait("clusters running", SPREAD_CLUSTERS * workers, self.running_workers, 0.1)
                warm_up = f"{self.tag}-warm-up"
                self.start_workflows(warm_up, SPREAD_CLUSTERS * workers, ONE_NOOP)
                self.wait("warm-up workflows", SPREAD_CLUSTERS * workers, lambda: self.ended(warm_up), 0.05)
                pids = [cluster.pids() for cluster in self.clusters]
                tasks = [{"name": f"sleep-{i}", "type": "sleep", "params": {"seconds": SPREAD_TASK_SECONDS}}
                         for i in range(1, size + 1)]  # fmt: skip
                for variant, (count, interval_ms) in rounds.items():
                    self.settle()
                    name = f"{self.tag}-{variant}"
                    started = time.time()
                    for number in range(count):
                        if number:
                            time.sleep(interval_ms / 1000)
                        self.start_workflows(name, 1, tasks)
                    description = f"{variant}: {count} × {size} tasks"
                    progress = self.wait(description, count, lambda name=name: self.ended(name), 0.1)
                    figures[variant] = self.spread_figures(name, workers, pids, started)
                    figures[variant].update(workflows=count, interval_ms=interval_ms)
                    self.bar.update(progress, note=f"wait p99 {figures[variant]['p99_ms']:.0f} ms")
            failed = False
        finally:
            for cluster in self.clusters:
                cluster.stop()
            self.clean_up(keep_log=failed)
        waits = [wait for variant in figures.values() for wait in variant.pop("waits")]
        report.update(
            {
                **{f"spread_wait_p{p}_ms": round(percentile(waits, p / 100), 1) for p in (50, 99)},
                "spread_wait_max_ms": round(max(waits), 1),
                "spread_slow_waits": sum(wait > SPREAD_SLOW_WAIT * 1000 for wait in waits),
                "spread_tasks_run": len(waits),
                "spread_rounds": figures,
                "duration_s": round(time.monotonic() - began, 1),
            }
        )
        return report

    def running_workers(self) -> int:
        """The workers of the run's clusters that django-q2's statistics show started."""
        running = (Conf.IDLE, Conf.WORKING)
        return sum(len(stat.workers) for stat in Stat.get_all(queue.broker()) if stat.status in running)

    @staticmethod
    def spread_figures(name: str, workers: int, pids: list[set[int]], started: float) -> dict:
        """One round's waits: with a worker free (`waits`, ms, and their p50/p99/max) and whole
        (`plain_`), the tasks each cluster ran, and the seconds from the first start to the
        last finish."""
        rows = list(
            Task.objects.filter(workflow__name=name).values_list("queued_at", "started_at", "finished_at", "worker")
        )
        timed = [(queued.timestamp(), began.timestamp(), ended.timestamp()) for queued, began, ended, _ in rows]
        free = [seconds * 1000 for seconds in idle_waits(timed, SPREAD_CLUSTERS * workers)]
        plain = [(began - queued) * 1000 for queued, began, _ in timed]
        ran = [sum(int(worker.rsplit(":", 1)[1]) in cluster for *_, worker in rows) for cluster in pids]
        return {
            "waits": free,
            **{f"p{p}_ms": round(percentile(free, p / 100), 1) for p in (50, 99)},
            "max_ms": round(max(free), 1),
            "slow_waits": sum(wait > SPREAD_SLOW_WAIT * 1000 for wait in free),
            **{f"plain_p{p}_ms": round(percentile(plain, p / 100), 1) for p in (50, 99)},
            "plain_max_ms": round(max(plain), 1),
            "tasks": len(rows),
            "tasks_per_cluster": ran,
            "seconds": round(max(ended for *_, ended in timed) - started, 2),
        }

    # --- The API and the admin at scale --------------------------------------------------------

    def api_bench(self) -> dict:
        self.ensure_migrated()
        size = self.sizes["api_size"]
        small = min(API_SMALL, size)
        existing = Workflow.objects.count()
        if existing and not self.options["yes"]:
            raise CommandError(
                f"the database ({connection.vendor} {settings.DATABASES['default']['NAME']}) already holds "
                f"{existing} workflows: bench --api adds {size} more (and deletes them afterwards), and its figures "
                "would count yours too. Use an empty database, or pass --yes."
            )
        report = {"kind": "api", **setup(), "api_size": size, "api_small": small, "existing_workflows": existing}
        repeats = 3 if self.options["quick"] else 7
        owner = get_user_model().objects.create(
            username=f"bench-api-{os.getpid()}-{int(time.time())}", is_staff=True, is_superuser=True
        )
        owner.set_unusable_password()
        owner.save()
        generator = Generator(owner=owner, tag=f"bench-api-{os.getpid()}")
        client = Client()
        try:
            with (
                override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"], SECURE_SSL_REDIRECT=False,
                                  DEBUG=False, ORCH_METRICS_TOKEN=METRICS_TOKEN),
                metrics_kept(),
                self.progress() as progress,
            ):  # fmt: skip
                client.force_login(owner)
                task = progress.add_task("generating workflows", total=size, note="")
                long_history = generator.long_history(API_LONG_HISTORY)
                progress.advance(task)
                timed = {}
                for count in (small, size):
                    generator.grow(count, size, lambda n: progress.advance(task, n))
                    vacuum(full=False)
                    timed[count] = self.time_requests(client, long_history, repeats, progress, count)
            report["audit_chain_valid"] = audit.verify(Workflow.objects.get(pk=long_history)) is None
            client.logout()
        finally:
            if not self.options["keep"]:
                delete_generated(owner)
                owner.delete()
                vacuum(full=True)
        at_small, at_full = timed[small], timed[size]
        report.update(
            {
                "transitions": generator.transitions,
                "tasks": size * 3,
                "generate_s": round(generator.seconds, 1),
                "rows_per_s": rate(generator.rows, generator.seconds),
                "detail_transitions": API_LONG_HISTORY,
                "repeats": repeats,
                "requests": {
                    name: {
                        "small_ms": at_small[name]["ms"],
                        "full_ms": at_full[name]["ms"],
                        "small_first_ms": at_small[name]["first_ms"],
                        "full_first_ms": at_full[name]["first_ms"],
                        "ratio": round(at_full[name]["ms"] / at_small[name]["ms"], 2),
                        "small_queries": at_small[name]["queries"],
                        "full_queries": at_full[name]["queries"],
                        "url": url.replace("{id}", "<id>"),
                    }
                    for name, url in API_REQUESTS.items()
                },
            }
        )
        return report

    def time_requests(self, client: Client, workflow_id, repeats: int, progress: Progress, size: int) -> dict:
        """Median time of `repeats` requests to each page (after one warm-up), and the
        queries one request makes."""
        results = {}
        task = progress.add_task(f"requests at {size} workflows", total=len(API_REQUESTS) * (repeats + 2), note="")
        for name, url in API_REQUESTS.items():
            url = url.format(id=workflow_id)
            first_ms = self.get(client, url)  # warm-up: a first scrape also counts the history generated since
            reset_queries()  # a full query log (DEBUG keeps the last 9000) would capture nothing
            with CaptureQueriesContext(connection) as captured:
                self.get(client, url)
            queries = len(captured)  # now: the next request's request_started signal empties the log
            times = [self.get(client, url) for _ in range(repeats)]
            progress.advance(task, repeats + 2)
            results[name] = {"ms": round(median(times), 1), "first_ms": round(first_ms, 1), "queries": queries}
        return results

    @staticmethod
    def get(client: Client, url: str) -> float:
        """GET `url`; the ms it took."""
        started = time.perf_counter()
        response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")  # only /metrics reads it
        if response.status_code != 200:
            raise CommandError(f"GET {url} answered {response.status_code}: {response.content[:300]!r}")
        return (time.perf_counter() - started) * 1000

    # --- Output ------------------------------------------------------------------------------

    def tables(self, report: dict) -> list[Table]:
        where = Table(title="bench", show_header=False, box=None)
        m = report["machine"]
        for row in (
            ("database", f"{report['database']} ({report['database_name']})"),
            ("broker", f"{report['broker']} (poll {report['poll']} s)"),
            ("workers", str(report["workers"])),
            ("machine", f"{m['cpus']} CPUs, {m.get('cpu_model', '?')}, {m['memory_gb']} GB, Python {m['python']}"),
        ):
            where.add_row(*row)
        if report["kind"] == "api":
            return [where, self.api_table(report)]
        if report["kind"] == "spread":
            return [where, self.spread_table(report)]
        if report["kind"] == "retention":
            return [where, self.retention_table(report)]
        r = report
        figures = Table(title="Throughput: bare django-q2 jobs (A) and chains (C) against the orchestrator (B)")
        for column, justify in (("figure", "left"), ("value", "right"), ("rounds", "right")):
            figures.add_column(column, justify=justify)

        def rounds(key: str, which: str, form: str) -> str:
            return " ".join(format(round_[key], form) for round_ in r[which])

        rows = [
            (f"A jobs/s ({r['jobs']} noop jobs)", f"{r['a_jobs_per_s']:.0f}", rounds("jobs_per_s", "a_rounds", ".0f")),
            (f"B tasks/s ({r['workflows']} workflows × {r['tasks_per_workflow']} tasks)", f"{r['b_tasks_per_s']:.0f}",
             rounds("tasks_per_s", "b_rounds", ".0f")),
            ("B workflows/s", f"{r['b_workflows_per_s']:.1f}", rounds("workflows_per_s", "b_rounds", ".1f")),
            (f"C steps/s ({r['chains']} chains × {r['steps_per_chain']} jobs)", f"{r['c_steps_per_s']:.0f}",
             rounds("steps_per_s", "c_rounds", ".0f")),
            ("ratio B tasks/s ÷ A jobs/s", f"{r['ratio']:.2f}", " ".join(f"{x:.2f}" for x in r["ratio_per_round"])),
            ("ratio_chain B tasks/s ÷ C steps/s", f"{r['ratio_chain']:.2f}",
             " ".join(f"{x:.2f}" for x in r["ratio_chain_per_round"])),
            (f"1-task workflow start→COMPLETE p50 / p95 ({r['latency_samples']} samples)",
             f"{r['latency_p50_ms']:.0f} / {r['latency_p95_ms']:.0f} ms", ""),
            ("  observed by polling / engine started→finished p50",
             f"{r['latency_observed_p50_ms']:.0f} / {r['latency_engine_p50_ms']:.0f} ms", ""),
            (f"chain of {r['hop_links']} noop tasks (after): hop p50 / p95 ({r['hops']} hops)",
             f"{r['hop_p50_ms']:.1f} / {r['hop_p95_ms']:.1f} ms",
             f"{r['hops_inline']} of {r['hops']} taken straight on"),
            (f"django-q2 chain of {r['hop_links']} noop jobs: hop p50 / p95 ({r['q2_hops']} hops)",
             f"{r['q2_hop_p50_ms']:.1f} / {r['q2_hop_p95_ms']:.1f} ms", ""),
        ]  # fmt: skip
        fair, fifo = r["neighbour_rounds"]["fair"], r["neighbour_rounds"]["fifo"]
        small, large = r["claim_rounds"]
        rows += [
            (f"noisy neighbour: B's {r['neighbours']} start→COMPLETE p50 / p95, A ({r['flood']} workflows) "
             f"limited to {r['neighbour_limit']}", f"{fair['b_p50_ms']:.0f} / {fair['b_p95_ms']:.0f} ms",
             f"A's backlog {fair['backlog_at_b_start']}"),
            ("  the same load without keys (FIFO)", f"{fifo['b_p50_ms']:.0f} / {fifo['b_p95_ms']:.0f} ms",
             f"backlog {fifo['backlog_at_b_start']}"),
            (f"  most RUNNING tasks of A seen (limit {r['neighbour_limit']})", str(fair["a_running_max"]),
             f"{fair['a_running_samples']} samples"),
            (f"claim, p50 / p95 at {small['waiting']} waiting tasks ({r['claims']} claims)",
             f"{small['p50_ms']:.2f} / {small['p95_ms']:.2f} ms", ""),
            (f"  at {large['waiting']} waiting tasks", f"{large['p50_ms']:.2f} / {large['p95_ms']:.2f} ms",
             f"task_claim_order {'used' if r['claim_plan_uses_index'] else 'NOT used'}; "
             f"{len(r['claim_plan_full_reads'])} whole reads"),
            ("  finding nothing (every key at its limit), p50 at each size",
             f"{small['blocked_p50_ms']:.2f} / {large['blocked_p50_ms']:.2f} ms", ""),
        ]  # fmt: skip
        if "rss_peak_mb" in r:
            rows += [
                ("worker RSS peak", f"{r['rss_peak_mb']} MB", ""),
                (f"worker RSS, first → last round ({r['jobs_run_total']} jobs)",
                 f"{r['rss_start_mb']} → {r['rss_end_mb']} MB", " ".join(str(x) for x in r["rss_per_round_mb"])),
                (f"worker processes (recycled every {r['recycle']} jobs)", str(r["worker_processes_seen"]), ""),
            ]  # fmt: skip
        for row in [*rows, ("duration", f"{r['duration_s']} s", "")]:
            figures.add_row(*row)
        return [where, figures]

    @staticmethod
    def spread_table(r: dict) -> Table:
        table = Table(
            title=f"Work spread: {r['clusters']} clusters of {r['workers']} workers, workflows of {r['spread_tasks']} "
            f"tasks of {r['task_seconds']} s"
        )
        for column in ("round", "wait, a worker free: p50/p99/max", "whole wait: p50/p99/max",
                       f"over {SPREAD_SLOW_WAIT} s", "tasks per cluster", "seconds"):  # fmt: skip
            table.add_column(column, justify="left" if column == "round" else "right")

        def waits(figures: dict, prefix: str) -> str:
            return "/".join(f"{figures[f'{prefix}{p}_ms']:.0f}" for p in ("p50", "p99", "max")) + " ms"

        for variant, f in r["spread_rounds"].items():
            how = "at once" if not f["interval_ms"] else f"{f['interval_ms']} ms apart"
            table.add_row(f"{variant}: {f['workflows']} {how}", waits(f, ""), waits(f, "plain_"),
                          f"{f['slow_waits']} of {f['tasks']}", " / ".join(map(str, f["tasks_per_cluster"])),
                          f"{f['seconds']} s")  # fmt: skip
        table.add_row("both rounds", waits(r, "spread_wait_"), "",
                      f"{r['spread_slow_waits']} of {r['spread_tasks_run']}", "", "")  # fmt: skip
        return table

    @staticmethod
    def api_table(report: dict) -> Table:
        table = Table(
            title=f"API and admin: {report['api_small']} against {report['api_size']} workflows "
            f"({report['transitions']} transitions; generated in {report['generate_s']} s)"
        )
        for column in ("request", f"at {report['api_small']}", f"at {report['api_size']}", "ratio", "queries"):
            table.add_column(column, justify="left" if column == "request" else "right")
        for name, figures in report["requests"].items():
            table.add_row(
                f"{name} {figures['url']}",
                f"{figures['small_ms']:.1f} ms",
                f"{figures['full_ms']:.1f} ms",
                f"{figures['ratio']:.2f}",
                f"{figures['small_queries']} / {figures['full_queries']}",
            )
        return table

    # --- Retention: `workflow purge` on generated ended workflows ------------------------------

    def retention_bench(self) -> dict:
        """Generate ended workflows (three tasks and 4–8 audit rows each) that finished more
        than RETENTION_AGE ago, purge them through services.workflows_purge as `workflow purge`
        does, and count the time and the statements it took."""
        self.ensure_migrated()
        size = self.options["retention_size"] or RETENTION_SIZES["quick" if self.options["quick"] else "default"]
        if services.workflows_to_purge(RETENTION_AGE).exists():
            raise CommandError(
                f"the database already holds ended workflows older than {RETENTION_AGE.days} days, which the "
                "purge would delete too: use a scratch database"
            )
        owner = get_user_model().objects.create(username=f"bench-retention-{os.getpid()}-{int(time.time())}")
        generator = Generator(owner=owner, tag=f"bench-retention-{os.getpid()}")
        generator.origin = timezone.now() - RETENTION_AGE - generator.span - timedelta(days=1)
        total = size
        while total - total // len(STATE_CYCLE) < size:  # one in STATE_CYCLE is still running: it stays
            total += 1
        statements, batches = [0], []

        def count(execute, sql, params, many, context):
            statements[0] += 1
            return execute(sql, params, many, context)

        try:
            with metrics_kept(), self.progress() as progress:
                task = progress.add_task("generating workflows", total=total, note="")
                generator.grow(total, total, lambda n: progress.advance(task, n))
                vacuum(full=False)
                task = progress.add_task("purging", total=size, note="")
                began = time.perf_counter()

                def batch_done(purged: int) -> None:
                    batches.append(time.perf_counter())
                    progress.update(task, completed=purged)

                with connection.execute_wrapper(count):
                    purged = services.workflows_purge(RETENTION_AGE, actor=Actor("bench"), progress=batch_done)
                seconds = time.perf_counter() - began
            intact = WorkflowDeletion.objects.verify() is None
        finally:
            delete_generated(owner)
            owner.delete()
            vacuum(full=True)
        per_batch = [b - a for a, b in pairwise([began, *batches])]
        return {
            "kind": "retention", **setup(), "generated": total, "purged": purged, "seconds": round(seconds, 2),
            "workflows_per_s": rate(purged, seconds), "ms_per_workflow": round(1000 * seconds / max(purged, 1), 2),
            "statements": statements[0], "statements_per_workflow": round(statements[0] / max(purged, 1), 2),
            "batch": services.PURGE_BATCH, "slowest_batch_s": round(max(per_batch, default=0), 2),
            "deletion_log_intact": intact,
        }  # fmt: skip

    @staticmethod
    def retention_table(report: dict) -> Table:
        table = Table(title=f"Retention: {report['purged']} ended workflows purged (3 tasks each)")
        for column, justify in (("figure", "left"), ("value", "right")):
            table.add_column(column, justify=justify)
        for row in (
            ("time", f"{report['seconds']} s"),
            ("workflows/s", f"{report['workflows_per_s']:.0f}"),
            ("per workflow", f"{report['ms_per_workflow']} ms"),
            ("statements per workflow", f"{report['statements_per_workflow']}"),
            (f"slowest batch of {report['batch']} (one run of the hourly job)", f"{report['slowest_batch_s']} s"),
            ("deletion log intact afterwards", "yes" if report["deletion_log_intact"] else "NO"),
        ):
            table.add_row(*row)
        return table
