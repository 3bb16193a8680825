"""Bad input to the admin's forms, the command line, cron schedules and webhooks: each gets a
form error, a one-line CLI error or a 4xx and stores nothing; and webhook deliveries never
stay SENDING, even when the worker sending them dies."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import ROOT, child_env, free_port, reload
from tests.conftest import WEBHOOK_SECRET as SECRET
from workflow_orchestrator import callbacks, cron, jobs, schedules, services, values, webhooks
from workflow_orchestrator.models import Actor, WebhookAttempt, WebhookDelivery, Workflow, WorkflowSchedule

ADD_WORKFLOW = reverse("admin:workflow_orchestrator_workflow_add")
ADD_SCHEDULE = reverse("admin:workflow_orchestrator_workflowschedule_add")
SCHEDULES = reverse("admin:workflow_orchestrator_workflowschedule_changelist")
NEVER_DUE = ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *"]

# JSON texts that are not JSON PostgreSQL can store, or that Python cannot parse into one.
NOT_STORABLE = {
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": Infinity}',
    "-Infinity": '{"a": -Infinity}',
    "1e999": '{"a": 1e999}',
    "5001 digits": '{"a": 1' + "0" * 5000 + "}",
}


def params_of(text: str) -> str:
    """The same value as a task's params."""
    return json.dumps([{"type": "echo", "params": "PARAMS"}]).replace('"PARAMS"', text)


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# --- The one strict parser ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"a": NaN}', "input holds NaN, which is not a JSON number"),
        ('{"a": -Infinity}', "input holds -Infinity, which is not a JSON number"),
        ('{"a": 1e999}', "input holds 1e999, which is too large for a JSON number"),
        ('{"a": -1e999}', "input holds -1e999, which is too large"),
        ('{"a": 1' + "0" * 5000 + "}", "input holds a number of more than 4300 digits"),
        (nested(100_000), "nested more than"),
        (nested(values.MAX_DEPTH + 1), "nested more than 64 levels deep"),
        ('{"a": "\\ud800"}', "input.a contains a lone surrogate"),
        ('{"a": "\\u0000"}', "input.a contains a NUL character"),
        ("{", "not valid JSON"),
    ],
)
def test_the_strict_parser_refuses_what_json_cannot_hold_saying_why(text, says):
    with pytest.raises(ValueError) as refused:
        values.parse_json(text, "input")
    assert says in str(refused.value)


