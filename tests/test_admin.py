"""The Django admin, through Django's test client: the changelist and its filters, the bulk
actions, the change page's buttons and pictures, the transition view, adding a workflow,
the read-only task and transition admins, and deleting. State changes go through the
engine's services, so they land in the audit log as `admin:<username>`."""

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests import dom
from tests.conftest import events, reload
from workflow_orchestrator import services, stats
from workflow_orchestrator.models import Actor, State, Task, Transition, Workflow

CHANGELIST = reverse("admin:workflow_orchestrator_workflow_changelist")
ADD = reverse("admin:workflow_orchestrator_workflow_add")
RECOVERS = [{"type": "fail", "params": {"times": 1}, "max_attempts": 1}]  # fails once, then succeeds on retry


def change_url(workflow) -> str:
    return reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])


def transition_url(workflow, event: str) -> str:
    return reverse("admin:workflow_orchestrator_workflow_transition", args=[workflow.pk, event])


def delete_url(workflow) -> str:
    return reverse("admin:workflow_orchestrator_workflow_delete", args=[workflow.pk])


def messages_of(response) -> list[tuple[str, str]]:
    """Follow the redirect and return the messages shown on the next page (which uses them up)."""
    assert response.status_code == 302, response.status_code
    page = response.client.get(response.url)
    return [(message.level_tag, message.message) for message in page.context["messages"]]


def listed(response) -> set[str]:
    return {workflow.name for workflow in response.context["cl"].result_list}


def rows_by_name(page: dom.Element) -> dict[str, dom.Element]:
    """The changelist's rows, by the workflow's name (its first column)."""
    return {row.one("th.field-name").text: row for row in page.select("#result_list tbody tr")}


def action_labels(page: dom.Element) -> list[str]:
    """The bulk actions the changelist offers, by label."""
    return [option.text for option in page.select("select[name=action] option") if option["value"]]


@pytest.fixture
def make(engine, admin_user):
    """make(state, name=..., mode=..., tasks=...): a workflow brought to `state` in this process.

    INIT and the running states get no jobs, and their ready tasks are put off for an hour
    (a delivery for another workflow would run them otherwise); FAILED and COMPLETE run
    their jobs through `engine`. `"PREPARE done"` is a manual workflow whose PREPARE work
    has finished, so that `next` is allowed.
    """

    def make(state: str, *, name: str = "", mode: str = "auto", tasks=None) -> Workflow:
        name = name or f"wf {state.lower()} {Workflow.objects.count() + 1}"
        actor = Actor.admin(admin_user)
        if state == "PREPARE done":
            workflow, _ = engine.call(
                services.workflow_create, name=name, mode="manual", tasks=tasks or [{"type": "noop"}], actor=actor,
                start=True,
            )  # fmt: skip
            engine.drain()
        elif state in (State.FAILED, State.COMPLETE):
            tasks = tasks or (RECOVERS if state == State.FAILED else [{"type": "echo", "params": {"x": 1}}])
            workflow, _ = engine.call(
                services.workflow_create, name=name, mode=mode, tasks=tasks, actor=actor, start=True
            )
            engine.drain()
        else:
            workflow, _ = services.workflow_create(
                name=name, mode=mode, tasks=tasks or [{"type": "noop"}], actor=actor, start=state != State.INIT
            )
            engine.pending()  # the ORM broker queued its job with it: take it off, unrun
            later = timezone.now() + timedelta(hours=1)
            workflow.tasks.filter(status=Task.Status.QUEUED).update(queued_at=later)
            if state == State.CANCELLED:
                services.workflow_cancel(workflow.pk, actor=actor)
        workflow = reload(workflow)
        assert workflow.state == state.split()[0], (workflow.state, workflow.error)
        return workflow

    return make


