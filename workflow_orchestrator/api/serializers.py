"""Shapes of the REST API. Input serializers check types; the engine checks meaning
(registered task types and definitions) and its errors come back as field errors."""

from django.core.exceptions import ValidationError
from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.reverse import reverse

from .. import approvals, selectors, services, statements, values
from ..models import (
    ATTEMPT_OUTCOMES,
    DEADLINE_ERROR,
    MAX_DEADLINE_SECONDS,
    MAX_MAX_PARALLEL,
    MAX_PRIORITY,
    MIN_MAX_PARALLEL,
    MIN_PRIORITY,
    PHASES,
    BulkOperation,
    Decision,
    Phase,
    State,
    Task,
    Transition,
    WebhookAttempt,
    WebhookDelivery,
    Workflow,
    WorkflowSignal,
)
from ..services import MAX_TASK_ATTEMPTS, MAX_TASK_TIMEOUT, MAX_TASKS
from . import access
from .renderers import START_EXAMPLE


def request_example(summary: str, value: dict):
    """Documents an input serializer with an example body that the API accepts as it is:
    Swagger UI shows it as the operation's "Example Value" and starts "Try it out" from it
    (rather than from placeholders such as "string" for a task type, which are refused)."""
    return extend_schema_serializer(examples=[OpenApiExample(summary, value=value, request_only=True)])


# Input fields take JSON's own types, as the CLI and the engine do: DRF would otherwise
# read 0 as the name "0", "3" as the number 3 and true as 1.0.


class StrictCharField(serializers.CharField):
    """A JSON string (DRF's CharField also turns numbers into text)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON whole number: not a string, a boolean or a fraction."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number: not a string or a boolean."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, alongside any other field errors: a misspelt
    field is a mistake to report, not one to ignore."""

    def to_internal_value(self, data):
        known = set(self.fields)
        unknown = {
            str(field): [f"Unknown field: the fields are {', '.join(sorted(known))}."]
            for field in (data if isinstance(data, dict) else ())
            if field not in known
        }
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, dict):
                exc.detail.update(serializers.as_serializer_error(serializers.ValidationError(unknown)))
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class JSONObjectField(serializers.JSONField):
    """A JSON object (not a list, string or number) that the database can store."""

    default_error_messages = {"not_an_object": "Must be a JSON object."}

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_an_object")
        if problem := values.json_problem(data, self.field_name):
            raise serializers.ValidationError(problem)
        return super().to_internal_value(data)


extend_schema_field({"type": "object", "additionalProperties": True})(JSONObjectField)


class LabelsField(serializers.JSONField):
    """A workflow's labels: a flat object of string keys and values."""

    def to_internal_value(self, data):
        if problem := values.labels_problem(data):
            raise serializers.ValidationError(f"labels {problem}")
        return data


extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": values.MAX_LABEL_VALUE},
        "maxProperties": values.MAX_LABELS,
        "example": {"customer": "acme", "env": "prod"},
    }
)(LabelsField)


class TaskSpecSerializer(StrictSerializer):
    name = StrictCharField(required=False, max_length=200, help_text="Defaults to the type and a number.")
    type = StrictCharField(max_length=100, help_text="A registered task type, e.g. echo, sleep, noop, fail.")
    params = JSONObjectField(required=False, help_text="Given to the handler.")
    max_attempts = StrictIntegerField(required=False, min_value=1, max_value=MAX_TASK_ATTEMPTS)
    timeout = StrictFloatField(required=False, min_value=0.1, max_value=MAX_TASK_TIMEOUT, help_text="Seconds.")
    after = serializers.ListField(
        child=StrictCharField(max_length=200),
        required=False,
        max_length=MAX_TASKS,
        help_text="Names of this workflow's tasks that must succeed before this one runs.",
    )


