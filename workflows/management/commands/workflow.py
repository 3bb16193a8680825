"""`manage.py workflow`: start, inspect and drive workflows from a shell."""

import json
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

from workflows import services
from workflows.models import Actor, State, Workflow

ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)


def workflow_json(workflow: Workflow) -> dict:
    fields = [
        "name", "definition", "state", "mode", "input", "results", "error", "retries", "failed_phase",
        "idempotency_key", "created_at", "updated_at", "started_at", "finished_at",
    ]  # fmt: skip
    data = {"id": str(workflow.pk), **{field: getattr(workflow, field) for field in fields}}
    data["progress"] = services.workflow_progress(workflow)
    data["tasks"] = list(
        workflow.tasks.values(
            "id", "phase", "name", "type", "params", "status", "attempt", "max_attempts", "timeout",
            "result", "error", "queued_at", "started_at", "finished_at", "worker",
        )
    )  # fmt: skip
    data["transitions"] = list(
        workflow.transitions.values("seq", "event", "source", "target", "actor_label", "reason", "data", "created_at")
    )
    return data


def _json_arg(value: str, option: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}") from None


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
            help='JSON list of {"name", "type", "params", "max_attempts", "timeout"}; only type is required.',
        )
        start.add_argument("--idempotency-key", help="Starting twice with one key returns the first workflow.")
        start.add_argument(
            "--wait",
            nargs="?",
            type=float,
            const=600.0,
            metavar="SECONDS",
            help="Wait (default 600 s) until it has ended; exit 1 unless it ended COMPLETE.",
        )
        start.add_argument("--json", action="store_true", dest="as_json", help="Print the workflow as JSON.")

        show = commands.add_parser("show", help="Show a workflow with its tasks and transitions.")
        show.add_argument("id")
        show.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")

        listing = commands.add_parser("list", help="List workflows, newest first.")
        listing.add_argument("--state", choices=State.values)
        listing.add_argument("--limit", type=int, default=50)
        listing.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")

        for action, text in [
            ("next", "Manual mode: fire the next transition."),
            ("retry", "Resume a FAILED workflow at the phase that failed."),
            ("cancel", "Cancel a workflow."),
            ("delete", "Delete a workflow that is not running."),
        ]:
            commands.add_parser(action, help=text).add_argument("id")
        commands.add_parser("recover", help="Take back expired leases and re-send lost jobs now.")

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
        if workflow.error:
            self.stdout.write(f"  error: {workflow.error}")
        for task in workflow.tasks.all():
            self.stdout.write(f"  task {task.name:<24} {task.type:<18} {task.status:<10} attempt {task.attempt}")
        for transition in workflow.transitions.all():
            self.stdout.write(
                f"  #{transition.seq} {transition.event:<9} {transition.source} → {transition.target}"
                f"  by {transition.actor_label}  {transition.reason}".rstrip()
            )

    def do_start(self, *, name, definition, mode, input, tasks, idempotency_key, wait, as_json, **_):
        workflow, created = services.workflow_create(
            name=name,
            definition=definition,
            mode=mode,
            input=_json_arg(input, "--input"),
            tasks=_json_arg(tasks, "--tasks") if tasks is not None else None,
            idempotency_key=idempotency_key,
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

    def do_list(self, *, state, limit, as_json, **_):
        workflows = Workflow.objects.all()
        if state:
            workflows = workflows.filter(state=state)
        workflows = workflows[:limit]
        if as_json:
            rows = [
                {"id": str(w.pk), "name": w.name, "state": w.state, "mode": w.mode, "created_at": w.created_at}
                for w in workflows
            ]
            self.stdout.write(json.dumps(rows, cls=DjangoJSONEncoder, indent=2))
            return
        for w in workflows:
            self.stdout.write(f"{w.pk}  {w.state:<9}  {w.mode:<6}  {w.created_at:%Y-%m-%d %H:%M:%S}  {w.name}")

    def _act(self, operation, workflow_id: str, verb: str) -> None:
        workflow = operation(self._get(workflow_id).pk, actor=Actor.CLI)
        self.stdout.write(f"{verb} {workflow.pk}: now {workflow.state}")

    def do_next(self, *, id, **_):
        self._act(services.workflow_next, id, "advanced")

    def do_retry(self, *, id, **_):
        self._act(services.workflow_retry, id, "retried")

    def do_cancel(self, *, id, **_):
        self._act(services.workflow_cancel, id, "cancelled")

    def do_delete(self, *, id, **_):
        workflow = self._get(id)
        services.workflow_delete(workflow.pk, actor=Actor.CLI)
        self.stdout.write(f"deleted {workflow.pk}")

    def do_recover(self, **_):
        found = services.recover()
        self.stdout.write(f"expired leases taken back: {found['expired']}; lost jobs re-sent: {found['requeued']}")
