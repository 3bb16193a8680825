from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import events, reload
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Workflow

TASKS = [{"type": "echo", "params": {"n": 1}}, {"type": "noop"}]


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def other_user(db):
    return User.objects.create_user("other", password="pw")


@pytest.fixture
def staff(db):
    """A staff user who may change workflows (as in the admin)."""
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_workflow"))
    return user


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(owner):
    return client_for(owner)


def create(user, engine=None, **kwargs) -> Workflow:
    """Create (and with start=True, start) a workflow; pass `engine` to have its jobs queued."""
    kwargs.setdefault("name", "wf")
    kwargs.setdefault("tasks", TASKS)
    call = engine.call if engine else (lambda function, **kw: function(**kw))
    workflow, _ = call(services.workflow_create, actor=Actor.api(user), **kwargs)
    return workflow


# --- Creating and starting -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/workflow/start", "/workflow/start/"])
def test_start_creates_and_starts_a_workflow(engine, api, owner, path):
    with engine.capture(execute=True):
        response = api.post(path, {"name": "demo", "tasks": TASKS, "input": {"a": 1}}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == State.PREPARE and body["created_by"] == "owner"
    assert body["progress"] == {"done": 0, "total": 4}
    assert [t["name"] for t in body["tasks"]] == ["prepare", "echo-1", "noop-2", "validate"]
    assert body["transitions"] == [
        {
            "seq": 1,
            "event": "start",
            "source": "INIT",
            "target": "PREPARE",
            "actor": "api:owner",
            "reason": "",
            "data": {},
            "created_at": body["transitions"][0]["created_at"],
        }
    ]
    assert body["available_transitions"] == ["cancel", "pause"]  # PREPARE's work is the engine's to end
    engine.drain()
    detail = api.get(f"/workflow/{body['id']}").json()
    assert detail["state"] == State.COMPLETE
    assert detail["results"]["EXECUTE"] == {"echo-1": {"n": 1}, "noop-2": None}


def test_create_without_starting_then_start(engine, api):
    response = api.post("/workflows/", {"name": "later", "tasks": TASKS}, format="json")
    assert response.status_code == 201
    workflow_id = response.json()["id"]
    assert response.json()["state"] == State.INIT
    for path in [f"/execution/workflows/{workflow_id}/start", f"/workflows/{workflow_id}/start/"]:
        with engine.capture(execute=True):
            response = api.post(path)
        if response.status_code == 202:
            assert response.json()["state"] == State.PREPARE
        else:  # the second start: already started
            assert response.status_code == 409
            assert response.json()["state"] == State.PREPARE


def test_repeating_an_idempotency_key(api, other_user):
    body = {"name": "once", "tasks": TASKS, "idempotency_key": "order-42"}
    first = api.post("/workflow/start", body, format="json")
    again = api.post("/workflow/start", body, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    different = api.post("/workflow/start", {**body, "input": {"changed": True}}, format="json")
    assert different.status_code == 409
    assert "idempotency key" in different.json()["detail"]
    # Keys are scoped to their creator: another user's same key is another request.
    stranger = client_for(other_user).post("/workflow/start", body, format="json")
    assert stranger.status_code == 201 and stranger.json()["id"] != first.json()["id"]
    assert client_for(other_user).post("/workflow/start", body, format="json").json()["id"] == stranger.json()["id"]
    assert Workflow.objects.count() == 2


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({}, "name", "required"),
        ({"name": "x", "definition": "nope"}, "definition", "unknown workflow definition 'nope'"),
        ({"name": "x", "tasks": [{"type": "nope"}]}, "tasks", "unknown task type 'nope'"),
        ({"name": "x", "tasks": [{"params": {}}]}, "tasks", "required"),
        ({"name": "x", "tasks": "all of them"}, "tasks", "list"),
        ({"name": "x", "tasks": [{"type": "noop", "max_attempts": 0}]}, "tasks", "greater than or equal to 1"),
        ({"name": "x", "tasks": [{"type": "noop", "timeout": "soon"}]}, "tasks", "valid number"),
        ({"name": "x", "tasks": [{"type": "noop", "params": [1]}]}, "tasks", "JSON object"),
        ({"name": "x", "input": [1, 2]}, "input", "JSON object"),
        ({"name": "x", "mode": "sometimes"}, "mode", "not a valid choice"),
        ({"name": "x" * 201}, "name", "no more than 200"),
    ],
)
def test_bad_input_gets_400_naming_the_field(api, body, field, message):
    response = api.post("/workflow/start", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert message in str(response.json()[field])
    assert not Workflow.objects.exists()


def test_malformed_json_and_oversized_bodies_get_400(api, settings):
    response = api.post("/workflow/start", "{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    response = api.post("/workflow/start", {"name": "big", "input": {"blob": "x" * 4096}}, format="json")
    assert response.status_code == 400 and "larger than 2048 bytes" in response.json()["detail"]
    assert not Workflow.objects.exists()


# --- Reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["/workflow/{}", "/workflow/{}/", "/workflows/{}", "/workflows/{}/"])
def test_detail_answers_on_every_path(api, owner, template):
    workflow = create(owner)
    response = api.get(template.format(workflow.pk))
    assert response.status_code == 200
    assert response.json()["id"] == str(workflow.pk)


def test_status_tasks_and_transitions(engine, api, owner):
    workflow = create(owner, engine, start=True)
    engine.run(engine.pending()[0], tasks=2)  # PREPARE done, and the first EXECUTE task, run by the same worker
    status = api.get(f"/execution/workflows/{workflow.pk}/status").json()
    assert status == {
        "id": str(workflow.pk),
        "state": "EXECUTE",
        "phase": "EXECUTE",
        "progress": {"done": 2, "total": 4},
        "available_transitions": ["cancel", "pause"],
        "waiting_for_next": False,
        "paused_at": None,
        "error": "",
        "priority": 0,
        "concurrency_key": "",
        "max_parallel": None,
        "waiting_reason": None,
    }
    tasks = api.get(f"/workflows/{workflow.pk}/tasks").json()
    assert [(t["name"], t["status"]) for t in tasks] == [
        ("prepare", "SUCCEEDED"),
        ("echo-1", "SUCCEEDED"),
        ("noop-2", "QUEUED"),
        ("validate", "PENDING"),
    ]
    transitions = api.get(f"/workflows/{workflow.pk}/transitions/").json()
    assert [(t["seq"], t["event"], t["actor"]) for t in transitions] == [
        (1, "start", "api:owner"),
        (2, "execute", "worker"),
    ]


@pytest.mark.parametrize(
    "path", ["/workflow/{}", "/workflows/{}/tasks", "/workflows/{}/transitions", "/execution/workflows/{}/status"]
)
@pytest.mark.parametrize("workflow_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "1"])
def test_unknown_or_malformed_ids_get_404(api, path, workflow_id):
    assert api.get(path.format(workflow_id)).status_code == 404


def test_list_filters_searches_orders_and_paginates(api, owner):
    for i in range(7):
        create(owner, name=f"batch-{i}", mode="manual" if i % 2 else "auto", start=i < 3)
    create(owner, name="special")
    listing = api.get("/workflows/", {"page_size": 3}).json()
    assert listing["count"] == 8 and len(listing["results"]) == 3 and listing["next"]
    assert listing["results"][0]["name"] == "special", "newest first"
    assert listing["results"][0]["progress"] == {"done": 0, "total": 4}
    states = api.get("/workflows/", {"state": "PREPARE"}).json()
    assert states["count"] == 3
    assert api.get("/workflows/?state=PREPARE&state=INIT").json()["count"] == 8
    assert api.get("/workflows/", {"mode": "manual"}).json()["count"] == 3
    assert api.get("/workflows/", {"search": "spec"}).json()["count"] == 1
    assert api.get("/workflows/", {"definition": "default"}).json()["count"] == 8
    names = [w["name"] for w in api.get("/workflows/", {"ordering": "name", "page_size": 2}).json()["results"]]
    assert names == ["batch-0", "batch-1"]
    assert api.get("/workflows/", {"created_after": "2999-01-01T00:00:00Z"}).json()["count"] == 0
    assert api.get("/workflows/", {"created_before": "2999-01-01T00:00:00Z"}).json()["count"] == 8
    assert api.get("/workflows/", {"created_after": "yesterday"}).status_code == 400
    assert api.get("/workflows/", {"state": "SLEEPING"}).status_code == 400
    assert api.get("/workflows/", {"page_size": 500}).json()["count"] == 8


@pytest.mark.parametrize("offset", ["+23:55", "-23:00", "+16:00", "+05:30"])
def test_date_filters_take_any_offset_and_compare_in_utc(api, owner, offset):
    create(owner)
    assert api.get("/workflows/", {"created_after": f"2020-01-01T00:00:00{offset}"}).json()["count"] == 1
    assert api.get("/workflows/", {"created_before": f"0863-09-24T17:51:04{offset}"}).json()["count"] == 0


def test_a_date_filter_outside_the_calendar_in_utc_is_a_client_error(api, owner):
    response = api.get("/workflows/", {"created_before": "0001-01-01T00:00:00+23:00"})
    assert response.status_code == 400
    assert "created_before" in response.json()


def test_stats(engine, api, owner, other_user):
    done = create(owner, engine, start=True)
    create(owner)
    create(other_user)
    engine.drain()
    finished = reload(done).finished_at
    Workflow.objects.filter(pk=done.pk).update(started_at=finished - timedelta(seconds=2.5))
    stats = api.get("/execution/stats").json()
    assert stats["workflows_by_state"]["COMPLETE"] == 1
    assert stats["workflows_by_state"]["INIT"] == 1, "other users' workflows are not counted"
    assert stats["tasks_by_status"]["SUCCEEDED"] == 4
    assert stats["duration"] == {"median_seconds": 2.5, "p95_seconds": 2.5, "sample": 1}, "from its start to its end"
    assert stats["completed_last_minute"] == 1 and stats["completed_last_hour"] == 1
    assert stats["queue_depth"] == 0 and isinstance(stats["workers"], int)
    assert reload(done).state == State.COMPLETE


# --- Transitions -------------------------------------------------------------------------------


def test_manual_workflow_stepped_over_the_api(engine, api):
    with engine.capture(execute=True):
        workflow_id = api.post(
            "/workflow/start", {"name": "m", "mode": "manual", "tasks": TASKS}, format="json"
        ).json()["id"]
    busy = api.post(f"/workflow/{workflow_id}/next")
    assert busy.status_code == 409 and "has not finished" in busy.json()["detail"]
    for expected in ["EXECUTE", "VALIDATE", "COMPLETE"]:
        engine.drain()
        with engine.capture(execute=True):
            response = api.post(f"/workflow/{workflow_id}/next/")
        assert response.status_code == 202 and response.json()["state"] == expected
    assert events(Workflow.objects.get(pk=workflow_id)) == ["start", "execute", "validate", "complete"]


def test_waiting_for_next_is_true_only_while_a_manual_phase_waits(engine, api, owner):
    def waiting(workflow_id) -> set[bool]:
        return {
            api.get(f"/execution/workflows/{workflow_id}/status").json()["waiting_for_next"],
            api.get(f"/workflow/{workflow_id}").json()["waiting_for_next"],
            next(w for w in api.get("/workflows/").json()["results"] if w["id"] == str(workflow_id))[
                "waiting_for_next"
            ],
        }

    manual = create(owner, engine, name="m", mode="manual", start=True)
    automatic = create(owner, name="a", start=True)  # its PREPARE work is queued, not done
    assert waiting(manual.pk) == {False}  # PREPARE's work is still queued
    engine.drain()
    assert waiting(manual.pk) == {True}
    assert "next" in api.get(f"/execution/workflows/{manual.pk}/status").json()["available_transitions"]
    assert waiting(automatic.pk) == {False}
    with engine.capture(execute=True):
        assert api.post(f"/workflow/{manual.pk}/next").json()["state"] == "EXECUTE"
    assert waiting(manual.pk) == {False}  # EXECUTE's tasks are queued
    engine.drain()
    assert waiting(manual.pk) == {True}
    with engine.capture(execute=True):
        api.post(f"/workflow/{manual.pk}/next")
    engine.drain()
    with engine.capture(execute=True):
        assert api.post(f"/workflow/{manual.pk}/next").json()["state"] == "COMPLETE"
    assert waiting(manual.pk) == {False}


def test_the_schema_documents_waiting_for_next(api):
    schema = api.get("/schema", {"format": "json"}).json()["components"]["schemas"]
    for name in ("WorkflowStatus", "WorkflowDetail", "WorkflowList"):
        field = schema[name]["properties"]["waiting_for_next"]
        assert field["type"] == "boolean" and "next" in field["description"]
        assert "waiting_for_next" in schema[name]["required"]


def test_retry_and_its_conflicts(engine, api):
    with engine.capture(execute=True):
        body = {"name": "r", "tasks": [{"type": "fail", "params": {"times": 1}, "max_attempts": 1}]}
        workflow_id = api.post("/workflow/start", body, format="json").json()["id"]
    engine.drain()
    with engine.capture(execute=True):
        response = api.post(f"/workflow/{workflow_id}/retry")
    assert response.status_code == 202 and response.json()["state"] == "EXECUTE"
    engine.drain()
    refused = api.post(f"/workflow/{workflow_id}/retry")
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": "cannot retry a workflow in state COMPLETE",
        "state": "COMPLETE",
        "available_transitions": ["delete"],
    }
    auto_next = api.post(f"/workflow/{workflow_id}/next")
    assert auto_next.status_code == 409 and auto_next.json()["state"] == "COMPLETE"


def test_cancel_with_a_reason(engine, api, owner):
    workflow = create(owner, start=True)
    response = api.post(f"/execution/workflows/{workflow.pk}/cancel", {"reason": "wrong input"}, format="json")
    assert response.status_code == 202 and response.json()["state"] == "CANCELLED"
    assert response.json()["transitions"][-1]["reason"] == "wrong input"
    again = api.post(f"/execution/workflows/{workflow.pk}/cancel/")
    assert again.status_code == 409 and again.json()["state"] == "CANCELLED"
    assert set(Task.objects.filter(workflow=workflow).values_list("status", flat=True)) == {"CANCELLED"}


def test_update_only_before_start(api, owner):
    workflow = create(owner)
    response = api.patch(f"/workflows/{workflow.pk}", {"input": {"k": 1}, "tasks": [{"type": "noop"}]}, format="json")
    assert response.status_code == 200
    assert response.json()["input"] == {"k": 1}
    assert [t["name"] for t in response.json()["tasks"]] == ["prepare", "noop-1", "validate"]
    response = api.put(f"/workflows/{workflow.pk}/", {"name": "renamed", "mode": "manual"}, format="json")
    assert response.status_code == 200 and response.json()["name"] == "renamed"
    bad = api.patch(f"/workflows/{workflow.pk}", {"tasks": [{"type": "nope"}]}, format="json")
    assert bad.status_code == 400 and "tasks" in bad.json()
    services.workflow_start(workflow.pk, actor=Actor.api(owner))
    refused = api.patch(f"/workflows/{workflow.pk}", {"name": "late"}, format="json")
    assert refused.status_code == 409 and refused.json()["state"] == "PREPARE"
    assert reload(workflow).name == "renamed"


def test_delete_only_when_not_running(api, owner):
    running = create(owner, start=True)
    response = api.delete(f"/workflow/{running.pk}")
    assert response.status_code == 409 and response.json()["state"] == "PREPARE"
    idle = create(owner)
    assert api.delete(f"/workflow/{idle.pk}/").status_code == 204
    assert not Workflow.objects.filter(pk=idle.pk).exists()
    assert api.delete(f"/workflow/{idle.pk}").status_code == 404


# --- Who may do what ---------------------------------------------------------------------------


PATHS = [
    ("get", "/workflow/{}"),
    ("get", "/workflows/{}"),
    ("get", "/workflows/{}/tasks"),
    ("get", "/workflows/{}/transitions"),
    ("get", "/execution/workflows/{}/status"),
    ("post", "/execution/workflows/{}/start"),
    ("post", "/workflow/{}/next"),
    ("post", "/workflow/{}/retry"),
    ("post", "/execution/workflows/{}/cancel"),
    ("patch", "/workflows/{}"),
    ("delete", "/workflow/{}"),
]


@pytest.mark.parametrize("method, path", PATHS)
def test_anonymous_requests_get_401(owner, method, path):
    workflow = create(owner)
    response = getattr(client_for(None), method)(path.format(workflow.pk))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(
    "method, path", [("get", "/workflows/"), ("post", "/workflow/start"), ("get", "/execution/stats")]
)
def test_anonymous_collection_requests_get_401(db, method, path):
    assert getattr(client_for(None), method)(path, {}, format="json").status_code == 401


@pytest.mark.parametrize("method, path", PATHS)
def test_another_users_workflow_is_a_404_everywhere(owner, other_user, method, path):
    workflow = create(owner)
    response = getattr(client_for(other_user), method)(path.format(workflow.pk), {}, format="json")
    assert response.status_code == 404
    assert reload(workflow).state == State.INIT
    assert client_for(other_user).get("/workflows/").json()["count"] == 0


def test_users_who_may_change_workflows_see_and_act_on_every_workflow(engine, owner, staff):
    workflow = create(owner)
    client = client_for(staff)
    assert client.get("/workflows/").json()["count"] == 1
    with engine.capture(execute=True):
        response = client.post(f"/execution/workflows/{workflow.pk}/start")
    assert response.status_code == 202
    assert response.json()["transitions"][0]["actor"] == "api:staff"


def test_model_permissions_grant_view_and_actions(owner, other_user):
    workflow = create(owner)
    client = client_for(other_user)
    other_user.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    assert client.get(f"/workflow/{workflow.pk}").status_code == 200
    assert client.post(f"/execution/workflows/{workflow.pk}/cancel").status_code == 403
    assert client.delete(f"/workflow/{workflow.pk}").status_code == 403
    other_user.user_permissions.add(Permission.objects.get(codename="change_workflow"))
    client = client_for(User.objects.get(pk=other_user.pk))  # permissions are cached per user object
    assert client.post(f"/execution/workflows/{workflow.pk}/cancel").status_code == 202
    assert client.delete(f"/workflow/{workflow.pk}").status_code == 403
    other_user.user_permissions.add(Permission.objects.get(codename="delete_workflow"))
    assert client_for(User.objects.get(pk=other_user.pk)).delete(f"/workflow/{workflow.pk}").status_code == 204


def test_session_login_for_the_browsable_api(client, owner):
    login_page = client.get("/api-auth/login/")
    assert login_page.status_code == 200
    assert client.login(username="owner", password="pw")
    page = client.get("/workflows/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert dom.parse(page).one("title").text == "Workflow List – Workflow orchestrator API"


# --- Query counts -------------------------------------------------------------------------------


def populate(user, workflows: int, tasks: int) -> None:
    for i in range(workflows):
        workflow = create(user, name=f"q{i}", tasks=[{"name": f"t{j}", "type": "noop"} for j in range(tasks)])
        services.workflow_start(workflow.pk, actor=Actor.api(user))
        services.workflow_cancel(workflow.pk, actor=Actor.api(user))


@pytest.mark.parametrize("path", ["/workflows/", "/workflows/?state=CANCELLED&ordering=name"])
def test_list_queries_do_not_grow_with_workflows_or_tasks(api, owner, django_assert_max_num_queries, path):
    populate(owner, 2, 1)
    with django_assert_max_num_queries(6) as small:
        assert api.get(path).status_code == 200
    populate(owner, 20, 10)
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert api.get(path).json()["count"] == 22


def test_detail_queries_do_not_grow_with_tasks_or_transitions(api, owner, django_assert_max_num_queries):
    small = create(owner, tasks=[{"type": "noop"}])
    big = create(owner, tasks=[{"name": f"t{i}", "type": "noop"} for i in range(50)])
    for workflow in (small, big):
        services.workflow_start(workflow.pk, actor=Actor.api(owner))
        services.workflow_cancel(workflow.pk, actor=Actor.api(owner))
    # 6, and one more for the webhook deliveries (a third for their attempts when there are any)
    with django_assert_max_num_queries(7) as measured:
        api.get(f"/workflow/{small.pk}")
    with django_assert_max_num_queries(len(measured.captured_queries)):
        response = api.get(f"/workflow/{big.pk}")
    assert len(response.json()["tasks"]) == 52


def test_pause_and_resume_with_reasons_and_409_when_not_allowed(engine, api, owner):
    workflow = create(owner, engine, start=True)
    paused = api.post(f"/execution/workflows/{workflow.pk}/pause", {"reason": "deploy"}, format="json")
    assert paused.status_code == 202, paused.json()
    body = paused.json()
    assert body["state"] == "PREPARE" and body["paused_at"] is not None
    assert "resume" in body["available_transitions"] and "pause" not in body["available_transitions"]
    assert (body["transitions"][-1]["event"], body["transitions"][-1]["reason"]) == ("pause", "deploy")
    assert api.get(f"/execution/workflows/{workflow.pk}/status").json()["paused_at"] == body["paused_at"]

    again = api.post(f"/execution/workflows/{workflow.pk}/pause")
    assert again.status_code == 409 and again.json()["state"] == "PREPARE"
    assert "resume" in again.json()["available_transitions"]

    resumed = api.post(f"/workflows/{workflow.pk}/resume/")
    assert resumed.status_code == 202 and resumed.json()["paused_at"] is None
    assert [row["event"] for row in resumed.json()["transitions"]][-2:] == ["pause", "resume"]
    engine.drain()
    assert reload(workflow).state == "COMPLETE"
    ended = api.post(f"/execution/workflows/{workflow.pk}/resume")
    assert ended.status_code == 409 and ended.json()["state"] == "COMPLETE"


def test_a_pause_reason_must_be_text_the_database_can_store(api, owner):
    workflow = create(owner)
    response = api.post(f"/execution/workflows/{workflow.pk}/pause", {"reason": "a\x00b"}, format="json")
    assert response.status_code == 400 and "reason" in response.json()
    assert reload(workflow).paused_at is None
