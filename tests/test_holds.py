"""Holds: a whole definition or concurrency key paused at once (`workflow pause --definition
KEY`, `--key KEY`, the admin). A hold pauses the workflows it covers through the
per-workflow pause (each with its own audit row, marked `held_by`), new ones start paused,
and releasing it resumes exactly the workflows it paused. Recovery closes the races of a
hold being set or released at the moment a workflow is written."""

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import ROOT, child_env, events, reload, task
from workflow_orchestrator import audit, selectors, services
from workflow_orchestrator.models import Actor, Hold, State, Task, Workflow
from workflow_orchestrator.registry import WorkflowDefinition, _definitions, register_definition
from workflow_orchestrator.services import holds

Status = Task.Status
ONE_TASK = [{"name": "a", "type": "noop"}]
HOLDS = reverse("admin:workflow_orchestrator_hold_changelist")
ADD_HOLD = reverse("admin:workflow_orchestrator_hold_add")


@pytest.fixture(autouse=True)
def billing():
    """A definition of its own, beside `default`."""
    register_definition(WorkflowDefinition(key="billing", prepare="noop"))
    yield "billing"
    _definitions.pop("billing")


def start(engine, definition: str = "default", **kwargs) -> Workflow:
    return engine.start(definition=definition, tasks=ONE_TASK, **kwargs)


def hold(engine, kind: str, value: str, actor: Actor = Actor.CLI, reason: str = "") -> services.Held:
    return engine.call(services.hold_set, kind, value, actor=actor, reason=reason)


def release(engine, kind: str, value: str, actor: Actor = Actor.CLI, reason: str = "") -> services.Released:
    return engine.call(services.hold_release, kind, value, actor=actor, reason=reason)


def claim() -> Task | None:
    """The next claimable task, for a worker: what a delivery does."""
    return services.task_claim(None, None, 300.0, worker="w1")


def held_by(workflow: Workflow) -> tuple[bool, str]:
    """Whether it is paused now, and by which hold."""
    workflow = reload(workflow)
    return workflow.is_paused, workflow.held_by


def last_row(workflow: Workflow) -> tuple:
    row = reload(workflow).transitions.order_by("-seq").first()
    return row.event, row.actor_label, row.reason, row.data


# --- Setting a hold ----------------------------------------------------------------------------


def test_a_hold_of_a_definition_pauses_its_workflows_and_no_other(engine):
    done = start(engine, "billing")
    engine.drain()
    assert reload(done).state == State.COMPLETE  # ended: not to be paused
    running = [start(engine, "billing") for _ in range(2)]
    created, _ = engine.call(services.workflow_create, name="later", definition="billing", actor=Actor.CLI)
    other = start(engine)

    held = hold(engine, "definition", "billing", reason="deploy 42")

    assert (held.created, held.paused, str(held.hold), held.hold.actor_label) == (
        True,
        3,
        "definition billing",
        "cli",
    )
    for workflow in [*running, created]:
        assert held_by(workflow) == (True, "definition:billing")
        assert last_row(workflow) == (
            "pause",
            "cli",
            "definition billing held: deploy 42",
            {"hold": "definition:billing"},
        )
        assert audit.verify(reload(workflow)) is None
    assert held_by(other) == held_by(done) == (False, "")
    # Only the other workflow's task is claimed: the claim passes over the held ones.
    assert claim().workflow_id == other.pk
    assert claim() is None


def test_a_hold_of_a_key_pauses_the_workflows_of_that_key_only(engine):
    acme = [start(engine, concurrency_key="acme"), start(engine, "billing", concurrency_key="acme")]
    beta = start(engine, concurrency_key="beta")
    unkeyed = start(engine)
    assert hold(engine, "key", "acme").paused == 2
    assert [held_by(workflow) for workflow in acme] == [(True, "key:acme")] * 2
    assert held_by(beta) == held_by(unkeyed) == (False, "")
    assert {claim().workflow_id, claim().workflow_id} == {beta.pk, unkeyed.pk}
    assert claim() is None


def test_a_workflow_paused_already_is_left_as_it_is(engine):
    paused = start(engine, "billing")
    engine.call(services.workflow_pause, paused.pk, actor=Actor.SYSTEM, reason="by hand")
    seq = reload(paused).last_seq
    assert hold(engine, "definition", "billing").paused == 0
    assert held_by(paused) == (True, "") and reload(paused).last_seq == seq


