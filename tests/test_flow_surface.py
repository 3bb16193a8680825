"""Flow control where users reach it: a workflow's priority and concurrency key in the API
(create bodies, list, detail, status, filters), the browsable API's form, `manage.py
workflow start` / `show` / `list` and the admin's add form, list and page; and concurrency
limits set, listed and removed from `manage.py workflow limit` and the admin, always
through the engine's services (a new limit counts the key's running tasks, a removed one
wakes the tasks it held back). Bad values are refused naming the field, never a 500."""

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import ROOT, child_env, reload
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, ConcurrencyLimit, State, Task, Workflow
from workflow_orchestrator.registry import WorkflowDefinition, _definitions, register_definition

Status = Task.Status
TASKS = [{"type": "noop"}]
ADD_WORKFLOW = reverse("admin:workflow_orchestrator_workflow_add")
WORKFLOWS = reverse("admin:workflow_orchestrator_workflow_changelist")
LIMITS = reverse("admin:workflow_orchestrator_concurrencylimit_changelist")
ADD_LIMIT = reverse("admin:workflow_orchestrator_concurrencylimit_add")


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def tenanted():
    """A definition whose workflows default to priority 7 and to their tenant as the key."""
    register_definition(
        WorkflowDefinition(
            key="tenanted", prepare="noop", priority=7, concurrency_key=lambda input: f"tenant-{input['tenant']}"
        )
    )
    yield "tenanted"
    _definitions.pop("tenanted")


def running_task(engine, key: str) -> Task:
    """A task of a workflow with `key`, claimed by a worker: RUNNING."""
    engine.start(tasks=TASKS, concurrency_key=key)
    claimed = services.task_claim(None, None, 300.0, worker="w1")
    assert claimed is not None
    claimed = Task.objects.get(pk=claimed.pk)
    assert (claimed.status, claimed.concurrency_key) == (Status.RUNNING, key)
    return claimed


def deliveries(engine) -> int:
    """The deliveries on the broker (jobs for no task in particular), taken off it."""
    return sum(job["name"].startswith("delivery-") for job in engine.pending())


# --- The API -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "state"), [("/workflow/start", State.PREPARE), ("/workflows/", State.INIT)])
def test_a_create_body_takes_a_priority_and_a_concurrency_key(engine, api, path, state):
    body = {"name": "urgent", "tasks": TASKS, "priority": 50, "concurrency_key": "acme"}
    with engine.capture(execute=True):
        response = api.post(path, body, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["state"], created["priority"], created["concurrency_key"]) == (state, 50, "acme")
    # Its tasks carry them, for the claim's order and the key's limits.
    assert set(Task.objects.values_list("priority", "concurrency_key")) == {(50, "acme")}


def test_left_out_or_null_they_are_the_definition_s_and_an_empty_key_is_none(api, tenanted):
    def created(**fields) -> tuple:
        body = {"name": "t", "definition": tenanted, "input": {"tenant": "acme"}, **fields}
        response = api.post("/workflows/", body, format="json")
        assert response.status_code == 201, response.content
        return response.json()["priority"], response.json()["concurrency_key"]

    assert created() == (7, "tenant-acme")
    assert created(priority=None, concurrency_key=None) == (7, "tenant-acme")
    assert created(priority=-5, concurrency_key="") == (-5, "")
    assert created(priority=0, concurrency_key=" spaced ") == (0, " spaced ")  # a key is kept exactly
    assert api.post("/workflows/", {"name": "t"}, format="json").json()["priority"] == 0  # the default definition's


