"""examples/client.py, run as a user would run it: a subprocess talking HTTP to a live
server (pytest-django's `live_server`, a thread of this process on the test database)
while a real `qcluster` works the jobs."""

import os
import re
import subprocess
import sys

import pytest
from rest_framework.authtoken.models import Token

from tests.conftest import ROOT, alive_processes, events, wait_for
from workflow_orchestrator.models import State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def group_alive(pgid: int) -> list[int]:
    """Processes of the process group `pgid` that are still running (zombies excluded)."""
    return alive_processes(pgid=pgid)


def test_the_client_example_runs_every_step_against_a_live_server(cluster, live_server, django_user_model):
    running = cluster(ORCH_RETRY_BACKOFF=0.05)
    user = django_user_model.objects.create_user("alice", password="not-used-here")
    token = Token.objects.create(user=user)
    env = {key: value for key, value in os.environ.items() if key not in ("ORCH_URL", "ORCH_TOKEN")}

    result = subprocess.run(
        [sys.executable, "examples/client.py", "--url", live_server.url, "--token", token.key, "--timeout", "60"],
        cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=200,
    )  # fmt: skip

    print(result.stdout)  # shown by pytest when the test fails, or with -s
    report = f"{result.stdout}\n{result.stderr}\n--- qcluster ---\n{running.output()[-3000:]}"
    assert result.returncode == 0, report
    assert "all 5 steps ended as expected" in result.stdout, report
    # Stats cover alice's workflows, and the workers of every cluster on the broker (ours has 2).
    assert "workflows by state: COMPLETE 3, CANCELLED 1" in result.stdout, report
    assert int(re.search(r"workers: (\d+)", result.stdout)[1]) >= 2, report

    workflows = {w.name: w for w in Workflow.objects.filter(created_by=user)}
    assert sorted(workflows) == ["client-auto", "client-cancel", "client-manual", "client-retry"]

    auto = workflows["client-auto"]
    assert auto.state == State.COMPLETE
    assert events(auto) == ["start", "execute", "validate", "complete"]
    assert auto.results["EXECUTE"] == {"echo-1": {"hello": "world"}, "sleep-2": {"slept": 0.2}}

    manual = workflows["client-manual"]
    assert manual.state == State.COMPLETE and manual.mode == Workflow.Mode.MANUAL
    history = list(manual.transitions.order_by("seq").values_list("event", "actor_label", "actor"))
    assert history == [(event, "api:alice", user.pk) for event in ["start", "execute", "validate", "complete"]]

    retried = workflows["client-retry"]
    assert retried.state == State.COMPLETE and retried.retries == 1
    assert events(retried) == ["start", "execute", "fail", "retry", "validate", "complete"]
    assert retried.transitions.get(event="retry").actor_label == "api:alice"
    assert retried.tasks.get(type="fail").attempt == 2

    cancelled = workflows["client-cancel"]
    assert cancelled.state == State.CANCELLED
    assert events(cancelled) == ["start", "execute", "cancel"]
    cancel = cancelled.transitions.get(event="cancel")
    assert (cancel.actor_label, cancel.reason) == ("api:alice", "client example")
    # The 30 s sleep was either cancelled before it ran or noticed the cancel and stopped early.
    sleep = wait_for(
        lambda: Task.objects.filter(workflow=cancelled, type="sleep").exclude(status=Task.Status.RUNNING).first(),
        20,
        "the cancelled sleep to stop",
    )
    assert sleep.status == Task.Status.CANCELLED or (sleep.result["cancelled"] and sleep.result["slept"] < 30)

    # Stopping the cluster leaves none of its processes behind (the fixture's own stop is then a no-op).
    pgid = running.process.pid  # started with start_new_session: the group is the cluster's
    running.stop()
    assert running.process.returncode is not None
    wait_for(lambda: not group_alive(pgid), 10, "the cluster's processes to end")