def test_a_hold_pauses_in_batches_each_workflow_in_a_change_of_its_own(engine, monkeypatch):
    monkeypatch.setattr(holds, "BATCH", 2)
    workflows = [start(engine, "billing") for _ in range(5)]
    assert hold(engine, "definition", "billing").paused == 5
    assert {held_by(workflow) for workflow in workflows} == {(True, "definition:billing")}
    assert {events(reload(workflow))[-1] for workflow in workflows} == {"pause"}


def test_holding_again_what_is_held_changes_nothing(engine):
    workflow = start(engine, "billing")
    first = hold(engine, "definition", "billing", reason="deploy")
    seq = reload(workflow).last_seq
    again = hold(engine, "definition", "billing", actor=Actor.SYSTEM, reason="another")
    assert (again.created, again.paused, again.hold.pk) == (False, 0, first.hold.pk)
    assert Hold.objects.values_list("reason", "actor_label").get() == ("deploy", "cli")
    assert reload(workflow).last_seq == seq


@pytest.mark.parametrize(
    ("kind", "value", "field", "says"),
    [
        ("tenant", "acme", "kind", "kind must be one of definition, key"),
        ("key", "", "value", "value is required"),
        ("key", "k" * 201, "value", "at most 200 characters"),
        ("definition", "a\x00b", "value", "value contains a NUL character"),
        ("definition", "biling", "value", "unknown workflow definition 'biling'"),
    ],
)
def test_a_bad_hold_is_refused_naming_the_field(engine, kind, value, field, says):
    with pytest.raises(ValidationError) as refused:
        hold(engine, kind, value)
    assert says in " ".join(refused.value.message_dict[field])
    assert not Hold.objects.exists()


def test_releasing_a_hold_of_a_bad_kind_or_value_is_refused_or_not_found(engine):
    with pytest.raises(ValidationError) as refused:
        release(engine, "tenant", "acme")
    assert list(refused.value.message_dict) == ["kind"]
    for value in ("a\x00b", "a\udcffb", "k" * 201, "no-longer-registered"):
        with pytest.raises(services.HoldNotFound):
            release(engine, "definition", value)


# --- New workflows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "value", "start_with"), [("definition", "billing", {}), ("key", "acme", {})])
def test_a_new_workflow_of_a_held_definition_or_key_starts_paused_and_nothing_of_it_is_claimed(
    engine, kind, value, start_with
):
    hold(engine, kind, value, reason="deploy")
    definition, key = ("billing", "") if kind == "definition" else ("default", "acme")
    workflow = start(engine, definition, concurrency_key=key)
    assert held_by(workflow) == (True, f"{kind}:{value}")
    assert events(reload(workflow)) == ["start", "pause"]
    assert last_row(workflow) == ("pause", "system", f"{kind} {value} held: deploy", {"hold": f"{kind}:{value}"})
    assert audit.verify(reload(workflow)) is None
    assert claim() is None
    assert engine.drain() == 1  # its PREPARE job: it claims nothing and ends
    assert (task(workflow, "prepare").status, reload(workflow).state) == (Status.QUEUED, State.PREPARE)

    assert release(engine, kind, value).resumed == 1
    engine.drain()
    assert reload(workflow).state == State.COMPLETE
    assert events(reload(workflow)) == ["start", "pause", "resume", "execute", "validate", "complete"]


def test_a_workflow_created_without_starting_under_a_hold_waits_paused_in_init(engine):
    hold(engine, "definition", "billing")
    workflow, _ = engine.call(services.workflow_create, name="later", definition="billing", actor=Actor.CLI)
    assert (reload(workflow).state, held_by(workflow)) == (State.INIT, (True, "definition:billing"))
    engine.call(services.workflow_start, workflow.pk, actor=Actor.CLI)
    assert engine.drain() == 1 and reload(workflow).state == State.PREPARE  # started, still held


def test_a_workflow_of_another_definition_or_without_the_key_starts_as_usual(engine):
    hold(engine, "definition", "billing")
    hold(engine, "key", "acme")
    workflow = start(engine, concurrency_key="beta")
    assert held_by(workflow) == (False, "")
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


# --- Releasing a hold ------------------------------------------------------------------------------


