"""The browsable API, as a logged-in browser sees it (Accept: text/html, a session): the form
that creates a workflow, its answers, the "Extra Actions" menu and the page titles. API
clients asking for JSON get what they always got."""

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests import dom
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Workflow

HTML = "text/html"


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def browser(owner):
    client = Client(HTTP_ACCEPT=HTML)
    client.force_login(owner)
    return client


def post_json(client, path: str, body: dict):
    """What the page's form sends: the fields as one JSON body, asking for HTML back."""
    return client.post(path, json.dumps(body), content_type="application/json", HTTP_ACCEPT=HTML)


def title(response) -> str:
    return dom.parse(response).one("title").text


def extra_actions(response) -> dict[str, str]:
    """The "Extra Actions" menu: each entry's label → the page it links to."""
    menus = dom.parse(response).select("ul.dropdown-menu[aria-labelledby=extra-actions-menu]")
    return {link.text: link["href"] for menu in menus for link in menu.select("li > a")}


def start_form(response) -> dom.Element:
    """The form that starts a workflow (the page's other form is the raw JSON one)."""
    [form] = [form for form in dom.parse(response).select("form[method=POST]") if form.select("[name=idempotency_key]")]
    return form


def selected(form: dom.Element, name: str) -> str:
    return form.one(f"select[name={name}] option[selected]")["value"]


@pytest.mark.parametrize("path", ["/workflow/start", "/workflow/start/"])
def test_start_page_shows_a_form_with_choices_and_an_example(browser, path):
    response = browser.get(path)
    assert response.status_code == 200
    form = start_form(response)
    for name in ("name", "definition", "mode", "input", "tasks", "idempotency_key"):
        assert form.one(f"[name={name}]"), name
    assert selected(form, "definition") == "default"
    assert selected(form, "mode") == "auto" and form.texts("select[name=mode] option") == ["Auto", "Manual"]
    example = json.loads(dom.parse(response).one("#start-tasks-example").text)
    assert example[0]["type"] == "echo"  # an example of the tasks, as JSON
    assert form.one("input[data-override=content-type]")["value"] == "application/json"  # sent as one JSON body
    assert title(response) == "Start a workflow – Workflow orchestrator API"


def test_api_clients_still_get_405_for_get_on_start(owner):
    client = Client()
    client.force_login(owner)
    response = client.get("/workflow/start", HTTP_ACCEPT="application/json")
    assert response.status_code == 405
    assert response["Allow"] == "POST, OPTIONS"
    assert response.json() == {"detail": 'Method "GET" not allowed.'}


def test_the_form_s_body_creates_and_starts_a_workflow(engine, browser, owner):
    body = {"name": "from the form", "definition": "default", "mode": "manual", "input": {"a": 1}}
    with engine.capture(execute=True):
        response = post_json(browser, "/workflow/start", {**body, "tasks": [{"type": "noop"}]})
    assert response.status_code == 201
    workflow = Workflow.objects.get(name="from the form")
    assert (workflow.mode, workflow.input, workflow.created_by) == ("manual", {"a": 1}, owner)
    assert workflow.state != State.INIT


def test_a_400_keeps_what_was_typed_and_names_the_fields(browser):
    typed = {
        "name": "kept name",
        "mode": "manual",
        "input": "{not json",
        "tasks": [{"type": "echo", "max_attempts": 0}],
    }
    response = post_json(browser, "/workflow/start", typed)
    assert response.status_code == 400
    form = start_form(response)
    assert form.one("input[name=name]")["value"] == "kept name"
    assert selected(form, "mode") == "manual"
    assert form.one("textarea[name=input]").text == "{not json"
    assert json.loads(form.one("textarea[name=tasks]").text) == typed["tasks"]

    def errors(name: str) -> list[dom.Element]:
        return [group for group in form.select(".form-group.has-error") if group.select(f"[name={name}]")]

    [input_group] = errors("input")
    assert "Must be a JSON object." in input_group.texts(".help-block")
    [tasks_group] = errors("tasks")
    assert "task 1: max_attempts: Ensure this value is greater than or equal to 1." in tasks_group.texts(".help-block")

    response = post_json(browser, "/workflow/start", {"name": "kept", "tasks": [{"type": "nope"}]})
    assert response.status_code == 400
    [tasks_group] = [g for g in start_form(response).select(".form-group.has-error") if g.select("[name=tasks]")]
    assert any("unknown task type 'nope'" in text for text in tasks_group.texts(".help-block"))
    assert not Workflow.objects.exists()


def make(owner, *, mode: str = "auto", state: str = State.INIT, engine=None) -> Workflow:
    """A workflow of `owner`'s, not started, or FAILED (by its one task, run by `engine`)."""
    failing = state == State.FAILED
    tasks = [{"type": "fail", "max_attempts": 1}] if failing else [{"type": "noop"}]
    workflow, _ = services.workflow_create(name="wf", mode=mode, tasks=tasks, actor=Actor.api(owner))
    if failing:
        engine.call(services.workflow_start, workflow.pk, actor=Actor.api(owner))
        engine.drain()
    workflow.refresh_from_db()
    assert workflow.state == state
    return workflow


@pytest.mark.parametrize(
    "state, mode, offered",
    [
        (State.INIT, "auto", {"Start", "Cancel", "Pause", "Signal"}),
        (State.INIT, "manual", {"Start", "Next step", "Cancel", "Pause", "Signal"}),
        (State.FAILED, "auto", {"Retry", "Cancel", "Signal"}),
    ],
)
def test_extra_actions_offer_only_the_transitions_the_workflow_allows(browser, owner, engine, state, mode, offered):
    workflow = make(owner, mode=mode, state=state, engine=engine)
    for path in (f"/workflows/{workflow.pk}/", f"/workflow/{workflow.pk}"):
        actions = extra_actions(browser.get(path))
        assert set(actions) == offered | {"Status", "Tasks", "Transitions"}
        assert all(f"/{workflow.pk}/" in href for href in actions.values()), actions


def test_extra_actions_of_another_users_workflow_offer_no_transitions(db, owner):
    workflow = make(owner)
    stranger = User.objects.create_user("stranger", password="pw", is_superuser=False)
    client = Client(HTTP_ACCEPT=HTML)
    client.force_login(stranger)
    response = client.get(f"/workflows/{workflow.pk}/")
    assert response.status_code == 404 and extra_actions(response) == {}


@pytest.mark.parametrize(
    "path, name",
    [
        ("/workflows/", "Workflow List"),
        ("/workflow/{id}", "Workflow"),
        ("/workflows/{id}/", "Workflow Instance"),
        ("/execution/workflows/{id}/status", "Status"),
        ("/workflows/{id}/transitions", "Transitions"),
        ("/execution/stats", "Stats"),
    ],
)
def test_page_titles_name_the_view(browser, owner, path, name):
    workflow = make(owner)
    assert title(browser.get(path.format(id=workflow.pk))) == f"{name} – Workflow orchestrator API"