@pytest.fixture
def viewer(db):
    """A staff user who may look at workflows, tasks and transitions but change nothing."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="workflow_orchestrator",
            codename__in=["view_workflow", "view_task", "view_transition"],
        )
    )
    return user


@pytest.fixture
def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


# --- The changelist ----------------------------------------------------------------------


def test_changelist_shows_state_badges_progress_and_durations(admin_client, make):
    complete = make(State.COMPLETE, name="all good", tasks=[{"type": "echo"}, {"type": "noop"}])
    failed = make(State.FAILED, name="broken")
    make(State.INIT, name="not started")

    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    page = dom.parse(response)
    for column in ("column-state_badge", "column-progress", "column-run_time", "column-short_id", "column-retries"):
        assert page.one(f"#result_list thead th.{column}"), column
    rows = rows_by_name(page)
    assert {name: row.one("td.field-state_badge .badge").text for name, row in rows.items()} == {
        "all good": "COMPLETE",
        "broken": "FAILED",
        "not started": "INIT",
    }
    assert rows["all good"].one("td.field-short_id").text == str(complete.pk)[:8]
    assert rows["broken"].one("td.field-short_id").text == str(failed.pk)[:8]
    # Each state has its own colour: COMPLETE's badge does not look like FAILED's.
    assert rows["all good"].one(".badge").attrs != rows["broken"].one(".badge").attrs
    rows = {w.name: w for w in response.context["cl"].result_list}
    cl = response.context["cl"]
    model_admin = cl.model_admin
    # prepare + 2 tasks + validate all succeeded; the failed one got no further than its task.
    assert model_admin.progress(rows["all good"]) == "4/4"
    assert model_admin.progress(rows["broken"]) == "1/3"
    assert model_admin.progress(rows["not started"]) == "0/3"
    assert model_admin.run_time(rows["not started"]) == "—"
    assert model_admin.run_time(rows["all good"]).endswith(" s")
    assert {"Retry selected workflows", "Cancel selected workflows", "Advance selected workflows (next)"} <= set(
        action_labels(page)
    )


def test_changelist_queries_do_not_grow_with_the_number_of_workflows(
    admin_client, admin_user, django_assert_max_num_queries
):
    def create(count: int) -> None:
        for i in range(count):
            services.workflow_create(
                name=f"wf {i}", tasks=[{"type": "echo"}, {"type": "noop"}], actor=Actor.admin(admin_user), start=i % 2
            )

    create(3)
    with django_assert_max_num_queries(10) as small:
        response = admin_client.get(CHANGELIST)
    assert len(response.context["cl"].result_list) == 3
    create(27)
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = admin_client.get(CHANGELIST)
    assert len(response.context["cl"].result_list) == 30
    assert len(dom.parse(response).select("#result_list tbody td.field-state_badge .badge")) == 30


def test_changelist_filters_by_state_and_searches_by_name_and_full_id(admin_client, make):
    failed = [make(State.FAILED, name=f"nightly export {i}") for i in range(2)]
    make(State.COMPLETE, name="nightly import")
    make(State.INIT, name="weekly report")

    response = admin_client.get(CHANGELIST, {"state__exact": State.FAILED})
    assert listed(response) == {"nightly export 0", "nightly export 1"}
    assert listed(admin_client.get(CHANGELIST, {"state__exact": State.COMPLETE})) == {"nightly import"}

    assert listed(admin_client.get(CHANGELIST, {"q": "nightly"})) == {
        "nightly export 0",
        "nightly export 1",
        "nightly import",
    }
    assert listed(admin_client.get(CHANGELIST, {"q": "WEEKLY"})) == {"weekly report"}
    by_id = admin_client.get(CHANGELIST, {"q": str(failed[1].pk)})
    assert listed(by_id) == {"nightly export 1"}
    assert by_id.context["cl"].model_admin.progress(by_id.context["cl"].result_list[0]) == "1/3"
    assert listed(admin_client.get(CHANGELIST, {"q": f"  {failed[0].pk}  "})) == {"nightly export 0"}
    assert listed(admin_client.get(CHANGELIST, {"q": "no such thing"})) == set()
    # Filter and search together.
    assert listed(admin_client.get(CHANGELIST, {"q": "nightly", "state__exact": State.COMPLETE})) == {"nightly import"}


# --- Bulk actions -----------------------------------------------------------------------


def bulk(client, action: str, *workflows):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [str(w.pk) for w in workflows]})


def test_bulk_retry_retries_the_failed_and_reports_the_rest(admin_client, admin_user, engine, make):
    failed = [make(State.FAILED) for _ in range(2)]
    complete = make(State.COMPLETE)

    with engine.capture(execute=True):  # the retries queue their jobs on commit
        response = bulk(admin_client, "retry_selected", *failed, complete)
    assert response.status_code == 302 and response.url == CHANGELIST
    assert messages_of(response) == [("warning", "2 retried; 1 skipped: COMPLETE cannot be retried")]
    for workflow in failed:
        retry = Transition.objects.get(workflow=workflow, event="retry")
        assert (retry.actor_label, retry.actor, retry.source, retry.target) == (
            "admin:admin",
            admin_user,
            State.FAILED,
            State.EXECUTE,
        )
        assert reload(workflow).retries == 1
    assert events(complete) == ["start", "execute", "validate", "complete"]

    engine.drain()  # the retried tasks succeed on their second attempt
    for workflow in failed:
        workflow = reload(workflow)
        assert workflow.state == State.COMPLETE
        assert events(workflow) == ["start", "execute", "fail", "retry", "validate", "complete"]


def test_bulk_retry_of_nothing_retryable_is_an_error(admin_client, make):
    response = bulk(admin_client, "retry_selected", make(State.COMPLETE), make(State.INIT))
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert sorted(text.split("; ")) == [
        "0 retried",
        "1 skipped: COMPLETE cannot be retried",
        "1 skipped: INIT cannot be retried",
    ]
    assert not Transition.objects.filter(event="retry").exists()


def bulk_cancel(client, *workflows, reason: str = ""):
    """The action, then its confirmation page's form as a browser would post it."""
    return client.post(
        CHANGELIST,
        {
            "action": "cancel_selected",
            "_selected_action": [str(w.pk) for w in workflows],
            "confirm": "yes",
            "reason": reason,
        },
    )


def test_bulk_cancel_asks_first_and_changes_nothing_until_confirmed(admin_client, make):
    complete, running = make(State.COMPLETE, name="done"), make(State.PREPARE, name="running")
    response = bulk(admin_client, "cancel_selected", running, complete)
    assert response.status_code == 200
    page = dom.parse(response)
    assert page.one("h1").text == "Cancel 2 workflows?"
    assert page.select("#content p", contains="1 can be cancelled")
    form = page.one("#content form")
    assert form.one("input[name=reason]") and form.one("[type=submit]#confirm")
    assert form.one("input[type=hidden][name=action]")["value"] == "cancel_selected"
    selected = {field["value"] for field in form.select("input[type=hidden][name=_selected_action]")}
    assert selected == {str(running.pk), str(complete.pk)}
    assert reload(running).state == State.PREPARE
    assert not Transition.objects.filter(event="cancel").exists()


def test_bulk_cancel_keeps_the_reason_in_each_audit_row(admin_client, admin_user, make):
    complete, running, created = make(State.COMPLETE), make(State.PREPARE), make(State.INIT)
    response = bulk_cancel(admin_client, running, created, complete, reason="deploy rolled back")
    assert messages_of(response) == [("warning", "2 cancelled; 1 skipped: COMPLETE cannot be cancelled")]
    for workflow in (running, created):
        assert reload(workflow).state == State.CANCELLED
        cancel = workflow.transitions.get(event="cancel")
        assert (cancel.actor_label, cancel.actor, cancel.reason) == ("admin:admin", admin_user, "deploy rolled back")
        assert set(workflow.tasks.values_list("status", flat=True)) == {Task.Status.CANCELLED}
    assert reload(complete).state == State.COMPLETE

    response = bulk_cancel(admin_client, make(State.FAILED))
    assert messages_of(response) == [("success", "1 cancelled")]


def test_bulk_advance(admin_client, make):
    ready = make("PREPARE done", name="ready")
    busy = make(State.PREPARE, name="busy", mode="manual")  # its prepare task has not run
    auto = make(State.PREPARE, name="auto")
    response = bulk(admin_client, "advance_selected", ready, busy, auto)
    level, text = messages_of(response)[0]
    assert level == "warning"
    assert sorted(text.split("; ")) == [
        "1 advanced",
        "1 skipped: next is only for workflows in manual mode",
        "1 skipped: the PREPARE phase's work has not finished",
    ]
    assert reload(ready).state == State.EXECUTE
    assert ready.transitions.get(event="execute").actor_label == "admin:admin"
    assert reload(busy).state == reload(auto).state == State.PREPARE


def test_a_view_only_user_is_offered_no_actions_and_cannot_run_them(viewer_client, make):
    failed = make(State.FAILED)
    response = viewer_client.get(CHANGELIST)
    assert response.status_code == 200 and listed(response) == {failed.name}
    assert action_labels(dom.parse(response)) == []
    bulk(viewer_client, "retry_selected", failed)
    bulk_cancel(viewer_client, failed)
    assert reload(failed).state == State.FAILED
    assert events(failed) == ["start", "execute", "fail"]


# --- The change page --------------------------------------------------------------------