def test_release_resumes_exactly_the_workflows_the_hold_paused(engine):
    by_hand = start(engine, "billing")
    engine.call(services.workflow_pause, by_hand.pk, actor=Actor.CLI, reason="looking into it")
    held = [start(engine, "billing") for _ in range(2)]
    hold(engine, "definition", "billing")
    other = start(engine)
    engine.call(services.workflow_pause, other.pk, actor=Actor.CLI)

    released = release(engine, "definition", "billing", reason="deployed")

    assert (released.resumed, released.still_held, str(released.hold)) == (2, 0, "definition billing")
    assert not Hold.objects.exists()
    for workflow in held:
        assert held_by(workflow) == (False, "")
        assert last_row(workflow) == (
            "resume",
            "cli",
            "definition billing released: deployed",
            {"hold": "definition:billing"},
        )
    assert held_by(by_hand) == held_by(other) == (True, "")  # paused by a person: still paused
    engine.drain()
    assert [reload(workflow).state for workflow in held] == [State.COMPLETE] * 2
    assert reload(by_hand).state == State.PREPARE


def test_a_workflow_two_holds_cover_stays_paused_until_the_last_is_released(engine):
    workflow = start(engine, "billing", concurrency_key="acme")
    hold(engine, "definition", "billing")
    assert hold(engine, "key", "acme").paused == 0  # paused already, by the first
    released = release(engine, "definition", "billing")
    assert (released.resumed, released.still_held) == (0, 1)
    assert held_by(workflow) == (True, "key:acme")
    assert release(engine, "key", "acme").resumed == 1
    assert held_by(workflow) == (False, "")


def test_releasing_what_is_not_held_is_an_error_that_changes_nothing(engine):
    workflow = start(engine, "billing")
    engine.call(services.workflow_pause, workflow.pk, actor=Actor.CLI)
    with pytest.raises(services.HoldNotFound, match="no hold on definition 'billing'"):
        release(engine, "definition", "billing")
    hold(engine, "key", "acme")
    release(engine, "key", "acme")
    with pytest.raises(services.HoldNotFound, match="no hold on key 'acme'"):
        release(engine, "key", "acme")
    assert held_by(workflow) == (True, "")


def test_a_workflow_that_ended_while_held_is_only_no_longer_held(engine):
    workflow = engine.start(definition="billing", tasks=[])  # PREPARE's work only
    running = claim()
    held = hold(engine, "definition", "billing").hold
    engine.call(services.task_record, running)  # its running task ends it, paused
    assert (reload(workflow).state, held_by(workflow)) == (State.COMPLETE, (True, "definition:billing"))
    assert services.held_counts([held]) == {"definition:billing": 0}  # it holds back nothing
    seq = reload(workflow).last_seq
    assert release(engine, "definition", "billing").resumed == 0
    assert held_by(workflow) == (True, "") and reload(workflow).last_seq == seq


# --- One workflow of a hold ------------------------------------------------------------------------


def test_a_held_workflow_resumed_on_its_own_is_no_longer_held_and_stays_resumed(engine):
    workflow = start(engine, "billing")
    hold(engine, "definition", "billing")
    engine.call(services.workflow_resume, workflow.pk, actor=Actor.CLI, reason="this one may go")
    assert held_by(workflow) == (False, "")
    assert engine.call(services.recover)["held"] == 0  # the operator's choice stands
    assert held_by(workflow) == (False, "")
    assert release(engine, "definition", "billing").resumed == 0
    engine.drain()
    assert reload(workflow).state == State.COMPLETE


def test_cancelling_a_held_workflow_clears_its_hold(engine):
    workflow = start(engine, "billing")
    hold(engine, "definition", "billing")
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI)
    assert (reload(workflow).state, held_by(workflow)) == (State.CANCELLED, (False, ""))


def test_the_waiting_reason_names_the_hold(engine):
    by_definition = start(engine, "billing")
    by_key = start(engine, concurrency_key="acme")
    by_hand = start(engine)
    hold(engine, "definition", "billing")
    hold(engine, "key", "acme")
    engine.call(services.workflow_pause, by_hand.pk, actor=Actor.CLI)
    reasons = selectors.waiting_reasons([reload(w) for w in (by_definition, by_key, by_hand)])
    assert list(reasons.values()) == ["paused (definition billing held)", "paused (key acme held)", "paused"]