@pytest.mark.parametrize("path", ["/workflow/start", "/workflows/"])
@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"priority": 101}, "priority", "less than or equal to 100"),
        ({"priority": -101}, "priority", "greater than or equal to -100"),
        ({"priority": "5"}, "priority", "valid integer"),
        ({"priority": 1.5}, "priority", "valid integer"),
        ({"priority": True}, "priority", "valid integer"),
        ({"priority": 10**30}, "priority", "less than or equal to 100"),
        ({"concurrency_key": 5}, "concurrency_key", "valid string"),
        ({"concurrency_key": "k" * 201}, "concurrency_key", "no more than 200 characters"),
        ({"concurrency_key": "a\x00b"}, "concurrency_key", "Null characters are not allowed"),
        ({"concurrency_key": ["acme"]}, "concurrency_key", "valid string"),
    ],
)
def test_a_bad_priority_or_key_is_a_400_naming_the_field_and_stores_nothing(api, path, fields, field, says):
    response = api.post(path, {"name": "x", **fields}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field] and says in str(response.json()[field]), response.json()
    assert not Workflow.objects.exists()


def test_a_definition_s_key_that_cannot_be_made_from_the_input_is_a_400_naming_the_key(api, tenanted):
    response = api.post("/workflow/start", {"name": "t", "definition": tenanted, "input": {}}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["concurrency_key"] and "could not be made from the input" in str(response.json())
    assert not Workflow.objects.exists()


def test_they_are_set_when_created_an_update_refuses_them(api, owner):
    workflow, _ = services.workflow_create(name="w", tasks=TASKS, actor=Actor.api(owner), priority=3)
    for fields in ({"priority": 9}, {"concurrency_key": "other"}):
        response = api.patch(f"/workflows/{workflow.pk}", fields, format="json")
        assert response.status_code == 400 and list(response.json()) == list(fields), response.content
    assert (reload(workflow).priority, reload(workflow).concurrency_key) == (3, "")


def test_the_list_the_detail_and_the_status_show_them(api, owner):
    workflow, _ = services.workflow_create(
        name="w", tasks=TASKS, actor=Actor.api(owner), priority=-20, concurrency_key="acme"
    )
    [listed] = api.get("/workflows/").json()["results"]
    detail = api.get(f"/workflow/{workflow.pk}").json()
    status = api.get(f"/execution/workflows/{workflow.pk}/status").json()
    for shown in (listed, detail, status):
        assert (shown["priority"], shown["concurrency_key"]) == (-20, "acme")


def test_the_list_filters_by_priority_and_key_and_orders_by_priority(api, owner):
    for name, priority, key in [("low", -10, "acme"), ("normal", 0, ""), ("high", 10, "acme"), ("top", 90, "beta")]:
        services.workflow_create(name=name, tasks=TASKS, actor=Actor.api(owner), priority=priority, concurrency_key=key)

    def names(**params) -> list[str]:
        response = api.get("/workflows/", params)
        assert response.status_code == 200, response.content
        return [row["name"] for row in response.json()["results"]]

    assert names(concurrency_key="acme", ordering="priority") == ["low", "high"]
    assert names(priority=10) == ["high"]
    assert names(ordering="-priority") == ["top", "high", "normal", "low"]
    for bad in ("1.5", "high", "101", "9" * 5000):
        response = api.get("/workflows/", {"priority": bad})
        assert response.status_code == 400 and list(response.json()) == ["priority"], (bad, response.content[:200])


def test_the_browsable_form_sends_them_and_shows_them_back_with_their_errors(owner):
    browser = Client(HTTP_ACCEPT="text/html")
    browser.force_login(owner)
    form = dom.parse(browser.get("/workflow/start")).one("#start-workflow-form")
    assert form.one("input[name=priority]").get("value") == "" and form.one("input[name=concurrency_key]")
    body = {"name": "x", "priority": 500, "concurrency_key": "acme"}
    response = browser.post("/workflow/start", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    form = dom.parse(response).one("#start-workflow-form")
    assert form.one("input[name=priority]")["value"] == "500"
    assert form.one("input[name=concurrency_key]")["value"] == "acme"
    [group] = form.select(".form-group.has-error")
    assert group.one("input[name=priority]") and "less than or equal to 100" in group.text
    assert not Workflow.objects.exists()


# --- The command line ---------------------------------------------------------------------------


def cli(engine, *args) -> str:
    out = StringIO()
    with engine.capture(execute=True):
        call_command("workflow", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_start_takes_a_priority_and_a_key_and_show_and_list_show_them(engine):
    started = json.loads(
        cli(engine, "start", "--name", "urgent", "--priority", "42", "--concurrency-key", "acme", "--json")
    )
    assert (started["priority"], started["concurrency_key"]) == (42, "acme")
    cli(engine, "start", "--name", "plain")
    shown = cli(engine, "show", started["id"]).splitlines()
    assert shown[1] == "  priority 42  concurrency key acme"
    rows = {line.split()[-1]: line.split() for line in cli(engine, "list").splitlines()}
    # id, state, mode, priority, created (date and time), key, name
    assert (rows["urgent"][3], rows["urgent"][6]) == ("42", "acme")
    assert (rows["plain"][3], rows["plain"][6]) == ("0", "—")
    assert {row["name"]: row["priority"] for row in json.loads(cli(engine, "list", "--json"))} == {
        "urgent": 42,
        "plain": 0,
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--priority", "101"], "priority: priority must be a whole number from -100 to 100"),
        (["--priority", "high"], "argument --priority: invalid int value: 'high'"),
        (["--concurrency-key", "k" * 201], "concurrency_key: concurrency_key must be a string of at most 200"),
        (["--concurrency-key", "a\udcffb"], "concurrency_key: concurrency_key contains a lone surrogate"),
    ],
)
def test_start_refuses_a_bad_priority_or_key_naming_it(engine, args, says):
    with pytest.raises(CommandError) as refused:
        cli(engine, "start", "--name", "x", *args)
    assert says in str(refused.value)
    assert not Workflow.objects.exists()


def test_limit_set_list_and_remove(engine):
    running_task(engine, "acme")  # counts against the limit at once
    engine.start(tasks=TASKS, concurrency_key="acme")  # its PREPARE task waits
    assert cli(engine, "limit", "set", "acme", "--max-running", "2") == (
        "set the limit of 'acme': at most 2 running; 1 running now\n"
    )
    assert cli(engine, "limit", "set", "api", "--rate", "10", "--per", "60") == (
        "set the limit of 'api': at most 10 starts per 60 s; 0 running now\n"
    )
    changed = cli(engine, "limit", "set", "acme", "--max-running", "3", "--rate", "5", "--per", "1.5")
    assert changed == "changed the limit of 'acme': at most 3 running, at most 5 starts per 1.5 s; 1 running now\n"

    fields = ("key", "max_running", "running", "rate", "per_seconds", "waiting")
    rows = json.loads(cli(engine, "limit", "list", "--json"))
    assert [{field: row[field] for field in fields} for row in rows] == [
        {"key": "acme", "max_running": 3, "running": 1, "rate": 5, "per_seconds": 1.5, "waiting": 1},
        {"key": "api", "max_running": None, "running": 0, "rate": 10, "per_seconds": 60.0, "waiting": 0},
    ]
    table = cli(engine, "limit", "list")
    for header in ("key", "max running", "running", "rate", "waiting"):
        assert header in table.splitlines()[1], table
    acme = next(line for line in table.splitlines() if "acme" in line)
    assert [cell.strip() for cell in acme.strip("│ ").split("│")] == ["acme", "3", "1", "5 per 1.5 s", "1"]

    assert cli(engine, "limit", "remove", "api") == "removed the limit of 'api'\n"
    assert list(ConcurrencyLimit.objects.values_list("key", flat=True)) == ["acme"]
    with pytest.raises(CommandError, match="no limit for the key 'api'"):
        cli(engine, "limit", "remove", "api")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "max_running: give max_running, a rate, or both"),
        (["--max-running", "0"], "max_running: max_running must be a whole number from 1 to 2147483647"),
        (["--max-running", "2147483648"], "max_running: max_running must be a whole number from 1 to 2147483647"),
        (["--rate", "5"], "per_seconds: a rate needs per_seconds"),
        (["--rate", "5", "--per", "nan"], "per_seconds: a rate needs per_seconds"),
        (["--rate", "5", "--per", "0"], "per_seconds: a rate needs per_seconds"),
        (["--max-running", "1", "--per", "5"], "rate: per_seconds needs a rate"),
        (["--max-running", "many"], "argument --max-running: invalid int value: 'many'"),
    ],
)
def test_limit_set_refuses_bad_limits_naming_the_field(engine, args, says):
    with pytest.raises(CommandError) as refused:
        cli(engine, "limit", "set", "acme", *args)
    assert says in str(refused.value)
    assert not ConcurrencyLimit.objects.exists()


