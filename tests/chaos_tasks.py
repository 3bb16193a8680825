"""Task types for the chaos test, imported by its clusters through ORCH_TASK_MODULES."""

import os
import time

from workflows.registry import task_type


@task_type("chaos.probe")
def probe(ctx, params):
    """Sleep, then append one line per execution to CHAOS_PROBE_LOG: work may run more
    than once when a worker dies at the wrong moment, while its outcome is recorded once."""
    time.sleep(params["seconds"])
    line = f"{ctx.task.pk} {ctx.attempt} {os.getpid()}\n"
    fd = os.open(os.environ["CHAOS_PROBE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)
    return {"slept": params["seconds"]}
