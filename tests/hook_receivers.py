"""A workflow_transitioned receiver for tests/test_signals.py's cluster, which imports this
module through ORCH_TASK_MODULES: each signal becomes a line of the file named by
TEST_SIGNAL_LOG (in processes that have it set)."""

import json
import os

from django.dispatch import receiver

from workflow_orchestrator.signals import workflow_transitioned


@receiver(workflow_transitioned)
def log_transition(sender, workflow, transition, **kwargs):
    path = os.environ.get("TEST_SIGNAL_LOG")
    if not path:
        return
    line = {
        "pid": os.getpid(),
        "workflow": str(workflow.pk),
        "name": workflow.name,  # not read by a worker's change: loaded on demand
        "state": workflow.state,
        "seq": transition.seq,
        "id": transition.pk,
        "event": transition.event,
    }
    with open(path, "a") as log:
        log.write(json.dumps(line) + "\n")
