"""The Django admin: inspect workflows, and retry, cancel and advance them through the
engine's services, so that every action lands in the audit log as `admin:<username>`."""

import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import actions as admin_actions
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR, SEARCH_VAR, ChangeList
from django.core.exceptions import BadRequest, PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Case, Count, DurationField, ExpressionWrapper, F, Max, OuterRef, Q, Subquery, When
from django.db.models.functions import Coalesce, Now
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from . import approvals, audit, cron, moments, schedules, selectors, services, stats, values
from .diagrams import (
    OUTCOME_COLOURS,
    STATE_COLOURS,
    STATUS_COLOURS,
    SUMMARY_OVER,
    format_rate,
    format_seconds,
    rate_chart_svg,
    state_graph_svg,
    task_attempts,
    task_graph_svg,
    task_status_counts,
    task_timeline_svg,
)
from .models import (
    ENDING_STATES,
    MAX_MAX_PARALLEL,
    MAX_PRIORITY,
    MIN_MAX_PARALLEL,
    MIN_PRIORITY,
    PHASES,
    Actor,
    BulkOperation,
    ConcurrencyLimit,
    Hold,
    Phase,
    State,
    Task,
    Transition,
    WebhookDelivery,
    Workflow,
    WorkflowDeletion,
    WorkflowSchedule,
)
from .registry import definition_keys
from .values import MAX_DEPTH

# A workflow in these states changes only when someone acts: its page stops refreshing itself.
ENDED = ENDING_STATES

# Dark amber: white text on it has a contrast of 6.6:1 (WCAG AA asks 4.5:1).
WAITING_COLOUR = "#8a4f00"


def cell(name: str, **context) -> SafeString:
    """A cell or fragment of an admin page: the logic here says what it shows, its markup is
    in templates/admin/workflow_orchestrator/cells/<name>.html (escaped as any template)."""
    # The template escaped what it was given; strip() only drops the file's own line breaks.
    return mark_safe(render_to_string(f"admin/workflow_orchestrator/cells/{name}.html", context).strip())


def badge(value: str, colour: str, kind: str = "") -> SafeString:
    return cell("badge", value=value, colour=colour, kind=kind)


def id_prefix_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids that start with `term` (4 to 32 hex digits, dashes ignored), as a range of
    ids: one index range scan on PostgreSQL's uuid and on SQLite's hex text alike."""
    digits = term.strip().replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{4,32}", digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text and text.strip() else ""


# The last line of an error: `load: package.module.TaskFailed: the message` (the task's name
# on a workflow's error, the module path, or both, may be missing).
EXCEPTION_LINE = re.compile(r"^(?P<task>(?:[^:]+: )?)(?:[A-Za-z_]\w*\.)*(?P<kind>[A-Z]\w*): (?P<message>.+)$")


def error_summary(text: str) -> tuple[str, str]:
    """An error's last line as a person reads it: the task's name and the message first, then
    the exception's class without its module path ("" when the line names none)."""
    line = last_line(text)
    found = EXCEPTION_LINE.match(line)
    return (found["task"] + found["message"], found["kind"]) if found else (line, "")


def moment_column(field: str, description: str):
    """An admin column (or read-only field) showing a moment as the whole console does
    (moments.moment_html), sorted by the field."""

    # Rows without the moment (a workflow not finished yet) after the others, on every database.
    @admin.display(description=description, ordering=F(field).asc(nulls_last=True))
    def show(self, obj):
        return moments.moment_html(getattr(obj, field))

    return show


def duration(start, end) -> str:
    if not start:
        return "—"
    seconds = ((end or timezone.now()) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


# The overview's colours for a worker cluster's status.
CLUSTER_COLOURS = {"Working": STATE_COLOURS[State.EXECUTE], "Idle": STATE_COLOURS[State.COMPLETE]}


def _seconds_or_dash(seconds: float | None) -> str:
    return "—" if seconds is None else format_seconds(seconds)


def run_bulk(modeladmin, request, queryset, operation: str, **kwargs) -> None:
    """The ticked rows, each through its service (services.act_on); refusals are counted, not raised."""
    verb = services.BULK_ACTIONS[operation][1]
    ids = queryset.values_list("pk", flat=True)
    done, skipped = services.act_on(ids, operation, actor=Actor.admin(request.user), **kwargs)
    parts = [f"{done} {verb}"]
    parts += [f"{count} skipped: {reason}" for reason, count in skipped.items()]
    level = messages.SUCCESS if done and not skipped else (messages.WARNING if done else messages.ERROR)
    modeladmin.message_user(request, "; ".join(parts), level)


@admin.action(description="Retry selected workflows", permissions=["change"])
def retry_selected(modeladmin, request, queryset):
    run_bulk(modeladmin, request, queryset, "retry")


@admin.action(description="Cancel selected workflows", permissions=["change"])
def cancel_selected(modeladmin, request, queryset):
    """Asks first, as the change page's Cancel does, with a reason kept in each audit row;
    the confirmation page posts the same action back with `confirm` set."""
    if request.POST.get("confirm"):
        reason = request.POST.get("reason", "")[:1000]
        if problem := values.text_problem(reason):  # refused before any workflow is cancelled
            modeladmin.message_user(request, f"Nothing cancelled: the reason {problem}.", messages.ERROR)
            return None
        run_bulk(modeladmin, request, queryset, "cancel", reason=reason)
        return None
    workflows = list(queryset.order_by("-created_at"))
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "title": f"Cancel {len(workflows)} workflow{'s' if len(workflows) != 1 else ''}?",
        "workflows": workflows,
        "cancellable": sum("cancel" in services.available_actions(w) for w in workflows),
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/workflow_orchestrator/workflow/confirm_bulk_cancel.html", context)


@admin.action(description="Advance selected workflows (next)", permissions=["change"])
def advance_selected(modeladmin, request, queryset):
    run_bulk(modeladmin, request, queryset, "next")


@admin.action(description="Pause selected workflows", permissions=["change"])
def pause_selected(modeladmin, request, queryset):
    """Their running tasks finish; nothing new of them starts until they are resumed."""
    run_bulk(modeladmin, request, queryset, "pause")


@admin.action(description="Resume selected workflows", permissions=["change"])
def resume_selected(modeladmin, request, queryset):
    run_bulk(modeladmin, request, queryset, "resume")


@admin.action(description="Delete selected workflows", permissions=["delete"])
def delete_selected(modeladmin, request, queryset):
    """Django's delete action, without the running workflows: they are reported, not counted as deleted."""
    running = queryset.filter(state__in=PHASES).count()
    if running:
        modeladmin.message_user(
            request, f"{running} skipped: a running workflow cannot be deleted (cancel it first)", messages.WARNING
        )
    deletable = queryset.exclude(state__in=PHASES)
    if not deletable.exists():
        return None
    return admin_actions.delete_selected(modeladmin, request, deletable)


class JSONTextField(forms.CharField):
    """JSON typed into a form: read by values.parse_json (which refuses what the database
    cannot store, saying why) and shown back as it was typed."""

    def __init__(self, *, kind: type, where: str, max_depth: int = MAX_DEPTH, blank_is_none=False, **kwargs):
        self.kind, self.where, self.max_depth, self.blank_is_none = kind, where, max_depth, blank_is_none
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 4, "cols": 80, "class": "vLargeTextField"}))
        super().__init__(**kwargs)

    def to_python(self, value):
        value = super().to_python(value).strip()
        if not value:
            return None if self.blank_is_none else self.kind()
        try:
            parsed = values.parse_json(value, self.where, max_depth=self.max_depth)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if not isinstance(parsed, self.kind):
            raise ValidationError(f"{self.where} must be a JSON {'object' if self.kind is dict else 'list'}.")
        return parsed

    def prepare_value(self, value):
        # A stored value (a schedule's) is shown as JSON; text typed into the form, as typed.
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)


def input_field(**kwargs) -> JSONTextField:
    return JSONTextField(kind=dict, where="input", required=False, **kwargs)


def tasks_field(**kwargs) -> JSONTextField:
    return JSONTextField(kind=list, where="tasks", max_depth=values.TASKS_MAX_DEPTH, required=False, **kwargs)


