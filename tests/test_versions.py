"""Definition versions: a workflow runs the version it started with to its end, new ones
take the newest unless asked (`key@2`), and a deploy that drops a version that workflows
not yet ended still use fails `manage.py check`."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from rest_framework.test import APIClient

import tests.version_tasks  # noqa: F401  (registers expense version 1)
from tests.conftest import reload, task, wait_for
from tests.version_tasks import expense
from workflow_orchestrator import services
from workflow_orchestrator.checks import check_definition_versions
from workflow_orchestrator.models import Actor, State, Task
from workflow_orchestrator.registry import register_definition, unregister_definition

Status = Task.Status


@pytest.fixture
def version_two():
    register_definition(expense(2))
    yield
    unregister_definition("expense", 2)


def start(definition: str, **kwargs):
    workflow, _ = services.workflow_create(
        name=f"expense {definition}", definition=definition, input={"amount": 3}, actor=Actor.SYSTEM, start=True,
        **kwargs,
    )  # fmt: skip
    return workflow


def test_new_workflows_take_the_newest_version_unless_they_ask(db, version_two):
    newest, first = start("expense"), start("expense@1")
    assert (newest.definition, newest.definition_version) == ("expense", 2)
    assert (first.definition, first.definition_version) == ("expense", 1)
    assert task(first, "validate").type == "versions.validate.v1"
    assert task(newest, "validate").type == "versions.validate.v2"


def test_an_unknown_version_is_a_400_naming_the_versions_there_are(db, version_two):
    staff = get_user_model().objects.create_user("ops", is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_authenticate(staff)
    for text, message in (("expense@3", "has no version 3 (registered: 1, 2)"), ("expense@x", "whole number")):
        answer = client.post("/workflow/start", {"name": "e", "definition": text}, format="json")
        assert answer.status_code == 400 and message in answer.json()["definition"][0], answer.json()
    answer = client.post("/workflows/", {"name": "e", "definition": "expense@1"}, format="json")
    assert answer.status_code == 201 and answer.json()["definition_version"] == 1
    assert answer.json()["definition"] == "expense"


def test_the_check_fails_when_a_version_in_use_is_no_longer_registered(db, version_two):
    start("expense@1")
    start("expense@1")
    assert check_definition_versions() == []
    unregister_definition("expense", 1)
    try:
        with pytest.raises(SystemCheckError, match="workflow_orchestrator.E011"):
            call_command("check", stdout=StringIO(), stderr=StringIO())
        [error] = check_definition_versions()
        assert error.id == "workflow_orchestrator.E011"
        assert "definition 'expense' version 1 is not registered, but 2 workflow(s) not yet ended use it" in error.msg
        out = StringIO()
        call_command("workflow", "versions", "--json", stdout=out)
        rows = {(row["definition"], row["version"]): row for row in json.loads(out.getvalue())}
        assert rows[("expense", 1)] == {
            "definition": "expense", "version": 1, "registered": False, "newest": False, "running": 2, "waiting": 0,
        }  # fmt: skip
        assert rows[("expense", 2)]["newest"] and rows[("expense", 2)]["running"] == 0
    finally:
        register_definition(expense(1))


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_run_waiting_at_an_approval_finishes_with_its_own_version_after_a_deploy(cluster):
    """Version 1 runs; its workflow waits for an approval. The deploy: the cluster stops,
    version 2 is registered, a cluster that runs both starts. New workflows take version
    2; the one that waited is approved and completes with version 1's handlers."""
    ann = get_user_model().objects.create_user("ann")
    env = {"ORCH_TASK_MODULES": "tests.version_tasks"}
    before = cluster(**env, ORCH_TEST_DEFINITION_VERSIONS="1")
    waiting = start("expense")
    assert waiting.definition_version == 1
    wait_for(lambda: task(waiting, "approve").status == Status.WAITING, 60, "the approval to wait")
    before.process.terminate()
    before.process.wait(timeout=60)

    register_definition(expense(2))
    try:
        cluster(**env, ORCH_TEST_DEFINITION_VERSIONS="1,2")
        newer = start("expense")
        assert newer.definition_version == 2
        for workflow in (waiting, newer):
            wait_for(lambda w=workflow: task(w, "approve").status == Status.WAITING, 60, "its approval to wait")
            services.task_decide(workflow.pk, "approve", user=ann, decision="approve", actor=Actor.api(ann))
        for workflow in (waiting, newer):
            wait_for(lambda w=workflow: reload(w).state == State.COMPLETE, 60, "the workflows to complete")
        assert task(waiting, "validate").result == {"validated_by": "v1"}
        assert task(newer, "validate").result == {"validated_by": "v2"}
    finally:
        unregister_definition("expense", 2)