def test_the_api_detail_shows_held_by_and_the_reason(engine):
    owner = User.objects.create_user("owner", password="pw")
    api = APIClient()
    api.force_authenticate(owner)
    workflow, _ = engine.call(
        services.workflow_create, name="mine", definition="billing", tasks=ONE_TASK, actor=Actor.api(owner), start=True
    )
    hold(engine, "definition", "billing")
    detail = api.get(f"/workflow/{workflow.pk}").json()
    assert (detail["held_by"], detail["waiting_reason"]) == ("definition:billing", "paused (definition billing held)")
    release(engine, "definition", "billing")
    assert api.get(f"/workflow/{workflow.pk}").json()["held_by"] == ""
    schema = api.get("/schema", {"format": "json"}).json()["components"]["schemas"]["WorkflowDetail"]
    field = schema["properties"]["held_by"]
    assert (field["type"], field["readOnly"]) == ("string", True) and "definition:billing" in field["description"]


# --- Recovery ----------------------------------------------------------------------------------------


def test_recovery_pauses_a_workflow_that_slipped_past_a_hold_being_set(engine):
    """A workflow created at the moment its hold is set: its create found no hold, and the
    hold's pass did not see it yet. Recovery finds it unpaused under the hold."""
    slipped = start(engine, "billing")
    Hold.objects.create(kind="definition", value="billing", actor_label="cli", reason="deploy")  # the race's outcome
    found = engine.call(services.recover)
    assert found["held"] == 1
    assert held_by(slipped) == (True, "definition:billing")
    assert last_row(slipped) == ("pause", "system", "definition billing held: deploy", {"hold": "definition:billing"})
    assert engine.call(services.recover)["held"] == 0
    assert claim() is None


def test_recovery_resumes_a_workflow_paused_by_a_hold_that_was_released_meanwhile(engine):
    """A workflow paused by a hold after the hold's release had looked for them: nothing
    would ever resume it. Recovery does, unless another hold covers it."""
    orphan = start(engine, "billing", concurrency_key="acme")
    other = start(engine, "billing", concurrency_key="beta")
    hold(engine, "definition", "billing")
    hold(engine, "key", "beta")
    Hold.objects.filter(kind="definition").delete()  # released, after its pass
    found = engine.call(services.recover)
    assert (found["held"], found["released"]) == (0, 1)
    assert held_by(orphan) == (False, "")
    assert last_row(orphan)[:3] == ("resume", "system", "definition billing released")
    assert held_by(other) == (True, "key:beta")  # still held, by the key
    engine.drain()
    assert reload(orphan).state == State.COMPLETE


def test_recovery_leaves_a_held_workflow_whose_chain_is_broken_as_it_is_and_reports_it(engine):
    slipped = start(engine, "billing")
    Hold.objects.create(kind="definition", value="billing", actor_label="cli")
    Workflow.objects.filter(pk=slipped.pk).update(head_mac="0" * 64)
    found = engine.call(services.recover)
    assert found["held"] == 0 and str(slipped.pk) in found["audit_broken"]
    assert held_by(slipped) == (False, "")


# --- The command line --------------------------------------------------------------------------------