@request_example("Two tasks: echo, then sleep", START_EXAMPLE)
class WorkflowInputSerializer(StrictSerializer):
    """The body that creates (and, on the start endpoints, starts) a workflow."""

    name = StrictCharField(max_length=200)
    definition = StrictCharField(max_length=100, default="default")
    mode = serializers.ChoiceField(choices=Workflow.Mode.choices, default=Workflow.Mode.AUTO)
    input = JSONObjectField(default=dict)
    tasks = TaskSpecSerializer(many=True, required=False, max_length=MAX_TASKS)
    idempotency_key = StrictCharField(max_length=200, required=False, allow_null=True, allow_blank=False)
    callback_url = StrictCharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="http(s) URL called with a signed POST when the workflow ends (COMPLETE, FAILED or CANCELLED);"
        " its host must be allowed by the server's ORCH_WEBHOOK_ALLOWED_HOSTS.",
    )
    priority = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=MIN_PRIORITY,
        max_value=MAX_PRIORITY,
        help_text="Among ready tasks, a higher priority's are claimed first. Left out or null: the definition's"
        " default (0 unless it sets one).",
    )
    # Not trimmed: a key is matched exactly against its limit's (ConcurrencyLimit.key).
    concurrency_key = StrictCharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        trim_whitespace=False,
        max_length=Workflow._meta.get_field("concurrency_key").max_length,
        help_text="Workflows with the same key share its concurrency limit and rate, and take turns with other"
        ' keys. Left out or null: the definition\'s default; "" for none.',
    )
    max_parallel = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=MIN_MAX_PARALLEL,
        max_value=MAX_MAX_PARALLEL,
        help_text="At most this many of its EXECUTE tasks are queued or running at once; the others wait for a slot,"
        " first by position. Left out or null: the definition's default (no limit unless it sets one).",
    )
    deadline_seconds = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_DEADLINE_SECONDS,
        help_text=f"Seconds from its start (and from each retry) within which it must complete, or it fails with "
        f"the error '{DEADLINE_ERROR}'. Left out or null: the definition's default (none unless it sets one).",
    )

    labels = LabelsField(
        required=False,
        help_text=f"Up to {values.MAX_LABELS} string keys and values to find it by (keys: letters, digits and"
        " _ . - /); they go on top of the definition's. Lists filter on them with ?label=key:value.",
    )


@request_example(
    "Renamed, with another input and one task",
    {"name": "demo, renamed", "input": {"day": "2026-12-05"}, "tasks": [{"type": "noop"}]},
)
class WorkflowUpdateSerializer(WorkflowInputSerializer):
    """PUT replaces the fields below; PATCH changes those it is given. A workflow's
    priority, concurrency key and max_parallel are set when it is created."""

    idempotency_key = None
    priority = None
    concurrency_key = None
    max_parallel = None
    deadline_seconds = None


class StoredTimeField(serializers.DateTimeField):
    """A time kept inside JSON (as each database writes it), shown as every other time."""

    def to_representation(self, value):
        return super().to_representation(statements.from_time(value))


class AttemptSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    worker = serializers.CharField()
    started_at = StoredTimeField()
    finished_at = StoredTimeField(required=False, allow_null=True, default=None)
    outcome = serializers.ChoiceField(choices=list(ATTEMPT_OUTCOMES), help_text="running while it runs.")
    error = serializers.CharField(required=False, default="", help_text="Why it failed, if it did.")


class TaskSerializer(serializers.ModelSerializer):
    attempts = AttemptSerializer(many=True, read_only=True, help_text="Every attempt, oldest first.")

    class Meta:
        model = Task
        fields = [
            "id", "phase", "name", "type", "params", "after", "status", "attempt", "max_attempts", "timeout",
            "result", "error", "queued_at", "started_at", "finished_at", "lease_expires_at", "worker", "attempts",
        ]  # fmt: skip
        read_only_fields = fields


class TransitionSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label", help_text="system, worker, cli, api:<user> or admin:<user>.")

    class Meta:
        model = Transition
        fields = ["seq", "event", "source", "target", "actor", "reason", "data", "created_at"]
        read_only_fields = fields


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(help_text="Tasks that succeeded.")
    total = serializers.IntegerField()