class WorkflowAddForm(forms.Form):
    name = forms.CharField(max_length=200)
    definition = forms.ChoiceField(choices=(), initial="default")
    mode = forms.ChoiceField(choices=Workflow.Mode.choices, initial=Workflow.Mode.AUTO)
    input = input_field(initial="{}", help_text="A JSON object.")
    tasks = tasks_field(
        help_text='A JSON list of {"name", "type", "params", "max_attempts", "timeout", "after"}; only type is '
        'required, and "after" names the tasks that must succeed first. Empty: the definition\'s default tasks.',
    )
    priority = forms.IntegerField(
        required=False,
        min_value=MIN_PRIORITY,
        max_value=MAX_PRIORITY,
        help_text=f"From {MIN_PRIORITY} to {MAX_PRIORITY}: among ready tasks, a higher priority's are claimed first. "
        "Empty: the definition's default (0 unless it sets one).",
    )
    concurrency_key = forms.CharField(
        required=False,
        strip=False,  # matched exactly against its limit's key
        max_length=Workflow._meta.get_field("concurrency_key").max_length,
        label="Concurrency key",
        help_text="Workflows with the same key share its concurrency limit and rate, and take turns with other keys. "
        "Empty: the definition's default (none unless it sets one).",
    )
    max_parallel = forms.IntegerField(
        required=False,
        min_value=MIN_MAX_PARALLEL,
        max_value=MAX_MAX_PARALLEL,
        label="Max parallel",
        help_text=f"From {MIN_MAX_PARALLEL} to {MAX_MAX_PARALLEL}: at most this many of its EXECUTE tasks are queued "
        "or running at once; the others wait for a slot. Empty: the definition's default (no limit unless it sets "
        "one).",
    )
    callback_url = forms.CharField(
        required=False,
        max_length=2000,
        label="Callback URL",
        widget=forms.URLInput(attrs={"class": "vURLField"}),
        help_text="Called with a signed POST when the workflow ends (COMPLETE, FAILED or CANCELLED); its host must "
        "be allowed by ORCH_WEBHOOK_ALLOWED_HOSTS. Empty: none.",
    )
    labels = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 40}),
        help_text=f"One key=value per line, at most {values.MAX_LABELS} (keys: letters, digits and _ . - /); "
        "on top of the definition's labels.",
    )
    start_now = forms.BooleanField(required=False, initial=True, label="Start now")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["definition"].choices = [(key, key) for key in definition_keys()]

    def clean_labels(self) -> dict[str, str]:
        lines = filter(None, (line.strip() for line in self.cleaned_data["labels"].splitlines()))
        try:
            return values.parse_labels(lines, "=")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def create(self, user) -> Workflow | None:
        """Create the workflow through the engine; its refusals become form errors."""
        data = self.cleaned_data
        try:
            workflow, _ = services.workflow_create(
                name=data["name"],
                definition=data["definition"],
                mode=data["mode"],
                input=data["input"],
                tasks=data["tasks"] or None,
                callback_url=data["callback_url"],
                priority=data["priority"],
                concurrency_key=data["concurrency_key"] or None,
                max_parallel=data["max_parallel"],
                labels=data["labels"],
                actor=Actor.admin(user),
                start=data["start_now"],
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, errors)
            return None
        return workflow


class DefinitionFilter(admin.SimpleListFilter):
    """Definitions from the registry: the default filter would scan the table for its values."""

    title = "definition"
    parameter_name = "definition"

    def lookups(self, request, model_admin):
        return [(key, key) for key in definition_keys()]

    def queryset(self, request, queryset):
        return queryset.filter(definition=self.value()) if self.value() else queryset


class PriorityFilter(admin.SimpleListFilter):
    """Above, at or below the default priority: the default filter would scan the table for
    the values in use."""

    title = "priority"
    parameter_name = "priority"
    BANDS = {"high": Q(priority__gt=0), "default": Q(priority=0), "low": Q(priority__lt=0)}

    def lookups(self, request, model_admin):
        return [("high", "above 0 (first)"), ("default", "0 (the default)"), ("low", "below 0 (last)")]

    def queryset(self, request, queryset):
        return queryset.filter(self.BANDS[self.value()]) if self.value() in self.BANDS else queryset


class HoldFilter(admin.SimpleListFilter):
    """Workflows paused by a hold, by hold (the holds set now)."""

    title = "held by"
    parameter_name = "held_by"

    def lookups(self, request, model_admin):
        return [(hold.label, str(hold)) for hold in Hold.objects.all()]

    def queryset(self, request, queryset):
        return queryset.filter(held_by=self.value()) if self.value() else queryset


class FinishedFilter(admin.ListFilter):
    """When workflows ended (COMPLETE, FAILED or CANCELLED, or FAILED and retried since): in
    the last 15 minutes, hour or day, or between two moments (`finished_at__gte` and
    `finished_at__lt`, a date or a date and time in the site's time zone). A value that is
    not one is said on the page and left out, not answered with an error page."""

    title = "finished"
    template = "admin/workflow_orchestrator/finished_filter.html"
    WINDOW = "finished"
    WINDOWS = {
        "15m": ("in the last 15 min", timedelta(minutes=15)),
        "1h": ("in the last hour", timedelta(hours=1)),
        "1d": ("in the last day", timedelta(days=1)),
    }
    BOUNDS = {"finished_at__gte": "finished from", "finished_at__lt": "finished before"}

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.window = self._take(params, self.WINDOW)
        if self.window and self.window not in self.WINDOWS:
            messages.error(request, f"finished: {self.window!r} is not one of {', '.join(self.WINDOWS)}; ignored.")
            self.window = ""
        self.given = {name: self._take(params, name) for name in self.BOUNDS}
        self.bounds = {}
        for name, text in self.given.items():
            if not text:
                continue
            moment = self.parse_moment(text)
            if moment is None:
                messages.error(
                    request,
                    f"{name} ({self.BOUNDS[name]}): {text[:40]!r} is not a date or a date and time; write "
                    f"2026-12-05 or 2026-12-05T14:30 ({timezone.get_current_timezone_name()}). Ignored.",
                )
                self.given[name] = ""
            else:
                self.bounds[name] = moment

    @staticmethod
    def _take(params, name: str) -> str:
        value = params.pop(name, "")
        return (value[-1] if isinstance(value, list) else value).strip() if value else ""

    @staticmethod
    def parse_moment(text: str):
        """A date (its midnight) or a date and time, in the site's time zone unless it names one."""
        try:
            moment = parse_datetime(text.replace(" ", "T", 1))
            if moment is None and (day := parse_date(text)) is not None:
                moment = timezone.datetime(day.year, day.month, day.day)
        except ValueError:  # well formed, but no such day or time (2026-02-30)
            return None
        if moment is not None and timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        return moment

    def has_output(self):
        return True

    def expected_parameters(self):
        return [self.WINDOW, *self.BOUNDS]

    def queryset(self, request, queryset):
        if self.window:
            queryset = queryset.filter(finished_at__gte=timezone.now() - self.WINDOWS[self.window][1])
        return queryset.filter(**self.bounds) if self.bounds else queryset

    def choices(self, changelist):
        self.range = self.range_form(changelist)  # for the template, which is given no changelist
        everything = [self.WINDOW, *self.BOUNDS]
        yield {
            "selected": not self.window and not self.bounds,
            "query_string": changelist.get_query_string(remove=everything),
            "display": "Any time",
        }
        for key, (label, _) in self.WINDOWS.items():
            yield {
                "selected": self.window == key,
                "query_string": changelist.get_query_string({self.WINDOW: key}, remove=list(self.BOUNDS)),
                "display": label,
            }

    def range_form(self, changelist) -> dict:
        """The sidebar's range form: its fields, and the list's other parameters to keep."""
        kept = [
            (name, value)
            for name, given in changelist.filter_params.items()
            if name not in self.expected_parameters()
            for value in given
        ]
        return {"given": self.given, "kept": kept, "zone": timezone.get_current_timezone_name()}


class WaitingFilter(admin.SimpleListFilter):
    """Running workflows that wait for a person or an event, or for flow control
    (selectors.waiting_condition), by what they wait for."""

    title = "waiting"
    parameter_name = "waiting"

    def lookups(self, request, model_admin):
        return [("any", "waiting, for anything"), *selectors.WAITING_REASONS.items()]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "any":
            return queryset.filter(selectors.waiting_condition())
        if value in selectors.WAITING_REASONS:
            return queryset.filter(selectors.waiting_condition(value))
        return queryset


class AuditFilter(admin.SimpleListFilter):
    """Workflows the engine found with a broken audit chain and left as they are."""

    title = "audit chain"
    parameter_name = "audit"

    def lookups(self, request, model_admin):
        return [("broken", "found broken")]

    def queryset(self, request, queryset):
        return queryset.filter(broken_chain__isnull=False) if self.value() == "broken" else queryset


class LabelFilter(admin.SimpleListFilter):
    """?label=key:value, repeatable (a workflow must carry every one), as in the API. The
    sidebar lists the labels asked for; a workflow's page links to the list by each of its."""

    title = "label"
    parameter_name = "label"

    def __init__(self, request, params, model, model_admin):
        # Every value (the base class keeps the last), read before it asks for the lookups.
        self.labels = labels_asked(params.get(self.parameter_name, []))
        super().__init__(request, params, model, model_admin)

    def has_output(self):
        return bool(self.labels)

    def lookups(self, request, model_admin):
        return [(f"{key}:{value}", f"{key} = {value}") for key, value in self.labels.items()]

    def queryset(self, request, queryset):
        return selectors.with_labels(queryset, self.labels)


def labels_asked(texts: list[str]) -> dict[str, str]:
    """The labels of ?label=key:value parameters; a malformed one is the client's mistake (400)."""
    try:
        return values.parse_labels(texts, ":")
    except ValueError as exc:
        raise BadRequest(f"The query parameter label: {exc}.") from None