def cli(*args) -> str:
    out = StringIO()
    call_command("workflow", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_pause_and_resume_a_definition_from_the_command_line(engine, transactional_db):
    workflows = [start(engine, "billing") for _ in range(2)]
    assert cli("pause", "--definition", "billing", "--reason", "deploy 42") == (
        "held definition 'billing': 2 workflow(s) paused\n"
    )
    assert last_row(workflows[0])[:3] == ("pause", "cli", "definition billing held: deploy 42")
    again = cli("pause", "--definition", "billing")
    assert again.startswith("definition 'billing' is held already (since ") and again.endswith(
        " UTC by cli): nothing changed\n"
    )
    assert cli("pause", "--key", "acme") == "held key 'acme': 0 workflow(s) paused\n"

    rows = json.loads(cli("holds", "--json"))
    assert [{field: row[field] for field in ("kind", "value", "reason", "actor", "workflows")} for row in rows] == [
        {"kind": "definition", "value": "billing", "reason": "deploy 42", "actor": "cli", "workflows": 2},
        {"kind": "key", "value": "acme", "reason": "", "actor": "cli", "workflows": 0},
    ]
    table = cli("holds").splitlines()
    for header in ("kind", "value", "reason", "by", "since (UTC)", "workflows held"):
        assert header in table[1], table
    billing = next(line for line in table if "billing" in line)
    cells = [cell.strip() for cell in billing.strip("│ ").split("│")]
    assert cells[:4] + cells[5:] == ["definition", "billing", "deploy 42", "cli", "2"]

    assert cli("resume", "--definition", "billing", "--reason", "deployed") == (
        "released definition 'billing': 2 workflow(s) resumed\n"
    )
    assert last_row(workflows[0])[:3] == ("resume", "cli", "definition billing released: deployed")
    assert cli("resume", "--key", "acme") == "released key 'acme': 0 workflow(s) resumed\n"
    assert json.loads(cli("holds", "--json")) == []


def test_resume_of_a_hold_that_keeps_some_paused_says_so(engine, transactional_db):
    start(engine, "billing", concurrency_key="acme")
    start(engine, "billing")
    cli("pause", "--definition", "billing")
    cli("pause", "--key", "acme")
    assert cli("resume", "--definition", "billing") == (
        "released definition 'billing': 1 workflow(s) resumed; 1 still held by another hold\n"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["resume", "--definition", "billing"], "no hold on definition 'billing'"),
        (["resume", "--key", "acme"], "no hold on key 'acme'"),
        (["pause"], "name the workflows to pause, or give --definition KEY or --key KEY"),
        (["resume"], "name the workflows to resume, or give --definition KEY or --key KEY"),
        (["pause", "some-id", "--key", "acme"], "give workflow ids, or --definition KEY or --key KEY, not both"),
        (["pause", "--definition", "billing", "--key", "acme"], "not allowed with argument --definition"),
        (["pause", "--key", ""], "value: value is required"),
        (["pause", "--definition", "biling"], "value: unknown workflow definition 'biling'"),
    ],
)
def test_the_command_line_refuses_what_it_cannot_do_in_one_line(engine, args, says):
    with pytest.raises(CommandError) as refused:
        cli(*args)
    assert says in str(refused.value)
    assert not Hold.objects.exists()


