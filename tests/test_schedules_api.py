"""Cron schedules over REST: /schedules/ read and changed with Django's model permissions on
WorkflowSchedule, pause, resume and run as actions, bad input refused naming the field, and
every run time in the schedule's own time zone with its offset."""

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import dom
from tests.test_api import client_for
from workflow_orchestrator import schedules
from workflow_orchestrator.api.schedules import NEXT_RUNS, SCHEDULE_EXAMPLE
from workflow_orchestrator.models import Workflow, WorkflowSchedule

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def user_with(username: str, *actions: str) -> User:
    user = User.objects.create_user(username, password="pw")
    codenames = [f"{action}_workflowschedule" for action in actions]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator(db):
    """May read, add, change and delete schedules."""
    return user_with("operator", "view", "add", "change", "delete")


@pytest.fixture
def api(operator):
    return client_for(operator)


@pytest.fixture
def viewer_api(db):
    """May read schedules, and nothing more."""
    return client_for(user_with("viewer", "view"))


@pytest.fixture
def schedule(db):
    return schedules.schedule_save(
        WorkflowSchedule(name="hourly sync", cron="0 * * * *", time_zone="UTC", tasks=[{"type": "noop"}])
    )


def local(text: str, zone: ZoneInfo) -> datetime:
    """An ISO time of the API, checked to carry the offset `zone` has at that moment."""
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == moment.astimezone(zone).utcoffset(), f"{text} is not a time of {zone}"
    return moment


# --- Create, read, update, delete ------------------------------------------------------------