class TaskColumns:
    """Columns a task shows in the workflow's inline and in the task admin."""

    @admin.display(description="status", ordering="status")
    def status_badge(self, task):
        return badge(task.status, STATUS_COLOURS[task.status])

    # Not `attempts`: the model's field of that name (every attempt's record) would win.
    @admin.display(description="attempt")
    def attempt_of_budget(self, task):
        return f"{task.attempt}/{task.attempt_budget}"

    @admin.display(description="duration")
    def run_time(self, task):
        return duration(task.started_at, task.finished_at)


class ReadOnlyInline(admin.TabularInline):
    """A table of a workflow's rows: shown, never added, changed or deleted from here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class TaskInline(TaskColumns, ReadOnlyInline):
    """The workflow's tasks, a page of TASKS_PER_PAGE at a time (see TaskPager)."""

    model = Task
    fields = ["name", "phase", "type", "status_badge", "attempt_of_budget", "run_time", "error_excerpt"]
    ordering = ["position"]
    template = "admin/workflow_orchestrator/workflow/task_inline.html"

    @admin.display(description="error")
    def error_excerpt(self, task):
        if not task.error:
            return "—"
        return cell("traceback_link", line=last_line(task.error)[:120], url=task_url(task))


class WebhookDeliveryInline(ReadOnlyInline):
    """Each call of the callback_url, with every attempt's answer."""

    model = WebhookDelivery
    fields = ["seq", "event", "url", "status", "delivered_at", "attempt_lines"]
    ordering = ["seq"]
    verbose_name_plural = "webhook deliveries"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("attempt_log")

    @admin.display(description="attempts")
    def attempt_lines(self, delivery):
        attempts = [
            {
                "number": attempt.number,
                "answer": attempt.status_code or "no answer",
                "at": moments.moment_html(attempt.started_at),
                "seconds": f"{attempt.duration:.2f}",
                "error": attempt.error,
            }
            for attempt in delivery.attempt_log.all()
        ]
        return cell("webhook_attempts", attempts=attempts) if attempts else "—"


class TransitionInline(ReadOnlyInline):
    model = Transition
    fields = ["seq", "event", "change", "actor_label", "reason", "created"]
    ordering = ["seq"]
    created = moment_column("created_at", "at")

    @admin.display(description="source → target")
    def change(self, transition):
        return f"{transition.source} → {transition.target}"


# A workflow's page shows its tasks this many at a time: a 1,000-task workflow's page stays
# a few hundred kilobytes (every task inline, it was 2.6 MiB).
TASKS_PER_PAGE = 100
TASKS_PAGE_VAR = "tasks_page"


def task_url(task: Task) -> str:
    return reverse("admin:workflow_orchestrator_task_change", args=[task.pk])


def tasks_of_workflow_url(workflow: Workflow, **filters) -> str:
    """The task list, filtered to this workflow's tasks (and `filters`)."""
    query = urlencode({"workflow__id__exact": workflow.pk, **filters})
    return f"{reverse('admin:workflow_orchestrator_task_changelist')}?{query}"


@dataclass
class TaskPager:
    """Which page of a workflow's tasks its page shows (?tasks_page=N, from 1)."""

    number: int
    count: int

    @classmethod
    def from_request(cls, request, count: int) -> "TaskPager":
        given = request.GET.get(TASKS_PAGE_VAR, "1")
        if not given.isdigit():
            raise BadRequest(f"{TASKS_PAGE_VAR} is a page number, 1 or more; {given[:20]!r} is not.")
        pager = cls(int(given), count)
        if not 1 <= pager.number <= pager.pages:
            raise Http404(f"{TASKS_PAGE_VAR}: the tasks fill {pager.pages} page(s), not {pager.number}.")
        return pager

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.count / TASKS_PER_PAGE))

    @property
    def start(self) -> int:
        return (self.number - 1) * TASKS_PER_PAGE

    @property
    def end(self) -> int:
        return min(self.start + TASKS_PER_PAGE, self.count)

    def links(self, request) -> list[dict]:
        """Every page's number and address (this page's other query parameters kept)."""
        query = request.GET.dict()
        return [
            {"number": n, "url": "?" + urlencode({**query, TASKS_PAGE_VAR: n}), "current": n == self.number}
            for n in range(1, self.pages + 1)
        ]


# How the change page shows each action (services.ACTIONS but delete): (label, service,
# asks first). Which of them it shows is the engine's to say
# (services.available_actions).
BUTTONS = {
    "start": ("Start", services.workflow_start, False),
    "next": ("Next step", services.workflow_next, False),
    "retry": ("Retry", services.workflow_retry, False),
    "cancel": ("Cancel", services.workflow_cancel, True),
    "pause": ("Pause workflow", services.workflow_pause, True),
    "resume": ("Resume workflow", services.workflow_resume, False),
}
# The actions whose confirmation asks for a reason, kept in the audit row.
REASONED = ("cancel", "pause")


class CheckedQueryParameters:
    """A changelist's filters and search go to the database: a NUL character (which
    PostgreSQL refuses in text) or a search longer than anything searched can be (SQLite
    refuses so large a LIKE pattern) is the client's mistake, answered 400, not a 500."""

    max_search_length = 200  # a name's length; an id is shorter

    def changelist_view(self, request, extra_context=None):
        check_query_parameters(request, self.max_search_length)
        return super().changelist_view(request, extra_context)


def check_query_parameters(request, max_search_length: int) -> None:
    """BadRequest for a changelist's query parameter the database would refuse (see CheckedQueryParameters)."""
    for name, given in request.GET.lists():
        for problem in filter(None, map(values.text_problem, given)):
            raise BadRequest(f"The query parameter {name} {problem}.")
    if len(request.GET.get(SEARCH_VAR, "")) > max_search_length:
        raise BadRequest(f"A search is at most {max_search_length} characters long.")


class IdPrefixSearch:
    """Search also finds rows whose workflow id starts with the term (see id_prefix_range)."""

    id_prefix_field = "pk"

    def get_search_results(self, request, queryset, search_term):
        results, duplicates = super().get_search_results(request, queryset, search_term)
        bounds = id_prefix_range(search_term)
        if bounds is None:
            return results, duplicates
        return results | queryset.filter(**{f"{self.id_prefix_field}__range": bounds}), duplicates


# --- Bulk on a query: every workflow the list's filters match -----------------------------

# The changelist's bulk controls: each action's button; its confirmation's verb is the
# service's (services.BULK_ACTIONS). Which workflows accept it is each one's service's to
# say; the others are counted as skipped.
BULK_QUERY_ACTIONS = {"retry": "Retry", "cancel": "Cancel", "pause": "Pause", "resume": "Resume"}


class BulkOperationFilter(admin.SimpleListFilter):
    """?bulk=<id>: the workflows a bulk operation matched, linked from its progress page;
    in the sidebar only while it is in use (the choice to clear it)."""

    title = "bulk operation"
    parameter_name = "bulk"

    def lookups(self, request, model_admin):
        return [(self.value(), f"{str(self.value())[:8]}")] if self.value() else []

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            operation = BulkOperation.objects.only("workflow_ids").get(pk=self.value())
        except (BulkOperation.DoesNotExist, ValidationError):
            raise IncorrectLookupParameters(f"No bulk operation {self.value()!r}.") from None
        return queryset.filter(pk__in=operation.workflow_ids)


def filters_in_words(changelist: ChangeList) -> list[str]:
    """The list's filters as its sidebar shows them ("state: FAILED"), and its search."""
    words = []
    for spec in changelist.filter_specs:
        if not getattr(spec, "used_parameters", None):
            continue
        chosen = [str(choice["display"]) for choice in spec.choices(changelist) if choice.get("selected")]
        words.append(f"{spec.title}: {', '.join(chosen) or ', '.join(map(str, spec.used_parameters.values()))}")
    dates = {key: value for key, value in changelist.params.items() if key.startswith(f"{changelist.date_hierarchy}__")}
    if dates:
        words.append(f"{changelist.date_hierarchy}: " + "-".join(str(value) for value in dates.values()))
    if changelist.query:
        words.append(f"search: {changelist.query}")
    return words


def bulk_query_view(modeladmin, request, action: str):
    """/admin/workflow_orchestrator/workflow/bulk/<action>/?<the list's filters>: asks for
    a reason, showing how many workflows the list's filters match and the filters in words;
    once confirmed, starts the operation (services.bulk_start) on exactly the list's
    queryset, and shows its progress page."""
    if action not in BULK_QUERY_ACTIONS:
        raise Http404(f"No bulk action {action!r}.")
    if not modeladmin.has_change_permission(request):
        raise PermissionDenied
    check_query_parameters(request, modeladmin.max_search_length)
    try:
        changelist = modeladmin.get_changelist_instance(request)
    except IncorrectLookupParameters as exc:
        raise BadRequest(f"The list's filters are not valid: {exc}") from None
    matching = changelist.result_count
    label, verb = BULK_QUERY_ACTIONS[action], services.BULK_ACTIONS[action][1]
    reason, error = request.POST.get("reason", ""), ""
    if request.method == "POST":
        try:
            reason = services.bulk_reason(reason)
        except ValidationError as exc:
            error = " ".join(exc.message_dict["reason"])
        else:
            if str(matching) != request.POST.get("expected"):
                error = f"The list now matches {matching} workflows, not {request.POST.get('expected')}: confirm again."
            else:
                operation = services.bulk_start(
                    action,
                    changelist.queryset,
                    actor=Actor.admin(request.user),
                    reason=reason,
                    criteria={"admin": filters_in_words(changelist), "query": changelist.get_query_string()},
                )
                return HttpResponseRedirect(
                    reverse("admin:workflow_orchestrator_bulkoperation_change", args=[operation.pk])
                )
    list_url = reverse("admin:workflow_orchestrator_workflow_changelist") + changelist.get_query_string()
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "title": f"{label} all {matching} matching workflow{'s' if matching != 1 else ''}?",
        "label": label,
        "verb": verb,
        "action": action,
        "matching": matching,
        "filters": filters_in_words(changelist),
        "list_url": list_url,
        "reason": reason,
        "error": error,
        "max_reason": services.MAX_BULK_REASON,
    }
    return TemplateResponse(request, "admin/workflow_orchestrator/workflow/confirm_bulk_query.html", context)


