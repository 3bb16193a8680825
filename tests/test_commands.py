import json
import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from tests.conftest import reload
from workflow_orchestrator.models import State, Workflow


def run(engine, *args) -> str:
    out = StringIO()
    with engine.capture(execute=True):
        call_command("workflow", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_start_prints_the_workflow_as_json(engine):
    out = run(engine, "start", "--name", "demo", "--tasks", '[{"type": "echo", "params": {"x": 1}}]', "--json")
    data = json.loads(out)
    assert data["name"] == "demo" and data["state"] == State.PREPARE
    assert [t["name"] for t in data["tasks"]] == ["prepare", "echo-1", "validate"]
    assert data["transitions"][0]["event"] == "start"
    assert data["transitions"][0]["actor"] == "cli"
    engine.drain()
    shown = json.loads(run(engine, "show", data["id"], "--json"))
    assert shown["state"] == State.COMPLETE
    assert [(t["seq"], t["event"]) for t in shown["transitions"]] == [
        (1, "start"),
        (2, "execute"),
        (3, "validate"),
        (4, "complete"),
    ]
    assert shown["results"]["EXECUTE"] == {"echo-1": {"x": 1}}


FULL_START = [
    "start",
    "--name", "full",
    "--definition", "default",
    "--mode", "manual",
    "--input", '{"k": "v"}',
    "--tasks", '[{"name": "a", "type": "noop", "max_attempts": 2, "timeout": 5}]',
    "--idempotency-key", "key-1",
    "--json",
]  # fmt: skip


def test_start_with_every_option(engine):
    data = json.loads(run(engine, *FULL_START))
    assert (data["mode"], data["input"], data["idempotency_key"]) == ("manual", {"k": "v"}, "key-1")
    task = next(t for t in data["tasks"] if t["name"] == "a")
    assert (task["max_attempts"], task["timeout"]) == (2, 5)
    again = json.loads(run(engine, *FULL_START))
    assert again["id"] == data["id"]
    assert Workflow.objects.count() == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["start", "--name", "x", "--tasks", "[{oops"], "--tasks is not valid JSON"),
        (["start", "--name", "x", "--input", "[1]"], "input: input must be a JSON object"),
        (["start", "--name", "x", "--tasks", '[{"type": "nope"}]'], "unknown task type 'nope'"),
        (["start", "--name", "x", "--definition", "nope"], "unknown workflow definition 'nope'"),
        (["show", "not-a-uuid"], "no workflow with id 'not-a-uuid'"),
        (["retry", "00000000-0000-0000-0000-000000000000"], "no workflow with id"),
    ],
)
def test_bad_input_ends_with_a_one_line_error_and_changes_nothing(engine, args, message):
    with pytest.raises(CommandError, match=message):
        run(engine, *args)
    assert not Workflow.objects.exists()


def test_refused_transitions_name_the_state_and_what_is_allowed(engine):
    workflow = json.loads(run(engine, "start", "--name", "w", "--tasks", "[]", "--json"))
    with pytest.raises(
        CommandError,
        match=r"cannot retry a workflow in state PREPARE \(state PREPARE; allowed transitions: cancel, pause\)",
    ):
        run(engine, "retry", workflow["id"])
    with pytest.raises(CommandError, match="only for workflows in manual mode"):
        run(engine, "next", workflow["id"])
    with pytest.raises(CommandError, match="cannot delete a workflow in state PREPARE"):
        run(engine, "delete", workflow["id"])
    assert reload(Workflow(pk=workflow["id"])).transitions.count() == 1


def test_next_retry_cancel_delete_and_list(engine):
    manual = json.loads(run(engine, "start", "--name", "m", "--mode", "manual", "--tasks", "[]", "--json"))
    engine.drain()
    assert "now EXECUTE" in run(engine, "next", manual["id"])
    failing = json.loads(
        run(
            engine,
            "start",
            "--name",
            "f",
            "--tasks",
            '[{"type": "fail", "params": {"times": 1}, "max_attempts": 1}]',
            "--json",
        )
    )
    engine.drain()
    assert "FAILED" in run(engine, "list", "--state", "FAILED")
    assert "retried" in run(engine, "retry", failing["id"])
    engine.drain()
    assert reload(Workflow(pk=failing["id"])).state == State.COMPLETE
    assert "now CANCELLED" in run(engine, "cancel", manual["id"])
    listed = json.loads(run(engine, "list", "--json"))
    assert {row["state"] for row in listed} == {State.COMPLETE, State.CANCELLED}
    assert "deleted" in run(engine, "delete", manual["id"])
    assert Workflow.objects.count() == 1
    assert "lost jobs re-sent: 0; finished phases moved on: 0" in run(engine, "recover")


def test_json_describes_workflows_as_the_api_does(engine, admin_user):
    started = json.loads(run(engine, "start", "--name", "same", "--tasks", '[{"type": "echo"}]', "--json"))
    engine.drain()
    api = APIClient()
    api.force_authenticate(admin_user)
    shown = json.loads(run(engine, "show", started["id"], "--json"))
    assert shown == api.get(f"/workflow/{started['id']}").json()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", shown["finished_at"])  # microseconds
    assert json.loads(run(engine, "list", "--json")) == api.get("/workflows/").json()["results"]


def test_wait_without_a_cluster_gives_up_with_a_hint(engine):
    with pytest.raises(CommandError, match="is a cluster running"):
        run(engine, "start", "--name", "w", "--wait", "0.3")


def test_createadmin_creates_one_superuser_with_a_printed_password(db):
    out = StringIO()
    call_command("createadmin", stdout=out)
    password = out.getvalue().split("password: ")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    out = StringIO()
    call_command("createadmin", stdout=out)
    assert "exists already" in out.getvalue()
    assert get_user_model().objects.count() == 1


def test_pause_and_resume_several_workflows(engine):
    first = json.loads(run(engine, "start", "--name", "a", "--tasks", "[]", "--json"))
    second = json.loads(run(engine, "start", "--name", "b", "--tasks", "[]", "--json"))
    assert "paused" in run(engine, "pause", first["id"], second["id"], "--reason", "deploy")
    assert all(reload(Workflow(pk=row["id"])).paused_at for row in (first, second))
    assert Workflow.objects.get(pk=first["id"]).transitions.get(event="pause").reason == "deploy"
    assert "resumed" in run(engine, "resume", first["id"], second["id"])
    engine.drain()
    assert {reload(Workflow(pk=row["id"])).state for row in (first, second)} == {State.COMPLETE}
