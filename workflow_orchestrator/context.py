"""What a handler knows of its surroundings: the `ctx` it is called with (see
`workflow_orchestrator.registry` for how handlers are registered)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import logs
from .models import Task, Workflow
from .statements import workflow_input


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
            # A PREPARE or VALIDATE task's claim brought them (Task.read); else they are read now.
            self._read = getattr(self.task, "read", None) or workflow_input(self.workflow_id)
        return self._read

    @property
    def upstream(self) -> dict:
        """The results of the tasks named in this task's `after`, by name (read when first
        asked for)."""
        if self._upstream is None:
            after = list(getattr(self.task, "after", None) or [])
            self._upstream = {}
            if after:
                found = dict(
                    Task.objects.filter(workflow_id=self.workflow_id, name__in=after).values_list("name", "result")
                )
                self._upstream = {name: found.get(name) for name in after}
        return self._upstream

    def cancelled(self) -> bool:
        """True once the workflow's cancel was committed, or once recovery took this
        attempt back: a long handler should check it and return early."""
        return self._cancelled()
