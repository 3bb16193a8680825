"""Outages of the broker: a Redis of the test's own (not the shared one) is stopped and
started again while real processes use it."""

import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env, events, free_port, wait_for
from workflow_orchestrator.models import State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REDIS = shutil.which("redis-server")


class PrivateRedis:
    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [
                REDIS,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self.answers, 10, "the private Redis to answer")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def private_redis(tmp_path):
    if not REDIS:
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path)
    yield redis
    redis.stop()


def manage(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=child_env(**env), capture_output=True, text=True, timeout=60
    )


def test_starting_a_workflow_while_redis_is_down_loses_nothing(transactional_db, cluster, private_redis):
    broker = {
        "ORCH_BROKER": "redis",
        "REDIS_URL": private_redis.url,
        "ORCH_CLUSTER_NAME": f"outage{private_redis.port}",
    }
    # Redis is not running: the start still succeeds, its tasks wait as QUEUED in the database.
    started = manage(
        "workflow", "start", "--name", "during-outage", "--tasks", '[{"type": "echo"}]', "--json", **broker
    )
    assert started.returncode == 0, started.stderr
    assert "could not reach the broker" in started.stderr
    workflow = Workflow.objects.get(name="during-outage")
    assert workflow.state == State.PREPARE
    assert Task.objects.get(workflow=workflow, name="prepare").status == Task.Status.QUEUED

    private_redis.start()
    cluster(**broker, ORCH_REQUEUE_SECONDS=1)
    # Recovery (the cluster's schedule, or this command) re-sends the job the broker never got.
    wait_for(
        lambda: "lost jobs re-sent: 1" in manage("workflow", "recover", **broker, ORCH_REQUEUE_SECONDS=1).stdout,
        20,
        "recovery to re-send",
    )
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 60, "the workflow to complete")
    assert events(Workflow.objects.get(pk=workflow.pk)) == ["start", "execute", "validate", "complete"]


def test_a_cluster_survives_redis_going_away_and_coming_back(transactional_db, cluster, private_redis):
    broker = {
        "ORCH_BROKER": "redis",
        "REDIS_URL": private_redis.url,
        "ORCH_CLUSTER_NAME": f"outage{private_redis.port}",
    }
    private_redis.start()
    cluster(**broker, ORCH_REQUEUE_SECONDS=1)
    first = manage("workflow", "start", "--name", "before", "--tasks", '[{"type": "noop"}]', "--wait", "60", **broker)
    assert first.returncode == 0, first.stderr
    private_redis.stop()
    during = manage("workflow", "start", "--name", "during", "--tasks", '[{"type": "noop"}]', **broker)
    assert during.returncode == 0, during.stderr
    private_redis.start()
    recover = lambda: manage("workflow", "recover", **broker, ORCH_REQUEUE_SECONDS=1)  # noqa: E731
    wait_for(
        lambda: recover() and Workflow.objects.get(name="during").state == State.COMPLETE,
        90,
        "the workflow started during the outage",
    )


class UnreachableBroker:
    """A broker whose server does not answer (what redis-py raises when Redis is down)."""

    def __getattr__(self, name):
        def unreachable(*args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return unreachable


@pytest.mark.parametrize("path", ["/execution/stats", "/execution/stats/"])
def test_stats_answer_without_the_broker(admin_client, monkeypatch, path):
    from workflow_orchestrator import queue

    monkeypatch.setattr(queue, "broker", UnreachableBroker)
    response = admin_client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["broker_available"] is False and body["queue_depth"] is None and body["clusters"] == []
    assert "workflows_by_state" in body


def test_a_database_outage_answers_503_not_500(admin_client, monkeypatch):
    from django.db import OperationalError

    from workflow_orchestrator import services

    def database_down(**kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(services, "workflow_create", database_down)
    response = admin_client.post("/workflow/start", {"name": "x"}, content_type="application/json")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "database is unavailable" in response.json()["detail"]