def offered(page: dom.Element, workflow) -> dict[str, str]:
    """The actions a workflow's page offers, event → label: a button in a form that posts
    the transition, or a link (cancel and delete ask first, on a page of their own)."""
    actions = {}
    for control in page.select("[id^=action-]"):
        event = control["id"].removeprefix("action-")
        if control.tag == "a":
            assert control["href"] == (delete_url(workflow) if event == "delete" else transition_url(workflow, event))
        else:
            form = control.parent
            while form.tag != "form":
                form = form.parent
            assert (form["method"].lower(), form["action"]) == ("post", transition_url(workflow, event)), form
        actions[event] = control.text or control.get("value")
    return actions


@pytest.mark.parametrize(
    "state, mode, buttons",
    [
        (State.INIT, "auto", {"start", "cancel", "pause", "delete"}),
        (State.PREPARE, "auto", {"cancel", "pause"}),
        (State.PREPARE, "manual", {"cancel", "pause"}),  # its work runs: no Next yet
        ("PREPARE done", "manual", {"next", "cancel", "pause"}),
        (State.FAILED, "auto", {"retry", "cancel", "delete"}),
        (State.COMPLETE, "auto", {"delete"}),
        (State.CANCELLED, "auto", {"delete"}),
    ],
)
def test_change_page_offers_only_the_available_transitions(admin_client, make, state, mode, buttons):
    workflow = make(state, mode=mode)
    response = admin_client.get(change_url(workflow))
    assert response.status_code == 200
    assert set(offered(dom.parse(response), workflow)) == buttons


def test_change_page_shows_both_pictures_and_the_inlines(admin_client, make):
    workflow = make(State.FAILED, name="pictured", tasks=[{"type": "echo"}, *RECOVERS])
    response = admin_client.get(change_url(workflow))
    page = dom.parse(response)
    state_graph = page.one("svg.state-graph")
    assert state_graph["aria-label"] == "State graph, current state FAILED"
    assert state_graph.one(".node.current").text == "FAILED"
    assert len(state_graph.select(".edge.taken")) == 3  # start, execute, fail
    bars = {bar["data-task"]: bar["class"].split() for bar in page.select("svg.task-timeline g.bar")}
    assert bars == {
        "prepare": ["bar", "bar-succeeded"],
        "echo-1": ["bar", "bar-succeeded"],
        "fail-2": ["bar", "bar-failed"],
        "validate": ["bar", "bar-pending"],  # validate has not run
    }
    assert page.one("svg.task-graph [data-task=echo-1]")["aria-label"] == "echo-1: SUCCEEDED"
    # The inlines: every task with its status, and the audit log in order.
    tasks = page.one("#tasks-group")
    assert tasks.one("h2").text == "Tasks"
    assert [(row.one(".field-name").text, row.one(".field-status_badge").text) for row in tasks.select("tbody tr")] == [
        ("prepare", "SUCCEEDED"),
        ("echo-1", "SUCCEEDED"),
        ("fail-2", "FAILED"),
        ("validate", "PENDING"),
    ]
    failed_task = tasks.one("tbody tr", contains="fail-2")
    assert "failed on attempt 1 as asked" in failed_task.one(".field-error_excerpt").text
    assert failed_task.one("a.traceback-link")["href"] == reverse(
        "admin:workflow_orchestrator_task_change", args=[workflow.tasks.get(name="fail-2").pk]
    )
    transitions = page.one("#transitions-group")
    assert transitions.one("h2").text == "Transitions"
    rows = transitions.select("tbody tr")
    assert [(row.one(".field-change").text, row.one(".field-actor_label").text) for row in rows] == [
        ("INIT → PREPARE", "admin:admin"),  # only `start` was the admin's; the rest were the worker's
        ("PREPARE → EXECUTE", "worker"),
        ("EXECUTE → FAILED", "worker"),
    ]


def test_a_workflow_not_yet_started_has_no_timeline(admin_client, make):
    page = dom.parse(admin_client.get(change_url(make(State.INIT))))
    assert page.one("svg.state-graph").one(".node.current").text == "INIT"
    assert not page.select("svg.task-timeline") and page.select("p", text="No task has started yet.")


def test_change_page_is_read_only(admin_client, make):
    workflow = make(State.FAILED, name="keep me")
    response = admin_client.get(change_url(workflow))
    page = dom.parse(response)
    assert not page.select("[name=name], [name=_save], textarea")
    assert page.one(".form-row.field-name .readonly").text == "keep me"

    before = list(Workflow.objects.filter(pk=workflow.pk).values())
    response = admin_client.post(change_url(workflow), {"name": "changed", "state": State.COMPLETE, "_save": "Save"})
    assert response.status_code == 405
    assert list(Workflow.objects.filter(pk=workflow.pk).values()) == before
    assert events(workflow) == ["start", "execute", "fail"]


def test_a_view_only_user_sees_the_page_but_no_buttons(viewer_client, make):
    workflow = make(State.FAILED)
    response = viewer_client.get(change_url(workflow))
    assert response.status_code == 200
    page = dom.parse(response)
    assert offered(page, workflow) == {}
    assert page.one("svg.state-graph") and page.one("svg.task-timeline")
    assert page.select("#tasks-group td.field-error_excerpt", contains="failed on attempt 1 as asked")


# --- The transition view ---------------------------------------------------------------


