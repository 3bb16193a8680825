"""The API's edges: every bad input is a 4xx naming what is wrong and stores nothing, and
what a user is offered and allowed matches what the engine and the admin accept."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.authtoken.models import Token

from tests import dom
from tests.conftest import ROOT, child_env, free_port, reload, wait_for
from tests.test_api import client_for, create
from workflow_orchestrator import services, values
from workflow_orchestrator.api import parsers
from workflow_orchestrator.models import Actor, Phase, State, Task, Transition, Workflow


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def api(owner):
    return client_for(owner)


def post(client, path: str, text: str, method: str = "post", **headers):
    """Send `text` as the JSON body as it is (escapes such as \\ud800 reach the parser)."""
    return getattr(client, method)(path, data=text, content_type="application/json", **headers)


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
    with pytest.raises(ValidationError) as refused:
        services.workflow_create(name="x", input={"k": "\ud800"}, actor=Actor.CLI)
    assert list(refused.value.message_dict) == ["input"]
    with pytest.raises(ValidationError) as refused:
        services.workflow_create(name="x\x00", actor=Actor.CLI)
    assert list(refused.value.message_dict) == ["name"]
    workflow, _ = services.workflow_create(name="x", tasks=[], actor=Actor.CLI)
    with pytest.raises(ValidationError) as refused:
        services.workflow_cancel(workflow.pk, actor=Actor.CLI, reason="\x00")
    assert list(refused.value.message_dict) == ["reason"]
    assert reload(workflow).state == State.INIT
    with pytest.raises(ValidationError) as refused:
        services.workflow_create(name="x", idempotency_key="k" * 201, actor=Actor.CLI)
    assert refused.value.message_dict == {
        "idempotency_key": ["idempotency_key must be at most 200 characters (it has 201)"]
    }


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
    assert api.get(f"/workflow/{manual.pk}").json()["available_transitions"] == [
        "start",
        "next",
        "cancel",
        "pause",
        "delete",
    ]
    with engine.capture(execute=True):
        api.post(f"/execution/workflows/{manual.pk}/start")
    # PREPARE's work is queued: nothing but cancel and pause, and `next` is refused saying so.
    assert api.get(f"/execution/workflows/{manual.pk}/status").json()["available_transitions"] == ["cancel", "pause"]
    refused = api.post(f"/workflow/{manual.pk}/next")
    assert refused.status_code == 409 and refused.json()["available_transitions"] == ["cancel", "pause"]
    engine.drain()
    assert api.get(f"/workflow/{manual.pk}").json()["available_transitions"] == ["next", "cancel", "pause"]
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
    assert client_for(viewer).get(f"/workflow/{workflow.pk}").json()["available_transitions"] == [
        "start",
        "cancel",
        "pause",
    ]
    viewer.user_permissions.add(Permission.objects.get(codename="delete_workflow"))
    viewer = User.objects.get(pk=viewer.pk)
    offered = client_for(viewer).get("/workflows/").json()["results"][0]["available_transitions"]
    assert offered == ["start", "cancel", "pause", "delete"]


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


# --- The client's own text, sent back in an error ---------------------------------------------------

# A lone surrogate that JSON's escapes bring in, in a field's name or in a refused choice: the
# error names it back, as the JSON escape the client sent (UTF-8 cannot hold it as it is).
ECHOED = [
    ('{"name": "x", "\\ud800": 1}', ["\ud800"]),
    ('{"name": "x", "tasks": [{"type": "echo", "\\udfff": 1}]}', ["tasks", "0", "\udfff"]),
    ('{"name": "x", "mode": "\\ud800"}', ["mode"]),
    ('{"name": "x", "mode": "manual", "\\ud800x": {"\\ud800": 1}}', ["\ud800x"]),
]


def error_at(errors: dict, path: list[str]) -> list[str]:
    for key in path:
        assert list(errors) == [key], errors
        errors = errors[key]
    return errors


@pytest.mark.parametrize("method, path", [("post", "/workflow/start"), ("post", "/workflows/"), ("put", "{id}"),
                                          ("patch", "{id}")])  # fmt: skip
@pytest.mark.parametrize("body, where", ECHOED)
def test_a_lone_surrogate_echoed_in_an_error_is_a_400_that_names_it(api, owner, method, path, body, where):
    workflow = create(owner)
    response = post(api, path.format(id=f"/workflows/{workflow.pk}"), body, method)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    assert b"\\ud800" in response.content or b"\\udfff" in response.content
    assert all(isinstance(message, str) for message in error_at(response.json(), where))
    assert Workflow.objects.get() == workflow and reload(workflow).name == "wf" and not Transition.objects.exists()


@pytest.mark.parametrize("text", ['{"\\ud800": 1}', '{"reason": "r", "\\udbff": "s"}'])
def test_a_cancel_body_with_a_lone_surrogate_in_a_field_name_is_a_400(api, owner, text):
    workflow = create(owner)
    response = post(api, f"/execution/workflows/{workflow.pk}/cancel", text)
    assert response.status_code == 400, response.content
    assert [key for key in response.json() if key != "reason"] in (["\ud800"], ["\udbff"])
    assert reload(workflow).state == State.INIT and not Transition.objects.exists()


# --- The browsable API ---------------------------------------------------------------------------


@pytest.fixture
def browser(owner):
    """A logged-in browser: a session, asking for HTML."""
    client = Client(HTTP_ACCEPT="text/html")
    assert client.login(username="owner", password="pw")
    return client


# What the form sends back, and what a hand-written body may hold: every field of the form.
BROWSER_BODIES = [
    '{"name": "x\\ud800"}',
    '{"name": "x", "idempotency_key": "\\ud800k"}',
    '{"name": "x", "mode": "\\ud800"}',
    '{"name": "x", "definition": "\\ud800"}',
    '{"name": "x", "callback_url": "http://\\ud800/"}',
    '{"name": "x", "concurrency_key": "\\ud800"}',
    '{"name": "x", "priority": "\\ud800"}',
    '{"name": "x", "input": {"\\ud800": "\\ud800"}}',
    '{"name": "x", "tasks": [{"type": "\\ud800", "params": {"k": "\\udc00"}}]}',
    '{"name": "x", "\\ud800": 1}',
    '{"name": "x", "tasks": [{"type": "echo", "\\ud800": 1}]}',
    '{"name": "x", "tasks": [{"type": "echo", "\\u00b2": 1}]}',  # a digit that int() refuses
    '{"name": "x", "tasks": [{"type": "echo", "%s": 1}]}' % ("9" * 5000),  # more digits than int() takes
    '{"\\ud800": "\\ud800"}',
]


@pytest.mark.parametrize("path", ["/workflow/start", "/workflows/"])
@pytest.mark.parametrize("body", BROWSER_BODIES)
def test_the_browsable_api_answers_a_bad_body_with_its_form_and_a_400(browser, path, body):
    response = post(browser, path, body, HTTP_ACCEPT="text/html")
    assert response.status_code == 400, response.content[-2000:]
    assert response["Content-Type"].startswith("text/html")
    assert dom.parse(response).one("form[method=POST] #start-workflow-form")  # the form, to be corrected and sent again
    assert nothing_stored()


def test_the_browsable_form_shows_lone_surrogates_as_their_escapes(browser):
    page = dom.parse(post(browser, "/workflow/start", '{"name": "x\\ud800", "\\udfff": 1}', HTTP_ACCEPT="text/html"))
    assert page.one("#start-workflow-form input[name=name]")["value"] == "x\\ud800"  # as the escape that was sent
    assert '"\\udfff": [' in page.one(".response-info pre").text  # and in the JSON answer shown on the page


def test_the_browsable_form_labels_tasks_by_position_and_fields_by_name(browser):
    body = '{"name": "x", "tasks": [{"type": "echo"}, {"type": "echo", "5": 1, "after": ["\\ud800"]}]}'
    page = dom.parse(post(browser, "/workflow/start", body, HTTP_ACCEPT="text/html"))
    [tasks] = [group for group in page.select(".form-group.has-error") if group.select("[name=tasks]")]
    errors = tasks.texts(".help-block")
    assert any(error.startswith("task 2: 5: Unknown field") for error in errors), errors
    assert any(error.startswith("task 2: after: item 1: Surrogate characters are not allowed") for error in errors)


@pytest.mark.parametrize(
    "method, path",
    [("put", "/workflows/{id}"), ("patch", "/workflows/{id}"), ("post", "/execution/workflows/{id}/cancel")],
)
@pytest.mark.parametrize("body", ['{"name": "x\\ud800"}', '{"\\ud800": 1}', '{"reason": "\\ud800"}'])
def test_the_browsable_api_answers_a_bad_body_on_a_workflow_with_a_400(browser, owner, method, path, body):
    workflow = create(owner)
    response = post(browser, path.format(id=workflow.pk), body, method, HTTP_ACCEPT="text/html")
    assert response.status_code == 400, response.content[-2000:]
    assert response["Content-Type"].startswith("text/html")
    assert reload(workflow).name == "wf" and reload(workflow).state == State.INIT
    assert not Transition.objects.exists()


# --- Query parameters ---------------------------------------------------------------------------

HUGE = "9" * 5000  # more digits than Python converts to an int (4,300)


@pytest.mark.parametrize(
    "name, status",
    [
        ("page_size", 400),
        ("page", 404),
        ("created_after", 400),
        ("created_before", 400),
        ("state", 400),
        ("mode", 400),
        ("ordering", 400),
        ("search", 400),
        ("definition", 200),
    ],
)
def test_a_huge_number_in_any_list_parameter_is_answered_as_any_bad_value(api, owner, name, status):
    create(owner)
    response = api.get("/workflows/", {name: HUGE})
    assert response.status_code == status, response.content[:300]
    if status == 400:
        assert list(response.json()) == [name]


@pytest.mark.parametrize("search", ["a" * 60_000, "a " * 3_000, "x" * 201])
def test_a_search_longer_than_a_name_can_be_is_a_400_naming_it(api, browser, owner, search):
    create(owner)
    for client in (api, browser):
        response = client.get("/workflows/", {"search": search})
        assert response.status_code == 400, response.content[:300]
    assert list(api.get("/workflows/", {"search": search}).json()) == ["search"]
    assert api.get("/workflows/", {"search": "w" * 199 + " "}).json()["count"] == 0
    assert api.get("/workflows/", {"search": "w"}).json()["count"] == 1


@pytest.mark.parametrize("given, size", [("0050", 50), ("000000000000000000000000000000001", 1), ("500", 500)])
def test_page_size_is_read_as_a_whole_number(api, owner, given, size):
    for _ in range(2):
        create(owner)
    response = api.get("/workflows/", {"page_size": given})
    assert response.status_code == 200 and len(response.json()["results"]) == min(size, 2)


@pytest.mark.parametrize("given", ["٣", "³", "1e2", "+5", " 5", "5.0"])
def test_page_size_is_ascii_digits_only(api, given):
    response = api.get("/workflows/", {"page_size": given})
    assert response.status_code == 400 and list(response.json()) == ["page_size"]


# --- Bodies that are not JSON objects ------------------------------------------------------------


@pytest.mark.parametrize("text", ["false", "true", "0", "1", '""', '"x"', "null", "[]", "[1]", "[{}]"])
def test_a_cancel_body_that_is_not_a_json_object_is_a_400_and_cancels_nothing(api, owner, text):
    workflow = create(owner)
    response = post(api, f"/execution/workflows/{workflow.pk}/cancel", text)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["non_field_errors"]
    assert reload(workflow).state == State.INIT and not Transition.objects.exists()


@pytest.mark.parametrize("text", ["", "{}", '{"reason": "done"}'])
def test_a_cancel_with_an_empty_body_or_an_object_cancels(api, owner, text):
    workflow = create(owner)
    response = post(api, f"/execution/workflows/{workflow.pk}/cancel", text)
    assert response.status_code == 202, response.content
    assert reload(workflow).state == State.CANCELLED


@pytest.mark.parametrize("path", ["/workflow/start", "/workflows/", "{id}"])
@pytest.mark.parametrize("text", ["false", "0", '""', "null", "[]", "[1]"])
def test_a_workflow_body_that_is_not_a_json_object_is_a_400(api, owner, path, text):
    workflow = create(owner)
    for method in ("post",) if path.startswith("/") else ("put", "patch"):
        response = post(api, path.format(id=f"/workflows/{workflow.pk}"), text, method)
        assert response.status_code == 400, (method, response.content)
        assert list(response.json()) == ["non_field_errors"]
    assert Workflow.objects.get() == workflow and reload(workflow).name == "wf"


# --- /metrics and the site's other pages ----------------------------------------------------------


@pytest.fixture
def csrf_checked(owner):
    """A browser as Django's CSRF protection sees it: logged in, no CSRF token sent."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    return client


