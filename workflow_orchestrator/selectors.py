"""Reads of the engine's state: what a workflow offers, how far it got, its phases' results.

Reads change nothing; the service functions (`workflow_orchestrator.services`) make the
changes, and refuse what these say is not on offer.
"""

from __future__ import annotations

from django.db.models import Count, Q

from . import audit, statements
from .models import State, Task, Workflow


def available_actions(workflow: Workflow, *, may_change: bool = True, may_delete: bool = True) -> list[str]:
    """The ACTIONS the service functions would accept for `workflow` now, from a caller
    who may change it and (`may_delete`) delete it: those its transitions allow
    (Workflow.offered_actions), and `delete` while it is not running. A workflow whose
    head is not signed can only be deleted (see services.AuditBroken)."""
    may_change = may_change and audit.head_problem(workflow) is None
    actions = workflow.offered_actions() if may_change else []
    return [*actions, "delete"] if may_delete and not workflow.is_running else actions


def is_waiting_for_next(workflow: Workflow) -> bool:
    """A manual workflow whose phase's work is done: nothing runs until someone fires `next`."""
    return workflow.waiting_for_next


def current_phase_results(workflow: Workflow):
    """The results of the current phase's tasks: by task name for EXECUTE, the one
    handler's result for PREPARE and VALIDATE."""
    rows = statements.results(workflow.pk, workflow.state)
    if workflow.state == State.EXECUTE:
        return dict(rows)
    results = [result for _, result in rows]
    return results[0] if len(results) == 1 else results or None


def workflow_is_cancelled(workflow_id) -> bool:
    return Workflow.objects.filter(pk=workflow_id, state=State.CANCELLED).exists()


def workflow_progress(workflow: Workflow) -> dict:
    """Tasks done (succeeded) out of all the workflow's tasks."""
    counts = workflow.tasks.aggregate(total=Count("pk"), done=Count("pk", filter=Q(status=Task.Status.SUCCEEDED)))
    return {"done": counts["done"], "total": counts["total"]}
