"""Webhooks against a real HTTP server on 127.0.0.1: the signed body, retries, giving up,
at most one delivery per transition, and the hosts that may not be called."""

import hashlib
import hmac
import json
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import ROOT, free_port, reload, wait_for
from tests.conftest import WEBHOOK_SECRET as SECRET
from workflow_orchestrator import callbacks, services, webhooks
from workflow_orchestrator.models import Actor, State, WebhookDelivery, Workflow


def delivery_of(workflow) -> WebhookDelivery:
    return WebhookDelivery.objects.get(workflow=workflow)


def answers(delivery) -> list:
    return [(a.number, a.status_code) for a in delivery.attempt_log.order_by("number")]


def test_a_completed_workflow_posts_its_signed_body_once(engine, receiver):
    workflow = engine.start(name="signed", tasks=[{"type": "echo"}], callback_url=receiver.url)
    engine.drain()

    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE
    [request] = receiver.requests
    assert request["path"] == "/hooks/orchestrator?source=test"
    body, headers = request["body"], request["headers"]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Orchestrator-Signature"] == expected
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    delivery = delivery_of(workflow)
    assert headers["X-Orchestrator-Delivery"] == payload["delivery"] == str(delivery.pk)
    assert payload == {
        "delivery": str(delivery.pk),
        "workflow": str(workflow.pk),
        "name": "signed",
        "state": "COMPLETE",
        "seq": workflow.last_seq,
        "event": "complete",
        "finished_at": workflow.finished_at.isoformat(),
        "error": None,
    }
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert answers(delivery) == [(1, 200)]


def test_a_failed_workflow_reports_its_error_and_a_cancelled_one_its_state(engine, receiver):
    failed = engine.start(
        name="failing", tasks=[{"name": "bad", "type": "fail", "max_attempts": 1}], callback_url=receiver.url
    )
    engine.drain()
    created, _ = engine.call(services.workflow_create, name="never run", actor=Actor.SYSTEM, callback_url=receiver.url)
    engine.call(services.workflow_cancel, created.pk, actor=Actor.SYSTEM)
    engine.drain()

    sent = {payload["workflow"]: payload for payload in (json.loads(r["body"]) for r in receiver.requests)}
    assert sent[str(failed.pk)]["state"] == "FAILED"
    assert sent[str(failed.pk)]["event"] == "fail"
    assert sent[str(failed.pk)]["error"] == reload(failed).error
    assert sent[str(created.pk)]["state"] == "CANCELLED"
    assert sent[str(created.pk)]["seq"] == 1
    assert len(receiver.requests) == 2


def test_a_workflow_without_callback_url_or_that_does_not_end_calls_nothing(engine, receiver):
    engine.start(name="no url", tasks=[{"type": "echo"}])
    manual = engine.start(name="manual", mode="manual", tasks=[{"type": "echo"}], callback_url=receiver.url)
    engine.drain()

    assert reload(manual).state == State.PREPARE
    assert receiver.requests == []
    assert not WebhookDelivery.objects.exists()


def test_a_500_is_retried_with_the_same_body_and_signature_until_it_succeeds(engine, receiver):
    receiver.answers = [500, 503]
    workflow = engine.start(name="retried", tasks=[], callback_url=receiver.url)
    engine.drain()

    assert len(receiver.requests) == 3
    assert len({(r["body"], r["headers"]["X-Orchestrator-Signature"]) for r in receiver.requests}) == 1
    delivery = delivery_of(workflow)
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert answers(delivery) == [(1, 500), (2, 503), (3, 200)]
    assert "answered 500" in delivery.attempt_log.get(number=1).error


def test_gives_up_after_max_attempts(engine, receiver, hooks):
    hooks.ORCH_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.answers = [502] * 10
    workflow = engine.start(name="down", tasks=[], callback_url=receiver.url)
    engine.drain()

    delivery = delivery_of(workflow)
    assert len(receiver.requests) == 3
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert answers(delivery) == [(1, 502), (2, 502), (3, 502)]


