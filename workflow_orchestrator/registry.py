"""The extension point: task types and workflow definitions.

    from workflow_orchestrator.registry import task_type

    @task_type("resize_image")
    def resize_image(ctx, params):
        return {"width": 100}

A handler takes a `TaskContext` (workflow_orchestrator.context) and the task's params and returns a JSON-serialisable
result; raising fails the attempt. `async def` handlers run on an event loop inside the
worker. Modules named `workflow_tasks` in installed apps are imported at start-up, so
that is the place to register your own types and definitions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import values

Handler = Callable[[Any, dict], Any]  # handler(ctx: context.TaskContext, params)


class UnknownTaskType(LookupError):
    pass


class UnknownDefinition(LookupError):
    pass


@dataclass(frozen=True)
class TaskType:
    name: str
    handler: Handler
    # Checks a task's params when the workflow is created (ValueError: a 400 naming the
    # task); None: any JSON object.
    check_params: Callable[[dict], None] | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


@dataclass(frozen=True)
class WorkflowDefinition:
    """What a workflow runs: its PREPARE and VALIDATE handlers (task type names, or None
    for a phase with no work) and the EXECUTE tasks used when a request names none."""

    key: str
    # Several versions of one key may be registered at once: a workflow runs the version it
    # started with to its end, new workflows take the newest unless asked ("key@2").
    version: int = 1
    prepare: str | None = None
    validate: str | None = None
    tasks: tuple[dict, ...] = field(default_factory=tuple)
    description: str = ""
    # Flow control defaults for its workflows, when a request gives none: a priority from
    # -100 to 100, and a concurrency key, or a callable that makes one from the input
    # (e.g. `lambda input: input["tenant"]`), and max_parallel: at most that many of its
    # EXECUTE tasks queued or running at once (1 to 1000; None: no limit).
    priority: int = 0
    concurrency_key: str | Callable[[dict], str] = ""
    max_parallel: int | None = None
    # Seconds from a workflow's start (or retry) within which it must complete, when a
    # request gives none (None: no deadline).
    deadline_seconds: int | None = None
    # Labels its workflows carry, under those a request gives (a flat dict of strings).
    labels: dict[str, str] = field(default_factory=dict)

    def key_for(self, input: dict) -> str:
        """The concurrency key of a workflow with this `input` that names none."""
        key = self.concurrency_key
        return key(input) if callable(key) else key


_task_types: dict[str, TaskType] = {}
_definitions: dict[str, dict[int, WorkflowDefinition]] = {}  # by key, then version


def task_type(name: str, *, check_params: Callable[[dict], None] | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of task type `name`; `check_params`,
    if given, checks a task's params when its workflow is created (raise ValueError)."""

    def register(handler: Handler) -> Handler:
        existing = _task_types.get(name)
        if existing and existing.handler is not handler:
            raise ValueError(f"task type {name!r} is already registered by {existing.handler.__module__}")
        _task_types[name] = TaskType(name, handler, check_params)
        return handler

    return register


def register_definition(definition: WorkflowDefinition) -> WorkflowDefinition:
    if "@" in definition.key:
        raise ValueError(f"a definition's key holds no '@' (it separates the version): {definition.key!r}")
    if isinstance(definition.version, bool) or not isinstance(definition.version, int) or definition.version < 1:
        raise ValueError(f"definition {definition.key!r}: its version must be a whole number from 1")
    if problem := values.labels_problem(definition.labels):
        raise ValueError(f"definition {definition.key!r}: its labels {problem}")
    for handler in (definition.prepare, definition.validate):
        if handler is not None and handler not in _task_types:
            raise UnknownTaskType(f"definition {definition.key!r} names unknown task type {handler!r}")
    _definitions.setdefault(definition.key, {})[definition.version] = definition
    return definition


def unregister_definition(key: str, version: int) -> None:
    """Forget one version of a definition (a deploy that no longer ships it; tests)."""
    versions = _definitions.get(key, {})
    versions.pop(version, None)
    if not versions:
        _definitions.pop(key, None)


def parse_definition(text: str) -> tuple[str, int | None]:
    """`key` or `key@version` (UnknownDefinition for a version that is not a whole number)."""
    key, at, version = text.partition("@")
    if not at:
        return key, None
    if not version.isdigit() or int(version) < 1:
        raise UnknownDefinition(f"a definition's version is a whole number from 1: {text!r}")
    return key, int(version)


def get_task_type(name: str) -> TaskType:
    try:
        return _task_types[name]
    except KeyError:
        raise UnknownTaskType(f"unknown task type {name!r}") from None


def get_definition(text: str) -> WorkflowDefinition:
    """The definition `key` (its newest version) or `key@version`."""
    key, version = parse_definition(text)
    versions = _definitions.get(key)
    if not versions:
        raise UnknownDefinition(f"unknown workflow definition {key!r}")
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        known = ", ".join(str(number) for number in sorted(versions))
        raise UnknownDefinition(f"definition {key!r} has no version {version} (registered: {known})")
    return versions[version]


def definition_versions() -> dict[str, list[int]]:
    """The registered versions of each definition, oldest first."""
    return {key: sorted(versions) for key, versions in sorted(_definitions.items())}


def task_type_names() -> list[str]:
    return sorted(_task_types)


def definition_keys() -> list[str]:
    return sorted(_definitions)
