"""`manage.py workflow`: start, inspect and drive workflows from a shell."""

import json
import math
import time
from collections import Counter
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Count, Q
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from workflow_orchestrator import audit, checkpoints, cron, jobs, schedules, selectors, services, statements, values
from workflow_orchestrator.api.filters import workflows_matching
from workflow_orchestrator.api.serializers import WorkflowDetailSerializer, WorkflowListSerializer
from workflow_orchestrator.models import (
    MAX_MAX_PARALLEL,
    MAX_PRIORITY,
    MIN_MAX_PARALLEL,
    MIN_PRIORITY,
    PHASES,
    TERMINAL_STATES,
    Actor,
    BulkOperation,
    ConcurrencyLimit,
    Hold,
    State,
    Task,
    Workflow,
    WorkflowDeletion,
    WorkflowSchedule,
)
from workflow_orchestrator.registry import definition_versions

ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)
# The options of `workflow bulk` that are filters as they are (the list's names).
BULK_OPTIONS = ("definition", "created_after", "created_before", "finished_after", "finished_before", "search")


def workflow_json(workflow: Workflow) -> dict:
    """The workflow as the API's detail describes it: the same fields, names and formats."""
    return WorkflowDetailSerializer(workflow).data


def _when(stored) -> str:
    """A time kept in a task's attempts, to the millisecond in UTC."""
    moment = statements.from_time(stored) if stored else None
    return f"{moment:%Y-%m-%d %H:%M:%S.%f}"[:-3] if moment else "…"


def _json_arg(value: str, option: str, max_depth: int = values.MAX_DEPTH):
    """The JSON value of an option, read strictly (values.parse_json): a one-line error otherwise."""
    try:
        return values.parse_json(value, option, max_depth=max_depth)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _labels(texts: list[str] | None) -> dict[str, str]:
    """The --label KEY=VALUE options, repeatable."""
    try:
        return values.parse_labels(texts or [], "=")
    except ValueError as exc:
        raise CommandError(f"--label {exc}") from None


def _tasks_arg(value: str | None):
    return None if value is None else _json_arg(value, "--tasks", values.TASKS_MAX_DEPTH)


