"""The OpenAPI schema: it validates, it is served with its docs to anonymous users, it
covers every path of the specification, and the API answers what it documents.

The last part runs schemathesis over the served schema, in process against Django's
WSGI application, with a real user's token: no 5xx, only documented status codes and
content types, and bodies that match their schemas. Then over what the schema does not
list: the same paths without their trailing slash, and the site's own pages (/metrics,
/schema, /docs, the login and logout forms, the home page), each described here; every
route outside the admin must be in one of these documents, and answer a method it does
not take with 405.
"""

import re
import uuid
from collections import Counter
from html.parser import HTMLParser

import jsonschema
import pytest
import schemathesis
import yaml
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.core import signals
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from django.urls import URLResolver, get_resolver, resolve
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from workflow_orchestrator import schedules, services, values
from workflow_orchestrator.api.views import WorkflowViewSet
from workflow_orchestrator.models import Actor, State, Workflow, WorkflowSchedule

# --- The schema validates ------------------------------------------------------------------


def test_schema_validates_without_warnings(tmp_path):
    """drf-spectacular's validation against the OpenAPI 3 meta-schema; with --fail-on-warn
    any warning (an unresolvable serializer or type hint, a path parameter without a
    type…) fails the command."""
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    document = yaml.safe_load(out.read_text())
    assert document["openapi"].startswith("3.")
    assert document["paths"]


# --- Served to anonymous users -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/schema", "/schema/"])
def test_schema_is_served_to_anonymous_users(client, path):
    response = client.get(path, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]
    assert "/workflows/" in document["paths"]


def test_schema_is_yaml_by_default(client):
    response = client.get("/schema")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert yaml.safe_load(response.content)["openapi"].startswith("3.")


