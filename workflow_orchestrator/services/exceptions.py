"""What the engine refuses, and why: the errors its service functions raise."""

from __future__ import annotations

from .. import audit
from ..models import Workflow
from ..selectors import available_actions


class WorkflowError(Exception):
    """A request the workflow cannot honour in its current state."""


# What a user can do to a workflow (the transitions that end a phase, and `fail`, are the


class InvalidTransition(WorkflowError):
    def __init__(self, workflow: Workflow, event: str, message: str = ""):
        self.workflow = workflow
        self.event = event
        self.state = workflow.state
        self.allowed = available_actions(workflow)
        super().__init__(message or f"cannot {event} a workflow in state {workflow.state}")


class AuditBroken(InvalidTransition):
    """The workflow's audit chain does not verify: the engine writes nothing over it (no
    transition, no task of it moved on by recovery) until it verifies again. Reported in
    BrokenChain, which /metrics counts and the admin's overview shows."""

    def __init__(self, workflow: Workflow, event: str, link: audit.BrokenLink):
        self.link = link
        self.reported = False
        super().__init__(
            workflow,
            event,
            f"cannot {event} workflow {workflow.pk}: its audit chain does not verify ({link}); it is left as it "
            "is: see `manage.py workflow verify`",
        )


class IdempotencyConflict(WorkflowError):
    def __init__(self, workflow: Workflow):
        self.workflow = workflow
        super().__init__(
            f"idempotency key {workflow.idempotency_key!r} was already used for a different request "
            f"(workflow {workflow.pk})"
        )


class ConcurrentChange(WorkflowError):
    """The workflow changed between reading it and writing a transition computed from it."""

    def __init__(self, message: str, *, recorded: bool = True):
        super().__init__(message)
        self.recorded = recorded  # a success given with the transition was recorded all the same


class HoldNotFound(WorkflowError):
    """A hold to release that is not there (never set, or released already)."""

    def __init__(self, kind: str, value: str):
        self.kind, self.value = kind, value
        super().__init__(f"no hold on {kind} {value!r}")
