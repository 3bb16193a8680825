"""`manage.py demo`: a mixed set of workflows on the running cluster, watched to the end."""

import time

from django.core.management.base import BaseCommand, CommandError
from django_q.status import Stat
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from workflow_orchestrator import queue, services
from workflow_orchestrator.models import Actor, State, Workflow

# The nightly import: fetch → transform → load, with notify beside load (both after
# transform), and a report that gathers what load and notify returned.
NIGHTLY_IMPORT = [
    {"name": "fetch", "type": "echo", "params": {"rows": 3}},
    {"name": "transform", "type": "gather", "after": ["fetch"]},
    {"name": "load", "type": "gather", "after": ["transform"]},
    {"name": "notify", "type": "sleep", "params": {"seconds": 0.3}, "after": ["transform"]},
    {"name": "report", "type": "gather", "after": ["load", "notify"]},
]

# name, tasks, what should become of it
KINDS = [
    (
        "nightly import",
        NIGHTLY_IMPORT,
        "COMPLETE: fetch → transform → load and notify → report",
    ),
    (
        "flaky",
        [
            {"name": "flaky", "type": "fail", "params": {"times": 2}, "max_attempts": 3},
            {"name": "then", "type": "echo", "after": ["flaky"]},
        ],
        "COMPLETE after step retries",
    ),
    (
        "fails, retried",
        [{"type": "fail", "params": {"times": 1}, "max_attempts": 1}],
        "FAILED, then COMPLETE after a retry",
    ),
    ("cancelled", [{"type": "sleep", "params": {"seconds": 60}}], "CANCELLED while it runs"),
]
ENDED = (State.COMPLETE, State.CANCELLED)


class Command(BaseCommand):
    help = (
        "Start a mixed set of workflows on the running cluster (a nightly import whose tasks depend on each "
        "other, flaky then succeeding, failing then retried, cancelled), show a progress bar until all have "
        "ended, and print a summary table. "
        "A cluster must be running: `python manage.py qcluster` (make run starts one)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--scale", type=int, default=1, help="Workflows of each kind (default 1).")
        parser.add_argument("--timeout", type=float, default=120, help="Seconds to wait for them all (default 120).")

    def handle(self, *args, scale, timeout, **options):
        if scale < 1:
            raise CommandError("--scale must be at least 1")
        if not Stat.get_all(broker=queue.broker()):
            raise CommandError(
                "No worker cluster is running, so nothing would happen: start one with "
                "`python manage.py qcluster` (or `make run`), then run the demo again."
            )
        started = time.monotonic()
        kinds = {}
        for kind, tasks, _ in KINDS:
            for i in range(scale):
                workflow, _ = services.workflow_create(
                    name=f"demo {kind} {i + 1}", tasks=tasks, actor=Actor.CLI, start=True
                )
                kinds[workflow.pk] = kind
        self._watch(kinds, timeout)
        self._summary(kinds, time.monotonic() - started)

    def _watch(self, kinds: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        retried, cancelled = set(), set()
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=Console(file=self.stderr)) as progress:
            bar = progress.add_task("workflows ended", total=len(kinds))
            while True:
                states = dict(Workflow.objects.filter(pk__in=kinds).values_list("pk", "state"))
                for workflow_id, state in states.items():
                    if kinds[workflow_id] == "cancelled" and state == State.EXECUTE and workflow_id not in cancelled:
                        services.workflow_cancel(workflow_id, actor=Actor.CLI, reason="demo: cancelled while running")
                        cancelled.add(workflow_id)
                    if state == State.FAILED and kinds[workflow_id] == "fails, retried" and workflow_id not in retried:
                        services.workflow_retry(workflow_id, actor=Actor.CLI)
                        retried.add(workflow_id)
                ended = sum(state in ENDED or (state == State.FAILED and pk in retried) for pk, state in states.items())
                progress.update(bar, completed=ended)
                if ended == len(kinds):
                    return
                if time.monotonic() > deadline:
                    raise CommandError(f"{len(kinds) - ended} workflows had not ended after {timeout:g} s")
                time.sleep(0.2)

    def _summary(self, kinds: dict, elapsed: float) -> None:
        table = Table(title=f"Demo: {len(kinds)} workflows in {elapsed:.1f} s")
        for column in ("workflow", "kind", "expected", "state", "retries", "attempts", "transitions"):
            table.add_column(column)
        expected = {kind: outcome for kind, _, outcome in KINDS}
        workflows = (
            Workflow.objects.filter(pk__in=kinds).prefetch_related("tasks", "transitions").order_by("created_at")
        )
        for workflow in workflows:
            kind = kinds[workflow.pk]
            attempts = sum(task.attempt for task in workflow.tasks.all())
            events = " ".join(t.event for t in workflow.transitions.all())
            table.add_row(
                workflow.name, kind, expected[kind], workflow.state, str(workflow.retries), str(attempts), events
            )
        Console(file=self.stdout, width=160).print(table)