class ProgressMixin(serializers.Serializer):
    progress = serializers.SerializerMethodField()
    available_transitions = serializers.SerializerMethodField()
    waiting_for_next = serializers.SerializerMethodField()
    waiting_reason = serializers.SerializerMethodField()

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, workflow) -> dict:
        # Lists annotate the counts in their one query; a single workflow counts its tasks.
        if hasattr(workflow, "tasks_done"):
            return {"done": workflow.tasks_done, "total": workflow.tasks_total}
        tasks = list(workflow.tasks.all())
        return {"done": sum(t.status == Task.Status.SUCCEEDED for t in tasks), "total": len(tasks)}

    @extend_schema_field(
        serializers.ListField(
            child=serializers.ChoiceField(choices=services.ACTIONS),
            help_text="What you can do to the workflow now.",
        )
    )
    def get_available_transitions(self, workflow) -> list[str]:
        request = self.context.get("request")
        return services.available_actions(workflow, **access.rights(request and request.user, workflow))

    @extend_schema_field(
        serializers.BooleanField(
            help_text="Manual mode only: the phase's work is done and the workflow waits for `next`; false otherwise."
        )
    )
    def get_waiting_for_next(self, workflow) -> bool:
        return services.is_waiting_for_next(workflow)

    @extend_schema_field(
        serializers.CharField(
            allow_null=True,
            help_text="Why nothing of the workflow runs or may start now, e.g. `paused`, `paused (definition "
            "billing held)` (a hold of its definition or key paused it), `concurrency key acme: 5 of 5 running`, "
            "`rate limit of key acme until 2026-12-05 12:00:03 UTC`, `retry due at …`, `waiting for "
            "next (manual mode)`; null while a task runs or may start, and before it starts or once it has ended.",
        )
    )
    def get_waiting_reason(self, workflow) -> str | None:
        # A page's reasons are read together by its list serializer (WorkflowPageSerializer).
        reasons = getattr(self.parent, "waiting_reasons", None)
        return reasons[workflow.pk] if reasons is not None else selectors.waiting_reason(workflow)


class WorkflowPageSerializer(serializers.ListSerializer):
    """A list of workflows, whose waiting reasons are read in a fixed number of queries
    whatever its length (selectors.waiting_reasons), not two per workflow."""

    def to_representation(self, data):
        workflows = list(data.all() if hasattr(data, "all") else data)
        self.waiting_reasons = selectors.waiting_reasons(workflows)
        return super().to_representation(workflows)


class FlowControlMixin(serializers.Serializer):
    """A workflow's place in the claim's order (see services.validation.flow_control)."""

    priority = serializers.IntegerField(
        read_only=True, help_text=f"From {MIN_PRIORITY} to {MAX_PRIORITY}: a higher priority's tasks are claimed first."
    )
    # Declared: a read-only model field loses allow_blank, and the schema would then forbid "".
    concurrency_key = serializers.CharField(
        read_only=True, help_text="The key whose limits its tasks count against; blank for none."
    )
    max_parallel = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="At most this many of its EXECUTE tasks are queued or running at once; null for no limit.",
    )


WORKFLOW_FIELDS = [
    "id", "name", "definition", "state", "mode", "input", "results", "error", "retries", "failed_phase",
    "idempotency_key", "callback_url", "created_by", "created_at", "updated_at", "started_at", "finished_at",
    "schedule", "paused_at",
    "priority", "concurrency_key", "max_parallel", "deadline_seconds", "deadline_at", "definition_version",
    "labels",
]  # fmt: skip


class WorkflowListSerializer(FlowControlMixin, ProgressMixin, serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    # Declared: a read-only model field loses allow_blank, and the schema would then forbid "".
    failed_phase = serializers.ChoiceField(
        choices=Phase.choices,
        allow_blank=True,
        read_only=True,
        help_text="The phase that failed, while the workflow is FAILED (a retry clears it); blank otherwise.",
    )
    callback_url = serializers.CharField(
        read_only=True, help_text="URL called with a signed POST when the workflow ends; blank for none."
    )

    class Meta:
        model = Workflow
        fields = [*WORKFLOW_FIELDS, "progress", "available_transitions", "waiting_for_next", "waiting_reason"]
        read_only_fields = fields
        list_serializer_class = WorkflowPageSerializer


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "status_code", "error", "started_at", "duration"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer):
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True, help_text="Every attempt, oldest first.")

    class Meta:
        model = WebhookDelivery
        fields = ["id", "seq", "event", "url", "status", "attempts", "created_at", "delivered_at", "attempt_log"]
        read_only_fields = fields


