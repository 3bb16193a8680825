"""The app's settings: every one it reads, with its default, read from Django's settings.

django-q2 runs the engine's jobs; `q_cluster()` gives the Q_CLUSTER setting the engine
needs, which a project may extend.
"""

from django.db import DEFAULT_DB_ALIAS

# django-q2's own job timeout is only a backstop for a handler that ignores ours (each
# job carries its task's timeout plus a grace period): this much beyond the task timeout.
Q_TIMEOUT_MARGIN = 60


def q_cluster(
    *,
    name: str = "orchestrator",
    workers: int = 4,
    task_timeout: float = 300,
    redis: str | None = None,
    database: str = DEFAULT_DB_ALIAS,
    poll: float = 0.2,
    **overrides,
) -> dict:
    """django-q2's Q_CLUSTER for the engine: the ORM broker on `database`, or the Redis
    broker at `redis` (a redis:// URL), with `workers` worker processes. `task_timeout` is
    the longest a task may run (ORCH_TASK_TIMEOUT). `overrides` are any other django-q2
    options, which win."""
    timeout = int(task_timeout) + Q_TIMEOUT_MARGIN
    cluster = {
        "name": name,
        "workers": workers,
        "timeout": timeout,
        # `retry` must stay above the timeout, or the ORM broker delivers again a job that
        # is still running.
        "retry": timeout + 60,
        # A job that raised is not delivered again by the broker: step retries are the engine's.
        "max_attempts": 1,
        "ack_failures": True,
        # Task rows hold the results; django-q2's success table stays empty, which also
        # spares the result saver its per-save pruning query.
        "save_limit": -1,
        "catch_up": False,
        "poll": poll,
        "label": "Job queue",
        "recycle": 1000,
    }
    if redis:
        cluster.update(redis=redis, broker_class="workflow_orchestrator.brokers.RedisBroker")
    else:
        cluster.update(orm=database, broker_class="workflow_orchestrator.brokers.OrmBroker")
    return {**cluster, **overrides}
