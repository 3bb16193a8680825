"""Checking what a request asks for before anything is stored: ValueError or
ValidationError naming each bad field, and nothing written."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from django.core.exceptions import ValidationError

from .. import values
from ..conf import app_settings
from ..models import MAX_DEADLINE_SECONDS, MAX_MAX_PARALLEL, MAX_PRIORITY, MIN_MAX_PARALLEL, MIN_PRIORITY, Workflow
from ..registry import UnknownDefinition, UnknownTaskType, get_definition, get_task_type

RESERVED_TASK_NAMES = {"prepare", "validate"}
MAX_TASKS = 1000
MAX_TASK_ATTEMPTS = 100
MAX_TASK_TIMEOUT = 7 * 24 * 3600


def _number(value, field: str, *, whole: bool, low: float, high: float) -> float:
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise ValueError(f"{field} must be a {'whole ' if whole else ''}number from {low} to {high}")
    return value


def _normalize_task(index: int, spec) -> dict:
    if not isinstance(spec, dict):
        raise ValueError("must be an object with at least a type")
    unknown = set(spec) - {"name", "type", "params", "max_attempts", "timeout", "after"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    task_type = spec.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("type is required")
    _storable_text(task_type, "type")
    checked = get_task_type(task_type)
    name = spec.get("name") or f"{task_type}-{index + 1}"
    if not isinstance(name, str) or len(name) > 200:
        raise ValueError("name must be a string of at most 200 characters")
    _storable_text(name, "name")
    if name in RESERVED_TASK_NAMES:
        raise ValueError(f"name {name!r} is reserved for the {name.upper()} phase")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise ValueError("params must be an object")
    if problem := values.json_problem(params, "params"):
        raise ValueError(problem)
    if checked.check_params is not None:
        checked.check_params(params)
    max_attempts = spec.get("max_attempts", app_settings.ORCH_MAX_ATTEMPTS)
    timeout = spec.get("timeout", app_settings.ORCH_TASK_TIMEOUT)
    after = spec.get("after", [])
    if not isinstance(after, list) or not all(isinstance(upstream, str) for upstream in after):
        raise ValueError("after must be a list of task names")
    return {
        "name": name,
        "type": task_type,
        "params": params,
        "after": list(dict.fromkeys(after)),
        "max_attempts": _number(max_attempts, "max_attempts", whole=True, low=1, high=MAX_TASK_ATTEMPTS),
        "timeout": _number(timeout, "timeout", whole=False, low=0.1, high=MAX_TASK_TIMEOUT),
    }


def _storable_text(text: str, field: str) -> None:
    if problem := values.text_problem(text):
        raise ValueError(f"{field} {problem}")


def normalize_tasks(specs) -> list[dict]:
    """Check a list of task specs and fill in their defaults; ValueError says what is wrong."""
    if not isinstance(specs, list | tuple):
        raise ValueError("tasks must be a list")
    if len(specs) > MAX_TASKS:
        raise ValueError(f"at most {MAX_TASKS} tasks")
    tasks, errors = [], []
    for index, spec in enumerate(specs):
        try:
            tasks.append(_normalize_task(index, spec))
        except (ValueError, UnknownTaskType) as exc:
            errors.append(f"task {index + 1}: {exc.args[0]}")
    names = [task["name"] for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        errors.append(f"task names must be unique: {', '.join(duplicates)}")
    if not errors:
        errors += _dependency_errors(tasks)
    if errors:
        raise ValueError("; ".join(errors))
    return tasks


def _dependency_errors(tasks: list[dict]) -> list[str]:
    """What is wrong with the tasks' `after`: unknown names, a task naming itself, cycles."""
    names = {task["name"] for task in tasks}
    errors = []
    for task in tasks:
        if task["name"] in task["after"]:
            errors.append(f"task {task['name']}: after names the task itself")
        unknown = [upstream for upstream in task["after"] if upstream not in names]
        if unknown:
            errors.append(f"task {task['name']}: after names unknown tasks: {', '.join(unknown)}")
    if errors:
        return errors
    try:
        TopologicalSorter({task["name"]: task["after"] for task in tasks}).prepare()
    except CycleError as cycle:
        return [f"tasks depend on each other in a cycle: {' → '.join(cycle.args[1])}"]
    return []


