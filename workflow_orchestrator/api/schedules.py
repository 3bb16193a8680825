"""The /schedules/ endpoints: cron schedules read and changed with the model's permissions
(view, add, change, delete on WorkflowSchedule; pause, resume and run need change). Each
action parses its input, calls one service of workflow_orchestrator.schedules and answers;
a refused field comes back as a 400 naming it (errors.py)."""

import django_filters
from django.http import Http404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.reverse import reverse

from .. import cron, schedules
from ..models import Actor, Workflow, WorkflowSchedule
from ..services import MAX_TASKS
from .errors import api_exception_handler
from .filters import MAX_ID, BoundedSearchFilter, StrictOrderingFilter
from .pagination import WorkflowPagination, whole_number
from .parsers import LimitedJSONParser
from .renderers import EscapingJSONRenderer, OrchestratorBrowsableAPIRenderer
from .serializers import ErrorSerializer, JSONObjectField, StrictCharField, StrictSerializer, TaskSpecSerializer
from .views import BAD_INPUT, WorkflowSchema, refuse_unstorable_query_text

# How many of its next due times a schedule shows.
NEXT_RUNS = 5

SCHEDULE_EXAMPLE = {
    "name": "nightly import",
    "cron": "30 2 * * *",
    "time_zone": "Europe/Paris",
    "definition": "default",
    "mode": "auto",
    "input": {"source": "s3://exports/daily"},
    "tasks": [{"name": "fetch", "type": "echo", "params": {"rows": 100}}, {"type": "sleep", "params": {"seconds": 1}}],
    "enabled": True,
}


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false (DRF's BooleanField also takes "yes", 1 and "off")."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


@extend_schema_serializer(examples=[OpenApiExample("Nightly in Paris", value=SCHEDULE_EXAMPLE, request_only=True)])
class ScheduleInputSerializer(StrictSerializer):
    """The body that creates a schedule (POST), replaces one (PUT) or changes some of its
    fields (PATCH). Types are checked here; the expression, the zone and the workflow each
    run starts are checked by schedules.schedule_save, all at once."""

    name = StrictCharField(max_length=200)
    cron = StrictCharField(max_length=100, help_text=WorkflowSchedule._meta.get_field("cron").help_text)
    time_zone = StrictCharField(
        max_length=64, default="UTC", help_text=WorkflowSchedule._meta.get_field("time_zone").help_text
    )
    definition = StrictCharField(max_length=100, default="default", help_text="A registered workflow definition.")
    mode = serializers.ChoiceField(choices=Workflow.Mode.choices, default=Workflow.Mode.AUTO)
    input = JSONObjectField(default=dict, help_text="The input of each run.")
    tasks = TaskSpecSerializer(
        many=True,
        required=False,
        allow_null=True,
        default=None,
        max_length=MAX_TASKS,
        help_text="The EXECUTE tasks of each run; null or left out: the definition's own.",
    )
    enabled = StrictBooleanField(default=True, help_text="false: paused, it starts nothing.")

    def fields_to_save(self) -> dict:
        """The validated fields as the model stores them (nested serializers give dicts)."""
        data = dict(self.validated_data)
        if data.get("tasks") is not None:
            data["tasks"] = [dict(task) for task in data["tasks"]]
        return data


class ScheduleSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="schedule-detail")
    cron_in_words = serializers.SerializerMethodField(help_text="The expression read out, in its time zone's hours.")
    paused = serializers.SerializerMethodField(help_text="True while it starts nothing (enabled is false).")
    next_run_at = serializers.SerializerMethodField(
        help_text="Due time of the next run, in the schedule's time zone; null while paused."
    )
    next_runs = serializers.SerializerMethodField(
        help_text=f"Due times of its next {NEXT_RUNS} runs, in the schedule's time zone; empty while paused."
    )
    last_run_at = serializers.SerializerMethodField(
        help_text="Due time of the latest run started, in the schedule's time zone."
    )
    workflows_url = serializers.SerializerMethodField(help_text="The workflows it started.")

    class Meta:
        model = WorkflowSchedule
        fields = [
            "id", "url", "name", "cron", "cron_in_words", "time_zone", "definition", "mode", "input", "tasks",
            "enabled", "paused", "next_run_at", "next_runs", "last_run_at", "last_error", "workflows_url",
            "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_cron_in_words(self, schedule) -> str:
        return cron.cron_in_words(schedule.cron)

    def get_paused(self, schedule) -> bool:
        return not schedule.enabled

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_next_run_at(self, schedule) -> str | None:
        runs = schedules.schedule_next_runs(schedule, 1)
        return runs[0].isoformat() if runs else None

    @extend_schema_field(serializers.ListField(child=serializers.DateTimeField()))
    def get_next_runs(self, schedule) -> list[str]:
        return [moment.isoformat() for moment in schedules.schedule_next_runs(schedule, NEXT_RUNS)]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_last_run_at(self, schedule) -> str | None:
        moment = schedules.schedule_local_time(schedule, schedule.last_run_at)
        return moment.isoformat() if moment else None

    def get_workflows_url(self, schedule) -> str:
        return reverse("workflow-list", request=self.context.get("request")) + f"?schedule={schedule.pk}"


class ScheduledRunSerializer(serializers.ModelSerializer):
    """The workflow a schedule's run started."""

    url = serializers.HyperlinkedIdentityField(view_name="workflow-detail")

    class Meta:
        model = Workflow
        fields = ["id", "url", "name", "state", "schedule", "created_at"]
        read_only_fields = fields


class ScheduleFilter(django_filters.FilterSet):
    # A choice, so that a value other than true or false is a 400 (a boolean filter ignores it).
    enabled = django_filters.TypedChoiceFilter(
        choices=[("true", "true"), ("false", "false")],
        coerce=lambda value: value == "true",
        help_text="true: the schedules that run; false: the paused ones.",
    )
    definition = django_filters.CharFilter()

    class Meta:
        model = WorkflowSchedule
        fields = ["enabled", "definition"]


class ScheduleModelPermissions(permissions.DjangoModelPermissions):
    """Django's model permissions, as the admin reads them: view (or change) to read, add to
    create, change to replace, change, pause, resume and run, delete to delete."""

    CHANGES = ("pause", "resume", "run")

    def _perm(self, action: str) -> str:
        return f"{WorkflowSchedule._meta.app_label}.{action}_{WorkflowSchedule._meta.model_name}"

    def has_permission(self, request, view):
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if request.method.lower() not in getattr(view, "action_map", {}) and request.method != "OPTIONS":
            return True  # a method the path does not take: its 405, not a 403, whatever the permissions
        if getattr(view, "action", None) in self.CHANGES:
            return user.has_perm(self._perm("change"))
        if request.method in permissions.SAFE_METHODS:
            return user.has_perm(self._perm("view")) or user.has_perm(self._perm("change"))
        return super().has_permission(request, view)


NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such schedule.")
FORBIDDEN = OpenApiResponse(
    ErrorSerializer,
    description="Not allowed: your account lacks the schedule permission this needs, or the session's CSRF token "
    "is missing.",
)
SCHEDULE_BAD_INPUT = OpenApiResponse(
    description="Field errors: {field: [messages]}, e.g. a cron expression or time zone that is not valid, an "
    "unknown definition or task type."
)


@extend_schema_view(
    list=extend_schema(
        summary="List cron schedules",
        description="Filter by `enabled`, search by name, order and paginate.",
        responses={
            200: ScheduleSerializer(many=True),
            400: BAD_INPUT,
            403: FORBIDDEN,
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        },
    ),
    retrieve=extend_schema(
        summary="Get a cron schedule", responses={200: ScheduleSerializer, 403: FORBIDDEN, 404: NOT_FOUND}
    ),
    destroy=extend_schema(
        summary="Delete a cron schedule",
        description="The workflows it started stay.",
        responses={204: None, 403: FORBIDDEN, 404: NOT_FOUND},
    ),
)
class ScheduleViewSet(viewsets.ReadOnlyModelViewSet):
    """Cron schedules: each starts a workflow every time its expression falls due in its
    time zone. As the workflows' viewset, it declares all it depends on."""

    queryset = WorkflowSchedule.objects.all()
    schema = WorkflowSchema()
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [ScheduleModelPermissions]
    parser_classes = [LimitedJSONParser]
    renderer_classes = [EscapingJSONRenderer, OrchestratorBrowsableAPIRenderer]
    pagination_class = WorkflowPagination
    versioning_class = None
    lookup_value_regex = "[^/]+"
    filter_backends = [DjangoFilterBackend, BoundedSearchFilter, StrictOrderingFilter]
    filterset_class = ScheduleFilter
    search_fields = ["name"]
    ordering_fields = ["name", "next_run_at", "last_run_at", "created_at"]
    ordering = ["name"]
    serializer_class = ScheduleSerializer

    def get_exception_handler(self):
        return api_exception_handler

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        refuse_unstorable_query_text(request)

    def get_object(self):
        # An id is a whole number: anything else names no schedule (rather than a database error).
        if whole_number(str(self.kwargs.get("pk", "")), 1, MAX_ID) is None:
            raise Http404
        return super().get_object()

    def get_serializer_class(self):
        # The browsable API's raw-data form starts from the writable fields (the schedule's
        # own, for PUT and PATCH), not from an empty object.
        writes = self.action in ("create", "update", "partial_update")
        return ScheduleInputSerializer if writes else ScheduleSerializer

    def schedule_response(self, schedule, code=status.HTTP_200_OK) -> Response:
        return Response(ScheduleSerializer(schedule, context=self.get_serializer_context()).data, status=code)

    @extend_schema(
        summary="Create a cron schedule",
        request=ScheduleInputSerializer,
        responses={201: ScheduleSerializer, 400: SCHEDULE_BAD_INPUT, 403: FORBIDDEN},
    )
    def create(self, request):
        body = ScheduleInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        schedule = schedules.schedule_save(WorkflowSchedule(**body.fields_to_save()))
        return self.schedule_response(schedule, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Replace a cron schedule",
        description="Its next run is computed afresh; the runs it started stay as they were.",
        request=ScheduleInputSerializer,
        responses={200: ScheduleSerializer, 400: SCHEDULE_BAD_INPUT, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def update(self, request, pk=None, partial=False):
        schedule = self.get_object()
        body = ScheduleInputSerializer(data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        for field, value in body.fields_to_save().items():
            setattr(schedule, field, value)
        return self.schedule_response(schedules.schedule_save(schedule))

    @extend_schema(
        summary="Change fields of a cron schedule",
        request=ScheduleInputSerializer,
        responses={200: ScheduleSerializer, 400: SCHEDULE_BAD_INPUT, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        schedules.schedule_remove(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Pause a cron schedule",
        description="It starts nothing until it is resumed. Pausing a paused schedule changes nothing.",
        request=None,
        responses={200: ScheduleSerializer, 400: SCHEDULE_BAD_INPUT, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self.schedule_response(schedules.schedule_pause(self.get_object()))

    @extend_schema(
        summary="Resume a paused cron schedule",
        description="It carries on from its next due time; the runs that fell due while it was paused are not made up.",
        request=None,
        responses={200: ScheduleSerializer, 400: SCHEDULE_BAD_INPUT, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self.schedule_response(schedules.schedule_resume(self.get_object()))

    @extend_schema(
        summary="Run a cron schedule now",
        description="Starts one workflow at once, paused or not, besides its due runs (which stay as they were). "
        "Answers with the new workflow, its URL also in the Location header.",
        request=None,
        responses={201: ScheduledRunSerializer, 400: SCHEDULE_BAD_INPUT, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        workflow = schedules.schedule_run_now(self.get_object(), actor=Actor.api(request.user))
        body = ScheduledRunSerializer(workflow, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})