def test_a_key_the_database_cannot_hold_is_refused_or_not_found(engine):
    with pytest.raises(CommandError, match="key: key contains a lone surrogate"):
        cli(engine, "limit", "set", "a\udcffb", "--max-running", "1")
    with pytest.raises(CommandError, match="no limit for the key"):
        cli(engine, "limit", "remove", "a\udcffb")


def test_removing_a_limit_that_is_not_there_exits_1_in_one_line(transactional_db):
    done = subprocess.run(
        [sys.executable, "manage.py", "workflow", "limit", "remove", "nobody"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "CommandError: no limit for the key 'nobody'"


# --- The admin: workflows ------------------------------------------------------------------------

ADD_VALID = {"name": "from the admin", "definition": "default", "mode": "auto", "input": "{}", "tasks": ""}


def test_the_add_form_takes_a_priority_and_a_key(admin_client):
    form = dom.parse(admin_client.get(ADD_WORKFLOW)).one("#content form[method=post]")
    assert form.one("input[name=priority]")["type"] == "number"
    assert form.one("input[name=concurrency_key]")["maxlength"] == "200"
    response = admin_client.post(ADD_WORKFLOW, {**ADD_VALID, "priority": "-30", "concurrency_key": "acme"})
    assert response.status_code == 302, response.context and response.context["form"].errors
    workflow = Workflow.objects.get()
    assert (workflow.priority, workflow.concurrency_key) == (-30, "acme")


def test_left_empty_the_add_form_takes_the_definition_s(admin_client, tenanted):
    body = {**ADD_VALID, "definition": tenanted, "input": '{"tenant": "beta"}', "priority": "", "concurrency_key": ""}
    assert admin_client.post(ADD_WORKFLOW, body).status_code == 302
    assert Workflow.objects.values_list("priority", "concurrency_key").get() == (7, "tenant-beta")


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"priority": "101"}, "priority", "less than or equal to 100"),
        ({"priority": "1.5"}, "priority", "Enter a whole number."),
        ({"concurrency_key": "k" * 201}, "concurrency_key", "at most 200 characters"),
        ({"concurrency_key": "a\x00b"}, "concurrency_key", "Null characters are not allowed."),
        ({"definition": "tenanted", "input": "{}"}, "concurrency_key", "could not be made from the input"),
    ],
)
def test_the_add_form_shows_a_bad_priority_or_key_on_its_field(admin_client, tenanted, changes, field, says):
    response = admin_client.post(ADD_WORKFLOW, {**ADD_VALID, **changes})
    assert response.status_code == 200
    page = dom.parse(response)
    [row] = page.select(".form-row.errors")
    assert f"field-{field}" in row.classes and says in row.one(".errorlist").text
    assert not Workflow.objects.exists()