def test_the_strict_parser_takes_what_the_database_stores():
    text = '{"a": [1, 2.5, -1e308, "é", null, true], "b": {"c": 1' + "0" * 4000 + "}}"
    assert values.parse_json(text, "input") == json.loads(text)
    assert values.parse_json(nested(values.MAX_DEPTH), "input") == json.loads(nested(values.MAX_DEPTH))


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"a": float("nan")}, "input.a is nan, which JSON cannot hold"),
        ({"a": [float("inf")]}, "input.a[0] is inf"),
        ({"a": 10**5000}, "input.a has more than 4300 digits"),
    ],
)
def test_every_path_that_stores_json_refuses_non_finite_numbers(db, value, says):
    assert says in values.json_problem(value, "input")
    with pytest.raises(ValidationError) as refused:
        services.workflow_create(name="w", actor=Actor.SYSTEM, input=value)
    assert says in refused.value.message_dict["input"][0]
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_the_api_answers_400_to_a_number_that_overflows(admin_user, number):
    api = APIClient()
    api.force_authenticate(admin_user)
    body = '{"name": "w", "input": {"a": ' + number + "}}"
    response = api.post("/workflow/start", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "JSON cannot hold" in response.json()["input"][0]
    assert not Workflow.objects.exists()


# --- The admin's forms ------------------------------------------------------------------------

WORKFLOW_FORM = {"name": "from the admin", "definition": "default", "mode": "auto", "input": "{}", "tasks": "[]"}
SCHEDULE_FORM = {"name": "nightly", "cron": "0 3 * * *", "time_zone": "UTC", "definition": "default",
                 "mode": "auto", "input": "{}", "tasks": "", "enabled": "on"}  # fmt: skip


def form_errors(response) -> dict:
    assert response.status_code == 200, response
    assert dom.parse(response).one("#content form[method=post]")  # the form is shown back, to be sent again
    form = response.context["adminform"].form if "adminform" in response.context else response.context["form"]
    return form.errors


@pytest.mark.parametrize("text", NOT_STORABLE.values(), ids=NOT_STORABLE.keys())
def test_the_admin_add_form_refuses_json_the_database_cannot_store(admin_client, text):
    for field, value in [("input", text), ("tasks", params_of(text))]:
        errors = form_errors(admin_client.post(ADD_WORKFLOW, {**WORKFLOW_FORM, field: value}))
        assert f"{field} holds " in errors[field][0]
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("text", NOT_STORABLE.values(), ids=NOT_STORABLE.keys())
def test_the_schedule_form_refuses_json_the_database_cannot_store(admin_client, text):
    for field, value in [("input", text), ("tasks", params_of(text))]:
        errors = form_errors(admin_client.post(ADD_SCHEDULE, {**SCHEDULE_FORM, field: value}))
        assert f"{field} holds " in errors[field][0]
    assert not WorkflowSchedule.objects.exists()


@pytest.mark.parametrize("url", [ADD_WORKFLOW, ADD_SCHEDULE])
def test_the_admin_forms_refuse_deep_nesting_and_lone_surrogates_and_show_them_back(admin_client, url):
    form = WORKFLOW_FORM if url == ADD_WORKFLOW else SCHEDULE_FORM
    for field, text, says in [
        ("input", nested(100_000), "nested more than"),
        ("tasks", "[" * 100_000 + "]" * 100_000, "nested more than"),
        ("input", '{"a": "\\ud800"}', "lone surrogate"),
        ("tasks", params_of('{"a": "\\udfff"}'), "lone surrogate"),
    ]:
        response = admin_client.post(url, {**form, field: text})
        assert says in form_errors(response)[field][0]
        if len(text) < 100:
            assert dom.parse(response).one(f"textarea[name={field}]").text == text  # as it was typed
    assert not Workflow.objects.exists() and not WorkflowSchedule.objects.exists()


def test_the_schedule_form_shows_a_schedule_s_json_and_keeps_empty_tasks_empty(admin_client):
    schedule = schedules.schedule_save(
        WorkflowSchedule(name="shown", cron="0 3 * * *", input={"é": [1.5, None]}, tasks=[{"type": "echo"}])
    )
    change = reverse("admin:workflow_orchestrator_workflowschedule_change", args=[schedule.pk])
    page = dom.parse(admin_client.get(change))
    assert page.one("textarea[name=input]").text == '{"é": [1.5, null]}'
    assert admin_client.post(change, {**SCHEDULE_FORM, "name": "shown", "tasks": ""}).status_code == 302
    schedule.refresh_from_db()
    assert (schedule.input, schedule.tasks) == ({}, None)


def test_a_cancel_reason_the_database_cannot_store_cancels_nothing(engine, admin_client):
    workflow, _ = engine.call(services.workflow_create, name="kept", actor=Actor.SYSTEM)
    cancel = reverse("admin:workflow_orchestrator_workflow_transition", args=[workflow.pk, "cancel"])
    page = admin_client.post(cancel, {"reason": "a\x00b"}, follow=True)
    assert "Nothing changed: reason contains a NUL character." in map(str, page.context["messages"])
    bulk = {"_selected_action": [workflow.pk], "action": "cancel_selected", "confirm": "1", "reason": "a\x00b"}
    page = admin_client.post(reverse("admin:workflow_orchestrator_workflow_changelist"), bulk, follow=True)
    assert "Nothing cancelled: the reason contains a NUL character." in map(str, page.context["messages"])
    assert reload(workflow).state == "INIT" and workflow.transitions.count() == 0


@pytest.mark.parametrize("path", ["workflow", "task", "transition", "workflowdeletion", "workflowschedule"])
@pytest.mark.parametrize(
    "query", [{"q": "a\x00b"}, {"state__exact": "a\x00b"}, {"name__startswith": "\x00"}, {"q": "a " * 3000}]
)
def test_a_changelist_query_the_database_would_refuse_is_a_400(admin_client, path, query):
    """A NUL in a filter or a search (PostgreSQL refuses it in text), or a search of
    thousands of words (SQLite refuses so large a LIKE pattern)."""
    response = admin_client.get(f"/admin/workflow_orchestrator/{path}/", query)
    assert response.status_code == 400
    assert admin_client.get(f"/admin/workflow_orchestrator/{path}/", {"q": "a" * 200}).status_code == 200


# --- Cron expressions that never fall due ------------------------------------------------------


@pytest.mark.parametrize("expression", NEVER_DUE)
def test_an_expression_that_never_falls_due_is_refused_wherever_a_schedule_is_saved(engine, admin_client, expression):
    assert "never falls due" in cron.cron_problem(expression)
    with pytest.raises(ValidationError, match="never falls due"):
        schedules.schedule_save(WorkflowSchedule(name="never", cron=expression))
    errors = form_errors(admin_client.post(ADD_SCHEDULE, {**SCHEDULE_FORM, "cron": expression}))
    assert "never falls due" in errors["cron"][0]
    with pytest.raises(CommandError, match="cron: .* never falls due"):
        call_command("workflow", "schedule", "add", "--name", "never", "--cron", expression, "--paused")
    assert not WorkflowSchedule.objects.exists()


@pytest.mark.parametrize("expression", ["0 0 29 2 *", "0 0 31 2 1", "0 0 L 2 *", "0 0 30,31 2,4 *"])
def test_rare_expressions_that_do_fall_due_are_kept(db, expression):
    assert cron.cron_problem(expression) is None
    assert schedules.schedule_save(WorkflowSchedule(name=expression, cron=expression)).next_run_at


def test_a_schedule_stored_before_it_was_refused_gives_errors_not_crashes(engine, admin_client):
    legacy = WorkflowSchedule.objects.create(name="legacy", cron="0 0 31 2 *", enabled=False)
    change = reverse("admin:workflow_orchestrator_workflowschedule_change", args=[legacy.pk])

    errors = form_errors(admin_client.post(change, {**SCHEDULE_FORM, "name": "legacy", "cron": "0 0 31 2 *"}))
    assert "never falls due" in errors["cron"][0]
    for action in ["resume_schedules", "pause_schedules"]:
        page = admin_client.post(SCHEDULES, {"_selected_action": [legacy.pk], "action": action}, follow=True)
        assert "legacy: cron: '0 0 31 2 *' never falls due" in " ".join(map(str, page.context["messages"]))
    with pytest.raises(CommandError, match="never falls due"):
        call_command("workflow", "schedule", "resume", "legacy", stdout=StringIO())
    legacy.refresh_from_db()
    assert (legacy.enabled, legacy.next_run_at) == (False, None)


# --- The command line ---------------------------------------------------------------------------


def manage(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=child_env(**env), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("text", NOT_STORABLE.values(), ids=NOT_STORABLE.keys())
@pytest.mark.parametrize("command", [["start"], ["schedule", "add", "--cron", "@daily"]], ids=["start", "schedule"])
def test_the_cli_refuses_json_the_database_cannot_store(db, command, text):
    for option, value in [("--input", text), ("--tasks", params_of(text))]:
        with pytest.raises(CommandError, match=f"^{option} holds "):
            call_command("workflow", *command, "--name", "x", option, value, stdout=StringIO())
    assert not Workflow.objects.exists() and not WorkflowSchedule.objects.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["start", "--name", "x", "--input", '{"a": NaN}'],
        ["start", "--name", "x", "--input", '{"a": 1e999}'],
        ["start", "--name", "x", "--tasks", "[" * 50_000 + "]" * 50_000],  # an argument holds up to 128 kB
        ["start", "--name", "x", "--callback-url", "http://127.0.0.1/é"],
        ["schedule", "add", "--name", "x", "--cron", "@daily", "--input", '{"a": NaN}'],
        ["schedule", "add", "--name", "x", "--cron", "0 0 31 2 *"],
        ["list", "--limit", "-1"],
    ],
    ids=["NaN", "1e999", "deep", "non-ASCII URL", "schedule NaN", "never due", "negative limit"],
)
def test_a_cli_error_is_one_line_and_exits_1(transactional_db, args):
    done = manage("workflow", *args, ORCH_WEBHOOK_SECRET=SECRET, ORCH_WEBHOOK_ALLOWED_HOSTS="127.0.0.1")
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("CommandError: ")
    assert not Workflow.objects.exists() and not WorkflowSchedule.objects.exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["start", "--name", "x", "--wait", "nan"], "--wait must be a number of seconds, 0 or more, not nan"),
        (["start", "--name", "x", "--wait", "-1"], "--wait must be a number of seconds"),
        (
            ["start", "--name", "x", "--idempotency-key", "k" * 201],
            "idempotency_key: idempotency_key must be at most 200",
        ),
        (["list", "--limit", "0"], "--limit must be 1 or more, not 0"),
        (["list", "--limit", "-1"], "--limit must be 1 or more"),
        # A name that is not UTF-8 (the shell gives it as lone surrogates) names no schedule.
        (["schedule", "pause", "a\udcffb"], "no schedule named 'a\\udcffb'"),
        (["schedule", "remove", "a\x00b"], "no schedule named"),
    ],
)
def test_other_options_refuse_what_they_cannot_take_in_one_line(db, args, says):
    with pytest.raises(CommandError) as refused:
        call_command("workflow", *args, stdout=StringIO(), stderr=StringIO())
    assert says in str(refused.value)
    assert not Workflow.objects.exists()