def test_a_schedule_is_created_with_its_next_runs_in_its_time_zone_and_its_cron_in_words(api, operator):
    response = api.post("/schedules/", SCHEDULE_EXAMPLE, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "nightly import"
    assert body["cron_in_words"] == "At 02:30 every day"
    assert (body["enabled"], body["paused"]) == (True, False)
    assert len(body["next_runs"]) == NEXT_RUNS
    runs = [local(text, PARIS) for text in body["next_runs"]]
    assert all((moment.hour, moment.minute) == (2, 30) for moment in runs)
    assert runs == sorted(runs) and len({moment.date() for moment in runs}) == NEXT_RUNS
    assert body["next_run_at"] == body["next_runs"][0]
    assert body["url"].endswith(f"/schedules/{body['id']}")
    stored = WorkflowSchedule.objects.get(pk=body["id"])
    assert stored.tasks == SCHEDULE_EXAMPLE["tasks"]
    assert stored.next_run_at == runs[0]


def test_schedules_are_listed_and_read_one_by_one(api, schedule):
    listed = api.get("/schedules/")
    assert listed.status_code == 200
    assert [row["name"] for row in listed.json()["results"]] == ["hourly sync"]
    one = api.get(f"/schedules/{schedule.pk}/")
    assert one.status_code == 200
    assert one.json()["cron_in_words"] == "At minute 0 past every hour"
    assert one.json() == listed.json()["results"][0]


def test_the_list_filters_by_enabled_and_searches_by_name(api, schedule):
    schedules.schedule_pause(schedules.schedule_save(WorkflowSchedule(name="weekly report", cron="@weekly")))
    assert [row["name"] for row in api.get("/schedules/?enabled=false").json()["results"]] == ["weekly report"]
    assert [row["name"] for row in api.get("/schedules/?search=sync").json()["results"]] == ["hourly sync"]
    refused = api.get("/schedules/?enabled=maybe")
    assert refused.status_code == 400 and "enabled" in refused.json()


def test_the_list_reads_as_many_queries_for_twenty_schedules_as_for_one(api, schedule):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert api.get("/schedules/").status_code == 200
        return len(captured)

    one = queries()
    for number in range(19):
        schedules.schedule_save(WorkflowSchedule(name=f"every {number}", cron=f"{number} * * * *"))
    assert queries() == one


def test_put_replaces_a_schedule_and_computes_its_runs_afresh(api, schedule):
    body = {"name": "office hours", "cron": "0 9 * * 1-5", "time_zone": "Europe/Paris"}
    response = api.put(f"/schedules/{schedule.pk}/", body, format="json")
    assert response.status_code == 200, response.content
    changed = response.json()
    assert changed["cron_in_words"] == "At 09:00 on Monday to Friday"
    runs = [local(text, PARIS) for text in changed["next_runs"]]
    assert all(moment.hour == 9 and moment.isoweekday() <= 5 for moment in runs)
    assert changed["tasks"] is None  # replaced: the definition's own tasks
    assert changed["definition"] == "default"


def test_patch_changes_only_the_fields_it_is_given(api, schedule):
    response = api.patch(f"/schedules/{schedule.pk}/", {"time_zone": "America/New_York"}, format="json")
    assert response.status_code == 200, response.content
    changed = response.json()
    assert (changed["name"], changed["cron"], changed["tasks"]) == ("hourly sync", "0 * * * *", [{"type": "noop"}])
    assert all(local(text, NEW_YORK).minute == 0 for text in changed["next_runs"])


def test_deleting_a_schedule_keeps_the_workflows_it_started(api, schedule):
    workflow = api.post(f"/schedules/{schedule.pk}/run/").json()
    assert api.delete(f"/schedules/{schedule.pk}/").status_code == 204
    assert api.get(f"/schedules/{schedule.pk}/").status_code == 404
    assert not WorkflowSchedule.objects.exists()
    assert Workflow.objects.get(pk=workflow["id"]).schedule is None


# --- Pause, resume, run ------------------------------------------------------------------------


def test_pause_and_resume(api, schedule):
    paused = api.post(f"/schedules/{schedule.pk}/pause/")
    assert paused.status_code == 200
    assert (paused.json()["enabled"], paused.json()["paused"]) == (False, True)
    assert (paused.json()["next_run_at"], paused.json()["next_runs"]) == (None, [])
    assert api.post(f"/schedules/{schedule.pk}/pause/").status_code == 200  # paused already: nothing changes
    resumed = api.post(f"/schedules/{schedule.pk}/resume/")
    assert resumed.status_code == 200
    assert resumed.json()["paused"] is False
    assert len(resumed.json()["next_runs"]) == NEXT_RUNS
    assert WorkflowSchedule.objects.get(pk=schedule.pk).enabled


def test_run_starts_a_workflow_and_answers_with_its_id_and_url(api, operator, schedule):
    schedules.schedule_pause(schedule)  # run now does not wait for the schedule to be resumed
    response = api.post(f"/schedules/{schedule.pk}/run")
    assert response.status_code == 201, response.content
    body = response.json()
    workflow = Workflow.objects.get(pk=body["id"])
    assert (workflow.schedule_id, workflow.created_by, body["name"]) == (schedule.pk, operator, "hourly sync")
    assert body["url"].endswith(f"/workflows/{workflow.pk}")
    assert response["Location"] == body["url"]
    assert api.get(body["url"]).json()["id"] == str(workflow.pk)
    started = api.get(api.get(f"/schedules/{schedule.pk}/").json()["workflows_url"]).json()["results"]
    assert [row["id"] for row in started] == [str(workflow.pk)]


def test_a_run_the_engine_refuses_is_a_400_with_the_reason(api, schedule):
    # Stored before its definition was unregistered, say: the run is refused, not a 500.
    WorkflowSchedule.objects.filter(pk=schedule.pk).update(definition="retired")
    response = api.post(f"/schedules/{schedule.pk}/run/")
    assert response.status_code == 400
    assert "retired" in str(response.json()["definition"])
    assert not Workflow.objects.exists()


# --- Permissions -----------------------------------------------------------------------------


def test_a_user_who_may_only_view_reads_schedules_and_changes_none(viewer_api, schedule):
    assert viewer_api.get("/schedules/").status_code == 200
    assert viewer_api.get(f"/schedules/{schedule.pk}/").status_code == 200
    detail = f"/schedules/{schedule.pk}/"
    refused = [
        viewer_api.post("/schedules/", SCHEDULE_EXAMPLE, format="json"),
        viewer_api.put(detail, {"name": "x", "cron": "@daily"}, format="json"),
        viewer_api.patch(detail, {"cron": "@daily"}, format="json"),
        viewer_api.delete(detail),
        viewer_api.post(f"{detail}pause/"),
        viewer_api.post(f"{detail}resume/"),
        viewer_api.post(f"{detail}run/"),
    ]
    assert [response.status_code for response in refused] == [403] * len(refused)
    assert list(WorkflowSchedule.objects.values_list("name", "cron", "enabled")) == [("hourly sync", "0 * * * *", True)]
    assert not Workflow.objects.exists()


def test_a_user_who_may_change_but_not_add_or_delete(db, schedule):
    api = client_for(user_with("editor", "change"))
    assert api.get(f"/schedules/{schedule.pk}/").status_code == 200  # change implies view, as in the admin
    assert api.post(f"/schedules/{schedule.pk}/pause/").status_code == 200
    assert api.post("/schedules/", SCHEDULE_EXAMPLE, format="json").status_code == 403
    assert api.delete(f"/schedules/{schedule.pk}/").status_code == 403


def test_a_user_without_schedule_permissions_gets_403(db, schedule):
    api = client_for(user_with("stranger"))
    assert api.get("/schedules/").status_code == 403
    assert api.get(f"/schedules/{schedule.pk}/").status_code == 403


def test_anonymous_requests_get_401(db, schedule):
    anonymous = client_for(None)
    for response in [
        anonymous.get("/schedules/"),
        anonymous.post("/schedules/", SCHEDULE_EXAMPLE, format="json"),
        anonymous.post(f"/schedules/{schedule.pk}/run/"),
    ]:
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Token")


# --- Bad input, unknown ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"cron": "61 * * * *"}, "cron", "not a valid cron expression"),
        ({"cron": "* * * *"}, "cron", "has 4 fields"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone", "is not a known time zone"),
        ({"definition": "no-such-definition"}, "definition", "no-such-definition"),
        ({"tasks": [{"type": "no-such-type"}]}, "tasks", "no-such-type"),
        ({"input": [1, 2]}, "input", "JSON object"),
        ({"mode": "sometimes"}, "mode", "not a valid choice"),
        ({"enabled": "yes"}, "enabled", "boolean"),
        ({"name": ""}, "name", "blank"),
        ({"crn": "@daily"}, "crn", "Unknown field"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_the_reason(api, change, field, says):
    response = api.post("/schedules/", {**SCHEDULE_EXAMPLE, **change}, format="json")
    assert response.status_code == 400, response.content
    assert says in " ".join(map(str, response.json()[field]))
    assert not WorkflowSchedule.objects.exists()


def test_a_name_taken_is_a_400_on_name(api, schedule):
    response = api.post("/schedules/", {"name": "hourly sync", "cron": "@daily"}, format="json")
    assert response.status_code == 400
    assert "already exists" in response.json()["name"][0]


def test_a_bad_change_leaves_the_schedule_as_it_was(api, schedule):
    response = api.patch(f"/schedules/{schedule.pk}/", {"cron": "0 25 * * *"}, format="json")
    assert response.status_code == 400 and "cron" in response.json()
    assert WorkflowSchedule.objects.get(pk=schedule.pk).cron == "0 * * * *"


@pytest.mark.parametrize("body", [[], "text", 3])
def test_a_body_that_is_not_an_object_is_a_400(api, body):
    assert api.post("/schedules/", body, format="json").status_code == 400


@pytest.mark.parametrize("schedule_id", ["999", "abc", "99999999999999999999999", "-1"])
def test_an_unknown_id_is_a_404(api, schedule_id):
    path = f"/schedules/{schedule_id}/"
    answers = [
        api.get(path),
        api.put(path, {"name": "x", "cron": "@daily"}, format="json"),
        api.patch(path, {"cron": "@daily"}, format="json"),
        api.delete(path),
        api.post(f"{path}pause/"),
        api.post(f"{path}resume/"),
        api.post(f"{path}run/"),
    ]
    assert [answer.status_code for answer in answers] == [404] * len(answers)


def test_a_nul_character_in_a_filter_is_a_400(api):
    response = api.get("/schedules/?search=a%00b")
    assert response.status_code == 400 and "NUL" in response.json()["search"][0]


# --- Paths, the browsable API, the schema --------------------------------------------------------


def test_every_path_answers_with_or_without_its_trailing_slash(api, schedule):
    assert api.get("/schedules").status_code == 200
    assert api.get(f"/schedules/{schedule.pk}").status_code == 200
    assert api.post(f"/schedules/{schedule.pk}/pause").status_code == 200
    assert api.post(f"/schedules/{schedule.pk}/resume").status_code == 200


def test_the_browsable_api_shows_schedules(client, operator, schedule):
    client.force_login(operator)
    page = client.get("/schedules/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert "hourly sync" in page.content.decode() and "At minute 0 past every hour" in page.content.decode()
    # The raw-data form starts from the fields a schedule takes, not from {}.
    content = dom.parse(page).one("#post-generic-content-form textarea[name=_content]").text
    assert {"name", "cron", "time_zone", "enabled"} <= set(json.loads(content))
    assert not dom.parse(page).select("#start-workflow-form")  # the workflows' own form is theirs alone
    detail = dom.parse(client.get(f"/schedules/{schedule.pk}/", HTTP_ACCEPT="text/html"))
    current = json.loads(detail.one("#put-generic-content-form textarea[name=_content]").text)
    assert (current["name"], current["cron"]) == ("hourly sync", "0 * * * *")


def test_the_schema_documents_the_schedules_endpoints(client):
    paths = client.get("/schema", HTTP_ACCEPT="application/json").json()["paths"]
    assert set(paths["/schedules/"]) == {"get", "post"}
    assert set(paths["/schedules/{id}/"]) == {"get", "put", "patch", "delete"}
    for name in ("pause", "resume", "run"):
        assert set(paths[f"/schedules/{{id}}/{name}/"]) == {"post"}
    assert "201" in paths["/schedules/{id}/run/"]["post"]["responses"]


def test_next_runs_carry_the_offset_of_their_own_day_across_a_change_of_the_clocks(api, db):
    before_spring = datetime(2027, 3, 25, 12, 0, tzinfo=ZoneInfo("UTC"))
    schedule = schedules.schedule_save(
        WorkflowSchedule(name="nightly", cron="30 2 * * *", time_zone="Europe/Paris"), now=before_spring
    )
    runs = api.get(f"/schedules/{schedule.pk}/").json()["next_runs"]
    # 28 March 2027: Paris skips 02:00-03:00, and the run due at 02:30 runs at 03:00 (summer time).
    assert runs == [
        "2027-03-26T02:30:00+01:00",
        "2027-03-27T02:30:00+01:00",
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
        "2027-03-30T02:30:00+02:00",
    ]
