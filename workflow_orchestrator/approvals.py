"""What an `approval` task asks, of whom, and when it is decided: its params checked, the
form its approvers fill in (a Django form built from its `fields`), who may decide, and
the verdict its decisions reach. The decisions themselves are written by the service
layer (services.waits.task_decide), and the task type is in builtin_tasks."""

from __future__ import annotations

import string

from django import forms
from django.contrib.auth.models import Group

APPROVAL = "approval"  # what an approval task's waiting_for says
DECISIONS = ("approve", "reject")
ON_DEADLINE = ("reject", "approve", "fail")
FIELD_TYPES = ("text", "number", "choice", "boolean")
MAX_FIELDS, MAX_QUORUM, MAX_PROMPT, MAX_COMMENT = 20, 100, 2000, 2000


def check_params(params: dict) -> None:
    """ValueError naming what is wrong with an approval task's params."""
    approvers = params.get("approvers")
    if not isinstance(approvers, dict) or not approvers or set(approvers) - {"users", "groups", "permission"}:
        raise ValueError("params.approvers must be an object with any of users, groups, permission")
    for key in ("users", "groups"):
        names = approvers.get(key, [])
        if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"params.approvers.{key} must be a list of names")
    permission = approvers.get("permission", "")
    if not isinstance(permission, str) or (permission and permission.count(".") != 1):
        raise ValueError("params.approvers.permission must be app_label.codename, e.g. billing.approve_refund")
    if not any(approvers.get(key) for key in ("users", "groups", "permission")):
        raise ValueError("params.approvers names nobody")
    quorum = params.get("quorum", 1)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= MAX_QUORUM:
        raise ValueError(f"params.quorum must be a whole number from 1 to {MAX_QUORUM}")
    if params.get("on_deadline", "reject") not in ON_DEADLINE:
        raise ValueError(f"params.on_deadline must be one of {', '.join(ON_DEADLINE)}")
    prompt = params.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise ValueError(f"params.prompt must be text of at most {MAX_PROMPT} characters")
    _check_fields(params.get("fields", []))


def _check_fields(fields) -> None:
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS:
        raise ValueError(f"params.fields must be a list of at most {MAX_FIELDS} fields")
    names = set()
    for field in fields:
        if not isinstance(field, dict) or not isinstance(field.get("name"), str) or not field["name"].isidentifier():
            raise ValueError("each of params.fields needs a name that is an identifier, e.g. amount")
        if field["name"] in names:
            raise ValueError(f"params.fields names {field['name']} twice")
        names.add(field["name"])
        if field.get("type", "text") not in FIELD_TYPES:
            raise ValueError(f"params.fields.{field['name']}.type must be one of {', '.join(FIELD_TYPES)}")
        choices = field.get("choices")
        if field.get("type") == "choice" and (
            not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)
        ):
            raise ValueError(f"params.fields.{field['name']}.choices must be a list of texts")


def form_class(fields: list[dict]) -> type[forms.Form]:
    """The Django form an approver fills in: one form field per entry of `fields`."""
    declared = {}
    for field in fields:
        kind, required = field.get("type", "text"), bool(field.get("required", False))
        options = {"label": field.get("label") or field["name"].replace("_", " ").capitalize(), "required": required}
        if kind == "number":
            declared[field["name"]] = forms.FloatField(**options)
        elif kind == "choice":
            declared[field["name"]] = forms.ChoiceField(choices=[(c, c) for c in field["choices"]], **options)
        elif kind == "boolean":
            declared[field["name"]] = forms.BooleanField(**options)
        else:
            declared[field["name"]] = forms.CharField(max_length=MAX_COMMENT, **options)
    return type("ApprovalForm", (forms.Form,), declared)


def cleaned(fields: list[dict], data: dict) -> tuple[dict, dict]:
    """`data` checked against the form: (its values, {}) or ({}, the errors by field)."""
    form = form_class(fields)(data=_as_form_data(fields, data))
    if not form.is_valid():
        return {}, {name: list(errors) for name, errors in form.errors.items()}
    return form.cleaned_data, {}


def _as_form_data(fields: list[dict], data: dict) -> dict:
    """A JSON body's values as a form's: a boolean field is on when true, absent when false."""
    kinds = {field["name"]: field.get("type", "text") for field in fields}
    values = {}
    for name, value in data.items():
        if kinds.get(name) == "boolean":
            if value is True:
                values[name] = "on"
        elif value is not None:
            values[name] = value
    return values


def may_decide(user, approvers: dict, groups: set[str] | None = None) -> bool:
    """Whether `user` is one of an approval's approvers: named among its users, a member of
    one of its groups, or holding its permission. `groups`: the user's group names, when
    the caller has them already (looked up otherwise)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.get_username() in approvers.get("users", []):
        return True
    wanted = approvers.get("groups", [])
    if wanted and groups is not None and groups.intersection(wanted):
        return True
    if wanted and groups is None and Group.objects.filter(user=user, name__in=wanted).exists():
        return True
    permission = approvers.get("permission")
    return bool(permission) and user.has_perm(permission)


def verdict(params: dict, decisions: list[dict]) -> str | None:
    """What the decisions of the current round decide: "approve" (the quorum approved, or
    the deadline did), "reject" (someone rejected, or the deadline did), "fail" (the
    deadline passed, and says to fail), or None: still waiting."""
    by_deadline = [decision for decision in decisions if decision["by"] == "system"]
    if by_deadline:
        return by_deadline[-1]["decision"] if not by_deadline[-1]["data"].get("fail") else "fail"
    if any(decision["decision"] == "reject" for decision in decisions):
        return "reject"
    if sum(decision["decision"] == "approve" for decision in decisions) >= params.get("quorum", 1):
        return "approve"
    return None


class _InputOnly(string.Formatter):
    """`{name}` is the input's value; anything else (an attribute, an index, an unknown
    name) is left as written."""

    def get_field(self, field_name, args, kwargs):
        if field_name.isidentifier() and field_name in kwargs:
            return kwargs[field_name], field_name
        return "{" + field_name + "}", field_name


def prompt_text(prompt: str, input: dict) -> str:
    """The prompt with `{name}` replaced by the workflow's input value of that name."""
    try:
        return _InputOnly().vformat(prompt, (), {k: v for k, v in input.items() if isinstance(k, str)})
    except (ValueError, IndexError):
        return prompt
