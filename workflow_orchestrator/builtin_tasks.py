"""Built-in task types (for demos and tests) and the `default` workflow definition."""

import time

from .models import Task
from .registry import WorkflowDefinition, register_definition, task_type


class TaskFailed(Exception):
    """Raised by the `fail` task type."""


@task_type("noop")
def noop(ctx, params):
    return None


@task_type("echo")
def echo(ctx, params):
    return params


@task_type("sleep")
def sleep(ctx, params):
    """Sleep `seconds`, returning early when the workflow is cancelled."""
    seconds = float(params.get("seconds", 1))
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if ctx.cancelled():
            return {"slept": round(seconds - remaining, 3), "cancelled": True}
        time.sleep(min(remaining, 0.05))
    return {"slept": seconds}


@task_type("gather")
def gather(ctx, params):
    """The results of the tasks this one runs after, by name (`ctx.upstream`)."""
    return ctx.upstream


@task_type("fail")
def fail(ctx, params):
    """Fail while the attempt number is at most `times` (always, without `times`)."""
    times = params.get("times")
    if times is None or ctx.attempt <= int(times):
        raise TaskFailed(params.get("message") or f"failed on attempt {ctx.attempt} as asked")
    return {"attempt": ctx.attempt}


@task_type("default.prepare")
def default_prepare(ctx, params):
    """Check that the workflow's input is a JSON object."""
    if not isinstance(ctx.input, dict):
        raise ValueError(f"input must be a JSON object, got {type(ctx.input).__name__}")
    return {"input_keys": sorted(ctx.input)}


@task_type("default.validate")
def default_validate(ctx, params):
    """Check that every EXECUTE task succeeded."""
    tasks = Task.objects.filter(workflow_id=ctx.workflow_id, phase=Task.Phase.EXECUTE)
    statuses = list(tasks.values_list("name", "status"))
    failed = [name for name, status in statuses if status != Task.Status.SUCCEEDED]
    if failed:
        raise ValueError(f"tasks did not succeed: {', '.join(failed)}")
    return {"tasks": len(statuses), "succeeded": len(statuses)}


register_definition(
    WorkflowDefinition(
        key="default",
        prepare="default.prepare",
        validate="default.validate",
        tasks=({"name": "noop", "type": "noop"},),
        description="Validates the input, runs the workflow's tasks (in parallel, each after the tasks in its "
        "`after`), checks they all succeeded.",
    )
)
