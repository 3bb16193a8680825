"""The app in a project of its own: the admin's URLs bring the overview, one include brings
the REST API and /metrics under any prefix, and the API behaves the same whatever the
project's REST_FRAMEWORK setting says (only throttling follows it)."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests import dom
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State

TASKS = [{"type": "echo", "params": {"n": 1}}]

# Everything a project could set that the API depends on, set otherwise.
FOREIGN_REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.BasicAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.FormParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.TemplateHTMLRenderer"],
    "DEFAULT_FILTER_BACKENDS": [],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 1,
    "DEFAULT_VERSIONING_CLASS": "rest_framework.versioning.URLPathVersioning",
    "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
}


@pytest.fixture
def host(settings):
    settings.ROOT_URLCONF = "tests.host_urls"
    return settings


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def api(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    return client


def test_the_overview_comes_with_the_admins_own_urls(host, admin_client):
    overview = reverse("admin:workflow_orchestrator_workflow_dashboard")
    assert overview == "/admin/workflow_orchestrator/workflow/dashboard/"
    page = admin_client.get(overview)
    assert page.status_code == 200 and dom.parse(page).one("#dashboard")
    for url in ("/admin/", reverse("admin:workflow_orchestrator_workflow_changelist")):
        assert dom.parse(admin_client.get(url)).one("a#overview-link")["href"] == overview


def test_the_overview_is_refused_to_users_who_may_not_view_workflows(host, client, db):
    User.objects.create_user("clerk", password="pw", is_staff=True)
    client.login(username="clerk", password="pw")
    assert client.get("/admin/workflow_orchestrator/workflow/dashboard/").status_code == 403


@pytest.mark.parametrize("slash", ["", "/"])
def test_every_api_path_answers_under_the_projects_prefix(host, api, slash):
    started = api.post(f"/orchestrator/workflow/start{slash}", {"name": "prefixed", "tasks": TASKS}, format="json")
    assert started.status_code == 201, started.content
    workflow_id = started.json()["id"]
    for path in [
        f"/orchestrator/workflow/{workflow_id}",
        f"/orchestrator/workflows/{workflow_id}",
        f"/orchestrator/workflows/{workflow_id}/tasks",
        f"/orchestrator/workflows/{workflow_id}/transitions",
        f"/orchestrator/execution/workflows/{workflow_id}/status",
        "/orchestrator/execution/stats",
        "/orchestrator/workflows",
    ]:
        assert api.get(f"{path}{slash}").status_code == 200, path
    assert api.get(f"/workflows{slash}").status_code == 404


def test_metrics_answer_under_the_projects_prefix(host, client, settings, db):
    settings.ORCH_METRICS_TOKEN = "host-token"
    for path in ["/orchestrator/metrics", "/orchestrator/metrics/"]:
        response = client.get(path, HTTP_AUTHORIZATION="Bearer host-token")
        assert response.status_code == 200 and b"orchestrator_workflows" in response.content


def test_the_browsable_api_links_to_the_list_under_the_prefix(host, owner, client):
    client.force_login(owner)
    page = dom.parse(client.get("/orchestrator/workflows/", HTTP_ACCEPT="text/html"))
    assert page.one("a.navbar-brand")["href"] == "/orchestrator/workflows"


def test_the_api_ignores_the_projects_rest_framework_setting(host, api, owner, settings):
    settings.REST_FRAMEWORK = FOREIGN_REST_FRAMEWORK
    anonymous = APIClient().get("/orchestrator/workflows/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"

    started = api.post("/orchestrator/workflow/start", {"name": "json", "tasks": TASKS}, format="json")
    assert started.status_code == 201 and started["Content-Type"] == "application/json", started.content
    assert api.post("/orchestrator/workflow/start", {"name": "form"}).status_code == 415  # JSON only

    listing = api.get("/orchestrator/workflows/", {"page_size": 2, "ordering": "name"}).json()
    assert set(listing) == {"count", "next", "previous", "results"} and listing["count"] == 1
    assert api.get("/orchestrator/workflows/", {"page_size": 0}).status_code == 400
    assert api.get("/orchestrator/workflows/", {"state": "NOT_A_STATE"}).status_code == 400

    created = api.post("/orchestrator/workflows/", {"name": "not started", "tasks": TASKS}, format="json").json()
    conflict = api.post(f"/orchestrator/workflow/{created['id']}/retry")
    assert conflict.status_code == 409
    assert conflict.json()["state"] == State.INIT and "start" in conflict.json()["available_transitions"]


def test_session_users_of_the_api_still_need_a_login(host, owner, client, settings):
    settings.REST_FRAMEWORK = FOREIGN_REST_FRAMEWORK
    workflow, _ = services.workflow_create(name="mine", tasks=TASKS, actor=Actor.api(owner))
    assert client.get(f"/orchestrator/workflow/{workflow.pk}").status_code == 401
    client.force_login(owner)
    assert client.get(f"/orchestrator/workflow/{workflow.pk}").json()["name"] == "mine"
