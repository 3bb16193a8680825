"""How the API's answers are written: JSON, and the browsable API's pages. The paths that
create a workflow get a form with a field per input (the definition and the mode as choices),
sent as the JSON body the API takes: the API reads JSON only, so DRF's own HTML form
(form-encoded) would be refused.

Both write a lone surrogate (\\ud800 without its pair) as its escape: UTF-8 cannot hold one,
and a client's own JSON escapes can bring one in, which an answer echoes back (an unknown
field's name, a refused choice, the form filled with what was sent)."""

import json

from django.conf import settings
from django.template.loader import render_to_string
from django.utils.translation import get_language
from rest_framework import status
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer

from ..models import MAX_MAX_PARALLEL, MAX_PRIORITY, MIN_MAX_PARALLEL, MIN_PRIORITY, Workflow
from ..registry import definition_keys

START_EXAMPLE = {
    "name": "demo",
    "definition": "default",
    "mode": "auto",
    "input": {},
    "tasks": [{"type": "echo", "params": {"x": 1}}, {"type": "sleep", "params": {"seconds": 0.1}}],
}


def creates_workflows(view) -> bool:
    # The workflows' views alone: another viewset's create (/schedules/) is not a workflow's.
    workflows = getattr(view, "basename", None) == "workflow"
    return workflows and getattr(view, "action_map", {}).get("post") in ("create", "create_and_start")


def with_language(page: str) -> str:
    """The page with its language on <html> (WCAG 3.1.1: a screen reader reads it in the right
    voice): DRF's and drf-spectacular's templates give none, nor a block to add one in."""
    return page.replace("<html>", f'<html lang="{get_language() or settings.LANGUAGE_CODE}">', 1)


class ASCIIJSONRenderer(JSONRenderer):
    ensure_ascii = True


class EscapingJSONRenderer(JSONRenderer):
    """DRF's JSON, with a lone surrogate written as its JSON escape: the client reads back
    the very string it sent. Answers without one (all but a few errors) are written as before."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return ASCIIJSONRenderer().render(data, accepted_media_type, renderer_context)


def flat_messages(messages, item: str = "item") -> list[str]:
    """A field's errors as lines. A list's errors come keyed by position (0, 1 …: numbers,
    where a field's name, even "5", is text), shown as "<item> 1", "<item> 2" …"""
    if isinstance(messages, dict):
        return [
            f"{f'{item} {key + 1}' if isinstance(key, int) else key}: {line}"
            for key, value in messages.items()
            for line in flat_messages(value)
        ]
    if isinstance(messages, list):
        return [line for message in messages for line in flat_messages(message)]
    return [str(messages)]


def as_text(value) -> str:
    """A typed value back into its text box: text as it was, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, indent=2)


class OrchestratorBrowsableAPIRenderer(BrowsableAPIRenderer):
    template = "rest_framework/orchestrator_api.html"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        page = super().render(data, accepted_media_type, renderer_context)
        return with_language(page).encode(self.charset, "backslashreplace")  # \ud800, as in the JSON shown

    def get_rendered_html_form(self, data, view, method, request):
        if method == "POST" and creates_workflows(view) and self.show_form_for_method(view, method, request, None):
            return self.start_form(view, request)
        return super().get_rendered_html_form(data, view, method, request)

    def get_raw_data_form(self, data, view, method, request):
        form = super().get_raw_data_form(data, view, method, request)
        if form is not None and method == "POST" and creates_workflows(view):
            form.fields["_content"].initial = json.dumps(START_EXAMPLE, indent=4)
        return form

    def start_form(self, view, request) -> str:
        """The form, filled with what was sent when the answer is a 400, else with the example."""
        response = self.renderer_context["response"]
        rejected = request.method == "POST" and response.status_code == status.HTTP_400_BAD_REQUEST
        given = request.data if rejected and isinstance(request.data, dict) else START_EXAMPLE
        errors = response.data if rejected and isinstance(response.data, dict) else {}
        values = {
            "name": given.get("name", ""),
            "definition": given.get("definition", "default"),
            "mode": given.get("mode", Workflow.Mode.AUTO),
            "input": as_text(given.get("input", {})),
            "tasks": as_text(given["tasks"]) if "tasks" in given else "",
            "idempotency_key": given.get("idempotency_key") or "",
            "priority": as_text(given["priority"]) if given.get("priority") is not None else "",
            "concurrency_key": given.get("concurrency_key") or "",
            "max_parallel": as_text(given["max_parallel"]) if given.get("max_parallel") is not None else "",
        }
        context = {
            "values": values,
            "errors": {
                field: flat_messages(messages, item="task" if field == "tasks" else "item")
                for field, messages in errors.items()
            },
            "definitions": definition_keys(),
            "modes": Workflow.Mode.choices,
            "priorities": {"lowest": MIN_PRIORITY, "highest": MAX_PRIORITY},
            "max_parallel": {"lowest": MIN_MAX_PARALLEL, "highest": MAX_MAX_PARALLEL},
            "example": json.dumps(START_EXAMPLE["tasks"], indent=2),
        }
        return render_to_string("rest_framework/start_workflow_form.html", context, request=request)
