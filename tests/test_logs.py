"""LOG_FORMAT=json: one JSON object per line, with the engine's fields."""

import json

import pytest

from tests.conftest import wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Task, Workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_a_cluster_logs_one_json_object_per_line_with_the_engine_s_fields(cluster):
    running = cluster(LOG_FORMAT="json", LOG_LEVEL="info", ORCH_RETRY_BACKOFF=0.05)
    tasks = [{"type": "echo", "params": {}}, {"type": "fail", "params": {"times": 1}, "max_attempts": 2}]
    workflow, _ = services.workflow_create(actor=Actor.SYSTEM, name="logged", start=True, tasks=tasks)
    wait_for(lambda: Workflow.objects.get(pk=workflow.pk).state == State.COMPLETE, 120, "the workflow to complete")
    failing = Task.objects.get(workflow=workflow, type="fail")
    running.stop()  # everything it logged is written
    lines = running.output().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]  # each line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    ours = [record for record in records if record.get("workflow_id") == str(workflow.pk)]
    assert {"execute", "validate", "complete"} <= {record.get("event") for record in ours}
    failed = [record for record in ours if record.get("event") == "task_failed"]
    assert [(record["task_id"], record["attempt"]) for record in failed] == [(failing.pk, 1)]
    succeeded = {(record["task_id"], record["attempt"]) for record in ours if record.get("event") == "task_succeeded"}
    assert (failing.pk, 2) in succeeded
    assert all(record["level"] in {"INFO", "WARNING"} for record in ours)
