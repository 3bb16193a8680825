"""Approval tasks: people decide, in the admin's "Waiting for me", through POST
/workflows/{id}/tasks/{name}/decide or `workflow decide`; the task waits for them without a
worker. A quorum of approvals succeeds with the decisions, a reject fails the task with its
comment, a deadline applies its rule as `system`, and every decision is an audit row."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tests.conftest import reload, task, wait_for
from workflow_orchestrator import audit, selectors, services, signals
from workflow_orchestrator.models import Actor, Decision, State, Task, Transition, Workflow

Status = Task.Status
User = get_user_model()


def approval(quorum=1, approvers=None, fields=None, **params) -> dict:
    return {
        "name": "approve",
        "type": "approval",
        "max_attempts": 1,
        "params": {
            "approvers": approvers or {"users": ["ann", "bob"]},
            "quorum": quorum,
            "fields": fields or [],
            "prompt": "Refund {amount} EUR?",
            **params,
        },
    }


def then() -> dict:
    return {"name": "pay", "type": "gather", "after": ["approve"]}


def client_of(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def people(db):
    return {name: User.objects.create_user(name) for name in ("ann", "bob", "cid")}


def decide(engine, workflow, user, decision="approve", **body):
    with engine.capture(execute=True):
        return client_of(user).post(
            f"/workflows/{workflow.pk}/tasks/approve/decide", {"decision": decision, **body}, format="json"
        )


def waiting(engine, **kwargs) -> Workflow:
    workflow = engine.start(tasks=[approval(**kwargs), then()], input={"amount": 120})
    engine.drain()
    assert task(workflow, "approve").status == Status.WAITING
    return workflow


def test_two_approvers_reach_a_quorum_of_two_and_a_third_user_is_refused(engine, people):
    workflow = waiting(engine, quorum=2)
    gate = task(workflow, "approve")
    assert gate.waiting_for == "approval" and gate.worker == ""
    assert selectors.waiting_reason(reload(workflow)) == "waiting for approval"
    assert decide(engine, workflow, people["cid"]).status_code == 403
    first = decide(engine, workflow, people["ann"], comment="fine by me")
    assert first.status_code == 201 and first.json()["by"] == "api:ann" and first.json()["task"] == "approve"
    engine.drain()
    assert task(workflow, "approve").status == Status.WAITING, "one approval of two: it still waits"
    again = decide(engine, workflow, people["ann"])
    assert again.status_code == 409 and "has decided task approve already" in again.json()["detail"]
    assert decide(engine, workflow, people["bob"]).status_code == 201
    engine.drain()
    done = reload(workflow)
    assert done.state == State.COMPLETE
    result = task(workflow, "approve").result
    assert result["approved"] is True and [d["by"] for d in result["decisions"]] == ["api:ann", "api:bob"]
    assert task(workflow, "pay").result["approve"] == result, "downstream reads the decisions from ctx.upstream"
    late = decide(engine, workflow, people["bob"])
    assert late.status_code == 409 and late.json()["state"] == State.COMPLETE
    rows = list(Transition.objects.filter(workflow=workflow, event="decide").order_by("seq"))
    assert [(row.actor_label, row.data["decision"], row.reason) for row in rows] == [
        ("api:ann", "approve", "fine by me"),
        ("api:bob", "approve", ""),
    ]
    assert audit.verify(done) is None


def test_a_reject_fails_the_task_with_its_comment_and_a_retry_asks_again(engine, people):
    workflow = waiting(engine)
    assert decide(engine, workflow, people["bob"], "reject", comment="over budget").status_code == 201
    engine.drain()
    failed = reload(workflow)
    assert failed.state == State.FAILED and "rejected by api:bob: over budget" in task(workflow, "approve").error
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    assert task(workflow, "approve").status == Status.WAITING, "the retry asks again"
    assert decide(engine, workflow, people["bob"]).status_code == 201, "a new round: bob may decide again"
    engine.drain()
    assert reload(workflow).state == State.COMPLETE
    assert Decision.objects.filter(task=task(workflow, "approve")).values_list("round", "decision")[::1] == [
        (0, "reject"),
        (1, "approve"),
    ]


@pytest.mark.parametrize(
    ("rule", "state", "error"),
    [
        ("approve", State.COMPLETE, ""),
        ("reject", State.FAILED, "rejected by system"),
        ("fail", State.FAILED, "no decision in time"),
    ],
)
def test_a_deadline_applies_its_rule_as_system(engine, people, rule, state, error):
    workflow = engine.start(tasks=[approval(deadline_seconds=0.3, on_deadline=rule), then()], input={"amount": 1})
    engine.drain(wait=5)
    assert reload(workflow).state == state
    assert error in task(workflow, "approve").error
    row = Transition.objects.get(workflow=workflow, event="decide")
    assert row.actor_label == "system" and row.data["decision"] == ("approve" if rule == "approve" else "reject")


def test_the_form_is_checked_and_its_values_kept(engine, people):
    fields = [
        {"name": "cost_centre", "type": "choice", "choices": ["sales", "support"], "required": True},
        {"name": "amount", "type": "number"},
        {"name": "urgent", "type": "boolean"},
    ]
    workflow = waiting(engine, fields=fields)
    missing = decide(engine, workflow, people["ann"], data={"amount": "x"})
    assert missing.status_code == 400
    assert any("cost_centre" in message for message in missing.json()["data"])
    assert any("amount" in message for message in missing.json()["data"])
    made = decide(engine, workflow, people["ann"], data={"cost_centre": "support", "amount": 12.5, "urgent": True})
    assert made.status_code == 201
    assert made.json()["data"] == {"cost_centre": "support", "amount": 12.5, "urgent": True}
    assert decide(engine, workflow, people["bob"], "maybe").status_code == 400


def test_approvers_by_group_and_by_permission(engine, people):
    finance = Group.objects.create(name="finance")
    people["ann"].groups.add(finance)
    people["cid"].user_permissions.add(Permission.objects.get(codename="change_workflow"))
    workflow = waiting(
        engine, quorum=2, approvers={"groups": ["finance"], "permission": "workflow_orchestrator.change_workflow"}
    )
    assert decide(engine, workflow, people["bob"]).status_code == 403
    assert decide(engine, workflow, people["ann"]).status_code == 201
    assert decide(engine, workflow, User.objects.get(username="cid")).status_code == 201
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_the_approvers_are_told_when_it_waits(engine, people):
    told = []
    signals.workflow_waiting.connect(lambda sender, workflow, task, **_: told.append(task.name), weak=False)
    try:
        waiting(engine)
    finally:
        signals.workflow_waiting.receivers.clear()
    assert told == ["approve"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"approvers": {}}, "params.approvers"),
        ({"approvers": {"users": "ann"}}, "params.approvers.users"),
        ({"approvers": {"users": ["ann"]}, "quorum": 0}, "params.quorum"),
        ({"approvers": {"users": ["ann"]}, "on_deadline": "shrug"}, "params.on_deadline"),
        ({"approvers": {"users": ["ann"]}, "fields": [{"name": "a b"}]}, "identifier"),
        ({"approvers": {"users": ["ann"]}, "fields": [{"name": "c", "type": "choice"}]}, "choices"),
    ],
)
def test_bad_approval_params_are_refused_when_the_workflow_is_created(people, params, message):
    staff = User.objects.create_user("ops", is_staff=True, is_superuser=True)
    body = {"name": "a", "tasks": [{"name": "approve", "type": "approval", "params": params}]}
    answer = client_of(staff).post("/workflow/start", body, format="json")
    assert answer.status_code == 400 and message in json.dumps(answer.json())
    assert not Workflow.objects.exists()


def test_unknown_workflows_and_tasks_are_404(engine, people):
    workflow = waiting(engine)
    client = client_of(people["ann"])
    assert (
        client.post(
            f"/workflows/{Workflow().pk}/tasks/approve/decide", {"decision": "approve"}, format="json"
        ).status_code
        == 404
    )
    assert (
        client.post(f"/workflows/{workflow.pk}/tasks/pay/decide", {"decision": "approve"}, format="json").status_code
        == 404
    )
    assert (
        client.post("/workflows/not-a-uuid/tasks/approve/decide", {"decision": "approve"}, format="json").status_code
        == 404
    )


def test_the_cli_decides_as_a_named_approver(engine, people):
    workflow = waiting(engine)
    out = StringIO()
    with engine.capture(execute=True):
        call_command(
            "workflow",
            "decide",
            str(workflow.pk),
            "approve",
            "--approve",
            "--user",
            "ann",
            "--comment",
            "ok",
            stdout=out,
        )
    assert "approve approved by cli:ann" in out.getvalue()
    with pytest.raises(CommandError, match="only its approvers may decide it"):
        call_command("workflow", "decide", str(workflow.pk), "approve", "--reject", "--user", "cid")
    with pytest.raises(CommandError, match="no user"):
        call_command("workflow", "decide", str(workflow.pk), "approve", "--reject", "--user", "nobody")
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_waiting_for_me_lists_what_the_user_may_decide_and_takes_the_decision(engine, people, client):
    ann = people["ann"]
    ann.is_staff = True
    ann.save()
    workflow = waiting(
        engine, fields=[{"name": "cost_centre", "type": "choice", "choices": ["sales"], "required": True}]
    )
    client.force_login(ann)
    page = client.get("/admin/workflow_orchestrator/workflow/waiting/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Refund 120 EUR?" in text and 'name="task-' in text and "cost_centre" in text
    gate = task(workflow, "approve")
    incomplete = client.post(
        "/admin/workflow_orchestrator/workflow/waiting/", {"task": gate.pk, "approve": "Approve"}, follow=True
    )
    assert "fill in the form" in incomplete.content.decode() and not Decision.objects.exists()
    with engine.capture(execute=True):
        done = client.post(
            "/admin/workflow_orchestrator/workflow/waiting/",
            {
                "task": gate.pk,
                "approve": "Approve",
                f"task-{gate.pk}-cost_centre": "sales",
                f"task-{gate.pk}-comment": "ok",
            },
            follow=True,
        )
    assert "approve approved" in done.content.decode()
    assert Decision.objects.get().actor_label == "admin:ann" and Decision.objects.get().data == {"cost_centre": "sales"}
    assert (
        "Nothing is waiting for your decision."
        in client.get("/admin/workflow_orchestrator/workflow/waiting/").content.decode()
    )

    cid = people["cid"]
    cid.is_staff = True
    cid.save()
    client.force_login(cid)
    other = waiting(engine)
    page = client.get("/admin/workflow_orchestrator/workflow/waiting/").content.decode()
    assert "Nothing is waiting for your decision." in page, "cid is no approver"
    refused = client.post(
        "/admin/workflow_orchestrator/workflow/waiting/", {"task": task(other, "approve").pk, "reject": "Reject"}
    )
    assert refused.status_code == 403


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_quorum_of_two_on_a_real_cluster(cluster, people):
    cluster(ORCH_WORKERS=1)
    workflow, _ = services.workflow_create(
        name="refund", tasks=[approval(quorum=2), then()], input={"amount": 120}, actor=Actor.SYSTEM, start=True
    )
    wait_for(lambda: task(workflow, "approve").status == Status.WAITING, 60, "the approval to wait")
    url = f"/workflows/{workflow.pk}/tasks/approve/decide"
    assert client_of(people["cid"]).post(url, {"decision": "approve"}, format="json").status_code == 403
    assert client_of(people["ann"]).post(url, {"decision": "approve"}, format="json").status_code == 201
    assert client_of(people["bob"]).post(url, {"decision": "approve"}, format="json").status_code == 201
    wait_for(lambda: reload(workflow).state == State.COMPLETE, 60, "the workflow to complete")
    assert [d["by"] for d in task(workflow, "approve").result["decisions"]] == ["api:ann", "api:bob"]


def test_a_workflow_with_a_callback_url_gets_a_waiting_webhook(engine, people, receiver):
    workflow = engine.start(tasks=[approval(), then()], input={"amount": 3}, callback_url=receiver.url)
    engine.drain()
    wait_for(lambda: receiver.requests, 10, "the webhook")
    body = json.loads(receiver.requests[0]["body"])
    assert body["event"] == "waiting" and body["workflow"] == str(workflow.pk) and body["state"] == State.EXECUTE
    row = Transition.objects.get(workflow=workflow, event="waiting")
    assert row.actor_label == "system" and row.data["task"] == "approve"
