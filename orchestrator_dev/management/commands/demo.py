"""`manage.py demo`: a mixed set of workflows on the running cluster, watched to the end."""

import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django_q.status import Stat
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from workflow_orchestrator import queue, services
from workflow_orchestrator.models import Actor, State, Task, Workflow

# The nightly import: fetch → transform → load, with notify beside load (both after
# transform), and a report that gathers what load and notify returned.
NIGHTLY_IMPORT = [
    {"name": "fetch", "type": "echo", "params": {"rows": 3}},
    {"name": "transform", "type": "gather", "after": ["fetch"]},
    {"name": "load", "type": "gather", "after": ["transform"]},
    {"name": "notify", "type": "sleep", "params": {"seconds": 0.3}, "after": ["transform"]},
    {"name": "report", "type": "gather", "after": ["load", "notify"]},
]

# The expense approval: a check, then an approval by the demo's approver (or anyone with the
# change permission on workflows: an admin), then the payment, which reads the decision.
APPROVER = "demo-approver"
EXPENSE_INPUT = {"amount": 120, "customer": "ACME", "reason": "damaged on delivery"}
EXPENSE_APPROVAL = [
    {"name": "check", "type": "echo", "params": {"limit": 100}},
    {
        "name": "approve",
        "type": "approval",
        "after": ["check"],
        "params": {
            "approvers": {"users": [APPROVER], "permission": "workflow_orchestrator.change_workflow"},
            "prompt": "Refund {amount} EUR to {customer} ({reason})? It is above the limit of 100 EUR.",
            "fields": [
                {"name": "cost_centre", "label": "Cost centre", "type": "choice", "choices": ["sales", "support"],
                 "required": True},
                {"name": "note", "label": "Note for the customer", "type": "text"},
            ],
            "deadline_seconds": 3600,
            "on_deadline": "reject",
        },
    },
    {"name": "pay", "type": "gather", "after": ["approve"]},
]  # fmt: skip

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
    ("expense approval", EXPENSE_APPROVAL, "COMPLETE once demo-approver approves (Waiting for me)"),
]
ENDED = (State.COMPLETE, State.CANCELLED)


class Command(BaseCommand):
    help = (
        "Start a mixed set of workflows on the running cluster (a nightly import whose tasks depend on each "
        "other, flaky then succeeding, failing then retried, cancelled, an expense approval), show a progress "
        "bar until all have ended, and print a summary table. The expense waits for an approval, which the demo "
        "gives as the user demo-approver (created if missing), unless --leave-approval leaves it for you. "
        "A cluster must be running: `python manage.py qcluster` (make run starts one)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--scale", type=int, default=1, help="Workflows of each kind (default 1).")
        parser.add_argument("--timeout", type=float, default=120, help="Seconds to wait for them all (default 120).")
        parser.add_argument(
            "--leave-approval",
            action="store_true",
            help="Leave the expense approval waiting for you (the admin's Waiting for me) instead of approving it "
            f"as {APPROVER}; the demo then ends without waiting for it.",
        )

    def handle(self, *args, scale, timeout, leave_approval, **options):
        if scale < 1:
            raise CommandError("--scale must be at least 1")
        if not Stat.get_all(broker=queue.broker()):
            raise CommandError(
                "No worker cluster is running, so nothing would happen: start one with "
                "`python manage.py qcluster` (or `make run`), then run the demo again."
            )
        started = time.monotonic()
        self.approver, _ = get_user_model().objects.get_or_create(username=APPROVER)
        self.leave_approval = leave_approval
        kinds = {}
        for kind, tasks, _ in KINDS:
            for i in range(scale):
                workflow, _ = services.workflow_create(
                    name=f"demo {kind} {i + 1}",
                    tasks=tasks,
                    input=EXPENSE_INPUT if kind == "expense approval" else None,
                    actor=Actor.CLI,
                    start=True,
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
                    if kinds[workflow_id] == "expense approval" and not self.leave_approval:
                        self._approve(workflow_id)
                ended = sum(
                    state in ENDED
                    or (state == State.FAILED and pk in retried)
                    or (self.leave_approval and kinds[pk] == "expense approval" and self._waits(pk))
                    for pk, state in states.items()
                )
                progress.update(bar, completed=ended)
                if ended == len(kinds):
                    return
                if time.monotonic() > deadline:
                    raise CommandError(f"{len(kinds) - ended} workflows had not ended after {timeout:g} s")
                time.sleep(0.2)

    @staticmethod
    def _waits(workflow_id) -> bool:
        return Task.objects.filter(workflow_id=workflow_id, name="approve", status=Task.Status.WAITING).exists()

    def _approve(self, workflow_id) -> None:
        """Approve the expense as the demo's approver, once its approval waits."""
        if self._waits(workflow_id):
            services.task_decide(
                workflow_id,
                "approve",
                user=self.approver,
                decision="approve",
                data={"cost_centre": "support", "note": "Sorry for the trouble."},
                comment="within the support budget",
                actor=Actor(f"cli:{APPROVER}", self.approver),
            )

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