def test_starting_with_the_broker_down_warns_in_one_line(transactional_db):
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    done = manage("workflow", "start", "--name", "no broker", ORCH_BROKER="redis", REDIS_URL=nobody)
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "WARNING workflow_orchestrator.services: could not reach the broker" in line
    assert "Connection refused" in line
    assert Workflow.objects.get().name == "no broker"


# --- Callback URLs ----------------------------------------------------------------------------


UNSENDABLE = {
    "non-ASCII path": "/é",
    "non-ASCII query": "/hooks?q=é",
    "space": "/a b",
    "CR LF": "/a\r\nX-Injected: 1",
    "tab": "/a\tb",
    "DEL": "/a\x7fb",
    "non-ASCII host": "é",
}


def unsendable(receiver, tail: str) -> str:
    return f"http://127.0.0.{tail}/" if tail == "é" else receiver.base + tail


@pytest.mark.parametrize("tail", UNSENDABLE.values(), ids=UNSENDABLE.keys())
def test_a_callback_url_http_cannot_send_is_refused_by_the_api_the_admin_and_the_cli(receiver, admin_client, tail):
    url = unsendable(receiver, tail)
    with pytest.raises(ValidationError) as refused:
        callbacks.validate_callback_url(url)
    [message] = refused.value.message_dict["callback_url"]
    assert "percent-encode" in message

    api = APIClient()
    api.force_authenticate(admin_client.get("/admin/").wsgi_request.user)
    response = api.post("/workflow/start", {"name": "w", "callback_url": url}, format="json")
    assert response.status_code == 400 and response.json()["callback_url"] == [message]
    errors = form_errors(admin_client.post(ADD_WORKFLOW, {**WORKFLOW_FORM, "callback_url": url}))
    assert errors["callback_url"] == [message]
    with pytest.raises(CommandError, match="callback_url: callback_url is refused: it holds"):
        call_command("workflow", "start", "--name", "w", "--callback-url", url, stdout=StringIO())
    assert not Workflow.objects.exists()