def test_a_4xx_answer_is_final(engine, receiver):
    receiver.answers = [404]
    workflow = engine.start(name="gone", tasks=[], callback_url=receiver.url)
    engine.drain()

    assert len(receiver.requests) == 1
    assert delivery_of(workflow).status == WebhookDelivery.Status.FAILED


def test_connection_errors_are_retried_and_recorded(engine, hooks):
    hooks.ORCH_WEBHOOK_MAX_ATTEMPTS = 2
    workflow = engine.start(name="nobody listens", tasks=[], callback_url=f"http://127.0.0.1:{free_port()}/")
    engine.drain()

    delivery = delivery_of(workflow)
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert answers(delivery) == [(1, None), (2, None)]
    assert "ConnectionRefusedError" in delivery.attempt_log.get(number=1).error


def test_a_job_delivered_twice_sends_once(engine, receiver):
    workflow = engine.start(name="twice", tasks=[], callback_url=receiver.url)
    jobs = engine.pending()
    while not any(job["func"] == "workflow_orchestrator.jobs.deliver_webhook" for job in jobs):
        for job in jobs:
            engine.run(job)
        jobs = engine.pending()
    [webhook_job] = [job for job in jobs if job["func"] == "workflow_orchestrator.jobs.deliver_webhook"]

    engine.run(webhook_job)
    engine.run(webhook_job)  # the broker delivers at least once
    assert webhooks.deliver(str(workflow.pk), reload(workflow).last_seq, 1) is None

    assert len(receiver.requests) == 1
    assert answers(delivery_of(workflow)) == [(1, 200)]


def test_a_retry_job_delivered_twice_sends_once(engine, receiver):
    receiver.answers = [500]
    workflow = engine.start(name="retry twice", tasks=[], callback_url=receiver.url)
    engine.drain(wait=0)
    seq = reload(workflow).last_seq
    assert answers(delivery_of(workflow)) == [(1, 500)]

    for _ in range(2):  # the second attempt's job, twice
        engine.call(webhooks.deliver, str(workflow.pk), seq, 2)

    assert len(receiver.requests) == 2
    assert answers(delivery_of(workflow)) == [(1, 500), (2, 200)]


def test_a_host_no_longer_allowed_at_delivery_time_is_refused_and_recorded(engine, receiver, hooks):
    workflow = engine.start(name="refused", tasks=[{"type": "echo"}], callback_url=receiver.url)
    hooks.ORCH_WEBHOOK_ALLOWED_HOSTS = ["*"]  # now only public addresses: 127.0.0.1 is not one
    engine.drain()

    delivery = delivery_of(workflow)
    assert receiver.requests == []
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert answers(delivery) == [(1, None)]
    assert "refused: the host 127.0.0.1 resolves to 127.0.0.1" in delivery.attempt_log.get().error


def test_the_workflow_detail_shows_each_attempt(engine, receiver, django_user_model):
    receiver.answers = [500]
    user = django_user_model.objects.create_user("reader", password="x", is_staff=True, is_superuser=True)
    api = APIClient()
    api.force_authenticate(user)
    workflow = engine.start(name="shown", tasks=[], callback_url=receiver.url)
    engine.drain()

    detail = api.get(f"/workflow/{workflow.pk}").json()
    assert detail["callback_url"] == receiver.url
    [delivery] = detail["webhook_deliveries"]
    assert delivery["status"] == "DELIVERED"
    assert [(a["number"], a["status_code"]) for a in delivery["attempt_log"]] == [(1, 500), (2, 200)]


# --- Which URLs are accepted -----------------------------------------------------------------