def validate_request(name, definition, mode, input, tasks) -> tuple:
    """The definition and normalized tasks of a workflow request; ValidationError naming each bad field."""
    errors = {}
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        errors["name"] = ["name is required: a string of at most 200 characters"]
    elif problem := values.text_problem(name):
        errors["name"] = [f"name {problem}"]
    try:
        definition_obj = get_definition(definition)
    except UnknownDefinition as exc:
        errors["definition"] = [str(exc.args[0])]
        definition_obj = None
    if mode not in Workflow.Mode.values:
        errors["mode"] = [f"mode must be one of {', '.join(Workflow.Mode.values)}"]
    if not isinstance(input, dict):
        errors["input"] = ["input must be a JSON object"]
    elif problem := values.json_problem(input, "input"):
        errors["input"] = [problem]
    try:
        specs = tasks if tasks is not None else list(definition_obj.tasks if definition_obj else [])
        normalized = normalize_tasks(specs)
    except ValueError as exc:
        errors["tasks"] = [str(exc)]
        normalized = []
    if errors:
        raise ValidationError(errors)
    return definition_obj, normalized


def deadline(definition, deadline_seconds=None) -> int | None:
    """A workflow's deadline in seconds: the one given, else its definition's default;
    ValidationError naming the field when it is not a whole number of seconds within range."""
    if deadline_seconds is None and definition:
        deadline_seconds = definition.deadline_seconds
    if deadline_seconds is not None and not _whole_number_within(deadline_seconds, 1, MAX_DEADLINE_SECONDS):
        raise ValidationError(
            {"deadline_seconds": [f"deadline_seconds must be a whole number from 1 to {MAX_DEADLINE_SECONDS}, or null"]}
        )
    return deadline_seconds


def labels_for(definition, labels=None) -> dict:
    """A workflow's labels: its definition's, with those given on top; ValidationError
    naming the field when they are not a flat object of string keys and values."""
    if labels is None:
        labels = {}
    if problem := values.labels_problem(labels):
        raise ValidationError({"labels": [f"labels {problem}"]})
    merged = {**(definition.labels if definition else {}), **labels}
    if problem := values.labels_problem(merged):  # the definition's and the request's together
        raise ValidationError({"labels": [f"labels with the definition's {problem}"]})
    return merged


def flow_control(
    definition, input: dict, priority=None, concurrency_key=None, max_parallel=None
) -> tuple[int, str, int | None]:
    """A workflow's priority, concurrency key and max_parallel: those given, else its
    definition's defaults; ValidationError naming each bad field."""
    errors = {}
    if priority is None:
        priority = definition.priority if definition else 0
    if not _whole_number_within(priority, MIN_PRIORITY, MAX_PRIORITY):
        errors["priority"] = [f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}"]
    if max_parallel is None and definition:
        max_parallel = definition.max_parallel
    if max_parallel is not None and not _whole_number_within(max_parallel, MIN_MAX_PARALLEL, MAX_MAX_PARALLEL):
        errors["max_parallel"] = [
            f"max_parallel must be a whole number from {MIN_MAX_PARALLEL} to {MAX_MAX_PARALLEL}, or null for no limit"
        ]
    if concurrency_key is None and definition:
        try:
            concurrency_key = definition.key_for(input)
        except Exception as exc:  # the project's callable: its failure is the request's problem
            errors["concurrency_key"] = [f"the definition's concurrency key could not be made from the input: {exc!r}"]
    concurrency_key = "" if concurrency_key is None else concurrency_key
    if "concurrency_key" not in errors:
        longest = Workflow._meta.get_field("concurrency_key").max_length
        if not isinstance(concurrency_key, str) or len(concurrency_key) > longest:
            errors["concurrency_key"] = [f"concurrency_key must be a string of at most {longest} characters"]
        elif problem := values.text_problem(concurrency_key):
            errors["concurrency_key"] = [f"concurrency_key {problem}"]
    if errors:
        raise ValidationError(errors)
    return priority, concurrency_key, max_parallel


def _whole_number_within(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def check_idempotency_key(key: str) -> None:
    longest = Workflow._meta.get_field("idempotency_key").max_length
    problem = values.text_problem(key) or (
        f"must be at most {longest} characters (it has {len(key)})" if len(key) > longest else None
    )
    if problem:
        raise ValidationError({"idempotency_key": [f"idempotency_key {problem}"]})