def test_a_percent_encoded_callback_url_is_kept_and_called_as_given(engine, receiver):
    url = receiver.base + "/hooks/%C3%A9?q=a%20b"
    workflow = engine.start(name="encoded", tasks=[], callback_url=url)
    engine.drain()
    [request] = receiver.requests
    assert request["path"] == "/hooks/%C3%A9?q=a%20b"
    assert WebhookDelivery.objects.get(workflow=workflow).status == WebhookDelivery.Status.DELIVERED


@pytest.mark.parametrize("tail", ["/é", "/a b"], ids=["non-ASCII", "space"])
def test_a_delivery_to_a_url_that_cannot_be_sent_fails_at_once(engine, receiver, tail):
    """A URL stored before such URLs were refused: its first attempt is its last."""
    created, _ = engine.call(services.workflow_create, name="stored", actor=Actor.SYSTEM, callback_url=receiver.url)
    Workflow.objects.filter(pk=created.pk).update(callback_url=unsendable(receiver, tail))
    engine.call(services.workflow_cancel, created.pk, actor=Actor.SYSTEM)
    engine.drain()

    delivery = WebhookDelivery.objects.get(workflow=created)
    assert delivery.status == WebhookDelivery.Status.FAILED
    [attempt] = delivery.attempt_log.all()
    assert attempt.status_code is None and "percent-encode" in attempt.error
    assert receiver.requests == []