def test_resuming_a_hold_that_is_not_there_exits_1(transactional_db):
    done = subprocess.run(
        [sys.executable, "manage.py", "workflow", "resume", "--definition", "billing"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "CommandError: no hold on definition 'billing'"


def test_show_names_the_hold_and_recover_counts_the_sweep(engine, transactional_db):
    workflow = start(engine, "billing")
    cli("pause", "--definition", "billing")
    assert "  waiting: paused (definition billing held)" in cli("show", str(workflow.pk)).splitlines()
    assert json.loads(cli("show", str(workflow.pk), "--json"))["held_by"] == "definition:billing"
    assert "held workflows paused late: 0; released workflows resumed late: 0" in cli("recover")


# --- The admin -------------------------------------------------------------------------------------


def hold_url(hold: Hold, action: str = "change") -> str:
    return reverse(f"admin:workflow_orchestrator_hold_{action}", args=[hold.pk])


def messages_of(response) -> list[str]:
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    return [message.message for message in response.client.get(response.url).context["messages"]]


def test_adding_a_hold_in_the_admin_goes_through_the_service(engine, admin_client, transactional_db):
    workflows = [start(engine, "billing") for _ in range(2)]
    response = admin_client.post(ADD_HOLD, {"kind": "definition", "value": "billing", "reason": "deploy"})
    assert "definition billing: 2 workflow(s) paused." in messages_of(response)
    hold = Hold.objects.get()
    assert (hold.kind, hold.value, hold.reason, hold.actor_label) == ("definition", "billing", "deploy", "admin:admin")
    assert hold.created_by.username == "admin"
    for workflow in workflows:
        assert held_by(workflow) == (True, "definition:billing")
        assert last_row(workflow)[:3] == ("pause", "admin:admin", "definition billing held: deploy")

    [row] = dom.parse(admin_client.get(HOLDS)).select("#result_list tbody tr")
    cells = {field: row.one(f".field-{field}").text for field in ("kind", "value", "reason", "workflows_held")}
    assert cells == {"kind": "definition", "value": "billing", "reason": "deploy", "workflows_held": "2"}
    link = row.one(".field-workflows_held a").get("href")
    assert link == reverse("admin:workflow_orchestrator_workflow_changelist") + "?held_by=definition%3Abilling"
    listed = dom.parse(admin_client.get(link)).select("#result_list tbody tr")
    assert len(listed) == 2


def test_deleting_a_hold_in_the_admin_resumes_what_it_paused(engine, admin_client, transactional_db):
    workflow = start(engine, "billing")
    hold(engine, "definition", "billing")
    response = admin_client.post(hold_url(Hold.objects.get(), "delete"), {"post": "yes"})
    assert "definition billing released: 1 workflow(s) resumed." in messages_of(response)
    assert not Hold.objects.exists()
    assert held_by(workflow) == (False, "")
    assert last_row(workflow)[:3] == ("resume", "admin:admin", "definition billing released")


def test_bulk_delete_releases_each_hold_through_the_service(engine, admin_client):
    keyed = start(engine, concurrency_key="acme")
    holds_set = [hold(engine, "definition", "billing").hold, hold(engine, "key", "acme").hold]
    hold(engine, "key", "beta")
    selected = [str(h.pk) for h in holds_set]
    asked = admin_client.post(HOLDS, {"action": "delete_selected", "_selected_action": selected})
    assert asked.status_code == 200 and Hold.objects.count() == 3  # it asks first
    with engine.capture(execute=True):
        done = admin_client.post(HOLDS, {"action": "delete_selected", "_selected_action": selected, "post": "yes"})
    assert done.status_code == 302
    assert list(Hold.objects.values_list("value", flat=True)) == ["beta"]
    assert held_by(keyed) == (False, "")


def test_the_add_form_refuses_a_hold_that_is_set_already_and_bad_values_on_their_fields(admin_client):
    Hold.objects.create(kind="key", value="acme", actor_label="cli")
    response = admin_client.post(ADD_HOLD, {"kind": "key", "value": "acme", "reason": ""})
    assert response.status_code == 200
    assert "Hold with this Kind and Value already exists." in dom.parse(response).one(".errorlist.nonfield").text
    for body, field, says in [
        ({"kind": "key", "value": ""}, "value", "This field is required."),
        ({"kind": "tenant", "value": "x"}, "kind", "Select a valid choice"),
        ({"kind": "definition", "value": "biling"}, "value", "unknown workflow definition 'biling'"),
        ({"kind": "key", "value": "a\x00b"}, "value", "Null characters are not allowed."),
    ]:
        response = admin_client.post(ADD_HOLD, {"reason": "", **body})
        assert response.status_code == 200
        errors = {
            next(c for c in row.classes if c.startswith("field-")).removeprefix("field-"): row.text
            for row in dom.parse(response).select(".form-row.errors")
        }
        assert field in errors and says in errors[field], errors
    assert Hold.objects.count() == 1


def test_a_hold_is_not_changed_only_added_and_deleted(admin_client):
    hold = Hold.objects.create(kind="key", value="acme", actor_label="cli", reason="deploy")
    page = dom.parse(admin_client.get(hold_url(hold)))
    assert not page.select("#hold_form input[name=value]")  # shown, read-only
    assert page.one(".form-row.field-value .readonly").text == "acme"
    admin_client.post(hold_url(hold), {"kind": "key", "value": "other", "reason": ""})
    assert Hold.objects.values_list("value", flat=True).get() == "acme"


def test_the_workflow_page_shows_which_hold_paused_it(engine, admin_client):
    workflow = start(engine, "billing")
    hold(engine, "definition", "billing")
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])))
    assert page.one(".form-row.field-held_by .readonly").text == "definition:billing"
    fieldset = next(f for f in page.select("fieldset") if "Flow control" in f.text)
    assert fieldset.select(".field-held_by")
    assert page.one("#waiting-reason").text == "Waiting: paused (definition billing held)"


def test_holds_follow_the_model_s_permissions(engine, db):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_hold"))
    client = Client()
    client.force_login(viewer)
    held = hold(engine, "key", "acme").hold
    assert client.get(HOLDS).status_code == 200
    assert client.post(ADD_HOLD, {"kind": "key", "value": "b"}).status_code == 403
    assert client.post(hold_url(held, "delete"), {"post": "yes"}).status_code == 403
    assert Hold.objects.values_list("value", flat=True).get() == "acme"


def test_the_holds_list_counts_their_workflows_in_one_query_whatever_their_number(engine, admin_client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(HOLDS).status_code == 200
        return len(captured)

    hold(engine, "key", "a")
    one = queries()
    hold(engine, "key", "b"), hold(engine, "key", "c")
    assert len(dom.parse(admin_client.get(HOLDS)).select("#result_list tbody tr")) == 3
    assert queries() == one
