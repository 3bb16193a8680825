"""The API's edges: every bad input is a 4xx naming what is wrong and stores nothing, and
what a user is offered and allowed matches what the engine and the admin accept."""

import json

import pytest
from django.contrib.auth.models import Permission, User

from tests.conftest import reload
from tests.test_api import client_for, create
from workflows import services
from workflows.models import Actor, State, Task, Transition, Workflow


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def api(owner):
    return client_for(owner)


def post(client, path: str, text: str, method: str = "post"):
    """Send `text` as the JSON body as it is (escapes such as \\ud800 reach the parser)."""
    return getattr(client, method)(path, data=text, content_type="application/json")


def nothing_stored():
    return not Workflow.objects.exists() and not Task.objects.exists() and not Transition.objects.exists()


# --- What the database cannot store ------------------------------------------------------------

UNSTORABLE = [
    ('{"name": "s", "input": {"k": "\\ud800"}}', "input", "input.k contains a lone surrogate"),
    ('{"name": "s", "input": {"k": ["a\\u0000"]}}', "input", "input.k[0] contains a NUL character"),
    ('{"name": "s", "input": {"\\udc00": 1}}', "input", "a key of input contains a lone surrogate"),
    ('{"name": "s", "tasks": [{"type": "echo", "params": {"k": "\\u0000"}}]}', "tasks", "params.k contains a NUL"),
    ('{"name": "s", "tasks": [{"type": "echo", "name": "\\ud800"}]}', "tasks", "Surrogate characters are not allowed"),
    ('{"name": "s\\u0000"}', "name", "Null characters are not allowed."),
    ('{"name": "s\\ud800"}', "name", "Surrogate characters are not allowed"),
    ('{"name": "s", "idempotency_key": "k\\u0000"}', "idempotency_key", "Null characters are not allowed."),
    ('{"name": "s", "definition": "d\\u0000"}', "definition", "Null characters are not allowed."),
]


@pytest.mark.parametrize("path", ["/workflow/start", "/workflows/"])
@pytest.mark.parametrize("body, field, message", UNSTORABLE)
def test_what_the_database_cannot_store_is_a_400_naming_the_field(api, path, body, field, message):
    response = post(api, path, body)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field] and message in json.dumps(response.json(), ensure_ascii=False)
    assert nothing_stored()
    assert api.get("/workflows/").status_code == 200  # nothing poisoned either


@pytest.mark.parametrize("text", ['{"reason": "r\\u0000"}', '{"reason": "r\\ud800"}'])
def test_a_cancel_reason_the_database_cannot_store_is_a_400(api, owner, text):
    workflow = create(owner)
    response = post(api, f"/execution/workflows/{workflow.pk}/cancel", text)
    assert response.status_code == 400 and list(response.json()) == ["reason"]
    assert reload(workflow).state == State.INIT and not Transition.objects.exists()


@pytest.mark.parametrize(
    "params",
    [{"search": "a\x00"}, {"definition": "\x00"}, {"state": "\x00"}, {"ordering": "name\x00"}, {"mode": "auto\x00"}],
)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(api, owner, params):
    create(owner)
    response = api.get("/workflows/", params)
    assert response.status_code == 400, response.content
    assert list(response.json()) == list(params)


def test_engine_services_refuse_the_same_values_for_every_caller(db):
    with pytest.raises(services.ValidationError) as refused:
        services.workflow_create(name="x", input={"k": "\ud800"}, actor=Actor.CLI)
    assert list(refused.value.message_dict) == ["input"]
    with pytest.raises(services.ValidationError) as refused:
        services.workflow_create(name="x\x00", actor=Actor.CLI)
    assert list(refused.value.message_dict) == ["name"]
    workflow, _ = services.workflow_create(name="x", tasks=[], actor=Actor.CLI)
    with pytest.raises(services.ValidationError) as refused:
        services.workflow_cancel(workflow.pk, actor=Actor.CLI, reason="\x00")
    assert list(refused.value.message_dict) == ["reason"]
    assert reload(workflow).state == State.INIT


# --- Deep JSON -----------------------------------------------------------------------------------