def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_off_at_the_timeout(hooks):
    """Each read's timeout alone would let it hold the attempt for as long as it dripped:
    the whole exchange is bounded, so that recovery's timeout outlasts any attempt."""
    hooks.ORCH_WEBHOOK_TIMEOUT = 1
    server = socket.create_server(("127.0.0.1", 0))

    def drip():
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":  # a byte every 0.2 s: 8 s in all
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    try:
        answer = webhooks.post(f"http://127.0.0.1:{server.getsockname()[1]}/", "{}", "delivery")
    finally:
        server.close()
    assert (answer.status_code, answer.error, answer.retry) == (None, "timed out after 1 s", True)


# --- A delivery left SENDING ------------------------------------------------------------------


def ended_with_a_callback(engine, receiver) -> Workflow:
    """A workflow that has just ended, its webhook's first job taken off the broker unsent."""
    created, _ = engine.call(services.workflow_create, name="hooked", actor=Actor.SYSTEM, callback_url=receiver.url)
    engine.call(services.workflow_cancel, created.pk, actor=Actor.SYSTEM)
    assert [job["func"] for job in engine.pending()] == ["workflow_orchestrator.jobs.deliver_webhook"]
    return reload(created)


def deliver_in_a_worker(workflow: Workflow, hooks) -> subprocess.Popen:
    """The first attempt, sent by a process of its own (a worker of a cluster)."""
    code = f"from workflow_orchestrator import webhooks; webhooks.deliver('{workflow.pk}', {workflow.last_seq}, 1)"
    env = child_env(
        ORCH_WEBHOOK_SECRET=SECRET,
        ORCH_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        ORCH_WEBHOOK_TIMEOUT=hooks.ORCH_WEBHOOK_TIMEOUT,
        ORCH_WEBHOOK_MAX_ATTEMPTS=hooks.ORCH_WEBHOOK_MAX_ATTEMPTS,
    )
    return subprocess.Popen([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env)


def sending_when_the_receiver_has_it(engine, receiver, hooks) -> tuple[Workflow, subprocess.Popen]:
    workflow = ended_with_a_callback(engine, receiver)
    receiver.hold.set()
    worker = deliver_in_a_worker(workflow, hooks)
    assert receiver.arrived.wait(30), "the worker's request to arrive"
    assert WebhookDelivery.objects.get(workflow=workflow).status == WebhookDelivery.Status.SENDING
    return workflow, worker


def recover_at(engine, moment) -> dict:
    return engine.call(jobs.recover, now=moment)


def attempt_log(workflow) -> list:
    return list(WebhookAttempt.objects.filter(delivery__workflow=workflow).values_list("number", "status_code"))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_delivery_whose_worker_died_is_taken_back_and_sent_again(transactional_db, engine, receiver, hooks):
    workflow, worker = sending_when_the_receiver_has_it(engine, receiver, hooks)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    delivery = WebhookDelivery.objects.get(workflow=workflow)
    started = delivery.sending_since
    assert started is not None

    assert recover_at(engine, started + webhooks.sending_timeout())["webhooks_taken_back"] == 0  # not yet
    receiver.hold.clear()
    assert recover_at(engine, started + webhooks.sending_timeout() + timedelta(seconds=1))["webhooks_taken_back"] == 1
    engine.drain()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.sending_since) == (WebhookDelivery.Status.DELIVERED, 2, None)
    assert attempt_log(workflow) == [(1, None), (2, 200)]
    assert "taken back" in delivery.attempt_log.get(number=1).error
    first, second = receiver.requests
    assert first["body"] == second["body"]
    assert first["headers"]["X-Orchestrator-Delivery"] == second["headers"]["X-Orchestrator-Delivery"]
    # Each attempt number is claimed and sent once, however often its job runs again.
    for attempt in (1, 2):
        assert engine.call(webhooks.deliver, str(workflow.pk), workflow.last_seq, attempt) is None
    assert len(receiver.requests) == 2
    assert recover_at(engine, timezone.now() + timedelta(days=1))["webhooks_taken_back"] == 0


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_delivery_whose_worker_died_on_its_last_attempt_fails(transactional_db, engine, receiver, hooks):
    hooks.ORCH_WEBHOOK_MAX_ATTEMPTS = 1
    workflow, worker = sending_when_the_receiver_has_it(engine, receiver, hooks)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    later = timezone.now() + webhooks.sending_timeout() + timedelta(seconds=1)
    assert recover_at(engine, later)["webhooks_taken_back"] == 1

    delivery = WebhookDelivery.objects.get(workflow=workflow)
    assert (delivery.status, delivery.sending_since) == (WebhookDelivery.Status.FAILED, None)
    assert attempt_log(workflow) == [(1, None)]
    assert engine.pending() == []
    assert len(receiver.requests) == 1


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_an_answer_that_comes_after_its_attempt_was_taken_back_changes_nothing(
    transactional_db, engine, receiver, hooks
):
    """A worker that was stopped (not killed) for longer than the timeout answers late: the
    next attempt, queued by the take-back, is the one that counts."""
    workflow, worker = sending_when_the_receiver_has_it(engine, receiver, hooks)
    later = timezone.now() + webhooks.sending_timeout() + timedelta(seconds=1)
    assert recover_at(engine, later)["webhooks_taken_back"] == 1
    receiver.hold.clear()
    receiver.release.set()
    assert worker.wait(30) == 0

    delivery = WebhookDelivery.objects.get(workflow=workflow)
    assert (delivery.status, delivery.attempts) == (WebhookDelivery.Status.PENDING, 1)
    assert attempt_log(workflow) == [(1, None)]
    engine.drain()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert attempt_log(workflow) == [(1, None), (2, 200)]
    assert len(receiver.requests) == 2


def test_recover_s_output_says_how_many_webhooks_it_took_back(db):
    out = StringIO()
    call_command("workflow", "recover", stdout=out)
    assert "stalled webhooks taken back: 0" in out.getvalue()
