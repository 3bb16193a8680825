"""Task types that do not stop at their timeout, for tests/test_timeouts.py; its integration
tests' clusters import them through ORCH_TASK_MODULES."""

import asyncio
import os
import time

from workflow_orchestrator.models import Task
from workflow_orchestrator.registry import task_type


def _sleep_through_everything(seconds: float) -> None:
    """Sleep `seconds`, swallowing whatever is raised meanwhile (TaskTimeout included)."""
    end = time.monotonic() + seconds
    while True:
        try:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))
        except BaseException:  # the point: a handler that will not stop
            continue


@task_type("tests.stubborn")
def stubborn(ctx, params):
    """Ignores its timeout for `seconds`, then returns; from attempt `behaves_on` on, it
    returns at once, with the error the attempt before it left."""
    if ctx.attempt >= params.get("behaves_on", 1_000):
        previous_error = Task.objects.values_list("error", flat=True).get(pk=ctx.task.pk)
        return {"pid": os.getpid(), "previous_error": previous_error}
    _sleep_through_everything(params["seconds"])
    return {"pid": os.getpid(), "ignored": "the timeout"}


@task_type("tests.shell_sleep")
def shell_sleep(ctx, params):
    """Blocked in a child process: no exception reaches Python code until it ends."""
    return {"status": os.system(f"sleep {params['seconds']}")}


@task_type("tests.async_late")
async def async_late(ctx, params):
    """Swallows its cancellation at the timeout and returns a result anyway."""
    try:
        await asyncio.sleep(params["seconds"])
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)
    return {"late": True}


@task_type("tests.raises_late")
def raises_late(ctx, params):
    """Ignores its timeout for `seconds`, then raises an error of its own."""
    _sleep_through_everything(params["seconds"])
    raise ValueError("too late to matter")
