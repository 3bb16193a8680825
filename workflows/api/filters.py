import django_filters

from ..models import State, Workflow


class WorkflowFilter(django_filters.FilterSet):
    # distinct=False: the filter is on the workflow's own column, so no row can repeat, and
    # DISTINCT would make the database compare and sort every matching row before LIMIT.
    state = django_filters.MultipleChoiceFilter(choices=State.choices, distinct=False, help_text="One or more states.")
    definition = django_filters.CharFilter()
    mode = django_filters.ChoiceFilter(choices=Workflow.Mode.choices)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Workflow
        fields = ["state", "definition", "mode", "created_after", "created_before"]