class WorkflowDetailSerializer(WorkflowListSerializer):
    # Declared: a read-only model field loses allow_blank, and the schema would then forbid "".
    held_by = serializers.CharField(
        read_only=True,
        help_text="The hold that paused it, e.g. `definition:billing` or `key:acme`: releasing that hold resumes "
        "it (`manage.py workflow resume --definition billing`); blank when no hold did.",
    )
    tasks = TaskSerializer(many=True, read_only=True)
    transitions = TransitionSerializer(many=True, read_only=True)
    webhook_deliveries = WebhookDeliverySerializer(
        many=True, read_only=True, help_text="Calls of its callback_url, one per transition that ended it."
    )

    class Meta(WorkflowListSerializer.Meta):
        fields = [*WorkflowListSerializer.Meta.fields, "held_by", "tasks", "transitions", "webhook_deliveries"]
        read_only_fields = fields


class WorkflowStatusSerializer(FlowControlMixin, ProgressMixin, serializers.ModelSerializer):
    phase = serializers.SerializerMethodField(help_text="The phase running now, or the one that failed.")

    class Meta:
        model = Workflow
        fields = [
            "id", "state", "phase", "progress", "available_transitions", "waiting_for_next", "paused_at", "error",
            "waiting_reason",
        ]  # fmt: skip
        fields += ["priority", "concurrency_key", "max_parallel"]
        read_only_fields = fields

    def get_phase(self, workflow) -> str | None:
        if workflow.state in PHASES:
            return workflow.state
        if workflow.state == State.FAILED:
            return workflow.failed_phase
        return None


@request_example("With a reason", {"reason": "the customer withdrew the order"})
class CancelSerializer(StrictSerializer):
    reason = StrictCharField(required=False, allow_blank=True, max_length=1000, help_text="Kept in the audit log.")


@request_example("With a reason", {"reason": "the warehouse is down for maintenance"})
class PauseSerializer(CancelSerializer):
    """The optional body of a pause or a resume: why, kept in the audit log."""


@request_example("A payment arrived", {"name": "payment_received", "payload": {"amount": 42, "currency": "EUR"}})
class SignalSerializer(StrictSerializer):
    name = StrictCharField(max_length=200, help_text="The signal's name: a `wait_signal` task waits for it by name.")
    payload = serializers.DictField(
        required=False, default=dict, help_text="Any JSON object: the result of the task the signal wakes."
    )

    def validate_payload(self, payload):
        if problem := values.json_problem(payload, "payload"):
            raise serializers.ValidationError(problem)
        return payload


@request_example("Approve, with a comment", {"decision": "approve", "data": {}, "comment": "Checked the figures."})
class DecideSerializer(StrictSerializer):
    decision = serializers.ChoiceField(choices=approvals.DECISIONS, help_text="Approve or reject the task.")
    data = serializers.DictField(
        required=False, default=dict, help_text="The task's form (its `fields`), by field name."
    )
    comment = StrictCharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=approvals.MAX_COMMENT,
        help_text="Kept in the audit log.",
    )


class DecisionSerializer(serializers.ModelSerializer):
    task = serializers.SlugRelatedField(slug_field="name", read_only=True, help_text="The approval task's name.")
    by = serializers.CharField(source="actor_label", read_only=True, help_text="Who decided, as the audit log says.")

    class Meta:
        model = Decision
        fields = ["id", "task", "decision", "by", "data", "comment", "round", "seq", "created_at"]
        read_only_fields = fields


class WorkflowSignalSerializer(serializers.ModelSerializer):
    task = serializers.SlugRelatedField(
        slug_field="name",
        read_only=True,
        allow_null=True,
        help_text="The name of the task it was delivered to; null while it waits for one.",
    )

    class Meta:
        model = WorkflowSignal
        fields = ["id", "name", "payload", "sent_by", "seq", "created_at", "task", "delivered_at"]
        read_only_fields = fields


class ConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    state = serializers.ChoiceField(choices=State.choices)
    available_transitions = serializers.ListField(
        child=serializers.ChoiceField(choices=services.ACTIONS), help_text="What you can do to the workflow now."
    )


class DurationSerializer(serializers.Serializer):
    median_seconds = serializers.FloatField(allow_null=True)
    p95_seconds = serializers.FloatField(allow_null=True)
    sample = serializers.IntegerField(help_text="Completed workflows measured (the most recent ones).")


