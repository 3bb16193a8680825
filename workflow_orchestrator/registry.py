"""The extension point: task types and workflow definitions.

    from workflow_orchestrator.registry import task_type

    @task_type("resize_image")
    def resize_image(ctx, params):
        return {"width": 100}

A handler takes a `TaskContext` and the task's params and returns a JSON-serialisable
result; raising fails the attempt. `async def` handlers run on an event loop inside the
worker. Modules named `workflow_tasks` in installed apps are imported at start-up, so
that is the place to register your own types and definitions.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import logs

Handler = Callable[["TaskContext", dict], Any]


class UnknownTaskType(LookupError):
    pass


class UnknownDefinition(LookupError):
    pass


@dataclass(frozen=True)
class TaskType:
    name: str
    handler: Handler

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


@dataclass(frozen=True)
class WorkflowDefinition:
    """What a workflow runs: its PREPARE and VALIDATE handlers (task type names, or None
    for a phase with no work) and the EXECUTE tasks used when a request names none."""

    key: str
    prepare: str | None = None
    validate: str | None = None
    tasks: tuple[dict, ...] = field(default_factory=tuple)
    description: str = ""


_task_types: dict[str, TaskType] = {}
_definitions: dict[str, WorkflowDefinition] = {}


def task_type(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of task type `name`."""

    def register(handler: Handler) -> Handler:
        existing = _task_types.get(name)
        if existing and existing.handler is not handler:
            raise ValueError(f"task type {name!r} is already registered by {existing.handler.__module__}")
        _task_types[name] = TaskType(name, handler)
        return handler

    return register


def register_definition(definition: WorkflowDefinition) -> WorkflowDefinition:
    for handler in (definition.prepare, definition.validate):
        if handler is not None and handler not in _task_types:
            raise UnknownTaskType(f"definition {definition.key!r} names unknown task type {handler!r}")
    _definitions[definition.key] = definition
    return definition


def get_task_type(name: str) -> TaskType:
    try:
        return _task_types[name]
    except KeyError:
        raise UnknownTaskType(f"unknown task type {name!r}") from None


def get_definition(key: str) -> WorkflowDefinition:
    try:
        return _definitions[key]
    except KeyError:
        raise UnknownDefinition(f"unknown workflow definition {key!r}") from None


def task_type_names() -> list[str]:
    return sorted(_task_types)


def definition_keys() -> list[str]:
    return sorted(_definitions)


class TaskContext:
    """What a handler knows of its surroundings. The workflow (and with it `input` and
    `results`) is read from the database when a handler first asks for it: a handler that
    needs none of it costs no query."""

    def __init__(self, *, task, cancelled: Callable[[], bool]):
        self.task = task
        self.workflow_id = task.workflow_id
        self.attempt = task.attempt
        # A handler's records carry its workflow, task and attempt (shown by JSON logs).
        fields = logs.fields(workflow_id=task.workflow_id, task_id=task.pk, attempt=task.attempt)
        self.logger = logging.LoggerAdapter(logging.getLogger(f"workflow_orchestrator.task.{task.type}"), fields)
        self._cancelled = cancelled
        self._workflow = None
        self._read = None
        self._upstream = None

    @property
    def workflow(self):
        if self._workflow is None:
            from .models import Workflow

            self._workflow = Workflow.objects.get(pk=self.workflow_id)
        return self._workflow

    @property
    def input(self) -> dict:
        return self._input_and_results()[0]

    @property
    def results(self) -> dict:
        """The results of the phases before this one, by phase."""
        return self._input_and_results()[1]

    def _input_and_results(self) -> tuple[dict, dict]:
        if self._workflow is not None:
            return self._workflow.input, self._workflow.results
        if self._read is None:
            from .statements import workflow_input

            self._read = workflow_input(self.workflow_id)
        return self._read

    @property
    def upstream(self) -> dict:
        """The results of the tasks named in this task's `after`, by name (read when first
        asked for)."""
        if self._upstream is None:
            after = list(getattr(self.task, "after", None) or [])
            self._upstream = {}
            if after:
                from .models import Task

                found = dict(
                    Task.objects.filter(workflow_id=self.workflow_id, name__in=after).values_list("name", "result")
                )
                self._upstream = {name: found.get(name) for name in after}
        return self._upstream

    def cancelled(self) -> bool:
        """True once the workflow's cancel was committed, or once recovery took this
        attempt back: a long handler should check it and return early."""
        return self._cancelled()