@pytest.mark.parametrize(
    "state, event, label, target",
    [
        (State.INIT, "start", "Start", State.PREPARE),
        ("PREPARE done", "next", "Next step", State.EXECUTE),
        (State.FAILED, "retry", "Retry", State.EXECUTE),
    ],
)
def test_transition_buttons_need_a_post_with_a_csrf_token(admin_user, make, state, event, label, target):
    workflow = make(state)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = transition_url(workflow, event)
    seen = events(workflow)

    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403  # no CSRF token
    assert reload(workflow).state == workflow.state and events(workflow) == seen

    page = dom.parse(client.get(change_url(workflow)))
    assert offered(page, workflow)[event] == label
    assert page.one(f"form[action='{url}']").one("input[name=csrfmiddlewaretoken]")
    response = client.post(url, {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302 and response.url == change_url(workflow)
    assert reload(workflow).state == target
    last = workflow.transitions.order_by("-seq").first()
    assert (last.event, last.actor_label, last.actor) == (
        "execute" if event == "next" else event,
        "admin:admin",
        admin_user,
    )
    # What happened, from where to where: still true when the cluster has moved the workflow on since.
    assert messages_of(response) == [("success", f"{label}: {workflow.name} went from {workflow.state} to {target}.")]


def test_cancel_asks_for_confirmation_and_keeps_the_reason(admin_client, admin_user, make):
    workflow = make(State.PREPARE, name="long job")
    url = transition_url(workflow, "cancel")
    page = dom.parse(admin_client.get(change_url(workflow)))
    assert page.one("a#action-cancel")["href"] == url  # a link to the confirmation, not a form

    confirm = admin_client.get(url)
    assert confirm.status_code == 200
    page = dom.parse(confirm)
    question = page.one("#content p", contains="now in state")
    assert [strong.text for strong in question.select("strong")] == ["long job", "PREPARE"]
    form = page.one("#content form")
    assert form["method"] == "post" and form.get("action", url) in ("", url)  # posts back to this page
    assert form.one("input[name=reason]") and form.one("[type=submit]#confirm")["value"] == "Yes, cancel"
    assert reload(workflow).state == State.PREPARE  # asking changed nothing

    response = admin_client.post(url, {"reason": "wrong input"})
    assert response.status_code == 302 and response.url == change_url(workflow)
    assert messages_of(response) == [("success", "Cancel: long job is now CANCELLED.")]
    assert reload(workflow).state == State.CANCELLED
    cancel = workflow.transitions.get(event="cancel")
    assert (cancel.actor_label, cancel.actor, cancel.reason) == ("admin:admin", admin_user, "wrong input")


def test_a_transition_that_is_not_allowed_is_reported(admin_client, make):
    workflow = make(State.COMPLETE)
    response = admin_client.post(transition_url(workflow, "retry"))
    assert response.status_code == 302 and response.url == change_url(workflow)
    [(level, text)] = messages_of(response)
    assert level == "error" and "cannot retry a workflow in state COMPLETE" in text
    assert events(workflow) == ["start", "execute", "validate", "complete"]


def test_an_unknown_event_or_workflow_changes_nothing(admin_client, make):
    workflow = make(State.INIT)
    assert admin_client.post(transition_url(workflow, "explode")).status_code == 404
    assert admin_client.post(transition_url(workflow, "fail")).status_code == 404  # the engine's, not a button
    assert reload(workflow).state == State.INIT and events(workflow) == []
    missing = reverse(
        "admin:workflow_orchestrator_workflow_transition", args=["00000000-0000-0000-0000-000000000000", "start"]
    )
    response = admin_client.post(missing)
    assert response.status_code == 302 and response.url == reverse("admin:index")
    [(level, text)] = messages_of(response)
    assert level == "warning" and "doesn’t exist" in text


@pytest.mark.parametrize("event, method", [("start", "post"), ("cancel", "post"), ("cancel", "get")])
def test_a_user_without_change_permission_is_refused(viewer_client, make, event, method):
    workflow = make(State.INIT)
    response = getattr(viewer_client, method)(transition_url(workflow, event))
    assert response.status_code == 403
    assert reload(workflow).state == State.INIT and events(workflow) == []


def test_anonymous_users_are_sent_to_the_login_page(client, make):
    workflow = make(State.INIT)
    for url in (CHANGELIST, change_url(workflow), transition_url(workflow, "start"), ADD):
        response = client.post(url) if "transition" in url else client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    assert reload(workflow).state == State.INIT


# --- Adding a workflow ------------------------------------------------------------------

VALID = {
    "name": "from the admin",
    "definition": "default",
    "mode": "auto",
    "input": '{"day": "2025-01-31"}',
    "tasks": '[{"type": "echo", "params": {"x": 1}}, {"name": "nap", "type": "sleep", "params": {"seconds": 0.1}}]',
}


def test_the_add_form(admin_client):
    response = admin_client.get(ADD)
    assert response.status_code == 200
    form = dom.parse(response).one("#content form[method=post]")
    for field in ("name", "definition", "mode", "input", "tasks", "start_now"):
        assert form.one(f"[name={field}]"), field
    assert form.one("select[name=definition] option[selected]").text == "default"
    start_now = form.one("input[name=start_now]")
    assert start_now["type"] == "checkbox" and "checked" in start_now


def test_add_and_start_now(admin_client, admin_user):
    response = admin_client.post(ADD, {**VALID, "start_now": "on"})
    workflow = Workflow.objects.get()
    assert response.status_code == 302 and response.url == change_url(workflow)
    assert messages_of(response) == [("success", "Created from the admin (PREPARE).")]
    assert workflow.state == State.PREPARE and workflow.created_by == admin_user
    assert workflow.input == {"day": "2025-01-31"}
    assert list(workflow.tasks.order_by("position").values_list("name", "type")) == [
        ("prepare", "default.prepare"),
        ("echo-1", "echo"),
        ("nap", "sleep"),
        ("validate", "default.validate"),
    ]
    start = workflow.transitions.get()
    assert (start.event, start.actor_label, start.actor) == ("start", "admin:admin", admin_user)


def test_add_without_starting_and_with_the_definition_s_default_tasks(admin_client):
    response = admin_client.post(ADD, {**VALID, "tasks": "", "input": "", "mode": "manual"})
    workflow = Workflow.objects.get()
    assert response.status_code == 302
    assert (workflow.state, workflow.mode, workflow.input) == (State.INIT, "manual", {})
    assert not workflow.transitions.exists()
    assert workflow.tasks.filter(phase=Task.Phase.EXECUTE).exists()  # the default definition's own tasks


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"input": "{not json"}, "input", "input is not valid JSON"),
        ({"input": "[1, 2]"}, "input", "input must be a JSON object."),
        ({"tasks": '{"type": "echo"}'}, "tasks", "tasks must be a JSON list."),
        ({"tasks": '[{"type": "nope"}]'}, "tasks", "unknown task type 'nope'"),
        ({"tasks": '[{"type": "echo", "max_attempts": 0}]'}, "tasks", "max_attempts"),
        ({"definition": "nope"}, "definition", "Select a valid choice."),
        ({"name": ""}, "name", "This field is required."),
        ({"mode": "sometimes"}, "mode", "Select a valid choice."),
        # What the database cannot store is refused with the field, not a 500.
        ({"input": '{"k": "\\ud800"}'}, "input", "input.k contains a lone surrogate"),
        ({"input": '{"k": "a\\u0000b"}'}, "input", "input.k contains a NUL character"),
        ({"input": '{"\\u0000": 1}'}, "input", "a key of input contains a NUL character"),
        ({"input": '{"a": ' * 100 + "1" + "}" * 100}, "input", "nested more than 64 levels deep"),
        ({"input": '{"a": ' * 5000 + "1" + "}" * 5000}, "input", "input is nested more than 64 levels deep"),
        ({"tasks": '[{"type": "echo", "params": {"k": "\\udfff"}}]'}, "tasks", "params.k contains a lone surrogate"),
        ({"tasks": '[{"type": "echo", "name": "a\\u0000"}]'}, "tasks", "name contains a NUL character"),
        ({"name": "a\x00b"}, "name", "Null characters are not allowed."),
    ],
)
def test_bad_input_shows_errors_on_the_form_and_creates_nothing(admin_client, changes, field, message):
    response = admin_client.post(ADD, {**VALID, "start_now": "on", **changes})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in " ".join(errors[field]), errors
    page = dom.parse(response)
    assert page.one(".errornote").text == "Please correct the errors below."
    assert [row["class"].split()[1] for row in page.select(".form-row.errors")] == [f"field-{field}"]
    assert page.one("input[name=name]").get("value") == VALID["name"] or field == "name"  # what was typed is kept
    assert not Workflow.objects.exists() and not Task.objects.exists() and not Transition.objects.exists()