class WorkerProcessSerializer(serializers.Serializer):
    pid = serializers.IntegerField()
    task_id = serializers.IntegerField(allow_null=True, help_text="The task this worker runs now, if any.")


class ClusterSerializer(serializers.Serializer):
    cluster_id = serializers.CharField()
    host = serializers.CharField()
    status = serializers.CharField(help_text="Starting, Idle, Working (a worker runs a task), Stopping or Stopped.")
    workers = serializers.IntegerField()
    busy_workers = serializers.IntegerField(help_text="Workers running a task now.")
    worker_processes = WorkerProcessSerializer(many=True)
    uptime_seconds = serializers.FloatField()


class StatsSerializer(serializers.Serializer):
    workflows_by_state = serializers.DictField(child=serializers.IntegerField())
    tasks_by_status = serializers.DictField(child=serializers.IntegerField())
    duration = DurationSerializer()
    completed_last_minute = serializers.IntegerField()
    completed_last_hour = serializers.IntegerField()
    broker_available = serializers.BooleanField(help_text="False when the broker cannot be reached.")
    queue_depth = serializers.IntegerField(allow_null=True, help_text="Jobs due now on the broker.")
    queue_delayed = serializers.IntegerField(allow_null=True, help_text="Jobs waiting out a retry backoff.")
    clusters = ClusterSerializer(many=True)
    workers = serializers.IntegerField(allow_null=True, help_text="Worker processes across all clusters.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class BulkFiltersField(serializers.DictField):
    """The list's filters as a JSON object (checked by filters.workflows_matching)."""


_TIME = {"type": "string", "format": "date-time"}
extend_schema_field(
    {
        "type": "object",
        "properties": {
            "state": {"type": "array", "items": {"type": "string", "enum": State.values}},
            "definition": {"type": "string"},
            "mode": {"type": "string", "enum": Workflow.Mode.values},
            "created_after": _TIME,
            "created_before": _TIME,
            "finished_after": _TIME,
            "finished_before": _TIME,
            "priority": {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
            "concurrency_key": {"type": "string"},
            "label": {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:.*$"}},
            "search": {"type": "string", "maxLength": 200},
        },
        "additionalProperties": False,
        "example": {"state": ["FAILED"], "definition": "import", "label": ["customer:acme"]},
    }
)(BulkFiltersField)


@request_example(
    "Cancel a customer's failed imports",
    {
        "action": "cancel",
        "reason": "the customer withdrew",
        "filters": {"state": ["FAILED"], "label": ["customer:acme"]},
    },
)
class BulkSerializer(StrictSerializer):
    """POST /workflows/bulk: an action on every workflow the filters match."""

    action = serializers.ChoiceField(choices=BulkOperation.Action.choices, help_text="What to do to each workflow.")
    reason = StrictCharField(
        max_length=services.MAX_BULK_REASON,
        required=False,
        default="",
        allow_blank=True,  # answered by bulk_reason, which says why one is needed
        help_text="Required (but for a dry run): kept in each workflow's audit row.",
    )
    filters = BulkFiltersField(
        required=False,
        default=dict,
        help_text='The list\'s filters, by name; a list for a repeatable one (state, label: "key:value"). '
        "None: every workflow.",
    )
    dry_run = serializers.BooleanField(
        required=False, default=False, help_text="Only count the workflows that match: nothing is started."
    )

    def validate(self, attrs):
        if not attrs["dry_run"]:
            try:
                attrs["reason"] = services.bulk_reason(attrs["reason"])
            except ValidationError as exc:
                raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class BulkOperationSerializer(serializers.ModelSerializer):
    """A bulk operation and how far it got."""

    url = serializers.SerializerMethodField()

    class Meta:
        model = BulkOperation
        fields = [
            "id", "url", "action", "reason", "actor_label", "criteria", "status", "total", "position", "done",
            "skipped", "created_at", "started_at", "finished_at",
        ]  # fmt: skip

    def get_url(self, operation) -> str:
        return reverse(
            "workflow-bulk-operation", kwargs={"operation_id": operation.pk}, request=self.context.get("request")
        )


class BulkCountSerializer(serializers.Serializer):
    """The answer to a dry run: how many workflows the filters match now."""

    dry_run = serializers.BooleanField()
    action = serializers.CharField()
    total = serializers.IntegerField()
    criteria = serializers.DictField()