REFUSED = [
    ("http://example.com/hook", ["127.0.0.1"], "the host example.com is not allowed by ORCH_WEBHOOK_ALLOWED_HOSTS"),
    ("ftp://127.0.0.1/hook", ["127.0.0.1"], "only http and https"),
    ("http://localhost:9/hook", ["*"], "resolves to"),
    ("http://10.1.2.3/hook", ["*"], "10.1.2.3, which is not a public address"),
    ("http://169.254.169.254/latest/meta-data", ["*"], "not a public address"),
    ("http://[::1]:9/hook", ["*"], "not a public address"),
    ("http://[::ffff:127.0.0.1]/hook", ["*"], "not a public address"),
    ("http://user:pw@127.0.0.1/hook", ["127.0.0.1"], "user name or password"),
    ("http://127.0.0.1:99999/hook", ["127.0.0.1"], "port"),
    ("not a url", ["*"], "only http and https"),
    ("http://evil.example.com.attacker.test/", ["*.example.com"], "not allowed"),
]


@pytest.mark.parametrize(("url", "allowed", "reason"), REFUSED)
def test_a_refused_callback_url_gets_400_naming_it(hooks, url, allowed, reason, django_user_model):
    hooks.ORCH_WEBHOOK_ALLOWED_HOSTS = allowed
    user = django_user_model.objects.create_user("creator", password="x")
    api = APIClient()
    api.force_authenticate(user)

    response = api.post("/workflow/start", {"name": "w", "callback_url": url}, format="json")

    assert response.status_code == 400, response.json()
    assert reason in " ".join(response.json()["callback_url"])
    assert not Workflow.objects.exists()


def test_callback_urls_need_a_secret_to_sign_with(hooks, django_user_model):
    hooks.ORCH_WEBHOOK_SECRET = ""
    user = django_user_model.objects.create_user("creator", password="x")
    api = APIClient()
    api.force_authenticate(user)

    response = api.post("/workflow/start", {"name": "w", "callback_url": "http://127.0.0.1/"}, format="json")

    assert response.status_code == 400
    assert "ORCH_WEBHOOK_SECRET" in response.json()["callback_url"][0]


def test_an_allowed_callback_url_is_kept_by_the_api_and_the_cli(hooks, django_user_model, capsys):
    user = django_user_model.objects.create_user("creator", password="x")
    api = APIClient()
    api.force_authenticate(user)

    response = api.post("/workflows/", {"name": "w", "callback_url": "http://127.0.0.1:8001/in"}, format="json")
    assert response.status_code == 201
    assert response.json()["callback_url"] == "http://127.0.0.1:8001/in"
    patched = api.patch(f"/workflows/{response.json()['id']}", {"callback_url": "http://example.com/"}, format="json")
    assert patched.status_code == 400 and "callback_url" in patched.json()

    call_command("workflow", "start", "--name", "cli", "--callback-url", "https://127.0.0.1/x", "--mode", "manual")
    assert Workflow.objects.get(name="cli").callback_url == "https://127.0.0.1/x"
    with pytest.raises(CommandError, match="callback_url is refused: the host example.com is not allowed"):
        call_command("workflow", "start", "--name", "cli", "--callback-url", "http://example.com/")


def test_a_wildcard_allows_public_hosts_of_a_domain(hooks, monkeypatch):
    hooks.ORCH_WEBHOOK_ALLOWED_HOSTS = ["*.example.com"]
    public = [(2, 1, 6, "", ("93.184.215.14", 443))]
    monkeypatch.setattr(callbacks.socket, "getaddrinfo", lambda *args, **kwargs: public)

    assert callbacks.validate_callback_url("https://hooks.example.com/in") == "https://hooks.example.com/in"
    with pytest.raises(callbacks.Refused, match="not allowed"):
        callbacks.check("https://example.org/in")


def test_allowed_hosts_are_compared_without_regard_to_case(hooks, monkeypatch):
    hooks.ORCH_WEBHOOK_ALLOWED_HOSTS = ["*.Example.COM", "Hooks.Example.ORG"]
    public = [(2, 1, 6, "", ("93.184.215.14", 443))]
    monkeypatch.setattr(callbacks.socket, "getaddrinfo", lambda *args, **kwargs: public)

    assert callbacks.check("https://HOOKS.example.com/in").address == "93.184.215.14"
    assert callbacks.check("https://hooks.example.org/in").address == "93.184.215.14"
    with pytest.raises(callbacks.Refused, match="not allowed"):
        callbacks.check("https://other.example.org/in")


