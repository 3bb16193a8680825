from datetime import UTC

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict
from django_filters.fields import IsoDateTimeField
from drf_spectacular.utils import extend_schema_field
from rest_framework.exceptions import ValidationError as BadRequest
from rest_framework.filters import OrderingFilter, SearchFilter

from .. import selectors, values
from ..models import MAX_PRIORITY, MIN_PRIORITY, State, Workflow


class UTCDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, compared in UTC: any offset Python accepts (up to ±23:59)
    works, where PostgreSQL refuses offsets beyond ±15:59; one that leaves the calendar
    in UTC is a client's error."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("Enter a date-time within the years 1 to 9999 in UTC.", code="invalid") from None


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCDateTimeField


# The largest id a database's integer primary key holds.
MAX_ID = 2**63 - 1


class IntegerFilter(django_filters.NumberFilter):
    """A whole number: django-filter's NumberFilter reads a decimal, which an integer
    column would compare after dropping its fraction (1.5 would find 1)."""

    field_class = forms.IntegerField


class LabelsFormField(forms.Field):
    """`?label=key:value`, repeatable: the labels a workflow must all carry, as a dict."""

    widget = forms.MultipleHiddenInput  # reads every value of a repeated parameter

    def to_python(self, value) -> dict[str, str]:
        try:
            return values.parse_labels(value or [], ":")
        except ValueError as exc:
            raise ValidationError(str(exc), code="invalid") from None


@extend_schema_field({"type": "array", "items": {"type": "string", "example": "customer:acme"}})
class LabelFilter(django_filters.Filter):
    field_class = LabelsFormField

    def filter(self, qs, value):
        return selectors.with_labels(qs, value) if value else qs


class WorkflowFilter(django_filters.FilterSet):
    # distinct=False: the filter is on the workflow's own column, so no row can repeat, and
    # DISTINCT would make the database compare and sort every matching row before LIMIT.
    state = django_filters.MultipleChoiceFilter(choices=State.choices, distinct=False, help_text="One or more states.")
    definition = django_filters.CharFilter()
    mode = django_filters.ChoiceFilter(choices=Workflow.Mode.choices)
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")
    priority = IntegerFilter(min_value=MIN_PRIORITY, max_value=MAX_PRIORITY)
    concurrency_key = django_filters.CharFilter(help_text="Exactly this key.")
    finished_after = UTCDateTimeFilter(field_name="finished_at", lookup_expr="gte")
    finished_before = UTCDateTimeFilter(field_name="finished_at", lookup_expr="lt")
    label = LabelFilter(help_text="key:value; repeat it for workflows that carry every one of the labels.")
    schedule = IntegerFilter(
        field_name="schedule_id", min_value=1, max_value=MAX_ID, help_text="Started by this schedule (its id)."
    )

    class Meta:
        model = Workflow
        fields = [
            "state", "definition", "mode", "created_after", "created_before", "priority", "concurrency_key",
            "finished_after", "finished_before", "label", "schedule",
        ]  # fmt: skip


class StrictOrderingFilter(OrderingFilter):
    """?ordering=: a field that cannot be ordered by is a 400 naming it (DRF drops it
    silently, and the client gets an order it did not ask for)."""

    def get_ordering(self, request, queryset, view):
        terms = [term.strip() for term in request.query_params.get(self.ordering_param, "").split(",")]
        allowed = {name for name, _ in self.get_valid_fields(queryset, view, {"request": request})}
        invalid = [term for term in terms if term and term.removeprefix("-") not in allowed]
        if invalid:
            raise BadRequest(
                {
                    self.ordering_param: [
                        f"Cannot order by {', '.join(invalid)}: choose from {', '.join(sorted(allowed))}, "
                        "each optionally prefixed with - for descending order."
                    ]
                }
            )
        return super().get_ordering(request, queryset, view)


class BoundedSearchFilter(SearchFilter):
    """?search= at most as long as a name can be. Each of its words is one more LIKE in the
    query, and SQLite refuses a pattern over 50,000 bytes or about a thousand of them: the
    database's refusal of a client's mistake, which no retry can mend."""

    max_length = Workflow._meta.get_field("name").max_length

    def filter_queryset(self, request, queryset, view):
        if len(request.query_params.get(self.search_param, "")) > self.max_length:
            raise BadRequest({self.search_param: [f"At most {self.max_length} characters, the longest a name can be."]})
        return super().filter_queryset(request, queryset, view)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["maxLength"] = self.max_length
        return parameters


# The filters a bulk operation takes (POST /workflows/bulk, `workflow bulk`): the list's,
# and its search by name.
BULK_FILTERS = [*WorkflowFilter.Meta.fields, "search"]


def workflows_matching(filters: dict, workflows):
    """The workflows of the queryset `workflows` that `filters` (the list's query
    parameters as a JSON object: a list for a repeatable one) match; ValidationError with
    each bad filter's messages. The search is the list's: every word in the name."""
    unknown = {name: [f"Unknown filter: the filters are {', '.join(BULK_FILTERS)}."] for name in filters}
    for name in BULK_FILTERS:
        unknown.pop(name, None)
    if unknown:
        raise ValidationError(unknown)
    data = QueryDict(mutable=True)
    for name, given in filters.items():
        given = given if isinstance(given, list) else [given]
        if not all(isinstance(value, str | int) and not isinstance(value, bool) for value in given):
            raise ValidationError({name: ["Give text (or a list of texts for a repeatable filter)."]})
        if problem := next(filter(None, (values.text_problem(str(value)) for value in given)), None):
            raise ValidationError({name: [f"{name} {problem}"]})
        data.setlist(name, [str(value) for value in given])
    search = data.pop("search", [""])[-1]
    max_length = BoundedSearchFilter.max_length
    if len(search) > max_length:
        raise ValidationError({"search": [f"At most {max_length} characters, the longest a name can be."]})
    matched = WorkflowFilter(data=data, queryset=workflows)
    if not matched.is_valid():
        raise ValidationError({name: list(errors) for name, errors in matched.errors.items()})
    workflows = matched.qs
    for word in search.split():
        workflows = workflows.filter(name__icontains=word)
    return workflows