class AssetURLs(HTMLParser):
    """The URLs a page loads: script and img src, link href."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_swagger_ui_is_served_to_anonymous_users_from_local_assets(client, path):
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert "SwaggerUIBundle" in html

    parser = AssetURLs()
    parser.feed(html)
    assert len(parser.urls) >= 3, parser.urls  # the CSS, the bundle and its preset at least
    for url in parser.urls:
        # No CDN: each asset is a path on this server, a static file of drf-spectacular-sidecar.
        assert not re.match(r"^(https?:)?//", url), f"{url} is not served by this server"
        assert url.startswith("/static/drf_spectacular_sidecar/"), url
        assert finders.find(url.removeprefix("/static/")), f"{url} is not a static file of the project"
    # Nor does the inline script fetch anything from another host.
    assert not re.findall(r"""["'(]\s*(?:https?:)?//[^"')\s]""", html)
    # The UI reads the schema from this server.
    assert 'url: "/schema"' in html


def test_anonymous_users_get_nothing_but_the_docs(client):
    for path in ("/workflows/", "/workflows", "/execution/stats", f"/workflow/{uuid.uuid4()}"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response["WWW-Authenticate"] == "Token"


# --- Every path of the specification ------------------------------------------------------

# Every operation of the original specification: one (method, path) per operation.
SPECIFICATION = [
    ("post", "/workflow/start"),
    ("get", "/workflow/{id}"),
    ("post", "/workflow/{id}/next"),
    ("post", "/workflow/{id}/retry"),
    ("delete", "/workflow/{id}"),
    ("post", "/execution/workflows/{id}/start"),
    ("get", "/execution/workflows/{id}/status"),
    ("post", "/execution/workflows/{id}/cancel"),
    ("get", "/execution/stats"),
    ("get", "/workflows/"),
    ("post", "/workflows/"),
    ("get", "/workflows/{id}"),
    ("put", "/workflows/{id}"),
    ("patch", "/workflows/{id}"),
    ("get", "/workflows/{id}/tasks"),
    ("get", "/workflows/{id}/transitions"),
]


@pytest.fixture(scope="module")
def served_schema() -> dict:
    return Client().get("/schema", HTTP_ACCEPT="application/json").json()


@pytest.mark.parametrize(("method", "path"), SPECIFICATION, ids=[f"{m.upper()} {p}" for m, p in SPECIFICATION])
def test_every_specified_operation_is_in_the_schema_with_a_summary(served_schema, method, path):
    # Each route answers with or without a trailing slash; the schema lists it with one.
    documented = {p.rstrip("/"): operations for p, operations in served_schema["paths"].items()}
    assert path.rstrip("/") in documented, f"{path} is not in the schema"
    operation = documented[path.rstrip("/")].get(method)
    assert operation is not None, f"{method.upper()} {path} is not in the schema"
    assert operation.get("summary"), f"{method.upper()} {path} has no summary"
    concrete = path.replace("{id}", str(uuid.uuid4())).rstrip("/")
    for variant in (concrete, f"{concrete}/"):
        assert resolve(variant).func.cls is WorkflowViewSet, variant  # Resolver404 if not routed


def test_every_operation_has_a_summary_and_documents_its_errors(served_schema):
    for path, operations in served_schema["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            responses = set(operation["responses"])
            assert operation.get("summary"), f"{label} has no summary"
            assert "401" in responses, f"{label} does not document 401 (nothing is open to anonymous users)"
            if method not in ("get", "head", "options"):
                assert "403" in responses, f"{label} does not document 403 (permissions, CSRF)"
            if "{id}" in path:
                assert "404" in responses, f"{label} does not document 404"
            if operation.get("requestBody"):
                assert "400" in responses, f"{label} does not document 400"


# --- The API answers what it documents -----------------------------------------------------

# Loaded at collection (pytest-django has set Django up by then) so that each operation
# is a test of its own; the schema view needs no database.
WSGI = get_wsgi_application()
schema = schemathesis.openapi.from_wsgi("/schema", WSGI)

# Valid requests and invalid ones (wrong types, missing and unknown fields, NUL
# characters): each must get a documented answer.
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=True)


def not_unavailable(ctx, response, case):
    """503 means "the database is out of reach, retry later": never the answer to a
    client's mistake, which no retry can mend (the database is up during the tests)."""
    if response.status_code == 503:
        raise AssertionError(f"503 for {case.method} {case.formatted_path}: {response.text[:300]}")


# Not negative_data_rejection: django-filter ignores an empty filter value (?created_before=)
# by design, which that check reports as "invalid data accepted".
CHECKS = [
    not_a_server_error,
    not_unavailable,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def wsgi_in_test_transaction():
    """Requests go through Django's WSGI handler in the test's thread and transaction. Like
    Django's test client, keep the handler from closing the connection at the end of each
    request: on PostgreSQL that would end the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


# The fuzz user's schedule, set up afresh before each sequence of calls.
FUZZED_SCHEDULE = {"name": "fuzzed", "cron": "0 3 * * *", "tasks": [{"type": "noop"}]}


@pytest.fixture
def fuzz_user(engine, wsgi_in_test_transaction, django_user_model):
    """A user with a token and workflows of theirs in most states, plus someone else's
    workflow (which they must not see), and a schedule they may change: the headers to
    send, and the workflows' and the schedule's ids."""
    user = django_user_model.objects.create_user("fuzzer", password="not-used")
    other = django_user_model.objects.create_user("someone-else", password="not-used")
    token = Token.objects.create(user=user)

    def create(name, owner=user, **kwargs):
        workflow, _ = engine.call(services.workflow_create, name=name, actor=Actor.api(owner), **kwargs)
        return workflow

    workflows = [
        create("complete", start=True, tasks=[{"type": "echo", "params": {"x": 1}}]),
        create("failed", start=True, tasks=[{"type": "fail", "max_attempts": 1}]),
        create("manual", start=True, mode="manual"),  # PREPARE done: waiting for next
        create("not yours", owner=other),
    ]
    engine.drain()
    workflows += [
        create("created", tasks=[{"type": "noop"}]),
        create("running", start=True),  # its jobs are never run
        create("paused", start=True),
    ]
    engine.call(services.workflow_pause, workflows[-1].pk, actor=Actor.api(user), reason="held")
    user.user_permissions.add(*Permission.objects.filter(codename__endswith="_workflowschedule"))
    schedule = schedules.schedule_save(WorkflowSchedule(**FUZZED_SCHEDULE))
    states = {w.name: w.state for w in Workflow.objects.filter(pk__in=[w.pk for w in workflows])}
    assert states == {
        "complete": State.COMPLETE,
        "failed": State.FAILED,
        "manual": State.PREPARE,
        "not yours": State.INIT,
        "created": State.INIT,
        "running": State.PREPARE,
        "paused": State.PREPARE,
    }
    return {
        "headers": {"Authorization": f"Token {token.key}"},
        "ids": [str(w.pk) for w in workflows],
        "by_name": {w.name: str(w.pk) for w in workflows},
        "schedule_ids": [str(schedule.pk)],
    }


@schema.parametrize()
@schema.given(data=st.data())
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,  # the same cases on every run, in CI too
    database=None,
    # fuzz_user is set up once per operation, not per example, on purpose: the examples
    # share its workflows (and what earlier examples did to them).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Generated cases only: the schema's own example bodies (which schemathesis will not mix
    # with `given`) are sent by test_each_example_body_is_accepted_by_its_operation.
    phases=[Phase.generate, Phase.target, Phase.shrink],
)
def test_api_answers_what_its_schema_documents(case, data, fuzz_user):
    # Generated ids are random strings (404, documented): often use a real workflow's instead.
    if "id" in (case.path_parameters or {}):
        known = fuzz_user["schedule_ids"] if case.path.startswith("/schedules/") else fuzz_user["ids"]
        case.path_parameters["id"] = data.draw(st.sampled_from([case.path_parameters["id"], *known]))
    case.call_and_validate(headers=fuzz_user["headers"], checks=CHECKS)


def test_every_operation_answers_anonymous_users_as_documented(db, wsgi_in_test_transaction):
    """401, with a body that matches the schema, before the body is even read."""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        parameters = {"id": str(uuid.uuid4()), "task_name": "approve", "operation_id": str(uuid.uuid4())}
        parameters = {name: value for name, value in parameters.items() if "{" + name + "}" in operation.path}
        case = operation.Case(path_parameters=parameters or None)
        response = case.call()
        assert response.status_code == 401, f"{operation.label}: {response.status_code}"
        case.validate_response(response, checks=CHECKS)


OPERATIONS = {operation.label: operation for operation in (result.ok() for result in schema.get_all_operations())}
# An operation on one of a workflow's tasks (decide) is tried on the approval tasks of
# tests/test_approvals.py: the workflows here have none.
ON_A_WORKFLOW = sorted(
    label for label in OPERATIONS if "{id}" in label and "{task_name}" not in label and "/schedules/" not in label
)
# The body of a valid request, for the operations that need one.
BODIES = {"PUT": {"name": "renamed"}, "PATCH": {"name": "renamed"}, "POST": {"reason": "testing"}}
# Operations whose body is not the method's usual one.
OPERATION_BODIES = {"POST /workflows/{id}/signal/": {"name": "testing", "payload": {"by": "test"}}}


@pytest.mark.parametrize("label", ON_A_WORKFLOW)
def test_each_operation_on_a_workflow_in_each_state(fuzz_user, label):
    """Random ids mostly miss: here each operation meets a workflow in each state once,
    succeeds on some, is refused (409) or answers 404 on others, always as documented."""
    operation = OPERATIONS[label]
    answers = {}
    for name, workflow_id in fuzz_user["by_name"].items():
        body = OPERATION_BODIES.get(label, BODIES[operation.method.upper()]) if operation.body else NOT_SET
        case = operation.Case(path_parameters={"id": workflow_id}, body=body)
        answers[name] = case.call_and_validate(headers=fuzz_user["headers"], checks=CHECKS).status_code
    assert answers.pop("not yours") == 404
    assert any(200 <= status < 300 for status in answers.values()), answers


# --- Sequences of calls ---------------------------------------------------------------------

# Schemathesis links the operations itself (each {id} comes from a workflow an earlier
# call created or read), then chains random calls: create, start, cancel, retry, next,
# update, delete and read the same workflows in any order.
StatefulAPI = schema.as_state_machine()


def test_api_answers_what_it_documents_along_sequences_of_calls(fuzz_user):
    answered = Counter()

    class Session(StatefulAPI):
        def setup(self):
            # Each sequence starts from the same workflows: what an earlier one created (an
            # idempotency key, say) would answer a repeated request differently, and
            # hypothesis requires the same calls to meet the same answers.
            Workflow.objects.exclude(pk__in=fuzz_user["ids"]).delete()
            # The schedule too, as it was: a sequence may have renamed, paused or deleted it.
            WorkflowSchedule.objects.all().delete()
            [schedule_id] = fuzz_user["schedule_ids"]
            schedules.schedule_save(WorkflowSchedule(pk=int(schedule_id), **FUZZED_SCHEDULE))

        def before_call(self, case):
            # Generated definitions and task types are random strings, never registered
            # ones: creations name real ones, so that sequences start from real workflows.
            body = case.body if isinstance(case.body, dict) else {}
            if isinstance(body.get("definition"), str):
                body["definition"] = "default"
            if isinstance(body.get("callback_url"), str):  # a random host is never an allowed one
                body["callback_url"] = ""
            if "cancel" in case.path and isinstance(case.body, dict):
                # Random extra fields make most cancels a 400: keep the reason alone, so that
                # sequences also reach the transition (unknown fields are fuzzed above).
                reason = body.get("reason")
                storable = isinstance(reason, str) and len(reason) <= 1000 and not values.text_problem(reason)
                case.body = {"reason": reason} if storable else {}
            for task in body.get("tasks") if isinstance(body.get("tasks"), list) else []:
                if isinstance(task, dict) and isinstance(task.get("type"), str):
                    task["type"] = "noop"

        def get_call_kwargs(self, case):
            return {"headers": fuzz_user["headers"]}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            answered[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Session.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=10,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # What must hold for every sequence is checked on every answer (CHECKS): no 500, no 503,
    # only documented statuses, bodies that match the schema. Which sequences happen to
    # create a workflow is luck: the walk below takes one through every step on purpose.
    assert answered, "the sequences made no call: nothing was checked"


def test_a_workflow_walked_through_the_api_s_operations_answers_as_documented(engine, fuzz_user):
    """Created, renamed, started, stepped, failed, retried, cancelled, read and deleted over
    the API, each answer checked against the schema as the fuzzers check theirs."""

    def call(label: str, expected: int, workflow_id: str | None = None, body=NOT_SET) -> dict | None:
        case = OPERATIONS[label].Case(path_parameters={"id": workflow_id} if workflow_id else None, body=body)
        response = engine.call(case.call_and_validate, headers=fuzz_user["headers"], checks=CHECKS)
        assert response.status_code == expected, (label, response.status_code, response.text[:500])
        return response.json() if response.content else None

    fails_once = {"type": "fail", "params": {"times": 1}, "max_attempts": 1}
    created = call("POST /workflows/", 201, body={"name": "walked", "mode": "manual", "tasks": [fails_once]})
    workflow_id = created["id"]
    assert call("PATCH /workflows/{id}/", 200, workflow_id, {"name": "renamed"})["name"] == "renamed"
    assert call("POST /workflows/{id}/start/", 202, workflow_id)["state"] == State.PREPARE
    engine.drain()
    assert call("POST /workflows/{id}/next/", 202, workflow_id)["state"] == State.EXECUTE
    engine.drain()
    assert call("GET /workflows/{id}/status/", 200, workflow_id)["state"] == State.FAILED
    assert call("POST /workflows/{id}/retry/", 202, workflow_id)["state"] == State.EXECUTE
    assert call("POST /workflows/{id}/cancel/", 202, workflow_id, {"reason": "walked enough"})["state"] == (
        State.CANCELLED
    )
    transitions = call("GET /workflows/{id}/transitions/", 200, workflow_id)
    assert [t["event"] for t in transitions] == ["start", "execute", "fail", "retry", "cancel"]
    call("DELETE /workflows/{id}/", 204, workflow_id)
    call("GET /workflows/{id}/", 404, workflow_id)


def test_a_schedule_walked_through_the_api_s_operations_answers_as_documented(engine, fuzz_user):
    """Created, changed, paused, resumed, run, read and deleted over the API, each answer
    checked against the schema."""

    def call(label: str, expected: int, schedule_id=None, body=NOT_SET) -> dict | None:
        case = OPERATIONS[label].Case(path_parameters={"id": schedule_id} if schedule_id else None, body=body)
        response = engine.call(case.call_and_validate, headers=fuzz_user["headers"], checks=CHECKS)
        assert response.status_code == expected, (label, response.status_code, response.text[:500])
        return response.json() if response.content else None

    created = call("POST /schedules/", 201, body={"name": "walked", "cron": "*/15 * * * *"})
    schedule_id = str(created["id"])
    assert call("PATCH /schedules/{id}/", 200, schedule_id, {"time_zone": "Asia/Tokyo"})["next_runs"]
    assert call("PUT /schedules/{id}/", 200, schedule_id, {"name": "walked", "cron": "@daily"})["cron"] == "@daily"
    assert call("POST /schedules/{id}/pause/", 200, schedule_id)["paused"] is True
    assert call("POST /schedules/{id}/resume/", 200, schedule_id)["paused"] is False
    run = call("POST /schedules/{id}/run/", 201, schedule_id)
    assert call("GET /workflows/{id}/", 200, run["id"])["schedule"] == created["id"]
    assert any(row["name"] == "walked" for row in call("GET /schedules/", 200)["results"])
    call("DELETE /schedules/{id}/", 204, schedule_id)
    call("GET /schedules/{id}/", 404, schedule_id)


# --- Example bodies: what Swagger UI shows and sends ----------------------------------------


def request_bodies() -> dict:
    """Each operation with a request body: its JSON content in the served schema."""
    return {
        f"{method.upper()} {path}": operation["requestBody"]["content"]["application/json"]
        for path, operations in schema.raw_schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }


def test_every_request_body_has_fields_and_an_example_that_matches_them():
    """Swagger UI starts "Try it out" from the body's example, else from its schema's fields:
    each operation documents both, and the example is valid against the schema."""
    document = schema.raw_schema
    bodies = request_bodies()
    assert len(bodies) >= 15
    for label, content in bodies.items():
        name = content["schema"]["$ref"].rsplit("/", 1)[-1]
        assert document["components"]["schemas"][name]["properties"], f"{label}: a body without fields"
        examples = content.get("examples")
        assert examples, f"{label}: no example body"
        for example in examples.values():
            validator = jsonschema.Draft7Validator({**content["schema"], "components": document["components"]})
            errors = [error.message for error in validator.iter_errors(example["value"])]
            assert not errors, f"{label}: its example does not match its schema: {errors}"


# Where each example is sent, in this order: the fuzz user's workflow (or schedule) and the answer.
EXAMPLES_SENT = [
    ("POST /workflows/{id}/signal/", "running", 201),
    ("POST /execution/workflows/{id}/pause/", "running", 202),
    ("POST /workflows/{id}/resume/", "running", 202),
    ("POST /workflows/{id}/pause/", "running", 202),
    ("POST /execution/workflows/{id}/resume/", "paused", 202),
    ("PUT /workflows/{id}/", "created", 200),
    ("PATCH /workflows/{id}/", "created", 200),
    ("POST /execution/workflows/{id}/cancel/", "created", 202),
    ("POST /workflows/{id}/cancel/", "manual", 202),
    ("POST /workflows/", None, 201),
    ("POST /workflow/start/", None, 201),
    ("POST /schedules/", None, 201),
    ("PUT /schedules/{id}/", "new schedule", 200),  # the one just created: the example's name is taken
    ("PATCH /schedules/{id}/", "new schedule", 200),
    ("POST /workflows/bulk/", None, 202),  # sent by a staff user with the change permission
]


def test_each_example_body_is_accepted_by_its_operation(engine, fuzz_user, django_user_model):
    """What Swagger UI's "Try it out" sends unchanged succeeds (decide's example needs an
    approval task waiting for this user: tests/test_approvals.py decides with such bodies)."""
    bodies = request_bodies()
    assert {label for label, _, _ in EXAMPLES_SENT} == set(bodies) - {"POST /workflows/{id}/tasks/{task_name}/decide/"}
    staff = django_user_model.objects.create_user("staff", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="change_workflow"))
    as_staff = {"Authorization": f"Token {Token.objects.create(user=staff).key}"}
    created = {}
    for label, target, expected in EXAMPLES_SENT:
        body = next(iter(bodies[label]["examples"].values()))["value"]
        target_id = str(created.get("id")) if target == "new schedule" else fuzz_user["by_name"].get(target)
        case = OPERATIONS[label].Case(path_parameters={"id": target_id} if target_id else None, body=body)
        headers = as_staff if label == "POST /workflows/bulk/" else fuzz_user["headers"]
        response = engine.call(case.call_and_validate, headers=headers, checks=CHECKS)
        assert response.status_code == expected, (label, response.status_code, response.text[:300])
        created = response.json() if label == "POST /schedules/" else created


# --- The rest of the site: what the API's schema does not list -------------------------------

# Every path outside the admin: the API's with and without their trailing slash (its schema
# lists one), and the site's own pages, described here as the API's schema describes its own.
METRICS_TOKEN = "metrics-token-for-the-fuzzer"
# Django accepts its CSRF secret unmasked, in the cookie and the header alike: with both, a
# request meets the view, not the CSRF check.
CSRF_SECRET = "fuzzercsrfsecret0123456789abcdef"
VISITOR = {"username": "visitor", "password": "visitor-password"}

HTML = {"text/html": {"schema": {"type": "string"}}}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
CSRF_REFUSED = {"description": "The CSRF token is missing or wrong.", "content": HTML}
LOGIN_FORM = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                "required": ["username", "password"],
            }
        }
    },
}
LOGIN_ANSWERS = {
    "200": {"description": "The form again, with its errors.", "content": HTML},
    "302": {"description": "Logged in: on to the page asked for."},
    "403": CSRF_REFUSED,
}
SCHEMA_TYPES = ["application/vnd.oai.openapi", "application/vnd.oai.openapi+json", "application/json"]


def page(summary: str, **operation) -> dict:
    return {"summary": summary, **operation}


def both(path: str, operations: dict) -> dict:
    return {path: operations, f"{path}/": operations}


SITE_PATHS = {
    "/": {"get": page("The home page", responses={"302": {"description": "To /workflows/."}})},
    **both(
        "/metrics",
        {
            "get": page(
                "Prometheus metrics",
                parameters=[{"name": "Authorization", "in": "header", "schema": {"type": "string"}}],
                responses={
                    "200": {"description": "The exposition.", "content": TEXT},
                    "401": {"description": "No token, or another one.", "content": TEXT},
                },
            )
        },
    ),
    **both(
        "/schema",
        {
            "get": page(
                "The OpenAPI schema",
                parameters=[
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "yaml"]}},
                    {"name": "lang", "in": "query", "schema": {"type": "string"}},
                ],
                responses={
                    "200": {"description": "The schema.", "content": {t: {} for t in SCHEMA_TYPES}},
                    "404": {"description": "No such format.", "content": {t: {} for t in SCHEMA_TYPES}},
                },
            )
        },
    ),
    **both(
        "/docs",
        {
            "get": page(
                "Swagger UI",
                parameters=[{"name": "lang", "in": "query", "schema": {"type": "string"}}],
                responses={"200": {"description": "The page.", "content": HTML}},
            )
        },
    ),
    "/api-auth/login/": {
        "get": page(
            "The login form",
            parameters=[{"name": "next", "in": "query", "schema": {"type": "string"}}],
            responses={"200": {"description": "The form.", "content": HTML}},
        ),
        "post": page("Log in", requestBody=LOGIN_FORM, responses=LOGIN_ANSWERS),
        # Django's form views take PUT as they take POST.
        "put": page("Log in (as POST)", requestBody=LOGIN_FORM, responses=LOGIN_ANSWERS),
    },
    "/api-auth/logout/": {
        "post": page(
            "Log out",
            responses={
                "200": {"description": "Logged out.", "content": HTML},
                "302": {"description": "Logged out: on to the next page."},
                "403": CSRF_REFUSED,
            },
        )
    },
}


def without_trailing_slashes(document: dict) -> dict:
    return {**document, "paths": {path.rstrip("/"): item for path, item in document["paths"].items()}}


site = schemathesis.openapi.from_dict(
    {"openapi": "3.0.3", "info": {"title": "The site's pages", "version": "1"}, "paths": SITE_PATHS}
)
unslashed = schemathesis.openapi.from_dict(without_trailing_slashes(schema.raw_schema))
for other in (site, unslashed):
    other.app = WSGI
    other.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=True)


def concrete_paths(document: dict) -> list[str]:
    return [path.replace("{id}", str(uuid.uuid4())) for path in document["paths"]]


def route_variants() -> set[tuple[str, bool]]:
    """Each admin-free URL pattern with each ending it takes: (route, ends with a slash)."""

    def routes(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern)

    variants = set()
    for route in routes(get_resolver().url_patterns):
        if route.startswith("admin/"):
            continue
        endings = (True, False) if route.endswith("/?$") else (route.endswith("/"),)
        variants |= {(route, ending) for ending in endings}
    return variants


def test_the_fuzzed_documents_cover_every_path_outside_the_admin():
    """A route added without its place in a fuzzed document fails here."""
    fuzzed = [schema.raw_schema, without_trailing_slashes(schema.raw_schema), site.raw_schema]
    covered = set()
    for path in (path for document in fuzzed for path in concrete_paths(document)):
        covered.add((resolve(path).route, path[1:].endswith("/")))
    assert route_variants() - covered == set()


@pytest.fixture
def site_visitor(wsgi_in_test_transaction, settings, django_user_model):
    settings.ORCH_METRICS_TOKEN = METRICS_TOKEN
    django_user_model.objects.create_user(**VISITOR)


@site.parametrize()
@site.given(data=st.data())
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_site_s_pages_answer_what_they_document(case, data, site_visitor):
    # Random credentials never match: often send the right ones.
    if case.path.startswith("/metrics") and data.draw(st.booleans()):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {METRICS_TOKEN}"}
    if case.path.startswith("/api-auth/login") and isinstance(case.body, dict) and data.draw(st.booleans()):
        case.body = {**case.body, **VISITOR}
    case.cookies = {**(case.cookies or {}), "csrftoken": CSRF_SECRET}
    case.call_and_validate(headers={"X-CSRFToken": CSRF_SECRET}, checks=CHECKS)


def test_the_api_answers_without_its_trailing_slashes_what_it_documents(fuzz_user):
    """The same operations, a few cases each: the paths route to the same views."""
    for operation in (result.ok() for result in unslashed.get_all_operations()):
        cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

        @given(case=cases, data=st.data())
        @settings(
            max_examples=4, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
        )
        def answers_as_documented(case, data):
            if "id" in (case.path_parameters or {}):
                case.path_parameters["id"] = data.draw(st.sampled_from(fuzz_user["ids"]))
            case.call_and_validate(headers=fuzz_user["headers"], checks=CHECKS)

        answers_as_documented()


METHODS = {"get", "head", "post", "put", "patch", "delete", "options"}


def test_every_path_answers_a_method_it_does_not_take_with_405(db, settings, django_user_model):
    """A method that a fuzzed document does not list for a path is a 405 naming the methods
    it takes (past authentication, which the API checks first); HEAD and OPTIONS answer as
    the path allows, never with a 5xx. Only the login and logout forms check a session's
    CSRF token first (403), and answer 405 once it is there."""
    settings.ORCH_METRICS_TOKEN = METRICS_TOKEN
    caller = django_user_model.objects.create_user("caller")
    # Schedules are read with the view permission (403 without it, for HEAD as for GET).
    caller.user_permissions.add(Permission.objects.get(codename="view_workflowschedule"))
    # Bulk operations are read by staff with the change permission on workflows.
    caller.is_staff = True
    caller.save()
    caller.user_permissions.add(Permission.objects.get(codename="change_workflow"))
    token = Token.objects.create(user=caller).key
    without_csrf = Client(enforce_csrf_checks=True)
    with_csrf = Client(enforce_csrf_checks=True, HTTP_X_CSRFTOKEN=CSRF_SECRET)
    with_csrf.cookies["csrftoken"] = CSRF_SECRET
    for document in (schema.raw_schema, without_trailing_slashes(schema.raw_schema), site.raw_schema):
        for path, operations in document["paths"].items():
            concrete = path.replace("{id}", str(uuid.uuid4())).replace("{operation_id}", str(uuid.uuid4()))
            credentials = f"Bearer {METRICS_TOKEN}" if path.startswith("/metrics") else f"Token {token}"
            taken = METHODS & set(operations)
            for method in sorted(METHODS - taken):
                response = getattr(without_csrf, method)(concrete, HTTP_AUTHORIZATION=credentials)
                label = f"{method.upper()} {concrete}: {response.status_code}"
                if method == "options" or method == "head" and "get" in taken:
                    assert response.status_code < 500 and response.status_code != 403, label
                    continue
                if path.startswith("/api-auth/") and method not in ("get", "head"):
                    assert response.status_code == 403, label
                    response = getattr(with_csrf, method)(concrete)
                    label = f"{method.upper()} {concrete} with its CSRF token: {response.status_code}"
                assert response.status_code == 405, label
                assert response["Allow"] and method.upper() not in response["Allow"], label