def test_a_view_only_user_cannot_add(viewer_client):
    assert viewer_client.get(ADD).status_code == 403
    assert viewer_client.post(ADD, {**VALID, "start_now": "on"}).status_code == 403
    assert not Workflow.objects.exists()


# --- Tasks and transitions are read-only -----------------------------------------------


@pytest.mark.parametrize("model", [Task, Transition])
def test_task_and_transition_admins_are_read_only_even_for_superusers(admin_client, admin_user, rf, make, model):
    make(State.FAILED)
    model_admin = admin.site.get_model_admin(model)
    request = rf.get("/")
    request.user = admin_user
    row = model.objects.first()
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request) and not model_admin.has_change_permission(request, row)
    assert not model_admin.has_delete_permission(request) and not model_admin.has_delete_permission(request, row)
    assert model_admin.has_view_permission(request, row)

    name = model._meta.model_name
    assert admin_client.get(reverse(f"admin:workflow_orchestrator_{name}_add")).status_code == 403
    assert admin_client.get(reverse(f"admin:workflow_orchestrator_{name}_changelist")).status_code == 200
    page = admin_client.get(reverse(f"admin:workflow_orchestrator_{name}_change", args=[row.pk]))
    assert page.status_code == 200 and not dom.parse(page).select("[name=_save]")
    assert (
        admin_client.post(reverse(f"admin:workflow_orchestrator_{name}_change", args=[row.pk]), {}).status_code == 403
    )
    assert admin_client.post(
        reverse(f"admin:workflow_orchestrator_{name}_delete", args=[row.pk]), {"post": "yes"}
    ).status_code in (
        403,
        302,
    )
    assert model.objects.filter(pk=row.pk).exists()
    changelist = dom.parse(admin_client.get(reverse(f"admin:workflow_orchestrator_{name}_changelist")))
    assert not changelist.select("option[value=delete_selected]")


def test_the_task_page_shows_the_full_traceback(admin_client, make):
    workflow = make(State.FAILED)
    task = workflow.tasks.get(type="fail")
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_task_change", args=[task.pk])))
    error = page.one(".field-error_block").text
    assert "Traceback (most recent call last)" in error and "TaskFailed: failed on attempt 1 as asked" in error
    assert page.one(".field-workflow_link a")["href"] == change_url(workflow)  # the link back to its workflow


def test_the_task_page_lists_every_attempt_with_its_outcome_and_error(admin_client, make):
    retried = {"name": "flaky", "type": "fail", "params": {"times": 1, "message": "disk full"}, "max_attempts": 2}
    workflow = make(State.COMPLETE, tasks=[{"name": "fetch", "type": "echo"}, {**retried, "after": ["fetch"]}])
    task = workflow.tasks.get(name="flaky")
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_task_change", args=[task.pk])))
    table = page.one("table.attempt-list")
    columns = table.texts("th")
    assert columns == ["#", "worker", "started", "finished", "duration", "outcome", "error"]
    first, second = (dict(zip(columns, row.select("td"), strict=True)) for row in table.select("tr.attempt"))
    assert (first["#"].text, first["outcome"].text) == ("1", "failed")  # the outcome in words
    assert (second["#"].text, second["outcome"].text) == ("2", "succeeded")
    for attempt, row in zip(task.attempts, (first, second), strict=True):
        assert row["worker"].text == attempt["worker"]
        assert re.fullmatch(r"[0-9.]+ m?s", row["duration"].text)  # its duration
    # The error's last line, with the whole traceback folded under it.
    folded = first["error"].one("details")
    assert folded.one("summary").text == "workflow_orchestrator.builtin_tasks.TaskFailed: disk full"
    assert "Traceback (most recent call last)" in folded.text.removeprefix(folded.one("summary").text)
    assert not second["error"].select("summary") and second["error"].text == "—"
    assert page.one(".field-after_list .readonly").text == "fetch"  # its `after`


def test_the_task_lists_show_the_attempt_out_of_its_budget_not_the_attempt_records(admin_client, make):
    workflow = make(State.FAILED, tasks=[{"name": "flaky", "type": "fail", "params": {"times": 9}, "max_attempts": 2}])
    for url in (change_url(workflow), reverse("admin:workflow_orchestrator_task_changelist")):
        page = dom.parse(admin_client.get(url))
        [flaky] = [row for row in page.select("tr") if row.select(".field-name", text="flaky")]
        assert flaky.one(".field-attempt_of_budget").text == "2/2", url
        assert '"outcome"' not in page.text, "the attempt records are not shown as JSON"


def test_the_task_page_of_a_task_not_started_says_so(admin_client, make):
    workflow = make(State.INIT)
    task = workflow.tasks.get(phase="EXECUTE")
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_task_change", args=[task.pk])))
    assert page.one(".field-attempt_list .readonly").text == "Not started yet."
    assert not page.select(".attempt-list")


def test_change_page_draws_execute_as_a_graph_of_its_dependencies(admin_client, make):
    tasks = [
        {"name": "fetch", "type": "echo"},
        {"name": "transform", "type": "echo", "after": ["fetch"]},
        {"name": "load", "type": "fail", "params": {"times": 5}, "max_attempts": 1, "after": ["transform"]},
        {"name": "notify", "type": "echo", "after": ["fetch"]},
        {"name": "report", "type": "gather", "after": ["load", "notify"]},
    ]
    workflow = make(State.FAILED, tasks=tasks)
    graph = dom.parse(admin_client.get(change_url(workflow))).one("svg.task-graph")
    statuses = dict(workflow.tasks.filter(phase="EXECUTE").values_list("name", "status"))
    assert (statuses["transform"], statuses["load"], statuses["report"]) == ("SUCCEEDED", "FAILED", "PENDING")
    nodes = {node["data-task"]: node for node in graph.select(".task-node")}
    assert set(nodes) == set(statuses)  # EXECUTE's tasks only: no prepare, no validate
    for name, status in statuses.items():  # each node: its name and its status, in words and in its label
        assert nodes[name]["aria-label"].startswith(f"{name}: {status}")
        assert nodes[name].texts("text")[0] == name
        assert nodes[name].texts("text")[1].endswith(status)
        task_page = reverse("admin:workflow_orchestrator_task_change", args=[workflow.tasks.get(name=name).pk])
        assert nodes[name].parent.tag == "a" and nodes[name].parent["href"] == task_page  # a link to its task
    assert nodes["load"].texts("text")[1] == "✗ FAILED" and nodes["report"].texts("text")[1] == "○ PENDING"
    edges = {(edge["data-from"], edge["data-to"]): edge.classes for edge in graph.select(".dep-edge")}
    assert set(edges) == {("fetch", "transform"), ("transform", "load"), ("fetch", "notify"), ("load", "report"),
                          ("notify", "report")}  # fmt: skip
    assert edges[("load", "report")] == {"dep-edge"}, "not met: load failed"
    assert edges[("fetch", "transform")] != {"dep-edge"}, "met: fetch succeeded"