# --- The receiver docs/API.md shows, on a real cluster -------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_documented_receiver_accepts_a_real_cluster_s_webhooks_and_rejects_forgeries(cluster, settings):
    example = (ROOT / "examples" / "webhook_receiver.py").read_text()
    assert example.split('"""', 2)[2].strip() in (ROOT / "docs" / "API.md").read_text()  # docs/API.md shows it
    port = free_port()
    env = {"ORCH_WEBHOOK_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        [sys.executable, "examples/webhook_receiver.py", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        settings.ORCH_WEBHOOK_SECRET = SECRET
        settings.ORCH_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
        cluster(ORCH_WEBHOOK_SECRET=SECRET, ORCH_WEBHOOK_ALLOWED_HOSTS="127.0.0.1")
        wait_for(lambda: _listening(port), 10, "the receiver to listen")
        url = f"http://127.0.0.1:{port}/"
        workflows = [
            services.workflow_create(
                name=f"hooked {i}", actor=Actor.SYSTEM, start=True, tasks=[{"type": "echo"}], callback_url=url
            )[0]
            for i in range(3)
        ]
        delivered = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.DELIVERED)
        wait_for(lambda: delivered.count() == 3, 60, "three delivered webhooks")
        assert WebhookDelivery.objects.count() == 3
        assert {d.attempt_log.get().status_code for d in WebhookDelivery.objects.all()} == {204}

        forged = webhooks.Answer()
        with override_settings(ORCH_WEBHOOK_SECRET="not the secret"):
            forged = webhooks.post(url, '{"delivery": "x"}', "x")
        assert forged.status_code == 401
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    for workflow in workflows:
        assert f"workflow {workflow.pk} (hooked" in output
        assert output.count(str(workflow.pk)) == 1


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- The admin ------------------------------------------------------------------------------


def test_the_admin_adds_a_workflow_with_a_callback_url_and_shows_its_attempts(engine, receiver, admin_client):
    receiver.answers = [503]
    add = reverse("admin:workflow_orchestrator_workflow_add")
    form = {"name": "from the admin", "definition": "default", "mode": "auto", "input": "{}", "tasks": "[]"}

    refused = admin_client.post(add, {**form, "callback_url": "http://example.com/in", "start_now": "on"})
    assert refused.status_code == 200
    assert "callback_url is refused: the host example.com is not allowed" in " ".join(
        dom.parse(refused).texts(".form-row.errors .errorlist li")
    )
    with engine.capture(execute=True):
        created = admin_client.post(add, {**form, "callback_url": receiver.url, "start_now": "on"})
    assert created.status_code == 302
    engine.drain()

    workflow = Workflow.objects.get(name="from the admin")
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])))
    deliveries = page.one("#webhook_deliveries-group")
    assert deliveries.one("h2").text.lower() == "webhook deliveries"
    [delivery] = [row for row in deliveries.select("tbody tr") if row.select(".field-url")]
    assert delivery.one(".field-url").text == receiver.url
    attempts = delivery.one(".field-attempt_lines").text
    assert attempts.startswith("1. 503 at") and "answered 503" in attempts
    assert "2. 200 at" in attempts


def test_the_next_attempt_waits_out_the_webhook_backoff(engine, receiver, hooks):
    hooks.ORCH_WEBHOOK_BACKOFF = 0.5
    receiver.answers = [500]
    engine.start(name="retried later", tasks=[], callback_url=receiver.url)
    for _ in range(10):  # the workflow's own jobs, then the first attempt
        for job in engine.pending():
            engine.run(job)
    assert len(receiver.requests) == 1
    assert engine.pending() == [], "the second attempt is not due before its backoff"
    assert engine.broker.delayed_size() == 1
    engine.drain(wait=5)
    assert len(receiver.requests) == 2
