"""The hot path's operations on the default database, as the engine calls them.

Each operation runs named statements, written out whole once per database in
workflow_orchestrator/sql/ (postgresql.sql, sqlite.sql), through the backend chosen for
the database (workflow_orchestrator.backends: the interface, what each operation does,
and how the two databases differ). These functions are that backend's, for the default
connection; the values that go in and out are re-exported here.
"""

from __future__ import annotations

from .backends import get_backend
from .backends.base import (  # noqa: F401  (the engine's values, re-exported)
    GATHER,
    INSERTED_TASK_COLUMNS,
    TASK_COLUMNS,
    TRANSITION_COLUMNS,
    UNCHANGED,
    WORKFLOW_COLUMNS,
    WORKFLOW_COLUMNS_READ,
    ClaimedTask,
    FanIn,
    Inline,
    Succeeded,
    WorkflowRow,
    Written,
    from_json,
    from_time,
)


def create(workflow, tasks: list, row=None) -> list[ClaimedTask]:
    """See Backend.create."""
    return get_backend().create(workflow, tasks, row)


def claim(task_id: int, attempt: int, **kwargs) -> ClaimedTask | None:
    """See Backend.claim."""
    return get_backend().claim(task_id, attempt, **kwargs)


def succeed(task_id: int, attempt: int, **kwargs) -> FanIn | None:
    """See Backend.succeed."""
    return get_backend().succeed(task_id, attempt, **kwargs)


def count_out(workflow_id, phase: str) -> FanIn:
    """See Backend.count_out."""
    return get_backend().count_out(workflow_id, phase)


def transition(**kwargs) -> Written:
    """See Backend.transition."""
    return get_backend().transition(**kwargs)


def workflow_input(workflow_id) -> tuple[dict, dict]:
    """See Backend.workflow_input."""
    return get_backend().workflow_input(workflow_id)


def results(workflow_id, phase: str) -> list[tuple[str, object]]:
    """See Backend.results."""
    return get_backend().results(workflow_id, phase)


def refresh_statistics() -> bool:
    """See Backend.refresh_statistics."""
    return get_backend().refresh_statistics()
