"""A lost heartbeat never cuts work short: a database error in the heartbeat is
transient, and only a committed cancel, or recovery taking the attempt back, tells a
running handler to stop."""

import time

import pytest
from django.db import connection

from tests.conftest import reload, task, wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def terminate_heartbeats() -> int:
    """Drop the database connection of every heartbeat looking for a cancel, as a
    restarted server, a proxy or a network would. (Only the heartbeat's own query: the
    statement that records a success names CANCELLED too.)"""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE %s",
            ['SELECT 1 AS "a" FROM "workflow_orchestrator_workflow" WHERE %CANCELLED%'],
        )
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no connection to drop: it runs in-process")
def test_a_heartbeat_whose_connection_drops_keeps_the_lease_and_the_work(cluster):
    # A 3 s lease, renewed every second: the connections are dropped for longer than that.
    cluster(ORCH_WORKERS=1, ORCH_LEASE_SECONDS=3)
    workflow, _ = services.workflow_create(
        name="nap", actor=Actor.SYSTEM, tasks=[{"name": "nap", "type": "sleep", "params": {"seconds": 8}}], start=True
    )
    wait_for(lambda: task(workflow, "nap").status == Task.Status.RUNNING, 60, "the task to start")
    dropped, until = 0, time.monotonic() + 5
    while time.monotonic() < until:
        dropped += terminate_heartbeats()
        time.sleep(0.2)
    wait_for(lambda: reload(workflow).state == State.COMPLETE, 60, "the workflow to complete")
    nap = task(workflow, "nap")
    assert nap.result == {"slept": 8.0}, "the handler was not told to stop"
    assert nap.attempt == 1, "the attempt kept its lease: recovery never took it back"
    assert dropped >= 3, "the heartbeat's connection was dropped again and again"