@pytest.mark.parametrize("path", ["/metrics", "/metrics/"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_metrics_answers_other_methods_with_405(csrf_checked, settings, path, method):
    settings.ORCH_METRICS_TOKEN = "scrape-token"
    response = getattr(csrf_checked, method)(path, HTTP_AUTHORIZATION="Bearer scrape-token")
    assert response.status_code == 405 and response["Allow"] == "GET"


@pytest.mark.parametrize("path", ["/metrics", "/metrics/"])
@pytest.mark.parametrize("method", ["get", "head", "post", "put", "patch", "delete", "options"])
def test_without_a_token_configured_metrics_does_not_exist_whatever_the_method(csrf_checked, settings, path, method):
    settings.ORCH_METRICS_TOKEN = ""
    assert getattr(csrf_checked, method)(path).status_code == 404


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_the_home_page_redirect_answers_other_methods_with_405(csrf_checked, method):
    response = getattr(csrf_checked, method)("/")
    assert response.status_code == 405 and "GET" in response["Allow"]
    assert csrf_checked.get("/").status_code == 302


# --- Against the development server --------------------------------------------------------------


@pytest.fixture
def runserver(transactional_db, tmp_path):
    """`manage.py runserver` (as `make run` starts it), against the test database, with
    metrics on: its base URL."""
    port, log_path = free_port(), tmp_path / "runserver.log"
    env = child_env(ORCH_METRICS_TOKEN="scrape-token")
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is None and send(url + "/docs")[0] == 200, 60, "runserver to answer")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


def send(url: str, *, method: str = "GET", body: str | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else body.encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


@pytest.mark.integration
def test_the_development_server_answers_bad_input_with_a_4xx(runserver):
    owner = User.objects.create_user("owner", password="pw")
    workflow = create(owner)
    headers = {"Authorization": f"Token {Token.objects.create(user=owner).key}", "Accept": "application/json"}
    json_headers = {**headers, "Content-Type": "application/json"}

    status, body = send(f"{runserver}/workflows/?page_size={HUGE}", headers=headers)
    assert status == 400 and list(json.loads(body)) == ["page_size"]
    status, body = send(f"{runserver}/workflow/start", method="POST", body='{"name": "x", "\\ud800": 1}',
                        headers=json_headers)  # fmt: skip
    assert status == 400 and list(json.loads(body)) == ["\ud800"]
    cancel = f"{runserver}/execution/workflows/{workflow.pk}/cancel"
    assert send(cancel, method="POST", body="false", headers=json_headers)[0] == 400
    assert send(f"{runserver}/metrics", method="POST", headers={"Authorization": "Bearer scrape-token"})[0] == 405
    assert send(f"{runserver}/metrics", headers={"Authorization": "Bearer scrape-token"})[0] == 200
    assert reload(workflow).state == State.INIT and Workflow.objects.count() == 1


# --- Limits docs/API.md documents ----------------------------------------------------------------


def test_a_workflow_holds_at_most_max_tasks_tasks(api):
    too_many = {"name": "big", "tasks": [{"type": "noop"}] * (services.MAX_TASKS + 1)}
    response = api.post("/workflows/", too_many, format="json")
    assert response.status_code == 400 and list(response.json()) == ["tasks"]
    waits_too_long = {"name": "big", "tasks": [{"type": "noop", "after": ["x"] * (services.MAX_TASKS + 1)}]}
    response = api.post("/workflows/", waits_too_long, format="json")
    assert response.status_code == 400 and list(response.json()) == ["tasks"]
    assert nothing_stored()
    full = {"name": "full", "tasks": [{"type": "noop"}] * services.MAX_TASKS}
    assert api.post("/workflows/", full, format="json").status_code == 201
    assert Task.objects.filter(phase=Phase.EXECUTE).count() == services.MAX_TASKS  # besides PREPARE and VALIDATE


def test_the_limits_table_states_the_engine_s_own_figures():
    table = (ROOT / "docs" / "API.md").read_text().split("\n## Limits\n")[1].split("\n## ")[0]
    assert f"| {services.MAX_TASKS:,} | none: fixed (`services.MAX_TASKS`) |" in table
    assert f"| A task's `max_attempts` | 1 to {services.MAX_TASK_ATTEMPTS} |" in table
    assert f"| A task's `timeout` | 0.1 s to {services.MAX_TASK_TIMEOUT // (24 * 3600)} days |" in table
    assert f"| {values.MAX_DEPTH} levels (the whole body: {parsers.MAX_BODY_DEPTH}) |" in table
