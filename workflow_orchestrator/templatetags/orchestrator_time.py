"""`{% load orchestrator_time %}` then `{{ value|moment }}`: a moment as the whole console shows
one (workflow_orchestrator.moments), and `{{ seconds|span }}` for a span of time."""

from django import template

from .. import moments

register = template.Library()


@register.filter
def moment(value):
    return moments.moment_html(value)


@register.filter
def span(seconds):
    return "—" if seconds is None else moments.span_text(seconds)
