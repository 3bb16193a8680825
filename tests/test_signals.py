"""workflow_transitioned: sent once per committed transition, wherever it was made (a
service, or a worker's statement on the hot path), never for one rolled back."""

import json
import os

import pytest
from django.db import transaction

from tests.conftest import events, reload, wait_for
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, State, Transition, Workflow
from workflow_orchestrator.signals import workflow_transitioned


@pytest.fixture
def received():
    """What workflow_transitioned delivered, as (workflow id, seq, event, state, name, id)."""
    seen = []

    def receiver(sender, workflow, transition, **kwargs):
        assert sender is Workflow
        seen.append((workflow.pk, transition.seq, transition.event, workflow.state, workflow.name, transition.pk))

    workflow_transitioned.connect(receiver)
    yield seen
    workflow_transitioned.disconnect(receiver)


def sent_for(workflow, received) -> list[tuple]:
    return [entry[1:] for entry in received if entry[0] == workflow.pk]


def logged(workflow) -> list[tuple]:
    """The audit log, in the shape `received` keeps."""
    return [
        (row.seq, row.event, row.target, workflow.name, row.pk) for row in Transition.objects.filter(workflow=workflow)
    ]


def test_sent_once_per_transition_of_a_whole_run_with_the_workflow_as_each_left_it(engine, received):
    workflow = engine.start(name="signalled", tasks=[{"name": f"t{i}", "type": "echo"} for i in range(3)])
    engine.drain()

    assert reload(workflow).state == State.COMPLETE
    assert events(workflow) == ["start", "execute", "validate", "complete"]
    # The worker's changes hand over a workflow that read only what the change needed:
    # its name is loaded when the receiver asks for it.
    assert sent_for(workflow, received) == logged(workflow)


def test_sent_for_failure_retry_and_cancel(engine, received):
    workflow = engine.start(name="failing", tasks=[{"name": "bad", "type": "fail", "max_attempts": 1}])
    engine.drain()
    engine.call(services.workflow_retry, workflow.pk, actor=Actor.SYSTEM)
    engine.drain()
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.SYSTEM, reason="enough")

    assert events(workflow) == ["start", "execute", "fail", "retry", "fail", "cancel"]
    assert sent_for(workflow, received) == logged(workflow)


def test_changes_made_in_one_go_each_send_the_workflow_as_that_change_left_it(engine, received):
    """Without EXECUTE tasks, the change into EXECUTE moves on to VALIDATE at once, in the
    same job: each signal still carries its own change's state."""
    workflow = engine.start(name="no tasks", tasks=[])
    engine.drain()

    assert events(workflow) == ["start", "execute", "validate", "complete"]
    assert sent_for(workflow, received) == logged(workflow)


@pytest.mark.django_db(transaction=True)
def test_not_sent_for_a_change_rolled_back(received):
    workflow, _ = services.workflow_create(name="kept", actor=Actor.SYSTEM)

    with pytest.raises(RuntimeError), transaction.atomic():
        services.workflow_cancel(workflow.pk, actor=Actor.SYSTEM)
        assert received == []  # not before the commit either
        raise RuntimeError("roll it back")

    assert reload(workflow).state == State.INIT
    assert received == []
    services.workflow_cancel(workflow.pk, actor=Actor.SYSTEM)
    assert sent_for(workflow, received) == logged(workflow)


@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_does_not_stop_the_change(received, caplog):
    def broken(**kwargs):
        raise ValueError("receiver bug")

    workflow_transitioned.connect(broken)
    try:
        workflow, _ = services.workflow_create(name="robust", actor=Actor.SYSTEM)
        services.workflow_cancel(workflow.pk, actor=Actor.SYSTEM)
    finally:
        workflow_transitioned.disconnect(broken)

    assert reload(workflow).state == State.CANCELLED
    assert len(sent_for(workflow, received)) == 1  # the other receivers still got it
    assert "receiver bug" in caplog.text


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sent_in_the_worker_process_that_made_each_change(cluster, tmp_path):
    log = tmp_path / "signals.jsonl"
    cluster(ORCH_TASK_MODULES="tests.hook_receivers", TEST_SIGNAL_LOG=log)
    workflows = [
        services.workflow_create(
            name=f"run {i}", actor=Actor.SYSTEM, start=True, tasks=[{"name": f"t{j}", "type": "echo"} for j in range(3)]
        )[0]
        for i in range(3)
    ]
    wait_for(lambda: Workflow.objects.filter(state=State.COMPLETE).count() == 3, 60, "the workflows to complete")
    # The last line is written right after the commit: give it a moment.
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 9, 10, "a line per worker transition")

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {line["pid"] for line in lines}.isdisjoint({os.getpid()})
    for workflow in workflows:
        mine = sorted(
            (line["seq"], line["event"], line["state"], line["name"], line["id"])
            for line in lines
            if line["workflow"] == str(workflow.pk)
        )
        # seq 1 (start) was this process's change, where the receiver logs nothing.
        assert mine == [row for row in logged(workflow) if row[0] > 1]
