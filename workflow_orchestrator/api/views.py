"""The REST API: one viewset. Each action parses its input, calls one engine service and
answers; the engine's errors become 400/409 in `errors.py`."""

import uuid

from django.db.models import Prefetch
from django.http import Http404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.response import Response
from rest_framework.reverse import reverse

from .. import services, values
from ..models import Actor, BulkOperation, Task, Transition, Workflow, WorkflowSignal
from ..stats import workflow_stats
from . import access
from .errors import api_exception_handler
from .filters import BoundedSearchFilter, StrictOrderingFilter, WorkflowFilter, workflows_matching
from .pagination import WorkflowPagination
from .parsers import LimitedJSONParser
from .renderers import START_EXAMPLE, EscapingJSONRenderer, OrchestratorBrowsableAPIRenderer
from .serializers import (
    BulkCountSerializer,
    BulkOperationSerializer,
    BulkSerializer,
    CancelSerializer,
    ConflictSerializer,
    DecideSerializer,
    DecisionSerializer,
    ErrorSerializer,
    PauseSerializer,
    SignalSerializer,
    StatsSerializer,
    TaskSerializer,
    TransitionSerializer,
    WorkflowDetailSerializer,
    WorkflowInputSerializer,
    WorkflowListSerializer,
    WorkflowSignalSerializer,
    WorkflowStatusSerializer,
    WorkflowUpdateSerializer,
)


def _uuid_or_none(value):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such workflow, or not yours.")
CONFLICT = OpenApiResponse(ConflictSerializer, description="Not allowed in the workflow's current state.")
BAD_INPUT = OpenApiResponse(description="Field errors: {field: [messages]}.")
CREATE_RESPONSES = {
    201: WorkflowDetailSerializer,
    200: OpenApiResponse(WorkflowDetailSerializer, description="The same idempotency key and body again."),
    400: BAD_INPUT,
    409: OpenApiResponse(ErrorSerializer, description="The idempotency key was used for another request."),
}
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Any text of up to 200 characters: a repeat with the same key is answered with the first signal.",
)
UNAUTHENTICATED = OpenApiResponse(ErrorSerializer, description="No credentials, or invalid ones.")
FORBIDDEN = OpenApiResponse(
    ErrorSerializer,
    description="Not allowed: the workflow is not yours to change, or the session's CSRF token is missing.",
)


def refuse_unstorable_query_text(request) -> None:
    """A NUL character in a filter would reach the database, which refuses it (PostgreSQL)."""
    errors = {
        name: [f"{name} {problem}"]
        for name, given in request.query_params.lists()
        for problem in filter(None, map(values.text_problem, given))
    }
    if errors:
        raise ValidationError(errors)


BULK_FORBIDDEN = OpenApiResponse(ErrorSerializer, description="Not staff with the change permission on workflows.")


class WorkflowSchema(AutoSchema):
    """Documents the answers DRF gives before a view runs: 401 on every operation (no
    anonymous access), 403 on those that change something (permissions, CSRF)."""

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        errors = {"401": UNAUTHENTICATED}
        if self.method not in permissions.SAFE_METHODS:
            errors["403"] = FORBIDDEN
        for code, response in errors.items():
            responses.setdefault(code, self._get_response_for_code(response, code, direction=direction))
        return responses


class WorkflowAccess(permissions.IsAuthenticated):
    """Owners act on their own workflows; others need the model's permissions (see
    access). Those who cannot see a workflow get 404, as if it did not exist."""

    def has_object_permission(self, request, view, workflow):
        if request.method in permissions.SAFE_METHODS:
            return True
        if request.method == "DELETE":
            return access.may_delete(request.user, workflow)
        return access.may_change(request.user, workflow)