# --- Deleting ---------------------------------------------------------------------------


def test_deleting_a_running_workflow_is_refused(admin_client, make):
    workflow = make(State.PREPARE)
    for method in (admin_client.get, admin_client.post):
        response = method(delete_url(workflow), {"post": "yes"})
        assert response.status_code == 302 and response.url == change_url(workflow)
        assert messages_of(response) == [("error", "Cannot delete a workflow in state PREPARE: cancel it first.")]
    assert Workflow.objects.filter(pk=workflow.pk).exists()


@pytest.mark.parametrize("state", [State.COMPLETE, State.FAILED, State.CANCELLED, State.INIT])
def test_deleting_a_workflow_that_is_not_running(admin_client, make, state):
    workflow = make(state)
    confirm = admin_client.get(delete_url(workflow))
    assert confirm.status_code == 200
    page = dom.parse(confirm)
    assert page.select("#content p", contains="Are you sure"), page.one("#content").text
    assert page.one("#content form input[type=submit]")
    response = admin_client.post(delete_url(workflow), {"post": "yes"})
    assert response.status_code == 302 and response.url == CHANGELIST
    assert not Workflow.objects.filter(pk=workflow.pk).exists()
    assert not Task.objects.filter(workflow_id=workflow.pk).exists()
    assert not Transition.objects.filter(workflow_id=workflow.pk).exists()


def test_bulk_delete_deletes_the_finished_and_reports_the_running(admin_client, make):
    finished, failed, running = make(State.COMPLETE), make(State.FAILED), make(State.PREPARE)
    selection = {"action": "delete_selected", "_selected_action": [str(w.pk) for w in (finished, failed, running)]}
    confirm = admin_client.post(CHANGELIST, selection)
    assert confirm.status_code == 200
    page = dom.parse(confirm)
    assert page.select("#content p", text="Are you sure you want to delete the selected workflows? All of the "
                       "following objects and their related items will be deleted:")  # fmt: skip
    deleted = {hidden["value"] for hidden in page.select("#content form input[name=_selected_action]")}
    assert deleted == {str(finished.pk), str(failed.pk)}, "the running one is not offered for deletion"
    listed_objects = " ".join(page.texts("#content ul li"))
    assert finished.name in listed_objects and failed.name in listed_objects and running.name not in listed_objects
    assert page.texts("ul.messagelist li.warning") == [
        "1 skipped: a running workflow cannot be deleted (cancel it first)"
    ]

    response = admin_client.post(CHANGELIST, {**selection, "post": "yes"})
    assert messages_of(response) == [
        ("warning", "1 skipped: a running workflow cannot be deleted (cancel it first)"),
        ("success", "Successfully deleted 2 workflows."),
    ]
    assert list(Workflow.objects.values_list("pk", flat=True)) == [running.pk]
    assert not Task.objects.exclude(workflow=running).exists()
    assert not Transition.objects.exclude(workflow=running).exists()

    response = admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [str(running.pk)]})
    assert messages_of(response) == [("warning", "1 skipped: a running workflow cannot be deleted (cancel it first)")]
    assert Workflow.objects.filter(pk=running.pk).exists()


def test_a_view_only_user_cannot_delete(viewer_client, make):
    workflow = make(State.COMPLETE)
    assert viewer_client.post(delete_url(workflow), {"post": "yes"}).status_code == 403
    assert Workflow.objects.filter(pk=workflow.pk).exists()


# --- Waiting for next --------------------------------------------------------------------


def test_a_manual_workflow_whose_phase_is_done_shows_a_waiting_badge(admin_client, make):
    waiting = make("PREPARE done", name="waits")
    working = make(State.PREPARE, name="works", mode="manual")  # its PREPARE task is queued
    make(State.PREPARE, name="auto")

    def badges(page: dom.Element) -> list[str]:
        return page.texts(".badge")

    rows = rows_by_name(dom.parse(admin_client.get(CHANGELIST)))
    assert {name: badges(row) for name, row in rows.items()} == {
        "waits": ["PREPARE", "WAITING"],
        "works": ["PREPARE"],
        "auto": ["PREPARE"],
    }
    assert "WAITING" in badges(dom.parse(admin_client.get(change_url(waiting))))
    assert "WAITING" not in badges(dom.parse(admin_client.get(change_url(working))))
    engine_advanced = services.workflow_next(waiting.pk, actor=Actor.SYSTEM)
    assert engine_advanced.state == State.EXECUTE
    assert "WAITING" not in badges(dom.parse(admin_client.get(change_url(waiting))))


def test_a_waiting_workflow_s_duration_ends_when_its_phase_s_work_ended(admin_client, make):
    waiting = make("PREPARE done", name="waits")
    working = make(State.PREPARE, name="works", mode="manual")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Workflow.objects.filter(pk__in=[waiting.pk, working.pk]).update(started_at=an_hour_ago)
    Task.objects.filter(workflow=waiting, phase="PREPARE").update(finished_at=an_hour_ago + timedelta(seconds=2))

    cl = admin_client.get(CHANGELIST).context["cl"]
    rows = {workflow.name: workflow for workflow in cl.result_list}
    assert cl.model_admin.run_time(rows["waits"]) == "2.0 s"
    assert cl.model_admin.run_time(rows["works"]).startswith("60 min")


# --- Triage ------------------------------------------------------------------------------


def test_search_finds_a_workflow_by_a_prefix_of_its_id(admin_client, make):
    wanted = make(State.COMPLETE, name="wanted")
    make(State.INIT, name="other")
    pk = str(wanted.pk)

    for term in (pk[:8], pk[:4], pk[:13], pk[:13].replace("-", ""), pk[:8].upper(), f" {pk} "):
        found = admin_client.get(CHANGELIST, {"q": term}).context["cl"].result_list
        assert wanted.pk in {workflow.pk for workflow in found}, term
    assert listed(admin_client.get(CHANGELIST, {"q": pk[:3]})) == set()  # too short to be an id
    assert listed(admin_client.get(CHANGELIST, {"q": "zzzz"})) == set()


