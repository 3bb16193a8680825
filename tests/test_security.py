"""What a client can make the workers do: run registered task types with JSON params, nothing else."""

import pytest
from django.core.exceptions import ValidationError

from workflow_orchestrator import queue
from workflow_orchestrator.models import Task


@pytest.mark.parametrize(
    "task_type", ["os.system", "subprocess.run", "workflow_orchestrator.jobs.run_task", "builtins.eval", "../noop"]
)
def test_task_types_are_names_in_the_registry_not_import_paths(engine, task_type):
    with pytest.raises(ValidationError, match="unknown task type"):
        engine.start(tasks=[{"type": task_type, "params": {"cmd": "rm -rf /"}}])
    assert not Task.objects.exists()


def test_jobs_carry_only_ids_never_client_data(engine):
    engine.start(tasks=[{"type": "echo", "params": {"payload": "cos\nsystem\n(S'echo pwned'\ntR."}}])
    jobs = engine.pending()
    assert [job["func"] for job in jobs] == [queue.RUN_TASK]
    # The task's id and attempt, and the delivery's budget: a number of seconds.
    assert all(isinstance(arg, int | float) for job in jobs for arg in job["args"]) and jobs[0]["kwargs"] == {}
    engine.run(jobs[0])
    for job in engine.pending():
        engine.run(job)
    echoed = Task.objects.get(type="echo")
    assert echoed.result == {"payload": "cos\nsystem\n(S'echo pwned'\ntR."}, "params are JSON data, returned as given"