@extend_schema_view(
    list=extend_schema(
        summary="List workflows",
        description="Filter, search by name, order and paginate.",
        responses={
            200: WorkflowListSerializer(many=True),
            400: OpenApiResponse(description="A filter's value is not valid: {filter: [messages]}."),
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        },
    ),
    retrieve=extend_schema(
        summary="Get a workflow with its tasks and transition history",
        responses={200: WorkflowDetailSerializer, 404: NOT_FOUND},
    ),
    destroy=extend_schema(
        summary="Delete a workflow that is not running",
        responses={204: None, 404: NOT_FOUND, 409: CONFLICT},
    ),
)
class WorkflowViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Everything the API's behaviour depends on is declared here, not taken from the
    project's REST_FRAMEWORK setting; only throttling follows the project's defaults."""

    queryset = Workflow.objects.none()  # for the schema; requests use get_queryset()
    schema = WorkflowSchema()
    # Token first, so that a request without credentials gets 401 with a WWW-Authenticate header.
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [WorkflowAccess]
    parser_classes = [LimitedJSONParser]
    pagination_class = WorkflowPagination
    versioning_class = None
    lookup_value_regex = "[^/]+"
    filter_backends = [DjangoFilterBackend, BoundedSearchFilter, StrictOrderingFilter]
    filterset_class = WorkflowFilter
    search_fields = ["name"]
    ordering_fields = ["created_at", "updated_at", "started_at", "finished_at", "name", "state", "priority"]
    ordering = ["-created_at"]
    serializer_class = WorkflowDetailSerializer
    renderer_classes = [EscapingJSONRenderer, OrchestratorBrowsableAPIRenderer]

    def get_exception_handler(self):
        return api_exception_handler

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        refuse_unstorable_query_text(request)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        workflows = Workflow.objects.select_related("created_by")
        if not access.can_see_all(self.request.user):
            workflows = workflows.filter(created_by=self.request.user)
        if self.action == "list":
            return workflows.with_progress()
        return workflows.prefetch_related(
            Prefetch("tasks", queryset=Task.objects.order_by("position")),
            Prefetch("transitions", queryset=Transition.objects.order_by("seq")),
            "webhook_deliveries__attempt_log",
        )

    def http_method_not_allowed(self, request, *args, **kwargs):
        # A browser that opens /workflow/start gets the page with its form (the renderer's);
        # API clients still get 405, with the Allow header naming POST.
        browser = isinstance(getattr(request, "accepted_renderer", None), BrowsableAPIRenderer)
        if browser and request.method == "GET" and self.action_map.get("post") == "create_and_start":
            return Response({"example": START_EXAMPLE})
        return super().http_method_not_allowed(request, *args, **kwargs)

    def get_extra_action_url_map(self):
        """The browsable API's "Extra Actions": the reads, and only the transitions the
        workflow allows now (to this user); a signal while it may be cancelled (not ended,
        and this user may change it)."""
        if not self.detail:
            return super().get_extra_action_url_map()
        try:
            workflow = self.get_object()
        except Http404:
            return {}
        allowed = services.available_actions(workflow, **access.rights(self.request.user, workflow))
        urls = {}
        offered = {*allowed, *(["signal"] if "cancel" in allowed else [])}
        for extra in self.get_extra_actions():
            if "(?P<" in extra.url_path:  # a task's action (decide): the task's name is not in this URL
                continue
            writes = extra.url_path in services.ACTIONS or extra.url_path == "signal"
            if extra.detail and (not writes or extra.url_path in offered):
                name = self.__class__(**extra.kwargs).get_view_name()
                urls[name] = reverse(f"{self.basename}-{extra.url_name}", kwargs=self.kwargs, request=self.request)
        return urls

    def get_serializer_class(self):
        return WorkflowListSerializer if self.action == "list" else self.serializer_class

    @property
    def actor(self) -> Actor:
        return Actor.api(self.request.user)

    def detail_response(self, workflow_id, code=status.HTTP_200_OK) -> Response:
        workflow = self.get_queryset().get(pk=workflow_id)
        return Response(WorkflowDetailSerializer(workflow, context=self.get_serializer_context()).data, status=code)

    # --- Creating ---------------------------------------------------------------------------

    def _create(self, request, *, start: bool) -> Response:
        body = WorkflowInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        workflow, created = services.workflow_create(actor=self.actor, start=start, **body.validated_data)
        return self.detail_response(workflow.pk, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        summary="Create a workflow without starting it",
        request=WorkflowInputSerializer,
        responses=CREATE_RESPONSES,
    )
    def create(self, request):
        return self._create(request, start=False)

    @extend_schema(
        summary="Create and start a workflow",
        request=WorkflowInputSerializer,
        responses=CREATE_RESPONSES,
    )
    def create_and_start(self, request):
        return self._create(request, start=True)

    @extend_schema(
        summary="Replace a workflow that has not started",
        request=WorkflowUpdateSerializer,
        responses={200: WorkflowDetailSerializer, 400: BAD_INPUT, 404: NOT_FOUND, 409: CONFLICT},
    )
    def update(self, request, pk=None, partial=False):
        workflow = self.get_object()
        body = WorkflowUpdateSerializer(data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        services.workflow_update(workflow.pk, actor=self.actor, **body.validated_data)
        return self.detail_response(workflow.pk)

    @extend_schema(
        summary="Change fields of a workflow that has not started",
        request=WorkflowUpdateSerializer,
        responses={200: WorkflowDetailSerializer, 400: BAD_INPUT, 404: NOT_FOUND, 409: CONFLICT},
    )
    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        services.workflow_delete(self.get_object().pk, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- Transitions --------------------------------------------------------------------------

    def _transition(self, operation, **kwargs) -> Response:
        workflow = operation(self.get_object().pk, actor=self.actor, **kwargs)
        return self.detail_response(workflow.pk, status.HTTP_202_ACCEPTED)

    def _transition_with_reason(self, operation, body_serializer) -> Response:
        # DRF reads an empty body as {}; any other body must be an object: false or [] is a
        # client's mistake, not "no reason".
        body = body_serializer(data=self.request.data)
        body.is_valid(raise_exception=True)
        return self._transition(operation, reason=body.validated_data.get("reason", ""))

    @extend_schema(
        summary="Start a created (INIT) workflow",
        request=None,
        responses={202: WorkflowDetailSerializer, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._transition(services.workflow_start)

    @extend_schema(
        summary="Manual mode: fire the next transition",
        description="Refused (409) in automatic mode and while the current phase's work is still running.",
        request=None,
        responses={202: WorkflowDetailSerializer, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"], url_path="next")
    def next_step(self, request, pk=None):
        return self._transition(services.workflow_next)

    @extend_schema(
        summary="Retry a FAILED workflow",
        description="Resumes the phase that failed: tasks that succeeded are not run again.",
        request=None,
        responses={202: WorkflowDetailSerializer, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return self._transition(services.workflow_retry)

    @extend_schema(
        summary="Cancel a workflow",
        description="Tasks not yet running are cancelled at once; running ones are told to stop.",
        request=CancelSerializer,
        responses={202: WorkflowDetailSerializer, 400: BAD_INPUT, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._transition_with_reason(services.workflow_cancel, CancelSerializer)

    @extend_schema(
        summary="Pause a workflow",
        description="Its running tasks finish and are recorded; nothing new of it starts until it is resumed. "
        "Refused (409) unless it is INIT or running, and not paused already.",
        request=PauseSerializer,
        responses={202: WorkflowDetailSerializer, 400: BAD_INPUT, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._transition_with_reason(services.workflow_pause, PauseSerializer)

    @extend_schema(
        summary="Resume a paused workflow",
        description="Its tasks that wait start again. Refused (409) unless it is paused.",
        request=PauseSerializer,
        responses={202: WorkflowDetailSerializer, 400: BAD_INPUT, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._transition_with_reason(services.workflow_resume, PauseSerializer)

    @extend_schema(
        summary="Send a signal to a workflow",
        description="Wakes the first of its `wait_signal` tasks waiting for the signal's name, with the payload as "
        "its result; sent before any waits, the signal is kept for the first that will. An audit row. With an "
        "`Idempotency-Key` header, a repeat returns the first signal (200) instead of sending another (201); "
        "the same key with another name or payload is a 409. Refused (409) once the workflow is COMPLETE or "
        "CANCELLED, or FAILED with no task that waits for the name.",
        request=SignalSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: WorkflowSignalSerializer,
            200: WorkflowSignalSerializer,
            400: BAD_INPUT,
            404: NOT_FOUND,
            409: CONFLICT,
        },
    )
    @action(detail=True, methods=["post"])
    def signal(self, request, pk=None):
        workflow = self.get_object()
        body = SignalSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key", "")
        if len(key) > WorkflowSignal._meta.get_field("idempotency_key").max_length or values.text_problem(key):
            raise ValidationError({"Idempotency-Key": ["must be at most 200 characters of text"]})
        signal, sent = services.workflow_signal(
            workflow.pk, actor=self.actor, idempotency_key=key, **body.validated_data
        )
        code = status.HTTP_201_CREATED if sent else status.HTTP_200_OK
        return Response(WorkflowSignalSerializer(signal).data, status=code)

    @extend_schema(
        summary="Decide an approval task",
        description="An approver of the workflow's `approval` task approves or rejects it, with the task's form "
        "(`data`) and a comment; an audit row. The quorum of approvals, or one reject, wakes the task. 403 for a "
        "user the task does not name as an approver; 409 once the task waits for no decision (decided, or not "
        "yet waiting), or when this user has decided it already; 404 for an unknown workflow or task.",
        request=DecideSerializer,
        responses={201: DecisionSerializer, 400: BAD_INPUT, 403: FORBIDDEN, 404: NOT_FOUND, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"], url_path=r"tasks/(?P<task_name>[^/]+)/decide")
    def decide(self, request, pk=None, task_name=None):
        body = DecideSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        # Not get_object(): an approver need not be able to see the workflow otherwise.
        workflow = Workflow.objects.filter(pk=_uuid_or_none(pk)).only("pk").first()
        if workflow is None:
            raise Http404
        try:
            decision = services.task_decide(
                workflow.pk, task_name, user=request.user, actor=self.actor, **body.validated_data
            )
        except LookupError:
            raise Http404 from None
        except services.NotAnApprover as exc:
            raise PermissionDenied(str(exc)) from None
        return Response(DecisionSerializer(decision).data, status=status.HTTP_201_CREATED)

    # --- Reading -----------------------------------------------------------------------------

    @extend_schema(
        summary="State, phase and progress of a workflow", responses={200: WorkflowStatusSerializer, 404: NOT_FOUND}
    )
    @action(detail=True, methods=["get"])
    def status(self, request, pk=None):
        return Response(WorkflowStatusSerializer(self.get_object(), context=self.get_serializer_context()).data)

    @extend_schema(summary="The tasks of a workflow", responses={200: TaskSerializer(many=True), 404: NOT_FOUND})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def tasks(self, request, pk=None):
        return Response(TaskSerializer(self.get_object().tasks.all(), many=True).data)

    @extend_schema(
        summary="The audit history of a workflow", responses={200: TransitionSerializer(many=True), 404: NOT_FOUND}
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def transitions(self, request, pk=None):
        return Response(TransitionSerializer(self.get_object().transitions.all(), many=True).data)

    @extend_schema(
        summary="Counts, durations, throughput, queue depth and workers",
        description="Workflow and task figures cover the workflows you can see; queue and workers the whole cluster.",
        responses={200: StatsSerializer},
    )
    def stats(self, request):
        workflows = Workflow.objects.all()
        if not access.can_see_all(request.user):
            workflows = workflows.filter(created_by=request.user)
        return Response(StatsSerializer(workflow_stats(workflows)).data)

    # --- Bulk operations ---------------------------------------------------------------------

    def _check_bulk_access(self, request) -> None:
        if not access.may_bulk(request.user):
            raise PermissionDenied("Bulk operations are for staff with the change permission on workflows.")

    @extend_schema(
        summary="Retry, cancel, pause or resume every workflow the filters match",
        description="The workflows the filters match now (the list's filters, as a JSON object) are kept, and a "
        "background job works through them, each through its own action with an audit row that names you and "
        "the reason; refusals (a COMPLETE workflow cannot be cancelled) are counted by reason. Answers 202 at "
        "once, however many match: follow its `url`. With `dry_run`, only the count (200). Staff with the change "
        "permission only.",
        request=BulkSerializer,
        responses={
            202: BulkOperationSerializer,
            200: OpenApiResponse(BulkCountSerializer, description="A dry run: how many match, nothing started."),
            400: BAD_INPUT,
            403: BULK_FORBIDDEN,
        },
    )
    @action(detail=False, methods=["post"], url_path="bulk", filter_backends=[], pagination_class=None)
    def bulk(self, request):
        self._check_bulk_access(request)
        body = BulkSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = body.validated_data
        workflows = workflows_matching(given["filters"], Workflow.objects.all())
        if given["dry_run"]:
            counted = {
                "dry_run": True,
                "action": given["action"],
                "total": workflows.count(),
                "criteria": given["filters"],
            }
            return Response(BulkCountSerializer(counted).data)
        operation = services.bulk_start(
            given["action"], workflows, actor=self.actor, reason=given["reason"], criteria=given["filters"]
        )
        return Response(
            BulkOperationSerializer(operation, context=self.get_serializer_context()).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(
        summary="A bulk operation's progress",
        description="`position` of `total` workflows dealt with so far: `done` changed, `skipped` refused, by reason.",
        responses={200: BulkOperationSerializer, 403: BULK_FORBIDDEN, 404: OpenApiResponse(ErrorSerializer)},
    )
    @action(
        detail=False,
        methods=["get"],
        url_path=r"bulk/(?P<operation_id>[^/]+)",
        url_name="bulk-operation",
        filter_backends=[],
        pagination_class=None,
    )
    def bulk_operation(self, request, operation_id=None):
        self._check_bulk_access(request)
        operation = BulkOperation.objects.defer("workflow_ids").filter(pk=_uuid_or_none(operation_id)).first()
        if operation is None:
            raise Http404
        return Response(BulkOperationSerializer(operation, context=self.get_serializer_context()).data)