def test_the_task_admin_searches_by_workflow_name_and_id(admin_client, make):
    wanted = make(State.COMPLETE, name="nightly export")
    make(State.COMPLETE, name="other")
    tasks = reverse("admin:workflow_orchestrator_task_changelist")

    def found(term) -> set:
        return {task.workflow_id for task in admin_client.get(tasks, {"q": term}).context["cl"].result_list}

    assert found("nightly") == {wanted.pk}
    assert found(str(wanted.pk)[:8]) == {wanted.pk}
    assert found(str(wanted.pk)) == {wanted.pk}


def test_a_failed_workflow_s_row_shows_its_error_s_last_line(admin_client, make):
    failed = make(State.FAILED, name="broken")
    make(State.COMPLETE, name="fine")
    last = failed.error.strip().splitlines()[-1]

    rows = rows_by_name(dom.parse(admin_client.get(CHANGELIST)))
    assert not rows["fine"].select(".error-line")
    line = rows["broken"].one("td.field-error_line .error-line")
    # The message first and whole, the exception's class after it without its module path.
    assert last == "fail-1: workflow_orchestrator.builtin_tasks.TaskFailed: failed on attempt 1 as asked"
    assert line.text == "fail-1: failed on attempt 1 as asked (TaskFailed)"
    assert line["title"] == last  # the line as written, on hover


def test_every_time_in_the_console_is_one_format_relative_with_its_absolute_time_and_zone(admin_client, make):
    workflow = make(State.FAILED, name="timed")
    failing = workflow.tasks.get(type="fail")
    exact = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")  # to the second, its zone named
    pages = {
        "changelist": (CHANGELIST, "td.field-created, td.field-finished"),
        "change page": (change_url(workflow), ".field-started .readonly, .field-finished .readonly"),
        "transitions inline": (change_url(workflow), "#transitions-group td.field-created"),
        "task list": (reverse("admin:workflow_orchestrator_task_changelist"), "td.field-started"),
        "task page": (
            reverse("admin:workflow_orchestrator_task_change", args=[failing.pk]),
            ".field-finished .readonly, table.attempt-list td",
        ),
        "transition list": (reverse("admin:workflow_orchestrator_transition_changelist"), "td.field-created"),
        "transition page": (
            reverse("admin:workflow_orchestrator_transition_change", args=[workflow.transitions.first().pk]),
            ".field-created .readonly",
        ),
        "history": (
            reverse("admin:workflow_orchestrator_workflow_history", args=[workflow.pk]),
            "tr.transition > th",
        ),
        "overview": (OVERVIEW, "#overview-failures td"),
    }
    for page, (url, cells) in pages.items():
        times = [time for cell in dom.parse(admin_client.get(url)).select(cells) for time in cell.select("time")]
        assert times, page
        for time in times:
            title = time["title"]
            assert exact.match(title), (page, title)
            assert time["datetime"].startswith(title[:10]), (page, time["datetime"])
            # Relative in words, and the absolute time in text for screen readers (not only a title).
            assert re.match(r"^(just now|\d+ (s|min|h|d)( \d+ (s|min|h))? ago) \(", time.text), (page, time.text)
            assert time.one(".moment-absolute").text == f"({title})"


def test_sorting_by_duration_orders_running_workflows_by_their_elapsed_time(admin_client, make):
    now = timezone.now()
    quick = make(State.COMPLETE, name="quick")
    two_hours_ago = now - timedelta(hours=2)
    Workflow.objects.filter(pk=quick.pk).update(
        started_at=two_hours_ago, finished_at=two_hours_ago + timedelta(seconds=1)
    )
    for name, minutes in (("running an hour", 60), ("running 5 min", 5)):
        running = make(State.PREPARE, name=name)
        Workflow.objects.filter(pk=running.pk).update(started_at=now - timedelta(minutes=minutes))
    make(State.INIT, name="not started")

    cl = admin_client.get(CHANGELIST).context["cl"]
    column = str(cl.list_display.index("run_time"))
    ascending = [w.name for w in admin_client.get(CHANGELIST, {"o": column}).context["cl"].result_list]
    descending = [w.name for w in admin_client.get(CHANGELIST, {"o": f"-{column}"}).context["cl"].result_list]
    started = ["quick", "running 5 min", "running an hour"]
    assert [name for name in ascending if name in started] == started
    assert [name for name in descending if name in started] == started[::-1]


def test_the_history_button_shows_the_transitions_newest_first(admin_client, admin_user, make):
    workflow = make(State.FAILED, name="history")
    services.workflow_cancel(workflow.pk, actor=Actor.admin(admin_user), reason="giving up")

    change = dom.parse(admin_client.get(change_url(workflow)))
    history_url = reverse("admin:workflow_orchestrator_workflow_history", args=[workflow.pk])
    assert change.select(f"a[href='{history_url}']")
    page = dom.parse(admin_client.get(history_url))
    assert "doesn’t have a change history" not in page.text
    rows = [row.texts("td") for row in page.select("tr.transition")]
    assert [row[0] for row in rows] == ["4", "3", "2", "1"]
    assert rows[0][1:] == ["cancel", "FAILED → CANCELLED", f"admin:{admin_user.username}", "giving up"]


def test_the_history_of_a_workflow_needs_the_view_permission(client, make):
    workflow = make(State.COMPLETE)
    nobody = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(nobody)
    assert client.get(reverse("admin:workflow_orchestrator_workflow_history", args=[workflow.pk])).status_code == 403


def test_the_transition_list_sorts_by_time_newest_first(admin_client, make):
    first = make(State.COMPLETE, name="first")
    second = make(State.FAILED, name="second")
    Transition.objects.filter(workflow=second).update(created_at=timezone.now() - timedelta(days=1))

    result = admin_client.get(reverse("admin:workflow_orchestrator_transition_changelist")).context["cl"].result_list
    times = [transition.created_at for transition in result]
    assert times == sorted(times, reverse=True)
    assert result[0].workflow_id == first.pk and result[len(result) - 1].workflow_id == second.pk


# --- The overview and the pages that update themselves --------------------------------------

OVERVIEW = reverse("admin:workflow_orchestrator_workflow_dashboard")


@pytest.fixture
def clean_cache():
    """The overview keeps closed minutes' counts in the shared cache: start without any
    that an earlier test's overview left there. (Not a cache of the test's own: the broker
    this process builds once keeps the cache it was built with, for the clusters' stats.)"""
    cache.clear()


