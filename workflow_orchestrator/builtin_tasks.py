"""Built-in task types (for demos and tests) and the `default` workflow definition."""

import time
from datetime import datetime

from django.utils import timezone

from . import approvals
from .models import MAX_DEADLINE_SECONDS, Task
from .registry import WorkflowDefinition, register_definition, task_type

# The longest a `wait` or a `wait_signal`'s deadline may be: as long as a workflow's deadline.
MAX_WAIT_SECONDS = MAX_DEADLINE_SECONDS


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


def _seconds(params: dict, field: str) -> float | None:
    value = params.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT_SECONDS:
        raise ValueError(f"params.{field} must be a number of seconds from 0 to {MAX_WAIT_SECONDS}")
    return float(value)


def _until(params: dict) -> datetime | None:
    value = params.get("until")
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError("params.until must be a time in ISO 8601, e.g. 2026-12-24T09:00:00+00:00")
    return moment if moment.tzinfo else timezone.make_aware(moment, timezone.get_default_timezone())


def check_wait(params: dict) -> None:
    if ("seconds" in params) == ("until" in params):
        raise ValueError("params must have either seconds or until")
    _seconds(params, "seconds")
    _until(params)


@task_type("wait", check_params=check_wait)
def wait(ctx, params):
    """Wait `seconds` (from when the task first waits) or until the time `until` (ISO 8601),
    holding no worker: a durable timer, kept in the database across cluster restarts."""
    until = _until(params)
    ctx.wait(seconds=_seconds(params, "seconds"), until=until)
    return {"waited_until": (until or _waited_until(ctx)).isoformat()}


def _waited_until(ctx) -> datetime:
    return Task.objects.filter(pk=ctx.task.pk).values_list("wake_at", flat=True).first() or timezone.now()


def check_wait_signal(params: dict) -> None:
    name = params.get("name")
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError("params.name must be the signal's name, a string of 1 to 200 characters")
    _seconds(params, "deadline_seconds")


class SignalNotReceived(Exception):
    """Raised by `wait_signal` when its deadline passes before its signal arrives."""


@task_type("wait_signal", check_params=check_wait_signal)
def wait_signal(ctx, params):
    """Wait, holding no worker, for the signal `name` (POST /workflows/{id}/signal, or
    `workflow signal`); its payload is the result. A signal sent before the task waits is
    kept for it. With `deadline_seconds`, the task fails if the signal has not come by then."""
    name, seconds = params["name"], _seconds(params, "deadline_seconds")
    payload = ctx.wait(signal=name, seconds=seconds) if seconds else ctx.wait(signal=name)
    if payload is None:
        raise SignalNotReceived(f"no signal {name!r} within {seconds:g} s")
    return payload


def check_approval(params: dict) -> None:
    approvals.check_params(params)
    _seconds(params, "deadline_seconds")


class ApprovalRejected(Exception):
    """Raised by `approval` when a decision (or its deadline) rejects it."""


@task_type("approval", check_params=check_approval)
def approval(ctx, params):
    """Wait, holding no worker, for people to decide: `quorum` approvals (default 1) from
    its `approvers` (`users`, `groups`, `permission`) succeed with the decisions as the
    result; one reject fails the task with its comment (a retry of the workflow asks
    again). With `deadline_seconds`, `on_deadline` (reject, approve or fail) decides once
    it passes, as `system`. Approvers see `prompt` (with `{name}` filled from the input) and
    fill in `fields` on the admin's "Waiting for me" page, or through the API or CLI."""
    decisions = ctx.decisions()
    verdict = approvals.verdict(params, decisions)
    if verdict is None:
        ctx.wait(seconds=_seconds(params, "deadline_seconds"), reason=approvals.APPROVAL)
        decisions = ctx.decisions()  # the time came: its deadline's decision was recorded on waking
        verdict = approvals.verdict(params, decisions)
    if verdict == "approve":
        return {"approved": True, "decisions": decisions}
    last = decisions[-1] if decisions else {"by": "system", "comment": "deadline passed"}
    if verdict == "fail":
        raise ApprovalRejected(f"no decision in time: {last['comment']}")
    raise ApprovalRejected(f"rejected by {last['by']}: {last['comment'] or 'no comment'}")


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
