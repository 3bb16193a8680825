"""`{% load orchestrator_time %}` then `{{ value|moment }}`: a moment as the whole console shows
one (workflow_orchestrator.moments), `{{ seconds|span }}` for a span of time, and
`{% rendered_at %}`: when the page was made, as `2026-12-05 16:40:02 UTC`."""

from django import template
from django.utils import timezone

from .. import moments

register = template.Library()


@register.filter
def moment(value):
    return moments.moment_html(value)


@register.filter
def span(seconds):
    return "—" if seconds is None else moments.span_text(seconds)


@register.simple_tag
def rendered_at():
    return moments.absolute(timezone.now())