def test_the_overview_counts_each_state_and_links_to_its_list(admin_client, make):
    for state in (State.COMPLETE, State.COMPLETE, State.FAILED, State.INIT, State.PREPARE, State.CANCELLED):
        make(state)
    response = admin_client.get(OVERVIEW)
    assert response.status_code == 200
    page = dom.parse(response)
    cards = {card["data-state"]: card for card in page.select("a.state-card[data-state]")}
    assert {state: int(card.one(".count").text) for state, card in cards.items()} == {
        "INIT": 1,
        "PREPARE": 1,
        "EXECUTE": 0,
        "VALIDATE": 0,
        "COMPLETE": 2,
        "FAILED": 1,
        "CANCELLED": 1,
    }
    for state, card in cards.items():
        assert card["href"] == f"{CHANGELIST}?state__exact={state}"
        assert listed(admin_client.get(card["href"])) == set(
            Workflow.objects.filter(state=state).values_list("name", flat=True)
        )
    assert len(page.select(".rate-chart")) == 2
    assert page.one("#live-bar")["data-targets"] == "dashboard"


def test_the_overview_charts_tasks_and_workflows_finished_in_each_minute(admin_client, make, clean_cache):
    make(State.COMPLETE, tasks=[{"type": "echo"}, {"type": "noop"}])  # prepare, 2 tasks, validate
    make(State.FAILED)  # prepare and the failed task
    figures = admin_client.get(OVERVIEW).context["figures"]
    assert sum(figures["tasks_per_minute"]) == Task.objects.filter(finished_at__isnull=False).count() == 6
    assert sum(figures["workflows_per_minute"]) == 2
    assert figures["tasks_per_minute"][-1] == 6  # all in the current minute, the chart's last bar
    # A workflow that finished before the hour the charts cover is not in them.
    Workflow.objects.update(finished_at=timezone.now() - timedelta(hours=2))
    assert sum(admin_client.get(OVERVIEW).context["figures"]["workflows_per_minute"]) == 0


def test_a_closed_minute_is_counted_once_and_kept(make, clean_cache):
    workflow = make(State.COMPLETE, tasks=[{"type": "echo"}, {"type": "noop"}])
    later = timezone.now() + timedelta(minutes=5)  # the tasks' minute has closed by then
    assert sum(stats.overview(now=later)["tasks_per_minute"]) == 4
    # Counted once, its figure stays: later refreshes count only the minutes still open.
    services.workflow_delete(workflow.pk, actor=Actor.SYSTEM)
    assert sum(stats.overview(now=later)["tasks_per_minute"]) == 4
    assert sum(stats.overview(now=later + timedelta(hours=1))["tasks_per_minute"]) == 0


def test_the_overview_lists_the_latest_failures_with_their_error_s_last_line(admin_client, make):
    failed = make(State.FAILED, name="nightly import")
    table = dom.parse(admin_client.get(OVERVIEW)).one("#overview-failures")
    [row] = [row for row in table.select("tr") if row.select(f"a[href='{change_url(failed)}']")]
    assert "fail-1: failed on attempt 1 as asked (TaskFailed)" in row.text  # the module path left out


def test_the_overview_costs_the_same_queries_whatever_the_size(admin_client, make, django_assert_max_num_queries):
    make(State.COMPLETE)
    make(State.FAILED)
    with django_assert_max_num_queries(30) as small:  # the first one also stores the closed minutes' counts
        admin_client.get(OVERVIEW)
    for state in [State.COMPLETE] * 4 + [State.FAILED] * 4 + [State.PREPARE] * 4:
        make(state)
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert admin_client.get(OVERVIEW).status_code == 200


def test_a_workflow_s_page_costs_the_same_queries_whatever_its_tasks(admin_client, make, django_assert_max_num_queries):
    few = make(State.COMPLETE, tasks=[{"type": "echo"}])
    many = make(State.COMPLETE, tasks=[{"type": "echo", "name": f"t{i}"} for i in range(12)])
    with django_assert_max_num_queries(40) as small:
        admin_client.get(change_url(few))
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert admin_client.get(change_url(many)).status_code == 200


def test_the_overview_needs_the_view_permission(client, viewer_client, make):
    make(State.COMPLETE)
    assert viewer_client.get(OVERVIEW).status_code == 200
    assert client.get(OVERVIEW).status_code == 302  # to the login page
    nobody = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(nobody)
    assert client.get(OVERVIEW).status_code == 403


def test_the_index_and_the_list_link_to_the_overview(admin_client):
    for url in (reverse("admin:index"), CHANGELIST):
        assert dom.parse(admin_client.get(url)).one("a#overview-link")["href"] == OVERVIEW


@pytest.mark.parametrize(
    "state, live", [(State.INIT, True), (State.PREPARE, True), (State.COMPLETE, False), (State.FAILED, False)]
)
def test_a_workflow_s_page_stays_live_until_the_workflow_has_ended(admin_client, make, state, live):
    page = dom.parse(admin_client.get(change_url(make(state))))
    bar = page.one("#live-bar")
    assert ("data-ended" not in bar) is live
    # The breadcrumb updates with the heading: both name the workflow with its state.
    targets = ["workflow-breadcrumbs", "workflow-subtitle", "workflow-actions", "workflow_form"]
    assert bar["data-targets"].split(",") == targets
    assert bool(bar.select("button", text="Pause")) is live


def test_pause_asks_for_a_reason_and_resume_is_one_press(admin_client, admin_user, make):
    workflow = make(State.PREPARE, name="long job")
    page = dom.parse(admin_client.get(change_url(workflow)))
    assert page.one("a#action-pause")["href"] == transition_url(workflow, "pause")
    confirm = dom.parse(admin_client.get(transition_url(workflow, "pause")))
    assert confirm.one("#content form").one("input[name=reason]")
    assert confirm.one("[type=submit]#confirm")["value"] == "Yes, pause workflow"
    assert reload(workflow).paused_at is None  # asking changed nothing

    response = admin_client.post(transition_url(workflow, "pause"), {"reason": "deploy"})
    assert messages_of(response) == [("success", "Pause workflow: long job is paused.")]
    pause = workflow.transitions.get(event="pause")
    state = reload(workflow).state  # a pause changes no state
    assert (pause.actor_label, pause.reason, pause.source, pause.target) == ("admin:admin", "deploy", state, state)
    page = dom.parse(admin_client.get(change_url(workflow)))
    assert not page.select("#action-pause") and page.select("#action-resume")

    response = admin_client.post(transition_url(workflow, "resume"))
    assert messages_of(response) == [("success", "Resume workflow: long job is resumed.")]
    assert reload(workflow).paused_at is None