def nested(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


@pytest.mark.parametrize("levels", [70, 950, 5000])
def test_a_deeply_nested_body_is_a_400_on_every_endpoint_that_takes_one(api, owner, levels):
    workflow = create(owner)
    for method, path, body in [
        ("post", "/workflow/start", nested(levels)),
        ("post", "/workflows/", f'{{"name": "d", "input": {nested(levels)}}}'),
        ("put", f"/workflows/{workflow.pk}", f'{{"name": "d", "input": {nested(levels)}}}'),
        ("patch", f"/workflows/{workflow.pk}", f'{{"input": {nested(levels)}}}'),
        ("post", f"/execution/workflows/{workflow.pk}/cancel", f'{{"reason": {nested(levels)}}}'),
    ]:
        response = post(api, path, body, method)
        assert response.status_code == 400, (method, path, response.content[:300])
        assert "nested more than" in response.content.decode() or "Not a valid string" in response.content.decode()
    assert Workflow.objects.get() == workflow and reload(workflow).input == {}


def test_an_input_nested_beyond_the_limit_names_the_field(api):
    response = post(api, "/workflow/start", f'{{"name": "d", "input": {nested(65)}}}')
    assert response.status_code == 400
    assert response.json() == {"input": ["input.a.a.a" + ".a" * 61 + " is nested more than 64 levels deep"]}
    assert post(api, "/workflow/start", f'{{"name": "d", "input": {nested(64)}}}').status_code == 201


# --- JSON's own types, and no unknown fields -------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": 0}, "name"),
        ({"name": "x", "definition": 1}, "definition"),
        ({"name": "x", "idempotency_key": 42}, "idempotency_key"),
        ({"name": "x", "mode": 0}, "mode"),
        ({"name": "x", "bogus": 1}, "bogus"),
        ({"name": "x", "tasks": [{"type": "echo", "timeout": True}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": "echo", "timeout": "5"}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": "echo", "max_attempts": "3"}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": "echo", "max_attempts": 2.5}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": "echo", "max_attempts": True}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": 5}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": "echo", "name": 7}]}, "tasks"),
        ({"name": "x", "tasks": [{"type": "echo", "retries": 3}]}, "tasks"),
    ],
)
def test_wrong_types_and_unknown_fields_are_a_400_naming_the_field(api, body, field):
    response = api.post("/workflow/start", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert nothing_stored()


def test_unknown_task_fields_are_named_alongside_other_errors(api):
    body = {"name": 0, "tasks": [{"type": "echo"}, {"type": "echo", "retries": 3}], "bogus": True}
    errors = api.post("/workflow/start", body, format="json").json()
    assert set(errors) == {"name", "tasks", "bogus"}
    assert list(errors["tasks"]) == ["1"] and list(errors["tasks"]["1"]) == ["retries"]
    assert "the fields are " in errors["bogus"][0]


def test_update_and_cancel_refuse_unknown_fields_and_wrong_types(api, owner):
    workflow = create(owner)
    assert api.patch(f"/workflows/{workflow.pk}", {"idempotency_key": "k"}, format="json").status_code == 400
    assert api.patch(f"/workflows/{workflow.pk}", {"name": 5}, format="json").status_code == 400
    refused = api.post(f"/execution/workflows/{workflow.pk}/cancel", {"reason": 0}, format="json")
    assert refused.status_code == 400 and list(refused.json()) == ["reason"]
    refused = api.post(f"/execution/workflows/{workflow.pk}/cancel", {"why": "x"}, format="json")
    assert refused.status_code == 400 and list(refused.json()) == ["why"]
    assert reload(workflow).state == State.INIT and reload(workflow).name == "wf"


@pytest.mark.parametrize(
    "params, field",
    [
        ({"ordering": "bogus"}, "ordering"),
        ({"ordering": "name,-password"}, "ordering"),
        ({"page_size": "-1"}, "page_size"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
    ],
)
def test_list_parameters_are_checked_not_ignored(api, owner, params, field):
    create(owner)
    response = api.get("/workflows/", params)
    assert response.status_code == 400 and list(response.json()) == [field], response.content
    assert api.get("/workflows/", {"ordering": "-name,created_at", "page_size": "1"}).json()["count"] == 1


# --- What a user is offered, and what they may do ---------------------------------------------------


def test_available_transitions_are_what_the_user_can_do_now(engine, api, owner):
    manual = create(owner, engine, mode="manual", tasks=[{"type": "noop"}])
    assert api.get(f"/workflow/{manual.pk}").json()["available_transitions"] == ["start", "next", "cancel", "delete"]
    with engine.capture(execute=True):
        api.post(f"/execution/workflows/{manual.pk}/start")
    # PREPARE's work is queued: nothing but cancel, and `next` is refused saying so.
    assert api.get(f"/execution/workflows/{manual.pk}/status").json()["available_transitions"] == ["cancel"]
    refused = api.post(f"/workflow/{manual.pk}/next")
    assert refused.status_code == 409 and refused.json()["available_transitions"] == ["cancel"]
    engine.drain()
    assert api.get(f"/workflow/{manual.pk}").json()["available_transitions"] == ["next", "cancel"]
    with engine.capture(execute=True):
        assert api.post(f"/workflow/{manual.pk}/next").status_code == 202
    engine.drain()
    for _ in range(2):
        with engine.capture(execute=True):
            api.post(f"/workflow/{manual.pk}/next")
        engine.drain()
    done = api.get(f"/workflow/{manual.pk}").json()
    assert (done["state"], done["available_transitions"]) == ("COMPLETE", ["delete"])


def test_what_others_are_offered_follows_their_permissions(owner):
    workflow = create(owner)
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    assert client_for(viewer).get(f"/workflow/{workflow.pk}").json()["available_transitions"] == []
    viewer.user_permissions.add(Permission.objects.get(codename="change_workflow"))
    viewer = User.objects.get(pk=viewer.pk)
    assert client_for(viewer).get(f"/workflow/{workflow.pk}").json()["available_transitions"] == ["start", "cancel"]
    viewer.user_permissions.add(Permission.objects.get(codename="delete_workflow"))
    viewer = User.objects.get(pk=viewer.pk)
    offered = client_for(viewer).get("/workflows/").json()["results"][0]["available_transitions"]
    assert offered == ["start", "cancel", "delete"]


def test_staff_with_only_view_permission_cannot_act_on_others_workflows(owner):
    workflow = create(owner)
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client = client_for(staff)
    assert client.get(f"/workflow/{workflow.pk}").status_code == 200
    for method, path in [
        ("post", f"/execution/workflows/{workflow.pk}/start"),
        ("post", f"/execution/workflows/{workflow.pk}/cancel"),
        ("patch", f"/workflows/{workflow.pk}"),
        ("delete", f"/workflow/{workflow.pk}"),
    ]:
        assert getattr(client, method)(path, {}, format="json").status_code == 403, (method, path)
    assert reload(workflow).state == State.INIT


def test_staff_without_workflow_permissions_see_only_their_own(owner):
    create(owner)
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    assert client_for(staff).get("/workflows/").json()["count"] == 0


def test_idempotency_keys_are_scoped_to_their_creator(owner):
    other = User.objects.create_user("other", password="pw")
    body = {"name": "once", "tasks": [], "idempotency_key": "order-42"}
    mine = client_for(owner).post("/workflows/", body, format="json")
    theirs = client_for(other).post("/workflows/", {**body, "input": {"theirs": True}}, format="json")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    # Each user's repeat finds their own; the CLI's keys are a scope of their own.
    assert client_for(owner).post("/workflows/", body, format="json").json()["id"] == mine.json()["id"]
    cli, created = services.workflow_create(actor=Actor.CLI, **body)
    assert created and str(cli.pk) not in (mine.json()["id"], theirs.json()["id"])
    assert services.workflow_create(actor=Actor.CLI, **body) == (cli, False)
    assert Workflow.objects.count() == 3
    other.delete()  # the scope outlives the user: deleting one breaks no constraint
    assert Workflow.objects.filter(created_by=None).count() == 2


def test_wrong_method_and_wrong_content_type_answer_as_documented(api, owner):
    workflow = create(owner)
    wrong_method = api.put(f"/workflow/{workflow.pk}", {"name": "x"}, format="json")
    assert wrong_method.status_code == 405 and "DELETE" in wrong_method["Allow"]
    form = api.post("/workflow/start", {"name": "x"})  # multipart, as a browser form sends it
    assert form.status_code == 415 and "multipart/form-data" in form.json()["detail"]
    assert api.get("/workflows/", {"page": 99}).status_code == 404
    assert Workflow.objects.get() == workflow and reload(workflow).name == "wf"