def bulk_controls(changelist: ChangeList) -> list[dict]:
    """The changelist's "<Action> all N matching" links (its template shows them to users
    who may change workflows): each to the confirmation of that action on the list's filters."""
    query = changelist.get_query_string(remove=[PAGE_VAR])
    return [
        {"action": action, "label": f"{label} all {changelist.result_count} matching",
         "url": reverse("admin:workflow_orchestrator_workflow_bulk", args=[action]) + query}
        for action, label in BULK_QUERY_ACTIONS.items()
    ]  # fmt: skip


class WaitingChangeList(ChangeList):
    """The workflows of a page, each with why it waits, if it does (selectors.waiting_reasons:
    at most two queries for the page, not two per row)."""

    def get_results(self, request):
        super().get_results(request)
        reasons = selectors.waiting_reasons(self.result_list)
        for workflow in self.result_list:
            reason = reasons[workflow.pk]
            workflow.waiting_why = reason if selectors.is_waiting(reason) else ""


@admin.register(Workflow)
class WorkflowAdmin(CheckedQueryParameters, IdPrefixSearch, admin.ModelAdmin):
    list_display = [
        "name", "short_id", "definition", "state_badge", "mode", "progress", "retries", "created", "finished",
        "run_time", "error_line", "priority", "concurrency_key",
    ]  # fmt: skip
    list_filter = [
        "state", WaitingFilter, FinishedFilter, DefinitionFilter, "mode", PriorityFilter, HoldFilter, AuditFilter,
        "created_at", LabelFilter,
    ]  # fmt: skip
    search_fields = ["name", "concurrency_key"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 50
    actions = [retry_selected, cancel_selected, advance_selected, pause_selected, resume_selected, delete_selected]
    inlines = [TaskInline, TransitionInline, WebhookDeliveryInline]
    readonly_fields = [
        "id", "name", "definition", "state_badge", "mode", "input", "results", "error", "retries", "failed_phase",
        "idempotency_key", "callback_url", "created_by", "created", "updated", "started", "finished",
        "schedule", "audit_chain", "priority", "concurrency_key", "key_limit", "max_parallel", "held_by",
        "label_links",
    ]  # fmt: skip
    fieldsets = [
        (
            None,
            {"fields": ["id", "name", "definition", "state_badge", "mode", "created_by", "schedule", "label_links"]},
        ),
        (
            "Data",
            {"fields": ["input", "results", "error", "failed_phase", "retries", "idempotency_key", "callback_url"]},
        ),
        ("Flow control", {"fields": ["priority", "concurrency_key", "key_limit", "max_parallel", "held_by"]}),
        ("Times", {"fields": ["created", "updated", "started", "finished"]}),
        ("Audit", {"fields": ["audit_chain"]}),
    ]
    change_form_template = "admin/workflow_orchestrator/workflow/change_form.html"
    object_history_template = "admin/workflow_orchestrator/workflow/object_history.html"

    def get_queryset(self, request):
        # A manual workflow waiting for `next` has stopped working when its phase's last
        # task finished: its duration (shown and sorted) ends there, not now.
        phase_ended = (
            Task.objects.filter(workflow=OuterRef("pk"), phase=OuterRef("state"))
            .order_by()
            .values("workflow")
            .annotate(at=Max("finished_at"))
            .values("at")
        )
        waiting = Q(mode=Workflow.Mode.MANUAL, state__in=PHASES, unfinished=0)
        return (
            super()
            .get_queryset(request)
            .select_related("created_by")
            .with_progress()
            .annotate(work_ended_at=Case(When(waiting, then=Coalesce(Subquery(phase_ended), F("updated_at")))))
            .annotate(
                elapsed=ExpressionWrapper(
                    Coalesce("finished_at", "work_ended_at", Now()) - F("started_at"), output_field=DurationField()
                )
            )
        )

    # --- Columns -------------------------------------------------------------------------

    @admin.display(description="labels")
    def label_links(self, workflow):
        """Each label, linked to the list of the workflows that carry it."""
        changelist = reverse("admin:workflow_orchestrator_workflow_changelist")
        return cell(
            "labels",
            labels=[(f"{key} = {value}", f"{changelist}?{urlencode({'label': f'{key}:{value}'})}")
                    for key, value in sorted(workflow.labels.items())],
        )  # fmt: skip

    created = moment_column("created_at", "created")
    updated = moment_column("updated_at", "updated")
    started = moment_column("started_at", "started")
    finished = moment_column("finished_at", "finished")

    def get_search_results(self, request, queryset, search_term):
        """ "waiting" also finds the workflows that wait (the Waiting filter's), whatever their name."""
        results, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term.strip().lower() == "waiting":
            results |= queryset.filter(selectors.waiting_condition())
        return results, duplicates

    @admin.display(description="audit chain")
    def audit_chain(self, workflow):
        """Verified now, as `workflow verify` does (one query)."""
        broken = audit.verify(workflow)
        if broken is None:
            return f"intact: {workflow.last_seq} row(s), the head signed"
        return cell("audit_broken", link=str(broken).split(": ", 1)[1])

    @admin.display(description="limit of its key")
    def key_limit(self, workflow):
        """The limits its concurrency key's tasks run under, a link to change them."""
        if not workflow.concurrency_key:
            return "—"
        limit = ConcurrencyLimit.objects.filter(key=workflow.concurrency_key).first()
        if limit is None:
            return "none: its tasks run without a limit"
        url = reverse("admin:workflow_orchestrator_concurrencylimit_change", args=[limit.pk])
        return cell("link", url=url, text=f"{limit.describe()} ({limit.running} running now)")

    @admin.display(description="id")
    def short_id(self, workflow):
        return str(workflow.pk)[:8]

    @admin.display(description="state", ordering="state")
    def state_badge(self, workflow):
        """Its state, and WAITING beside it while it waits: on the list for any reason (the
        page's reasons, WaitingChangeList), on its page for Next (the page says why it waits)."""
        state = badge(workflow.state, STATE_COLOURS[workflow.state])
        why = getattr(workflow, "waiting_why", None)
        if why is None and services.is_waiting_for_next(workflow):
            why = "The phase's work is done: it waits for Next step"
        if not why:
            return state
        return cell("state_badge", state=state, why=why, waiting=badge("WAITING", WAITING_COLOUR, "badge-waiting"))

    def get_changelist(self, request, **kwargs):
        return WaitingChangeList

    @admin.display(description="progress")
    def progress(self, workflow):
        return f"{workflow.tasks_done}/{workflow.tasks_total}"

    @admin.display(description="duration", ordering="elapsed")
    def run_time(self, workflow):
        return duration(workflow.started_at, workflow.finished_at or getattr(workflow, "work_ended_at", None))

    @admin.display(description="error")
    def error_line(self, workflow):
        """The failure's message in full, wrapped; its exception's class after it, without the module path."""
        if workflow.state != State.FAILED or not workflow.error:
            return ""
        message, kind = error_summary(workflow.error)
        return cell("error_line", message=message[:500], kind=kind, line=last_line(workflow.error))

    # --- Pages ---------------------------------------------------------------------------

    def get_urls(self):
        # The overview comes with the admin: a project that installs the app adds no URL for it.
        # Before the admin's own, whose `<object_id>/` would take "dashboard" for a workflow's id.
        return [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.overview_view),
                name="workflow_orchestrator_workflow_dashboard",
            ),
            path(
                "waiting/",
                self.admin_site.admin_view(self.waiting_view),
                name="workflow_orchestrator_workflow_waiting",
            ),
            path(
                "<path:object_id>/graph/",
                self.admin_site.admin_view(self.graph_view),
                name="workflow_orchestrator_workflow_graph",
            ),
            path(
                "bulk/<str:action>/",
                self.admin_site.admin_view(lambda request, action: bulk_query_view(self, request, action)),
                name="workflow_orchestrator_workflow_bulk",
            ),
            path(
                "<path:object_id>/transition/<str:event>/",
                self.admin_site.admin_view(self.transition_view),
                name="workflow_orchestrator_workflow_transition",
            ),
            *super().get_urls(),
        ]

    def get_list_filter(self, request):
        return [*super().get_list_filter(request), BulkOperationFilter]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None and changelist.result_count and self.has_change_permission(request):
            response.context_data["bulk_controls"] = bulk_controls(changelist)
        return response

    def overview_view(self, request):
        """/admin/workflow_orchestrator/workflow/dashboard/: counts by state, throughput over the last hour, durations,
        queue depth, the worker clusters and the latest failures. It reads a fixed number of
        queries, so the page can refresh itself every few seconds at any size."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        window, page = self._failures_page(request)
        figures = stats.overview(failures_window=window, failures_page=page)
        changelist = reverse("admin:workflow_orchestrator_workflow_changelist")
        # The last bar is the current minute: its rate is over the seconds it has lasted so far.
        into_minute = max(1.0, (figures["now"] - figures["since"]).total_seconds() - 60 * (stats.CHART_MINUTES - 1))
        tasks = figures["tasks_per_minute"]
        task_rates = [count / 60 for count in tasks[:-1]] + [tasks[-1] * 1.0 / into_minute]
        workflow_rates = figures["workflows_per_minute"][:-1] + [figures["workflows_per_minute"][-1] * 60 / into_minute]
        context = {
            **self.admin_site.each_context(request),
            "opts": Workflow._meta,
            "title": "Overview",
            "figures": figures,
            "audit_broken_url": f"{changelist}?audit=broken",
            "states": [
                (state, count, badge(state, STATE_COLOURS[state]), f"{changelist}?state__exact={state}")
                for state, count in figures["workflows_by_state"].items()
            ],
            "total": sum(figures["workflows_by_state"].values()),
            "task_rate": format_rate(task_rates[-1]),
            "workflow_rate": format_rate(workflow_rates[-1]),
            "task_chart": rate_chart_svg(task_rates, figures["since"], "Tasks finished per second", "tasks/s"),
            "workflow_chart": rate_chart_svg(
                workflow_rates, figures["since"], "Workflows finished per minute", "workflows/min"
            ),
            "median": _seconds_or_dash(figures["duration"]["median_seconds"]),
            "p95": _seconds_or_dash(figures["duration"]["p95_seconds"]),
            "clusters": [self._cluster_row(cluster, figures["now"]) for cluster in figures["clusters"]],
            "waiting_card": self._waiting_card(figures["waiting_workflows"], changelist),
            "failures": self._failures(figures["failures"], changelist),
            "changelist": changelist,
        }
        return TemplateResponse(request, "admin/workflow_orchestrator/dashboard.html", context)

    def _failures_page(self, request) -> tuple[str, int]:
        """The overview's failures window and page from its query (`failures`, `failures_page`);
        a value that is not one is said and replaced by the default."""
        window = request.GET.get("failures", "day")
        if window not in stats.FAILURE_WINDOWS:
            messages.error(request, f"failures: {window[:40]!r} is not one of {', '.join(stats.FAILURE_WINDOWS)}.")
            window = "day"
        page = request.GET.get("failures_page", "1")
        if not page.isdigit() or not 1 <= int(page) <= 10_000:
            messages.error(request, f"failures_page: {page[:40]!r} is not a page number (1 or more).")
            page = "1"
        return window, int(page)

    @staticmethod
    def _failures(failures: dict, changelist: str) -> dict:
        """A page of the failures of a window, with links to the other windows and pages, and
        to the list of the window's failures."""
        window, page = failures["window"], failures["page"]
        here = reverse("admin:workflow_orchestrator_workflow_dashboard")
        rows = []
        for workflow in failures["rows"]:
            message, kind = error_summary(workflow.error)
            url = reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])
            rows.append({"workflow": workflow, "message": message, "kind": kind, "url": url})
        # The list has the hour and the day among its windows; a week is a range from its start.
        since = timezone.localtime(timezone.now() - stats.FAILURE_WINDOWS[window]).replace(tzinfo=None)
        in_list = {"hour": {"finished": "1h"}, "day": {"finished": "1d"}}.get(
            window, {"finished_at__gte": since.isoformat(timespec="seconds")}
        )
        list_query = {"state__exact": State.FAILED, **in_list}
        return {
            **failures,
            "rows": rows,
            "windows": [(key, f"{here}?{urlencode({'failures': key})}") for key in stats.FAILURE_WINDOWS],
            "newer": f"{here}?{urlencode({'failures': window, 'failures_page': page - 1})}" if page > 1 else None,
            "older": f"{here}?{urlencode({'failures': window, 'failures_page': page + 1})}"
            if failures["older"]
            else None,
            "list": f"{changelist}?{urlencode(list_query)}",
        }

    @staticmethod
    def _waiting_card(counts: dict, changelist: str) -> dict:
        """The WAITING card: how many wait, linked to the list filtered by waiting, and by reason."""
        return {
            "count": counts["all"],
            "badge": badge("WAITING", WAITING_COLOUR, "badge-waiting"),
            "url": f"{changelist}?waiting=any",
            "reasons": [
                (label, counts[reason], f"{changelist}?{urlencode({'waiting': reason})}")
                for reason, label in selectors.WAITING_REASONS.items()
            ],
        }

    @staticmethod
    def _cluster_row(cluster: dict, now) -> dict:
        """A cluster as the overview shows it: its workers as the work they do (workflow, task,
        running time, a link to the task), its uptime as a duration."""
        workers = [
            {
                **worker,
                "task_url": reverse("admin:workflow_orchestrator_task_change", args=[worker["task_id"]]),
                "workflow_url": reverse("admin:workflow_orchestrator_workflow_change", args=[worker["workflow_id"]]),
                "running_for": moments.span_text((now - worker["started_at"]).total_seconds())
                if worker["started_at"]
                else "—",
            }
            for worker in cluster["worker_processes"]
            if worker["task_id"] is not None
        ]
        return {
            **cluster,
            "badge": badge(cluster["status"], CLUSTER_COLOURS.get(cluster["status"], "#6b7079")),
            "busy": workers,
            "uptime": moments.span_text(cluster["uptime_seconds"]),
        }

    def waiting_view(self, request):
        """/admin/workflow_orchestrator/workflow/waiting/: "Waiting for me", the approval tasks
        waiting now that the logged-in user may decide, each with its workflow's context,
        its prompt and its form; approving or rejecting one is services.task_decide."""
        if request.method == "POST":
            response = self._decide(request)
            if response is not None:
                return response
        tasks = services.waiting_for_user(request.user)
        posted = getattr(request, "_decision_form", None)
        items = []
        for task in tasks:
            params = task.params
            form_class = approvals.form_class(params.get("fields", []))
            form = posted[1] if posted and posted[0] == task.pk else form_class(prefix=f"task-{task.pk}")
            items.append(
                {
                    "task": task,
                    "workflow": task.workflow,
                    "prompt": approvals.prompt_text(params.get("prompt", ""), task.workflow.input),
                    "input": json.dumps(task.workflow.input, indent=2, sort_keys=True)[:2000],
                    "form": form,
                    "quorum": params.get("quorum", 1),
                    "approved": task.approved,
                    "deadline": task.wake_at,
                    "link": reverse("admin:workflow_orchestrator_workflow_change", args=[task.workflow_id])
                    if self.has_view_permission(request, task.workflow)
                    else None,
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": Workflow._meta,
            "title": "Waiting for me",
            "items": items,
        }
        return TemplateResponse(request, "admin/workflow_orchestrator/waiting.html", context)

    def _decide(self, request):
        """A decision posted from "Waiting for me": a redirect back once it is recorded,
        None to show the page again with the form's errors."""
        task = Task.objects.filter(pk=request.POST.get("task") or 0, type=approvals.APPROVAL).first()
        if task is None:
            raise Http404("no such approval task")
        decision = "approve" if "approve" in request.POST else "reject" if "reject" in request.POST else None
        prefix = f"task-{task.pk}"
        form = approvals.form_class(task.params.get("fields", []))(request.POST, prefix=prefix)
        comment = request.POST.get(f"{prefix}-comment", "")
        if decision is None or not form.is_valid():
            request._decision_form = (task.pk, form)
            messages.error(request, f"{task.name}: fill in the form, then approve or reject.")
            return None
        try:
            services.task_decide(
                task.workflow_id,
                task.name,
                user=request.user,
                decision=decision,
                data=form.cleaned_data,
                comment=comment,
                actor=Actor.admin(request.user),
            )
        except services.NotAnApprover:
            raise PermissionDenied from None
        except (services.InvalidTransition, ValidationError) as exc:
            messages.error(request, f"{task.name}: {' '.join(getattr(exc, 'messages', [str(exc)]))}")
        else:
            messages.success(request, f"{task.workflow.name}: {task.name} {decision}d.")
        return HttpResponseRedirect(reverse("admin:workflow_orchestrator_workflow_waiting"))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST":  # every field is read-only: state changes go through the buttons
            return HttpResponseNotAllowed(["GET"])
        workflow = self.get_object(request, object_id)
        extra_context = extra_context or {}
        if workflow is not None:
            tasks = list(workflow.tasks.order_by("position"))
            pager = TaskPager.from_request(request, len(tasks))
            taken = list(workflow.transitions.order_by("seq").values_list("source", "target"))
            offered = services.available_actions(
                workflow,
                may_change=self.has_change_permission(request, workflow),
                may_delete=self.has_delete_permission(request, workflow),
            )
            extra_context.update(
                state_graph=state_graph_svg(workflow.state, taken),
                **self._execute_picture(workflow, [task for task in tasks if task.phase == Phase.EXECUTE]),
                # The attempts of the tasks on this page of the table, not of a thousand at once.
                task_timeline=task_timeline_svg(tasks[pager.start : pager.end]),
                task_pager=pager if pager.pages > 1 else None,
                task_pages=pager.links(request) if pager.pages > 1 else [],
                all_tasks_url=tasks_of_workflow_url(workflow),
                buttons=[
                    {"event": action, "label": BUTTONS[action][0], "confirm": BUTTONS[action][2]}
                    for action in offered
                    if action in BUTTONS
                ],
                can_delete="delete" in offered,
                live_ended=workflow.state in ENDED,
                waiting_reason=selectors.waiting_reason(workflow),
            )
        return super().change_view(request, object_id, form_url, extra_context)

    @staticmethod
    def _execute_picture(workflow: Workflow, executing: list[Task]) -> dict:
        """Up to SUMMARY_OVER tasks, EXECUTE's graph on the page; beyond, how many tasks are
        in each status (each count a link to those tasks), the graph fetched from its own page
        when asked for."""
        graph_url = reverse("admin:workflow_orchestrator_workflow_graph", args=[workflow.pk])
        if len(executing) <= SUMMARY_OVER:
            graph = task_graph_svg(executing, link=task_url)
            return {"task_graph": graph, "execute_count": len(executing), "graph_url": graph_url}
        summary = [
            {
                "badge": badge(status, STATUS_COLOURS[status]),
                "count": count,
                "url": tasks_of_workflow_url(workflow, phase__exact=Phase.EXECUTE, status__exact=status),
            }
            for status, count in task_status_counts(executing)
        ]
        return {"task_summary": summary, "execute_count": len(executing), "graph_url": graph_url}

    def get_formset_kwargs(self, request, obj, inline, prefix):
        """The task table holds the page of tasks change_view chose (it checked the number)."""
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, TaskInline) and obj is not None:
            start = (int(request.GET.get(TASKS_PAGE_VAR, "1")) - 1) * TASKS_PER_PAGE
            page = obj.tasks.order_by("position").values("pk")[start : start + TASKS_PER_PAGE]
            kwargs["queryset"] = kwargs["queryset"].filter(pk__in=page)
        return kwargs

    def graph_view(self, request, object_id):
        """/admin/workflow_orchestrator/workflow/<id>/graph/: EXECUTE's graph on a page of
        its own, however many tasks; a large workflow's page fetches it from here."""
        workflow = self.get_object(request, object_id)
        if workflow is None:
            raise Http404("No such workflow.")
        if not self.has_view_permission(request, workflow):
            raise PermissionDenied
        executing = list(workflow.tasks.filter(phase=Phase.EXECUTE).order_by("position"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": workflow,
            "title": f"{workflow.name}: EXECUTE's graph",
            "task_graph": task_graph_svg(executing, link=task_url),
            "change_url": reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk]),
        }
        return TemplateResponse(request, "admin/workflow_orchestrator/workflow/graph.html", context)

    def history_view(self, request, object_id, extra_context=None):
        """The workflow's audit log, newest first, instead of the admin's own (empty) log."""
        workflow = self.get_object(request, object_id)
        transitions = workflow.transitions.select_related("actor").order_by("-seq") if workflow else []
        return super().history_view(request, object_id, {**(extra_context or {}), "transitions": transitions})

    def transition_view(self, request, object_id, event):
        workflow = self.get_object(request, object_id)
        button = BUTTONS.get(event)
        if button is None:
            raise Http404(f"No transition {event!r} in the admin.")
        if workflow is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, workflow):
            raise PermissionDenied
        label, service, confirm = button
        change_url = reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])
        if request.method != "POST":
            if not confirm:
                return HttpResponseNotAllowed(["POST"])
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "workflow": workflow,
                "label": label,
                "event": event,
                "change_url": change_url,
                "title": f"{label} {workflow.name}?",
            }
            return TemplateResponse(request, "admin/workflow_orchestrator/workflow/confirm_transition.html", context)
        kwargs = {"reason": request.POST.get("reason", "")[:1000]} if event in REASONED else {}
        before = workflow.state
        try:
            workflow = service(workflow.pk, actor=Actor.admin(request.user), **kwargs)
        except services.InvalidTransition as exc:
            self.message_user(request, str(exc), messages.ERROR)
        except ValidationError as exc:  # a reason the database cannot store
            self.message_user(request, f"Nothing changed: {'; '.join(exc.messages)}.", messages.ERROR)
        else:
            outcome = self._outcome(event, before, workflow)
            self.message_user(request, f"{label}: {workflow.name} {outcome}.", messages.SUCCESS)
        return HttpResponseRedirect(change_url)

    @staticmethod
    def _outcome(event: str, before: str, workflow: Workflow) -> str:
        """What the action did, in words that stay true once the page is shown: the cluster may
        have moved the workflow on meanwhile (a retried workflow may be COMPLETE by then), and
        the page's heading, breadcrumb and state say where it is now."""
        if event in ("pause", "resume"):
            return f"is {event}d"
        if workflow.state in ENDED:  # it stays there until someone acts
            return f"is now {workflow.state}"
        return f"went from {before} to {workflow.state}"

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = WorkflowAddForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            workflow = form.create(request.user)
            if workflow is not None:
                self.message_user(request, f"Created {workflow.name} ({workflow.state}).", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "form": form,
            "title": "Add workflow",
            "has_view_permission": self.has_view_permission(request),
        }
        return TemplateResponse(request, "admin/workflow_orchestrator/workflow/add_form.html", context)

    def delete_view(self, request, object_id, extra_context=None):
        workflow = self.get_object(request, object_id)
        if workflow is not None and workflow.is_running:
            self.message_user(
                request, f"Cannot delete a workflow in state {workflow.state}: cancel it first.", messages.ERROR
            )
            return HttpResponseRedirect(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_deleted_objects(self, objs, request):
        # Tasks and transitions go with their workflow. Their own admins are read-only (nobody
        # deletes one by itself), which must not make Django refuse to delete the workflow.
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed -= {Task._meta.verbose_name, Transition._meta.verbose_name}
        return deleted, model_count, perms_needed, protected

    def delete_model(self, request, obj):
        services.workflow_delete(obj.pk, actor=Actor.admin(request.user))

    def delete_queryset(self, request, queryset):
        for workflow_id in queryset.values_list("pk", flat=True):
            try:
                services.workflow_delete(workflow_id, actor=Actor.admin(request.user))
            except services.InvalidTransition as exc:
                self.message_user(request, str(exc), messages.WARNING)


class ReadOnlyAdmin(CheckedQueryParameters, admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Task)
class TaskAdmin(IdPrefixSearch, TaskColumns, ReadOnlyAdmin):
    id_prefix_field = "workflow__id"
    list_display = [
        "name", "workflow_link", "phase", "type", "status_badge", "attempt_of_budget", "started", "run_time",
    ]  # fmt: skip
    list_filter = ["status", "type", "phase"]
    search_fields = ["name", "type", "workflow__name"]
    list_select_related = ["workflow"]
    show_full_result_count = False
    readonly_fields = [
        "workflow_link", "phase", "name", "type", "params", "after_list", "status_badge", "attempt", "max_attempts",
        "timeout", "result", "error_block", "queued", "started", "finished", "lease_expires", "worker",
        "attempt_list",
    ]  # fmt: skip
    fields = readonly_fields
    queued = moment_column("queued_at", "queued at")
    started = moment_column("started_at", "started at")
    finished = moment_column("finished_at", "finished at")
    lease_expires = moment_column("lease_expires_at", "lease expires at")
    change_form_template = "admin/workflow_orchestrator/task/change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The page updates itself (live.js) until the task can change no more: it succeeded or
        was cancelled, or its workflow ended (a failed task is run again only by a retry)."""
        task = self.get_object(request, object_id)
        if task is not None:
            settled = task.status in (Task.Status.SUCCEEDED, Task.Status.CANCELLED) or task.workflow.state in ENDED
            extra_context = {**(extra_context or {}), "live_ended": settled}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="workflow")
    def workflow_link(self, task):
        url = reverse("admin:workflow_orchestrator_workflow_change", args=[task.workflow_id])
        return cell("link", url=url, text=task.workflow.name)

    @admin.display(description="error")
    def error_block(self, task):
        return cell("error_block", error=task.error) if task.error else "—"

    @admin.display(description="after")
    def after_list(self, task):
        return ", ".join(task.after) if task.after else "—"

    @admin.display(description="attempts")
    def attempt_list(self, task):
        """Every attempt, oldest first: its worker, times, outcome in words and its error's
        last line, the full error one click away (a <details>, no script)."""
        attempts = task_attempts(task)
        if not attempts:
            return "Not started yet."
        return cell("attempt_list", attempts=[self._attempt_row(attempt) for attempt in attempts])

    @staticmethod
    def _attempt_row(attempt) -> dict:
        return {
            "outcome": attempt.outcome,
            "number": attempt.number,
            "worker": attempt.worker or "—",
            "started": moments.moment_html(attempt.started_at),
            "finished": moments.moment_html(attempt.finished_at),
            "duration": format_seconds(attempt.seconds(timezone.now())) if attempt.started_at else "—",
            "description": attempt.description,
            "badge": badge(attempt.label, OUTCOME_COLOURS.get(attempt.outcome, "#6b7079")),
            "error": attempt.error,
            "error_last_line": attempt.error_last_line,
        }


@admin.register(Transition)
class TransitionAdmin(ReadOnlyAdmin):
    list_display = ["workflow", "seq", "event", "source", "target", "actor_label", "created"]
    list_filter = ["event", "target"]
    search_fields = ["workflow__name", "actor_label", "reason"]
    list_select_related = ["workflow"]
    ordering = ["-created_at", "-pk"]
    show_full_result_count = False
    readonly_fields = [
        "workflow", "seq", "source", "target", "event", "actor", "actor_label", "reason", "data", "created", "digest",
    ]  # fmt: skip
    fields = readonly_fields
    created = moment_column("created_at", "at")


@admin.register(BulkOperation)
class BulkOperationAdmin(ReadOnlyAdmin):
    """Bulk operations, newest first; each one's page is its progress, which updates
    itself while it runs. Those who may see workflows may see them."""

    list_display = ["created", "action", "total", "done", "skipped_count", "status", "actor_label", "reason"]
    list_filter = ["action", "status"]
    search_fields = ["reason", "actor_label"]
    created = moment_column("created_at", "created")
    show_full_result_count = False

    def get_queryset(self, request):
        return super().get_queryset(request).defer("workflow_ids")

    def has_view_permission(self, request, obj=None):
        opts = Workflow._meta
        return any(request.user.has_perm(f"{opts.app_label}.{kind}_{opts.model_name}") for kind in ("view", "change"))

    @admin.display(description="skipped")
    def skipped_count(self, operation):
        return operation.skipped_count

    def change_view(self, request, object_id, form_url="", extra_context=None):
        operation = self.get_object(request, object_id)
        if operation is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, operation):
            raise PermissionDenied
        words = operation.criteria.get("admin") or [
            f"{name}: {', '.join(map(str, given)) if isinstance(given, list) else given}"
            for name, given in operation.criteria.items()
        ]
        verb = services.BULK_ACTIONS[operation.action][1]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{operation.action.capitalize()} {operation.total} workflow{'s' if operation.total != 1 else ''}",
            "operation": operation,
            "verb": verb,
            "filters": words,
            "percent": 100 if not operation.total else operation.position * 100 // operation.total,
            "workflows_url": reverse("admin:workflow_orchestrator_workflow_changelist") + f"?bulk={operation.pk}",
            "live_ended": operation.is_finished,
        }
        return TemplateResponse(request, "admin/workflow_orchestrator/bulk_progress.html", context)


@admin.register(WorkflowDeletion)
class WorkflowDeletionAdmin(ReadOnlyAdmin):
    """The deletion log: who deleted which workflow, when, in which state and at which
    chain head. Nobody adds, changes or deletes its rows, not even a superuser."""

    list_display = ["seq", "name", "workflow_id", "state", "actor_label", "deleted"]
    list_filter = ["state", "deleted_at"]
    search_fields = ["name", "=workflow_id", "actor_label"]
    show_full_result_count = False
    readonly_fields = [
        "seq", "workflow_id", "name", "state", "last_seq", "last_digest", "actor", "actor_label", "deleted",
        "digest",
    ]  # fmt: skip
    fields = readonly_fields
    deleted = moment_column("deleted_at", "deleted at")


# --- Cron schedules ----------------------------------------------------------------------


class WorkflowScheduleForm(forms.ModelForm):
    definition = forms.ChoiceField(choices=(), initial="default")
    input = input_field(initial="{}", help_text="The input of each run, a JSON object.")
    tasks = tasks_field(blank_is_none=True, help_text=WorkflowSchedule._meta.get_field("tasks").help_text)

    class Meta:
        model = WorkflowSchedule
        fields = schedules.EDITABLE_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["definition"].choices = [(key, key) for key in definition_keys()]

    def _post_clean(self):
        """The model's own checks, then the workflow the schedule starts (as
        schedules.schedule_save checks it), each error on its field."""
        super()._post_clean()
        try:
            schedules.validate_workflow(self.instance)
        except ValidationError as exc:
            self._update_errors(exc)


def _each_schedule(modeladmin, request, queryset, operation, verb: str) -> None:
    """Each schedule on its own: one that cannot be saved as it is (stored before its
    expression was refused, say) is reported with the reason, and the others go on."""
    names = []
    for schedule in queryset:
        try:
            names.append(operation(schedule).name)
        except ValidationError as exc:
            reasons = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            modeladmin.message_user(request, f"{schedule.name}: {reasons}", messages.ERROR)
    if names:
        modeladmin.message_user(request, f"{len(names)} {verb}: {', '.join(names)}", messages.SUCCESS)


@admin.action(description="Pause selected schedules", permissions=["change"])
def pause_schedules(modeladmin, request, queryset):
    _each_schedule(modeladmin, request, queryset, schedules.schedule_pause, "paused")


@admin.action(description="Resume selected schedules", permissions=["change"])
def resume_schedules(modeladmin, request, queryset):
    _each_schedule(modeladmin, request, queryset, schedules.schedule_resume, "resumed")


def _run_schedule_now(modeladmin, request, schedule: WorkflowSchedule) -> None:
    """Start a run of `schedule`; the flash links to the workflow it started."""
    try:
        workflow = schedules.schedule_run_now(schedule, actor=Actor.admin(request.user))
    except ValidationError as exc:
        modeladmin.message_user(request, f"{schedule.name}: {'; '.join(exc.messages)}", messages.ERROR)
    else:
        url = reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])
        started = cell("link", url=url, text=f"workflow {workflow.pk}")
        message = format_html("{}: started {} ({}).", schedule.name, started, workflow.state)
        modeladmin.message_user(request, message, messages.SUCCESS)


@admin.action(description="Run selected schedules now", permissions=["change"])
def run_schedules_now(modeladmin, request, queryset):
    """One workflow each, at once; their due runs stay as they were."""
    for schedule in queryset:
        _run_schedule_now(modeladmin, request, schedule)


# The buttons on each row of the schedules' list: what each says, and does.
SCHEDULE_BUTTONS = {"pause": "Pause", "resume": "Resume", "run": "Run now"}


@admin.register(WorkflowSchedule)
class WorkflowScheduleAdmin(CheckedQueryParameters, admin.ModelAdmin):
    form = WorkflowScheduleForm
    # No time zone column: the times name their zone.
    list_display = ["name", "cron_in_words", "status", "next_run", "last_run", "workflows_link"]
    list_filter = ["enabled"]
    search_fields = ["name"]
    actions = [pause_schedules, resume_schedules, run_schedules_now]
    readonly_fields = [
        "cron_words", "last_run", "next_runs", "last_error", "workflows_link", "created_at", "updated_at",
    ]  # fmt: skip
    fieldsets = [
        (None, {"fields": ["name", "cron", "cron_words", "time_zone", "enabled"]}),
        ("Each run", {"fields": ["definition", "mode", "input", "tasks"]}),
        ("Runs", {"fields": ["last_run", "next_runs", "last_error", "workflows_link"]}),
        ("Times", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_list_display(self, request):
        # The row's buttons change the schedule: only for those who may.
        row_buttons = ["row_buttons"] if self.has_change_permission(request) else []
        return [*super().get_list_display(request), *row_buttons]

    @admin.display(description="cron", ordering="cron")
    def cron_in_words(self, schedule):
        return cell("cron_words", expression=schedule.cron, words=cron.cron_in_words(schedule.cron))

    @admin.display(description="in words")
    def cron_words(self, schedule):
        return cron.cron_in_words(schedule.cron) if schedule.cron else "—"

    @admin.display(description="status", ordering="enabled")
    def status(self, schedule):
        if schedule.enabled:
            return badge("ENABLED", STATE_COLOURS[State.COMPLETE])
        return badge("PAUSED", WAITING_COLOUR)

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, schedule):
        return cron.local_time_label(schedules.schedule_local_time(schedule, schedule.last_run_at), schedule.time_zone)

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, schedule):
        runs = schedules.schedule_next_runs(schedule, 1)
        return cron.local_time_label(runs[0], schedule.time_zone) if runs else "— (paused)"

    @admin.display(description="next runs")
    def next_runs(self, schedule):
        runs = schedules.schedule_next_runs(schedule) if schedule.pk else []
        return cell("lines", lines=[cron.local_time_label(run, schedule.time_zone) for run in runs] or ["—"])

    @admin.display(description="actions")
    def row_buttons(self, schedule):
        shown = ["resume" if not schedule.enabled else "pause", "run"]
        buttons = [
            {
                "label": SCHEDULE_BUTTONS[operation],
                "url": reverse(f"admin:workflow_orchestrator_workflowschedule_{operation}", args=[schedule.pk]),
                "id": f"schedule-{schedule.pk}-{operation}",
            }
            for operation in shown
        ]
        return cell("schedule_buttons", buttons=buttons, schedule_name=schedule.name)

    def get_urls(self):
        # Before the admin's own, whose `<object_id>/` would take the button's path for an id.
        return [
            *(
                path(
                    f"<path:object_id>/{operation}/",
                    self.admin_site.admin_view(self.row_action_view),
                    {"operation": operation},
                    name=f"workflow_orchestrator_workflowschedule_{operation}",
                )
                for operation in SCHEDULE_BUTTONS
            ),
            *super().get_urls(),
        ]

    def _pause_or_resume(self, request, schedule, operation: str) -> None:
        service = schedules.schedule_pause if operation == "pause" else schedules.schedule_resume
        try:
            service(schedule)
        except ValidationError as exc:  # stored before its expression was refused, say
            reasons = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            self.message_user(request, f"{schedule.name}: nothing changed: {reasons}", messages.ERROR)
        else:
            done = (
                "it starts nothing until it is resumed"
                if operation == "pause"
                else f"next run {self.next_run(schedule)}"
            )
            self.message_user(request, f"{schedule.name} is {operation}d: {done}.", messages.SUCCESS)

    def row_action_view(self, request, object_id, operation):
        """A row's button, posted from the list (POST only, CSRF-checked, the change
        permission): pause, resume or run the schedule now, then back to the list as it was."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        schedule = self.get_object(request, object_id)
        if schedule is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, schedule):
            raise PermissionDenied
        if operation == "run":
            _run_schedule_now(self, request, schedule)
        else:
            self._pause_or_resume(request, schedule, operation)
        # The list's filters, search and page, rebuilt from their values: nothing else of the
        # posted text reaches the Location header.
        back = request.POST.get("changelist_query", "")
        query = urlencode(parse_qsl(back.removeprefix("?"))) if values.text_problem(back) is None else ""
        changelist = reverse("admin:workflow_orchestrator_workflowschedule_changelist")
        return HttpResponseRedirect(f"{changelist}?{query}" if query else changelist)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(started=Count("workflows"))

    @admin.display(description="workflows", ordering="started")
    def workflows_link(self, schedule):
        if schedule.pk is None:
            return "—"
        url = reverse("admin:workflow_orchestrator_workflow_changelist") + f"?schedule__id__exact={schedule.pk}"
        return cell("link", url=url, text=f"{schedule.started} started")

    def save_model(self, request, obj, form, change):
        schedules.schedule_save(obj)


