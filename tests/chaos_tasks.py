"""Task types for the chaos test, imported by its clusters through ORCH_TASK_MODULES, and
the fault it injects into their workers."""

import os
import signal
import time

from workflow_orchestrator import statements
from workflow_orchestrator.registry import task_type


@task_type("chaos.probe")
def probe(ctx, params):
    """Sleep, then append one line per execution to CHAOS_PROBE_LOG: work may run more
    than once when a worker dies at the wrong moment, while its outcome is recorded once."""
    time.sleep(params["seconds"])
    _append("CHAOS_PROBE_LOG", f"{ctx.task.pk} {ctx.attempt} {os.getpid()}\n")
    return {"slept": params["seconds"]}


def _append(variable: str, line: str) -> None:
    fd = os.open(os.environ[variable], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _die_between_success_and_transition(every: int):
    """A worker records the success that ends a phase, and only then, in a second
    statement, fires the transition. Kill this worker process in between, at every
    `every`-th such success: recovery must move the workflow on."""
    succeed = statements.succeed
    seen = 0

    def succeed_then_die(*args, **kwargs):
        nonlocal seen
        fan_in = succeed(*args, **kwargs)
        if fan_in is not None and fan_in.phase_done:
            seen += 1
            if seen % every == 0:
                _append("CHAOS_WINDOW_LOG", f"{args[0]} {os.getpid()}\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return fan_in

    statements.succeed = succeed_then_die


if os.environ.get("CHAOS_WINDOW_EVERY"):
    _die_between_success_and_transition(int(os.environ["CHAOS_WINDOW_EVERY"]))