class Command(BaseCommand):
    help = "Start, inspect and drive workflows (state changes are audited with the actor 'cli')."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        start = commands.add_parser("start", help="Create and start a workflow.")
        start.add_argument("--name", required=True)
        start.add_argument("--definition", default="default", help="Registered workflow definition.")
        start.add_argument("--mode", choices=Workflow.Mode.values, default=Workflow.Mode.AUTO)
        start.add_argument("--input", default="{}", help="The input, a JSON object.")
        start.add_argument(
            "--tasks",
            help='JSON list of {"name", "type", "params", "max_attempts", "timeout", "after"}; only type is required.',
        )
        start.add_argument("--idempotency-key", help="Starting twice with one key returns the first workflow.")
        start.add_argument(
            "--callback-url",
            default="",
            metavar="URL",
            help="Called with a signed POST when the workflow ends (its host must be in ORCH_WEBHOOK_ALLOWED_HOSTS).",
        )
        start.add_argument(
            "--priority",
            type=int,
            metavar="N",
            help=f"From {MIN_PRIORITY} to {MAX_PRIORITY}, higher first (default: the definition's, else 0).",
        )
        start.add_argument(
            "--concurrency-key",
            metavar="KEY",
            help="Workflows with the same key share its limits (`workflow limit`) and take turns with other keys "
            "(default: the definition's; '' for none).",
        )
        start.add_argument(
            "--max-parallel",
            type=int,
            metavar="N",
            help=f"From {MIN_MAX_PARALLEL} to {MAX_MAX_PARALLEL}: at most N of its EXECUTE tasks queued or running at "
            "once, the others wait for a slot (default: the definition's, else no limit).",
        )
        start.add_argument(
            "--deadline-seconds",
            type=int,
            metavar="N",
            help="It must complete within N seconds of its start (and of each retry), or it fails with "
            "'deadline exceeded' (default: the definition's, else none).",
        )
        start.add_argument(
            "--label",
            action="append",
            dest="labels",
            metavar="KEY=VALUE",
            help="A label to find it by (repeatable); on top of the definition's.",
        )
        start.add_argument(
            "--wait",
            nargs="?",
            type=float,
            const=600.0,
            metavar="SECONDS",
            help="Wait (default 600 s) until it has ended; exit 1 unless it ended COMPLETE.",
        )
        start.add_argument("--json", action="store_true", dest="as_json", help="Print the workflow as JSON.")

        signal = commands.add_parser(
            "signal", help="Send a signal to a workflow: it wakes the wait_signal task waiting for its name."
        )
        signal.add_argument("id")
        signal.add_argument("name", help="The signal's name.")
        signal.add_argument("--payload", default="{}", help="The payload, a JSON object: the woken task's result.")
        signal.add_argument("--idempotency-key", default="", help="Sending twice with one key sends it once.")
        signal.add_argument("--json", action="store_true", dest="as_json", help="Print the signal as JSON.")

        decide = commands.add_parser("decide", help="Approve or reject an approval task, as one of its approvers.")
        decide.add_argument("id")
        decide.add_argument("task", help="The approval task's name.")
        choice = decide.add_mutually_exclusive_group(required=True)
        choice.add_argument("--approve", action="store_const", const="approve", dest="decision")
        choice.add_argument("--reject", action="store_const", const="reject", dest="decision")
        decide.add_argument("--data", default="{}", help="The task's form, a JSON object by field name.")
        decide.add_argument("--comment", default="", help="Kept in the audit log (a reject's is the task's error).")
        decide.add_argument("--user", required=True, metavar="USERNAME", help="The approver who decides.")

        versions = commands.add_parser(
            "versions", help="List the definitions' versions: registered or not, with their workflows not yet ended."
        )
        versions.add_argument("--json", action="store_true", dest="as_json")

        show = commands.add_parser("show", help="Show a workflow with its tasks and transitions.")
        show.add_argument("id")
        show.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")

        listing = commands.add_parser("list", help="List workflows, newest first.")
        listing.add_argument("--state", choices=State.values)
        listing.add_argument(
            "--label",
            action="append",
            dest="labels",
            metavar="KEY=VALUE",
            help="Only workflows with this label (repeatable: with every one of them).",
        )
        listing.add_argument("--limit", type=int, default=50)
        listing.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")

        for action, text in [
            ("next", "Manual mode: fire the next transition."),
            ("delete", "Delete a workflow that is not running."),
        ]:
            commands.add_parser(action, help=text).add_argument("id")
        retry = commands.add_parser(
            "retry", help="Resume FAILED workflows at the phase that failed (tasks that succeeded are not re-run)."
        )
        retry.add_argument("ids", nargs="*", metavar="ID")
        retry.add_argument("--all-failed", action="store_true", help="Retry every FAILED workflow.")
        cancel = commands.add_parser("cancel", help="Cancel one or more workflows.")
        cancel.add_argument("ids", nargs="+", metavar="ID")
        cancel.add_argument("--reason", default="", help="Kept in the audit log.")
        for action, text, hold in [
            (
                "pause",
                "Pause one or more workflows, or hold a whole definition or concurrency key: running tasks "
                "finish, nothing new starts until resumed.",
                "Hold every workflow of %s, and start its new ones paused, until `resume %s`.",
            ),
            (
                "resume",
                "Resume one or more paused workflows, or release a hold of a definition or concurrency key.",
                "Release the hold of %s: resume the workflows it paused (%s).",
            ),
        ]:
            reasoned = commands.add_parser(action, help=text)
            reasoned.add_argument("ids", nargs="*", metavar="ID")
            held = reasoned.add_mutually_exclusive_group()
            held.add_argument("--definition", metavar="KEY", help=hold % ("the definition KEY", "--definition KEY"))
            held.add_argument("--key", metavar="KEY", help=hold % ("the concurrency key KEY", "--key KEY"))
            reasoned.add_argument("--reason", default="", help="Kept in the audit log.")
        holds = commands.add_parser(
            "holds", help="List the holds of definitions and concurrency keys, with the workflows each holds."
        )
        holds.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")
        commands.add_parser(
            "recover", help="Take back expired leases, re-send lost jobs and move on finished phases, now."
        )
        verify = commands.add_parser(
            "verify", help="Check a workflow's audit chain and its head; exit 1 if it is broken."
        )
        verify.add_argument("id", nargs="?")
        verify.add_argument(
            "--all",
            action="store_true",
            dest="verify_all",
            help="Check every workflow and the deletion log; print each broken one, then exit 1.",
        )
        verify.add_argument(
            "--checkpoint",
            metavar="FILE",
            help="With --all: also check that every chain extends this checkpoint (from `workflow checkpoint`).",
        )
        checkpoint = commands.add_parser(
            "checkpoint",
            help="Write a signed checkpoint of every audit chain's head, to keep outside the database; "
            "exit 1 if a chain is broken (it is left out).",
        )
        checkpoint.add_argument("--out", metavar="FILE", help="Write it to FILE (replaced whole) instead of stdout.")

        purge = commands.add_parser(
            "purge",
            help="Delete the ended workflows (COMPLETE, CANCELLED, FAILED) that finished more than DAYS days ago, "
            "each recorded in the deletion log.",
        )
        purge.add_argument("--older-than", type=int, required=True, metavar="DAYS", help="Whole days, 1 or more.")
        purge.add_argument(
            "--state",
            action="append",
            dest="states",
            choices=services.ENDED_STATES,
            help="Only workflows in this state (repeatable); by default all three.",
        )
        purge.add_argument(
            "--dry-run", action="store_true", help="Print how many workflows would be deleted, and which; delete none."
        )

        self._add_bulk_arguments(
            commands.add_parser(
                "bulk",
                help="Retry, cancel, pause or resume every workflow the filters match, each audited with the "
                "reason; refusals are counted.",
            )
        )
        self._add_schedule_arguments(commands.add_parser("schedule", help="Manage cron schedules of workflows."))
        self._add_limit_arguments(
            commands.add_parser("limit", help="Manage the concurrency limits and rates of concurrency keys.")
        )

    @staticmethod
    def _add_bulk_arguments(parser):
        parser.add_argument(
            "bulk_action", choices=BulkOperation.Action.values, metavar="ACTION", help="retry, cancel, pause or resume."
        )
        parser.add_argument(
            "--state",
            action="append",
            choices=State.values,
            dest="states",
            help="In this state (repeatable: in any of them).",
        )
        parser.add_argument("--definition", metavar="KEY", help="Of this definition.")
        parser.add_argument(
            "--label",
            action="append",
            dest="labels",
            metavar="KEY=VALUE",
            help="With this label (repeatable: with every one of them).",
        )
        for edge in ("created", "finished"):
            for side, word in (("after", "at or after"), ("before", "before")):
                parser.add_argument(
                    f"--{edge}-{side}",
                    metavar="ISO",
                    help=f"{edge.capitalize()} {word} this ISO 8601 time (e.g. 2026-12-05T09:00Z).",
                )
        parser.add_argument("--search", metavar="WORDS", help="With every word in its name.")
        parser.add_argument("--reason", default="", help="Required (but for --dry-run): kept in each audit row.")
        parser.add_argument("--dry-run", action="store_true", help="Only count the workflows that match.")

    @staticmethod
    def _add_limit_arguments(parser):
        actions = parser.add_subparsers(dest="limit_action", required=True, metavar="ACTION")
        limit_set = actions.add_parser(
            "set", help="Set a key's limits, replacing any it had; its tasks already running count at once."
        )
        limit_set.add_argument("key", metavar="KEY")
        limit_set.add_argument("--max-running", type=int, metavar="N", help="At most N of its tasks running at once.")
        limit_set.add_argument("--rate", type=int, metavar="N", help="At most N task starts per --per SECONDS.")
        limit_set.add_argument("--per", type=float, metavar="SECONDS", dest="per_seconds", help="The rate's period.")
        listing = actions.add_parser("list", help="List the limits, with the tasks running and waiting for each key.")
        listing.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")
        actions.add_parser("remove", help="Remove a key's limits: its waiting tasks may start.").add_argument(
            "key", metavar="KEY"
        )

    @staticmethod
    def _add_schedule_arguments(parser):
        actions = parser.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")
        add = actions.add_parser("add", help="Add a schedule that starts a workflow whenever its cron falls due.")
        add.add_argument("--name", required=True, help="The schedule's name (unique), also its workflows' name.")
        add.add_argument("--cron", required=True, help="Five fields (e.g. '0 9 * * 1-5'), or @hourly, @daily, ...")
        add.add_argument("--timezone", default="UTC", help="IANA time zone the cron is read in (default UTC).")
        add.add_argument("--definition", default="default", help="Registered workflow definition.")
        add.add_argument("--mode", choices=Workflow.Mode.values, default=Workflow.Mode.AUTO)
        add.add_argument("--input", default="{}", help="The input of each run, a JSON object.")
        add.add_argument("--tasks", help="JSON list of tasks, as for `workflow start`; default: the definition's.")
        add.add_argument("--paused", action="store_true", help="Add it paused.")
        add.add_argument("--json", action="store_true", dest="as_json", help="Print the schedule as JSON.")
        listing = actions.add_parser("list", help="List schedules with their last and next runs.")
        listing.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")
        for action, text in [
            ("pause", "Pause a schedule: it starts nothing until resumed."),
            ("resume", "Resume a schedule from its next due time (runs missed while paused are not made up)."),
            ("remove", "Delete a schedule; the workflows it started stay."),
        ]:
            actions.add_parser(action, help=text).add_argument("name")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"do_{action}")(**options)
        except services.WorkflowError as exc:
            raise CommandError(self._describe(exc)) from None
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()))

    @staticmethod
    def _describe(exc: services.WorkflowError) -> str:
        if isinstance(exc, services.InvalidTransition):
            allowed = ", ".join(exc.allowed) or "none"
            return f"{exc} (state {exc.state}; allowed transitions: {allowed})"
        return str(exc)

    def _get(self, workflow_id: str) -> Workflow:
        try:
            return Workflow.objects.get(pk=workflow_id)
        except (Workflow.DoesNotExist, ValidationError, ValueError):
            raise CommandError(f"no workflow with id {workflow_id!r}") from None

    def _print(self, workflow: Workflow, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(workflow_json(workflow), cls=DjangoJSONEncoder, indent=2))
            return
        progress = services.workflow_progress(workflow)
        self.stdout.write(
            f"{workflow.pk}  {workflow.name}  {workflow.state}  ({progress['done']}/{progress['total']} tasks)"
        )
        limit = f"  max_parallel {workflow.max_parallel}" if workflow.max_parallel is not None else ""
        if workflow.deadline_at:
            limit += f"  deadline {workflow.deadline_at:%Y-%m-%d %H:%M:%S} UTC"
        self.stdout.write(f"  priority {workflow.priority}  concurrency key {workflow.concurrency_key or '—'}{limit}")
        if workflow.error:
            self.stdout.write(f"  error: {workflow.error}")
        if reason := selectors.waiting_reason(workflow):
            self.stdout.write(f"  waiting: {reason}")
        for task in workflow.tasks.all():
            after = f"  after {', '.join(task.after)}" if task.after else ""
            self.stdout.write(f"  task {task.name:<24} {task.type:<18} {task.status:<10} attempt {task.attempt}{after}")
            for attempt in task.attempts:
                error = attempt.get("error", "").strip().splitlines()
                self.stdout.write(
                    f"    attempt {attempt['attempt']}  {attempt['outcome']:<13} {attempt['worker']}"
                    f"  {_when(attempt.get('started_at'))} → {_when(attempt.get('finished_at'))}"
                    + (f"  {error[-1]}" if error else "")
                )
        for transition in workflow.transitions.all():
            self.stdout.write(
                f"  #{transition.seq} {transition.event:<9} {transition.source} → {transition.target}"
                f"  by {transition.actor_label}  {transition.reason}".rstrip()
            )
        for delivery in workflow.webhook_deliveries.all():
            self.stdout.write(f"  webhook #{delivery.seq} {delivery.event} to {delivery.url}: {delivery.status}")
            for attempt in delivery.attempt_log.all():
                answer = attempt.status_code or "no answer"
                self.stdout.write(f"    attempt {attempt.number}  {answer}  {attempt.error}".rstrip())

    def do_start(
        self,
        *,
        name,
        definition,
        mode,
        input,
        tasks,
        idempotency_key,
        callback_url,
        priority,
        concurrency_key,
        max_parallel,
        deadline_seconds,
        labels,
        wait,
        as_json,
        **_,
    ):
        if wait is not None and not (math.isfinite(wait) and wait >= 0):
            raise CommandError(f"--wait must be a number of seconds, 0 or more, not {wait:g}")
        workflow, created = services.workflow_create(
            name=name,
            definition=definition,
            mode=mode,
            input=_json_arg(input, "--input"),
            tasks=_tasks_arg(tasks),
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            priority=priority,
            concurrency_key=concurrency_key,
            max_parallel=max_parallel,
            deadline_seconds=deadline_seconds,
            labels=_labels(labels),
            actor=Actor.CLI,
            start=True,
        )
        if not created and not as_json:
            self.stderr.write(f"idempotency key {idempotency_key!r} was used before: this is that workflow")
        if wait is not None:
            workflow = self._wait(workflow, wait)
        self._print(workflow, as_json)
        if wait is not None and workflow.state != State.COMPLETE:
            raise CommandError(f"workflow {workflow.pk} ended {workflow.state}: {workflow.error}".rstrip(": "))

    def do_signal(self, *, id, name, payload, idempotency_key, as_json, **_):
        workflow = self._get(id)
        payload = _json_arg(payload, "--payload")
        if not isinstance(payload, dict):
            raise CommandError("--payload must be a JSON object")
        if not name or len(name) > 200:
            raise CommandError("the signal's name must be 1 to 200 characters")
        signal, sent = services.workflow_signal(
            workflow.pk, name=name, payload=payload, actor=Actor.CLI, idempotency_key=idempotency_key
        )
        if as_json:
            fields = ("id", "name", "payload", "sent_by", "seq", "created_at", "delivered_at")
            body = {field: getattr(signal, field) for field in fields}
            self.stdout.write(
                json.dumps({**body, "task": signal.task.name if signal.task else None}, cls=DjangoJSONEncoder)
            )
            return
        how = "sent" if sent else f"already sent with idempotency key {idempotency_key!r}"
        to = f"delivered to task {signal.task.name}" if signal.task else "kept until a task waits for it"
        self.stdout.write(f"signal {name} {how} to workflow {workflow.pk}: {to}")

    def do_decide(self, *, id, task, decision, data, comment, user, **_):
        workflow = self._get(id)
        data = _json_arg(data, "--data")
        try:
            approver = get_user_model().objects.get_by_natural_key(user)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {user!r}") from None
        try:
            made = services.task_decide(
                workflow.pk,
                task,
                user=approver,
                decision=decision,
                data=data,
                comment=comment,
                actor=Actor(f"cli:{approver.get_username()}", approver),
            )
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        except services.NotAnApprover as exc:
            raise CommandError(f"{exc}: only its approvers may decide it") from None
        self.stdout.write(f"{task} {decision}d by {made.actor_label} (audit row #{made.seq})")

    def do_versions(self, *, as_json, **_):
        registered = definition_versions()
        counts = (
            Workflow.objects.exclude(state__in=TERMINAL_STATES)
            .order_by()
            .values_list("definition", "definition_version")
            .annotate(
                running=Count("pk", filter=Q(state__in=PHASES)),
                waiting=Count("pk", filter=Q(state__in=(State.INIT, State.FAILED))),
            )
        )
        used = {(key, version): (running, waiting) for key, version, running, waiting in counts}
        rows = []
        for key, version in sorted({*used, *((k, v) for k, vs in registered.items() for v in vs)}):
            running, waiting = used.get((key, version), (0, 0))
            versions_of_key = registered.get(key, [])
            rows.append(
                {
                    "definition": key,
                    "version": version,
                    "registered": version in versions_of_key,
                    "newest": bool(versions_of_key) and version == max(versions_of_key),
                    "running": running,
                    "waiting": waiting,
                }
            )
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        self.stdout.write(f"{'definition':<24} {'version':>7}  {'registered':<14} {'running':>7} {'waiting':>7}")
        for row in rows:
            status = ("yes, newest" if row["newest"] else "yes") if row["registered"] else "NO"
            self.stdout.write(
                f"{row['definition']:<24} {row['version']:>7}  {status:<14} {row['running']:>7} {row['waiting']:>7}"
            )

    def _wait(self, workflow: Workflow, seconds: float) -> Workflow:
        deadline = time.monotonic() + seconds
        while workflow.state not in ENDED:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"workflow {workflow.pk} is still {workflow.state} after {seconds:g} s: is a cluster running "
                    "(python manage.py qcluster)?"
                )
            time.sleep(0.1)
            workflow = Workflow.objects.get(pk=workflow.pk)
        return workflow

    def do_show(self, *, id, as_json, **_):
        self._print(self._get(id), as_json)

    def do_list(self, *, state, labels, limit, as_json, **_):
        if limit < 1:
            raise CommandError(f"--limit must be 1 or more, not {limit}")
        workflows = selectors.with_labels(Workflow.objects.all(), _labels(labels))
        if state:
            workflows = workflows.filter(state=state)
        workflows = workflows[:limit]
        if as_json:
            rows = WorkflowListSerializer(workflows.with_progress().select_related("created_by"), many=True).data
            self.stdout.write(json.dumps(rows, cls=DjangoJSONEncoder, indent=2))
            return
        for w in workflows:
            self.stdout.write(
                f"{w.pk}  {w.state:<9}  {w.mode:<6}  {w.priority:>4}  {w.created_at:%Y-%m-%d %H:%M:%S}  "
                f"{w.concurrency_key or '—':<16}  {w.name}"
            )

    def _act(self, operation, workflow_id: str, verb: str, **kwargs) -> None:
        workflow = operation(self._get(workflow_id).pk, actor=Actor.CLI, **kwargs)
        self.stdout.write(f"{verb} {workflow.pk}: now {workflow.state}")

    def do_next(self, *, id, **_):
        self._act(services.workflow_next, id, "advanced")

    def do_retry(self, *, ids, all_failed, **_):
        if all_failed:
            ids = [*ids, *map(str, Workflow.objects.filter(state=State.FAILED).values_list("pk", flat=True))]
        if not ids and not all_failed:
            raise CommandError("name the workflows to retry, or give --all-failed")
        if not ids:
            self.stdout.write("no FAILED workflows to retry")
            return
        self._bulk(services.workflow_retry, ids, "retried", "Retrying")

    def do_cancel(self, *, ids, reason, **_):
        self._bulk(services.workflow_cancel, ids, "cancelled", "Cancelling", reason=reason)

    def do_pause(self, *, ids, definition, key, reason, **_):
        if hold := self._hold(ids, definition, key, "pause"):
            held = services.hold_set(*hold, actor=Actor.CLI, reason=reason)
            if not held.created:
                since = f"{held.hold.created_at:%Y-%m-%d %H:%M:%S} UTC by {held.hold.actor_label}"
                self.stdout.write(f"{self._hold_name(*hold)} is held already (since {since}): nothing changed")
                return
            self.stdout.write(f"held {self._hold_name(*hold)}: {held.paused} workflow(s) paused")
            return
        self._bulk(services.workflow_pause, ids, "paused", "Pausing", reason=reason)

    def do_resume(self, *, ids, definition, key, reason, **_):
        if hold := self._hold(ids, definition, key, "resume"):
            released = services.hold_release(*hold, actor=Actor.CLI, reason=reason)
            kept = f"; {released.still_held} still held by another hold" if released.still_held else ""
            self.stdout.write(f"released {self._hold_name(*hold)}: {released.resumed} workflow(s) resumed{kept}")
            return
        self._bulk(services.workflow_resume, ids, "resumed", "Resuming", reason=reason)

    @staticmethod
    def _hold(ids, definition, key, action: str) -> tuple[str, str] | None:
        """The (kind, value) of the hold named by --definition or --key, None for workflow ids."""
        named = [(kind, value) for kind, value in (("definition", definition), ("key", key)) if value is not None]
        if named and ids:
            raise CommandError(f"give workflow ids, or --definition KEY or --key KEY, not both, to {action}")
        if not named and not ids:
            raise CommandError(f"name the workflows to {action}, or give --definition KEY or --key KEY")
        return named[0] if named else None

    @staticmethod
    def _hold_name(kind: str, value: str) -> str:
        return f"{kind} {value!r}"

    def do_holds(self, *, as_json, **_):
        holds = list(Hold.objects.all())
        counts = services.held_counts(holds)
        rows = [self._hold_json(hold, counts[hold.label]) for hold in holds]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        table = Table("kind", "value", "reason", "by", "since (UTC)", "workflows held")
        for hold, row in zip(holds, rows, strict=True):
            since = f"{hold.created_at:%Y-%m-%d %H:%M:%S}"
            table.add_row(row["kind"], row["value"], row["reason"] or "—", row["actor"], since, str(row["workflows"]))
        Console(file=self.stdout, width=120).print(table)

    @staticmethod
    def _hold_json(hold: Hold, workflows: int) -> dict:
        return {
            "kind": hold.kind,
            "value": hold.value,
            "reason": hold.reason,
            "actor": hold.actor_label,
            "created_at": hold.created_at.isoformat(),
            "workflows": workflows,
        }

    def _bulk(self, operation, ids: list[str], verb: str, doing: str, **kwargs) -> None:
        """Act on one workflow, or on many with a progress bar and a summary; exit 1 if any was refused."""
        if len(ids) == 1:
            return self._act(operation, ids[0], verb, **kwargs)
        outcomes: Counter[str] = Counter()
        console = Console(file=self.stderr)
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console) as progress:
            for workflow_id in progress.track(dict.fromkeys(ids), description=doing):
                try:
                    operation(self._get(workflow_id).pk, actor=Actor.CLI, **kwargs)
                    outcomes[verb] += 1
                except CommandError:
                    outcomes["skipped: not found"] += 1
                except services.InvalidTransition as exc:
                    outcomes[f"skipped: {exc.state} cannot be {verb}"] += 1
        table = Table("outcome", "workflows")
        for outcome, count in outcomes.most_common():
            table.add_row(outcome, str(count))
        Console(file=self.stdout).print(table)
        if outcomes[verb] != sum(outcomes.values()):
            raise CommandError("; ".join(f"{count} {outcome}" for outcome, count in outcomes.items()))

    def do_bulk(self, *, bulk_action, states, labels, reason, dry_run, **options):
        """A bulk operation, its steps run here (no request timeout bounds a command): the
        same as POST /workflows/bulk, whose steps the cluster runs."""
        criteria = {name: options[name] for name in BULK_OPTIONS if options.get(name)}
        if states:
            criteria["state"] = states
        if labels:
            criteria["label"] = [f"{key}:{value}" for key, value in _labels(labels).items()]
        workflows = workflows_matching(criteria, Workflow.objects.all())
        if dry_run:
            total = workflows.count()
            names = list(workflows.order_by("-created_at").values_list("name", flat=True)[:5])
            more = f", … ({total - len(names)} more)" if total > len(names) else ""
            shown = f": {', '.join(names)}{more}" if names else ""
            self.stdout.write(f"{total} workflow(s) match; {bulk_action} would be tried on each{shown}")
            return
        operation = services.bulk_start(
            bulk_action, workflows, actor=Actor.CLI, reason=reason, criteria=criteria, send=False
        )
        console = Console(file=self.stderr)
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console) as progress:
            bar = progress.add_task(f"bulk {bulk_action}", total=operation.total)
            operation = services.bulk_run(operation, lambda now: progress.update(bar, completed=now.position))
        skipped = "".join(f"; {count} skipped: {why}" for why, count in operation.skipped.items())
        verb = services.BULK_ACTIONS[bulk_action][1]
        self.stdout.write(f"bulk {operation.pk}: {operation.total} matched; {operation.done} {verb}{skipped}")

    def do_delete(self, *, id, **_):
        workflow = self._get(id)
        services.workflow_delete(workflow.pk, actor=Actor.CLI)
        self.stdout.write(f"deleted {workflow.pk}")

    def do_purge(self, *, older_than, states, dry_run, **_):
        if not 1 <= older_than <= timedelta.max.days:
            raise CommandError(
                f"--older-than must be a whole number of days from 1 to {timedelta.max.days}, not {older_than}"
            )
        age, states = timedelta(days=older_than), list(dict.fromkeys(states or services.ENDED_STATES))
        if dry_run:
            return self._purge_preview(services.workflows_to_purge(age, states=states))
        total = services.workflows_purge(age, actor=Actor.CLI, states=states, dry_run=True)
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=Console(file=self.stderr)) as bar:
            task = bar.add_task("Deleting", total=total)
            purged = services.workflows_purge(
                age, actor=Actor.CLI, states=states, progress=lambda done: bar.update(task, completed=done)
            )
        self.stdout.write(
            f"deleted {purged} workflow(s) ({', '.join(states)}) that finished more than {older_than} day(s) ago; "
            "each is recorded in the deletion log"
        )

    def _purge_preview(self, candidates) -> None:
        count = 0
        for workflow in candidates.only("pk", "name", "state", "finished_at").iterator():
            self.stdout.write(
                f"{workflow.pk}  {workflow.state:<9}  finished {workflow.finished_at:%Y-%m-%d %H:%M:%S} UTC  "
                f"{workflow.name}"
            )
            count += 1
        self.stdout.write(f"{count} workflow(s) would be deleted (dry run: none was)")

    def do_verify(self, *, id, verify_all, checkpoint, **_):
        if bool(id) == verify_all:
            raise CommandError("give one workflow id, or --all")
        if checkpoint and not verify_all:
            raise CommandError("--checkpoint goes with --all")
        if not verify_all:
            broken = audit.verify(self._get(id))
            if broken:
                raise CommandError(f"broken audit chain: {broken}")
            self.stdout.write("audit chain intact for 1 workflow(s)")
            return
        self._verify_all(self._checkpoint(checkpoint) if checkpoint else None)

    @staticmethod
    def _checkpoint(path: str) -> checkpoints.Checkpoint:
        """The checkpoint, read through and its signature checked before anything else is."""
        try:
            return checkpoints.Checkpoint(path)
        except checkpoints.CheckpointError as exc:
            raise CommandError(f"checkpoint {path} refused: {exc}") from None

    def _verify_all(self, checkpoint: checkpoints.Checkpoint | None) -> None:
        """Every workflow's chain and the deletion log, against the checkpoint if given: each
        broken one on a line of its own."""
        verification = checkpoints.Verification(checkpoint)
        try:
            with checkpoints.snapshot():
                for problem in verification:
                    self.stdout.write(str(problem))
                deletions = WorkflowDeletion.objects.count()
        except checkpoints.CheckpointError as exc:  # the file changed since it was opened
            raise CommandError(f"checkpoint {checkpoint.path} refused: {exc}") from None
        if verification.failed:
            raise CommandError(self._failures(verification))
        self.stdout.write(
            f"audit chain intact for {verification.checked} workflow(s); deletion log intact ({deletions} deletion(s))"
        )
        if checkpoint:
            self.stdout.write(
                f"every chain extends the checkpoint taken at {checkpoint.taken_at:%Y-%m-%d %H:%M:%S} UTC "
                f"({checkpoint.workflows} workflow(s), {verification.deleted} deleted through the engine since)"
            )

    @staticmethod
    def _failures(verification: checkpoints.Verification) -> str:
        which = "a broken audit chain"
        if verification.checkpoint:
            which += " or one that does not extend the checkpoint"
        summary = [f"{verification.broken} of {verification.checked} workflow(s) have {which}"]
        if verification.gone:
            summary.append(f"{verification.gone} workflow(s) of the checkpoint are gone without a deletion record")
        summary.append("the deletion log is broken" if verification.deletion_log else "the deletion log is intact")
        return "; ".join(summary)

    def do_checkpoint(self, *, out, **_):
        def report(broken) -> None:
            self.stderr.write(str(broken))

        try:
            written = checkpoints.write_file(out, report) if out else checkpoints.write(self.stdout, report)
        except OSError as exc:
            raise CommandError(f"cannot write the checkpoint to {out or 'stdout'}: {exc.strerror or exc}") from None
        if written.left_out or not written.deletion_log:
            left_out = [f"{written.left_out} workflow(s) whose audit chain is broken"] if written.left_out else []
            if not written.deletion_log:
                left_out.append("the deletion log, which is broken")
            raise CommandError(f"checkpoint written without {' and '.join(left_out)}")
        log_seq = written.deletion_log[0]
        summary = (
            f"checkpoint of {written.workflows} workflow(s) and the deletion log at #{log_seq}, taken at "
            f"{written.taken_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        if out:
            self.stdout.write(f"{summary}, written to {out}")
        else:  # the document itself is on stdout
            self.stderr.write(summary, style_func=str)

    def do_recover(self, **_):
        found = jobs.recover()
        broken = found["audit_broken"]
        self.stdout.write(
            f"expired leases taken back: {found['expired']}; lost jobs re-sent: {found['requeued']}; "
            f"finished phases moved on: {found['moved_on']}; "
            f"stalled webhooks taken back: {found['webhooks_taken_back']}; "
            f"stalled bulk operations sent on: {found['bulk_steps_resent']}; "
            f"held workflows paused late: {found['held']}; released workflows resumed late: {found['released']}; "
            f"audit chains broken, left as they are: {len(broken)}"
        )
        for link in broken.values():
            self.stdout.write(f"  audit broken: {link}")

    # --- schedules --------------------------------------------------------------------------

    def do_schedule(self, *, schedule_action, **options):
        getattr(self, f"schedule_{schedule_action}")(**options)

    @staticmethod
    def _schedule_json(schedule: WorkflowSchedule) -> dict:
        fields = ["id", "name", "cron", "time_zone", "definition", "mode", "input", "tasks", "enabled"]
        times = ["last_run_at", "next_run_at", "created_at", "updated_at"]
        data = {field: getattr(schedule, field) for field in fields}
        data.update({field: getattr(schedule, field) and getattr(schedule, field).isoformat() for field in times})
        return {**data, "last_error": schedule.last_error, "workflows": schedule.workflows.count()}

    def _schedule(self, name: str) -> WorkflowSchedule:
        try:
            if values.text_problem(name):  # no schedule has such a name, and the database cannot be asked
                raise WorkflowSchedule.DoesNotExist
            return WorkflowSchedule.objects.get(name=name)
        except WorkflowSchedule.DoesNotExist:
            raise CommandError(f"no schedule named {name!r}") from None

    def schedule_add(self, *, name, cron, timezone, definition, mode, input, tasks, paused, as_json, **_):
        schedule = schedules.schedule_save(
            WorkflowSchedule(
                name=name,
                cron=cron,
                time_zone=timezone,
                definition=definition,
                mode=mode,
                input=_json_arg(input, "--input"),
                tasks=_tasks_arg(tasks),
                enabled=not paused,
            )
        )
        if as_json:
            self.stdout.write(json.dumps(self._schedule_json(schedule), indent=2))
            return
        self.stdout.write(f"added schedule {schedule.name!r}: {self._next(schedule)}")

    @staticmethod
    def _next(schedule: WorkflowSchedule) -> str:
        if not schedule.next_run_at:
            return "paused"
        return f"next run {schedule.next_run_at:%Y-%m-%d %H:%M} UTC"

    def schedule_list(self, *, as_json, **_):
        rows = WorkflowSchedule.objects.all()
        if as_json:
            self.stdout.write(json.dumps([self._schedule_json(schedule) for schedule in rows], indent=2))
            return
        table = Table("name", "cron", "enabled", "last run", "next run")
        for s in rows:
            last, upcoming = (cron.local_time_label(t, s.time_zone) for t in (s.last_run_at, s.next_run_at))
            table.add_row(s.name, f"{s.cron}\n{cron.cron_in_words(s.cron)}", "yes" if s.enabled else "paused", last,
                          upcoming)  # fmt: skip
        Console(file=self.stdout, width=120).print(table)

    def schedule_pause(self, *, name, **_):
        schedules.schedule_pause(self._schedule(name))
        self.stdout.write(f"paused schedule {name!r}")

    def schedule_resume(self, *, name, **_):
        schedule = schedules.schedule_resume(self._schedule(name))
        self.stdout.write(f"resumed schedule {name!r}: {self._next(schedule)}")

    def schedule_remove(self, *, name, **_):
        schedules.schedule_remove(self._schedule(name))
        self.stdout.write(f"removed schedule {name!r}")

    # --- concurrency limits -----------------------------------------------------------------

    def do_limit(self, *, limit_action, **options):
        getattr(self, f"limit_{limit_action}")(**options)

    def limit_set(self, *, key, max_running, rate, per_seconds, **_):
        limit, created = services.limit_set(key, max_running=max_running, rate=rate, per_seconds=per_seconds)
        verb = "set" if created else "changed"
        self.stdout.write(f"{verb} the limit of {key!r}: {limit.describe()}; {limit.running} running now")

    def limit_list(self, *, as_json, **_):
        limits = list(ConcurrencyLimit.objects.all())
        # The tasks ready to run but held back (or not yet claimed), per key: one query, on
        # the index of ready tasks by key.
        waiting = dict(
            Task.objects.filter(status=Task.Status.QUEUED, concurrency_key__in=[limit.key for limit in limits])
            .values_list("concurrency_key")
            .annotate(count=Count("pk"))
            .order_by()
        )
        rows = [self._limit_json(limit, waiting.get(limit.key, 0)) for limit in limits]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        table = Table("key", "max running", "running", "rate", "waiting")
        for row in rows:
            rate = f"{row['rate']} per {row['per_seconds']:g} s" if row["rate"] is not None else "—"
            maximum = "—" if row["max_running"] is None else str(row["max_running"])
            table.add_row(row["key"], maximum, str(row["running"]), rate, str(row["waiting"]))
        Console(file=self.stdout, width=120).print(table)

    @staticmethod
    def _limit_json(limit: ConcurrencyLimit, waiting: int) -> dict:
        return {
            "key": limit.key,
            "max_running": limit.max_running,
            "running": limit.running,
            "rate": limit.rate,
            "per_seconds": limit.per_seconds,
            "waiting": waiting,
            "created_at": limit.created_at.isoformat(),
            "updated_at": limit.updated_at.isoformat(),
        }

    def limit_remove(self, *, key, **_):
        # A key the database cannot hold (a lone surrogate from a badly encoded argument)
        # has no limit, and the database need not be asked.
        if values.text_problem(key) or not services.limit_remove(key):
            raise CommandError(f"no limit for the key {key!r}")
        self.stdout.write(f"removed the limit of {key!r}")