def test_the_workflow_list_shows_filters_and_searches_priority_and_key(admin_client, admin_user):
    for name, priority, key in [("low", -10, "acme"), ("normal", 0, ""), ("high", 10, "beta")]:
        services.workflow_create(
            name=name, tasks=TASKS, actor=Actor.admin(admin_user), priority=priority, concurrency_key=key
        )
    page = dom.parse(admin_client.get(WORKFLOWS))
    rows = {row.one("th.field-name").text: row for row in page.select("#result_list tbody tr")}
    assert {name: row.one("td.field-priority").text for name, row in rows.items()} == {
        "low": "-10",
        "normal": "0",
        "high": "10",
    }
    assert rows["low"].one("td.field-concurrency_key").text == "acme"
    assert page.one("#changelist-filter a", text="above 0 (first)")

    def listed(**params) -> set[str]:
        response = admin_client.get(WORKFLOWS, params)
        assert response.status_code == 200
        return {workflow.name for workflow in response.context["cl"].result_list}

    assert listed(priority="high") == {"high"}
    assert listed(priority="low") == {"low"}
    assert listed(priority="default") == {"normal"}
    assert listed(q="beta") == {"high"}
    ordered = admin_client.get(WORKFLOWS, {"o": str(response_column(page, "priority"))})
    assert [w.name for w in ordered.context["cl"].result_list] == ["low", "normal", "high"]