# --- Concurrency limits ------------------------------------------------------------------


class ConcurrencyLimitForm(forms.ModelForm):
    class Meta:
        model = ConcurrencyLimit
        fields = ["key", "max_running", "rate", "per_seconds"]

    def _post_clean(self):
        """The engine's checks first (services.check_limit), each error on its field; the
        model's own constraints would only repeat them, less clearly, for the whole form."""
        data = self.cleaned_data
        key = data.get("key", self.instance.key) if "key" in self.fields else self.instance.key
        try:
            services.check_limit(key, data.get("max_running"), data.get("rate"), data.get("per_seconds"))
        except ValidationError as exc:
            # A field that already has an error (not a number, say) keeps that one alone.
            fresh = {field: errors for field, errors in exc.error_dict.items() if field not in self.errors}
            self._update_errors(ValidationError({field: fresh[field] for field in fresh if field in self.fields}))
            return
        super()._post_clean()


@admin.register(ConcurrencyLimit)
class ConcurrencyLimitAdmin(CheckedQueryParameters, admin.ModelAdmin):
    """Limits are set and removed through the engine's services: a new limit counts the
    key's running tasks at once, and a raised or removed one wakes the tasks it held back."""

    form = ConcurrencyLimitForm
    list_display = ["key", "max_running", "running", "rate", "per_seconds", "waiting", "updated"]
    search_fields = ["key"]
    readonly_fields = ["running", "waiting", "window_started", "window_starts", "created", "updated"]
    fieldsets = [
        (None, {"fields": ["key", "max_running", "rate", "per_seconds"]}),
        ("Now", {"fields": ["running", "waiting", "window_started", "window_starts"]}),
        ("Times", {"fields": ["created", "updated"]}),
    ]
    window_started = moment_column("window_started_at", "window started at")
    created = moment_column("created_at", "created at")
    updated = moment_column("updated_at", "updated at")

    def get_queryset(self, request):
        waiting = (
            Task.objects.filter(status=Task.Status.QUEUED, concurrency_key=OuterRef("key"))
            .order_by()
            .values("concurrency_key")
            .annotate(count=Count("pk"))
            .values("count")
        )
        return super().get_queryset(request).annotate(queued=Coalesce(Subquery(waiting), 0))

    def get_readonly_fields(self, request, obj=None):
        # A key names the limit: another key is another limit, added on its own.
        return ["key", *self.readonly_fields] if obj else self.readonly_fields

    @admin.display(description="waiting", ordering="queued")
    def waiting(self, limit):
        """Its key's tasks ready to run and not yet started (held back by the limit, or about to start)."""
        return getattr(limit, "queued", 0)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        limit, _ = services.limit_set(
            obj.key, max_running=data["max_running"], rate=data["rate"], per_seconds=data["per_seconds"]
        )
        obj.pk = limit.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        services.limit_remove(obj.key)

    def delete_queryset(self, request, queryset):
        # Django's "Delete selected" action asks first, then deletes through this.
        for key in queryset.values_list("key", flat=True):
            services.limit_remove(key)


