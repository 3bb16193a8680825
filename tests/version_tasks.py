"""A definition with versions, for tests/test_versions.py: `expense`, whose VALIDATE handler
says which version ran it. Imported by the test process, and by its clusters through
ORCH_TASK_MODULES; ORCH_TEST_DEFINITION_VERSIONS lists the versions a process registers
(a deploy is a cluster started with a longer list)."""

import os

from workflow_orchestrator.registry import WorkflowDefinition, register_definition, task_type

APPROVAL = {
    "name": "approve",
    "type": "approval",
    "max_attempts": 1,
    "params": {"approvers": {"users": ["ann"]}, "prompt": "Pay {amount}?"},
}


@task_type("versions.validate.v1")
def validate_v1(ctx, params):
    return {"validated_by": "v1"}


@task_type("versions.validate.v2")
def validate_v2(ctx, params):
    return {"validated_by": "v2"}


def expense(version: int) -> WorkflowDefinition:
    return WorkflowDefinition(
        key="expense", version=version, validate=f"versions.validate.v{version}", tasks=(APPROVAL,)
    )


for number in os.environ.get("ORCH_TEST_DEFINITION_VERSIONS", "1").split(","):
    register_definition(expense(int(number)))