def response_column(page: dom.Element, field: str) -> int:
    """The changelist's number for a column (what `?o=` sorts by)."""
    headers = page.select("#result_list thead th")
    return 1 + next(i for i, th in enumerate(headers[1:]) if f"column-{field}" in th.classes)


def test_a_workflow_s_page_shows_its_priority_key_and_the_key_s_limit(engine, admin_client, admin_user):
    limited, _ = services.workflow_create(
        name="limited", tasks=TASKS, actor=Actor.admin(admin_user), priority=5, concurrency_key="acme"
    )
    free, _ = services.workflow_create(name="free", tasks=TASKS, actor=Actor.admin(admin_user), concurrency_key="beta")
    limit, _ = services.limit_set("acme", max_running=4)

    def shown(workflow) -> dict[str, str]:
        page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])))
        return {
            field: page.one(f".form-row.field-{field} .readonly").text
            for field in ("priority", "concurrency_key", "key_limit")
        } | {"link": (page.select(".field-key_limit a") or [{}])[0].get("href")}

    assert shown(limited) == {
        "priority": "5",
        "concurrency_key": "acme",
        "key_limit": "at most 4 running (0 running now)",
        "link": reverse("admin:workflow_orchestrator_concurrencylimit_change", args=[limit.pk]),
    }
    assert shown(free)["key_limit"] == "none: its tasks run without a limit"


# --- The admin: concurrency limits ---------------------------------------------------------------


def limit_url(limit: ConcurrencyLimit, action: str = "change") -> str:
    return reverse(f"admin:workflow_orchestrator_concurrencylimit_{action}", args=[limit.pk])


def test_adding_a_limit_goes_through_the_service_and_counts_the_running_tasks(engine, admin_client):
    running_task(engine, "acme")
    engine.start(tasks=TASKS, concurrency_key="acme")  # waiting
    response = admin_client.post(ADD_LIMIT, {"key": "acme", "max_running": "1", "rate": "", "per_seconds": ""})
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    limit = ConcurrencyLimit.objects.get()
    assert (limit.key, limit.max_running, limit.rate, limit.per_seconds, limit.running) == ("acme", 1, None, None, 1)
    page = dom.parse(admin_client.get(LIMITS))
    [row] = page.select("#result_list tbody tr")
    cells = {field: row.one(f".field-{field}").text for field in ("key", "max_running", "running", "rate", "waiting")}
    assert cells == {"key": "acme", "max_running": "1", "running": "1", "rate": "-", "waiting": "1"}
    for column in ("per_seconds", "updated"):
        assert page.one(f"#result_list thead th.column-{column}")


