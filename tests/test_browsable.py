"""The browsable API, as a logged-in browser sees it (Accept: text/html, a session): the form
that creates a workflow, its answers, the "Extra Actions" menu and the page titles. API
clients asking for JSON get what they always got."""

import json
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

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


def title(html: str) -> str:
    return re.search(r"<title>(.*?)</title>", html, re.S).group(1).strip()


def extra_actions(html: str) -> set[str]:
    menu = html.split("Extra Actions", 1)[1].split("</ul>", 1)[0] if "Extra Actions" in html else ""
    return set(re.findall(r'<li><a href="[^"]+">(.*?)</a></li>', menu))


def field(html: str, name: str) -> str:
    match = re.search(rf'<(?:input|textarea|select)[^>]*name="{name}"[^>]*>', html)
    assert match, f"no field {name}"
    return match.group(0)


@pytest.mark.parametrize("path", ["/workflow/start", "/workflow/start/"])
def test_start_page_shows_a_form_with_choices_and_an_example(browser, path):
    response = browser.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("name", "definition", "mode", "input", "tasks", "idempotency_key"):
        field(html, name)
    assert '<option value="default" selected>default</option>' in html
    assert '<option value="auto" selected>' in html and '<option value="manual">' in html
    assert 'id="start-tasks-example"' in html and "&quot;type&quot;: &quot;echo&quot;" in html
    assert 'data-override="content-type" value="application/json"' in html
    assert title(html) == "Start a workflow – Workflow orchestrator API"


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
    html = response.content.decode()
    assert 'value="kept name"' in field(html, "name")
    assert '<option value="manual" selected>' in html
    assert ">{not json</textarea>" in html
    assert "&quot;max_attempts&quot;: 0" in html.split('id="start-tasks"', 1)[1].split("</textarea>", 1)[0]
    assert "Must be a JSON object." in html
    assert "task 1: max_attempts: Ensure this value is greater than or equal to 1." in html

    response = post_json(browser, "/workflow/start", {"name": "kept", "tasks": [{"type": "nope"}]})
    assert response.status_code == 400
    assert "unknown task type &#x27;nope&#x27;" in response.content.decode()
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
        (State.INIT, "auto", {"Start", "Cancel"}),
        (State.INIT, "manual", {"Start", "Next step", "Cancel"}),
        (State.FAILED, "auto", {"Retry", "Cancel"}),
    ],
)
def test_extra_actions_offer_only_the_transitions_the_workflow_allows(browser, owner, engine, state, mode, offered):
    workflow = make(owner, mode=mode, state=state, engine=engine)
    for path in (f"/workflows/{workflow.pk}/", f"/workflow/{workflow.pk}"):
        html = browser.get(path).content.decode()
        assert extra_actions(html) == offered | {"Status", "Tasks", "Transitions"}


def test_extra_actions_of_another_users_workflow_offer_no_transitions(db, owner):
    workflow = make(owner)
    stranger = User.objects.create_user("stranger", password="pw", is_superuser=False)
    client = Client(HTTP_ACCEPT=HTML)
    client.force_login(stranger)
    response = client.get(f"/workflows/{workflow.pk}/")
    assert response.status_code == 404 and extra_actions(response.content.decode()) == set()


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
    html = browser.get(path.format(id=workflow.pk)).content.decode()
    assert title(html) == f"{name} – Workflow orchestrator API"
