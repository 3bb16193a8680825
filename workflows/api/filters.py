import django_filters

from ..models import State, Workflow


class WorkflowFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=State.choices, help_text="One or more states.")
    definition = django_filters.CharFilter()
    mode = django_filters.ChoiceFilter(choices=Workflow.Mode.choices)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Workflow
        fields = ["state", "definition", "mode", "created_after", "created_before"]