def test_changing_a_limit_keeps_its_key_and_wakes_what_it_now_lets_start(engine, admin_client):
    running_task(engine, "acme")
    limit, _ = services.limit_set("acme", max_running=1)
    engine.start(tasks=TASKS, concurrency_key="acme")
    engine.pending()  # the new task's own delivery: taken off
    form = dom.parse(admin_client.get(limit_url(limit))).one("#concurrencylimit_form")
    assert not form.select("input[name=key]")  # the key names the limit: read-only here
    for field in ("running", "window_starts", "window_started"):
        assert form.one(f".form-row.field-{field} .readonly"), field
    with engine.capture(execute=True):
        response = admin_client.post(limit_url(limit), {"max_running": "3", "rate": "20", "per_seconds": "60"})
    assert response.status_code == 302
    limit.refresh_from_db()
    assert (limit.key, limit.max_running, limit.rate, limit.per_seconds, limit.running) == ("acme", 3, 20, 60.0, 1)
    assert deliveries(engine) == 1  # for the one task waiting, now within the limit


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({}, {"max_running": "give max_running, a rate, or both"}),
        ({"max_running": "0"}, {"max_running": "max_running must be a whole number from 1 to 2147483647"}),
        ({"max_running": "2147483648"}, {"max_running": "whole number from 1 to 2147483647"}),
        ({"rate": "5"}, {"per_seconds": "a rate needs per_seconds"}),
        ({"rate": "5", "per_seconds": "86401"}, {"per_seconds": "a rate needs per_seconds"}),
        ({"max_running": "2", "per_seconds": "5"}, {"rate": "per_seconds needs a rate"}),
        ({"max_running": "many"}, {"max_running": "Enter a whole number."}),
        ({"rate": "5", "per_seconds": "inf"}, {"per_seconds": "Enter a number."}),
        ({"key": "", "max_running": "2"}, {"key": "This field is required."}),
        ({"key": "a\x00b", "max_running": "2"}, {"key": "Null characters are not allowed."}),
    ],
)
def test_a_bad_limit_is_shown_on_the_form_s_fields_and_stores_nothing(admin_client, fields, errors):
    body = {"key": "acme", "max_running": "", "rate": "", "per_seconds": "", **fields}
    response = admin_client.post(ADD_LIMIT, body)
    assert response.status_code == 200
    page = dom.parse(response)
    shown = {
        next(c for c in row.classes if c.startswith("field-")).removeprefix("field-"): row.one(".errorlist").text
        for row in page.select(".form-row.errors")
    }
    assert set(shown) == set(errors), shown
    for field, says in errors.items():
        assert says in shown[field], shown
    assert not ConcurrencyLimit.objects.exists()


def test_a_key_that_has_a_limit_already_is_refused_on_the_add_form(admin_client):
    services.limit_set("acme", max_running=1)
    response = admin_client.post(ADD_LIMIT, {"key": "acme", "max_running": "5", "rate": "", "per_seconds": ""})
    assert response.status_code == 200
    [row] = dom.parse(response).select(".form-row.errors")
    assert "field-key" in row.classes and "already exists" in row.text
    assert ConcurrencyLimit.objects.get().max_running == 1


def test_deleting_a_limit_goes_through_the_service_and_wakes_its_waiting_tasks(engine, admin_client):
    running_task(engine, "acme")
    limit, _ = services.limit_set("acme", max_running=1)
    engine.start(tasks=TASKS, concurrency_key="acme")
    engine.pending()
    with engine.capture(execute=True):
        response = admin_client.post(limit_url(limit, "delete"), {"post": "yes"})
    assert response.status_code == 302
    assert not ConcurrencyLimit.objects.exists()
    assert deliveries(engine) == 1


def test_bulk_delete_removes_each_limit_through_the_service(engine, admin_client):
    limits = [services.limit_set(key, max_running=1)[0] for key in ("a", "b", "c")]
    engine.start(tasks=TASKS, concurrency_key="a")
    engine.pending()
    selected = [str(limit.pk) for limit in limits[:2]]
    asked = admin_client.post(LIMITS, {"action": "delete_selected", "_selected_action": selected})
    assert asked.status_code == 200 and ConcurrencyLimit.objects.count() == 3  # it asks first
    with engine.capture(execute=True):
        done = admin_client.post(LIMITS, {"action": "delete_selected", "_selected_action": selected, "post": "yes"})
    assert done.status_code == 302
    assert list(ConcurrencyLimit.objects.values_list("key", flat=True)) == ["c"]
    assert deliveries(engine) == 1  # key a's waiting task


def test_limits_follow_the_model_s_permissions(engine, db):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_concurrencylimit"))
    client = Client()
    client.force_login(viewer)
    limit, _ = services.limit_set("acme", max_running=2)
    assert client.get(LIMITS).status_code == 200
    assert client.post(ADD_LIMIT, {"key": "b", "max_running": "1"}).status_code == 403
    assert client.post(limit_url(limit), {"max_running": "9"}).status_code == 403
    assert client.post(limit_url(limit, "delete"), {"post": "yes"}).status_code == 403
    assert ConcurrencyLimit.objects.values_list("key", "max_running").get() == ("acme", 2)