# --- Holds -------------------------------------------------------------------------------------


class HoldForm(forms.ModelForm):
    class Meta:
        model = Hold
        fields = ["kind", "value", "reason"]

    def _post_clean(self):
        """The engine's checks first (services.check_hold), each error on its field."""
        data = self.cleaned_data
        try:
            services.check_hold(data.get("kind"), data.get("value"))
        except ValidationError as exc:
            fresh = {field: errors for field, errors in exc.error_dict.items() if field not in self.errors}
            self._update_errors(ValidationError(fresh))
            return
        super()._post_clean()


class HoldChangeList(ChangeList):
    """The holds of a page, each with how many workflows it keeps paused: one query for
    the page (services.held_counts), not one per hold."""

    def get_results(self, request):
        super().get_results(request)
        counts = services.held_counts(self.result_list)
        for hold in self.result_list:
            hold.held_count = counts[hold.label]


@admin.register(Hold)
class HoldAdmin(CheckedQueryParameters, admin.ModelAdmin):
    """Holds are set and released through the engine's services: adding one pauses the
    workflows of its definition or key, deleting one resumes those it paused. A hold is
    not changed: another definition or key is another hold."""

    form = HoldForm
    list_display = ["kind", "value", "reason", "actor_label", "created", "workflows_held"]
    list_filter = ["kind"]
    search_fields = ["value"]
    readonly_fields = ["actor_label", "created", "workflows_held"]
    fieldsets = [
        (None, {"fields": ["kind", "value", "reason"]}),
        ("Set", {"fields": ["actor_label", "created", "workflows_held"]}),
    ]
    created = moment_column("created_at", "set at")

    def has_change_permission(self, request, obj=None):
        return False

    def get_changelist(self, request, **kwargs):
        return HoldChangeList

    @admin.display(description="workflows held")
    def workflows_held(self, hold):
        """The workflows it keeps paused now, a link to their list."""
        if hold.pk is None:
            return "—"
        count = getattr(hold, "held_count", None)
        if count is None:  # its own page, not the list
            count = services.held_counts([hold])[hold.label]
        url = reverse("admin:workflow_orchestrator_workflow_changelist") + "?" + urlencode({"held_by": hold.label})
        return cell("link", url=url, text=str(count))

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        held = services.hold_set(data["kind"], data["value"], actor=Actor.admin(request.user), reason=data["reason"])
        obj.pk = held.hold.pk
        obj.refresh_from_db()
        # The workflows are paused once the admin's transaction commits, each in its own.
        transaction.on_commit(
            lambda: self.message_user(request, f"{held.hold}: {held.paused} workflow(s) paused.", messages.SUCCESS)
        )

    def delete_model(self, request, obj):
        self._release(request, obj)

    def delete_queryset(self, request, queryset):
        # Django's "Delete selected" action asks first, then deletes through this.
        for hold in queryset:
            self._release(request, hold)

    def _release(self, request, hold: Hold) -> None:
        try:
            released = services.hold_release(hold.kind, hold.value, actor=Actor.admin(request.user))
        except services.HoldNotFound:  # released meanwhile by someone else
            return
        transaction.on_commit(lambda: self.message_user(request, self._released(released), messages.SUCCESS))

    @staticmethod
    def _released(released) -> str:
        kept = f"; {released.still_held} still held by another hold" if released.still_held else ""
        return f"{released.hold} released: {released.resumed} workflow(s) resumed{kept}."
