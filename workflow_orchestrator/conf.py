"""The app's settings: every one it reads, with its default, read from Django's settings.

`app_settings.ORCH_LEASE_SECONDS` is the project's `settings.ORCH_LEASE_SECONDS` when it
sets one, else the default below. It is read on every access, never cached, so that a
changed setting (a test's `settings` fixture, `override_settings`) takes effect at once.
The system checks (workflow_orchestrator.checks) refuse a value of the wrong type or range.

django-q2 runs the engine's jobs; `q_cluster()` gives the Q_CLUSTER setting the engine
needs, which a project may extend.
"""

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS


@dataclass(frozen=True)
class Setting:
    """One of the app's settings: its name in Django's settings, its default, and the type
    and least value the system checks accept."""

    name: str
    default: Any
    # float: any number; int: a whole number; str: text; list: a list of strings.
    kind: type
    # The least value a number may take.
    minimum: float = 0
    # None is accepted too (it means the same as the default: off).
    optional: bool = False

    def problem(self, value) -> str | None:
        """What is wrong with `value` for this setting ("must be …"), or None."""
        return self.type_problem(value) or self.range_problem(value)

    def type_problem(self, value) -> str | None:
        if value is None and self.optional:
            return None
        if self.kind is list:
            if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
                return None
            return "must be a list of strings"
        if self.kind is str:
            return None if isinstance(value, str) else "must be a string"
        if isinstance(value, bool) or not isinstance(value, self.kind | int):
            return "must be a whole number" if self.kind is int else "must be a number"
        return None if math.isfinite(value) else "must be a finite number"

    def range_problem(self, value) -> str | None:
        """What is wrong with a number of the right type, or None."""
        if self.kind in (int, float) and value is not None and value < self.minimum:
            return f"must be at least {self.minimum}"
        return None


SETTINGS = {
    setting.name: setting
    for setting in [
        Setting("ORCH_TASK_TIMEOUT", 300, float, minimum=0.1),
        Setting("ORCH_MAX_ATTEMPTS", 3, int, minimum=1),
        Setting("ORCH_RETRY_BACKOFF", 1.0, float),
        Setting("ORCH_RETRY_BACKOFF_MAX", 300, float),
        Setting("ORCH_LEASE_SECONDS", 30, float, minimum=1),
        Setting("ORCH_REQUEUE_SECONDS", 60, float, minimum=1),
        Setting("ORCH_TASK_MODULES", (), list),
        Setting("ORCH_METRICS_TOKEN", "", str),
        Setting("ORCH_WEBHOOK_SECRET", "", str),
        Setting("ORCH_WEBHOOK_ALLOWED_HOSTS", (), list),
        Setting("ORCH_WEBHOOK_MAX_ATTEMPTS", 5, int, minimum=1),
        Setting("ORCH_WEBHOOK_TIMEOUT", 10, float, minimum=0.1),
        Setting("ORCH_WEBHOOK_BACKOFF", 2.0, float),
        Setting("ORCH_WEBHOOK_BACKOFF_MAX", 3600, float),
        # Days an ended workflow is kept after it finished; 0 (or None): kept for ever.
        Setting("ORCH_RETENTION_DAYS", 0, int, optional=True),
    ]
}


class AppSettings:
    """The app's settings as attributes: `app_settings.ORCH_TASK_TIMEOUT`."""

    def __getattr__(self, name: str) -> Any:
        try:
            setting = SETTINGS[name]
        except KeyError:
            raise AttributeError(f"{name} is not a setting of workflow_orchestrator") from None
        return getattr(settings, name, setting.default)

    def __dir__(self) -> list[str]:
        return list(SETTINGS)


app_settings = AppSettings()


# django-q2's own job timeout is only a backstop for a handler that ignores ours (each
# job carries its task's timeout plus a grace period): this much beyond the task timeout.
Q_TIMEOUT_MARGIN = 60

# The engine's brokers (workflow_orchestrator.brokers): django-q2's, with due times.
ORM_BROKER = "workflow_orchestrator.brokers.OrmBroker"
REDIS_BROKER = "workflow_orchestrator.brokers.RedisBroker"


def q_cluster(
    *,
    name: str = "orchestrator",
    workers: int = 4,
    task_timeout: float = SETTINGS["ORCH_TASK_TIMEOUT"].default,
    redis: str | None = None,
    database: str = DEFAULT_DB_ALIAS,
    poll: float = 0.2,
    **overrides,
) -> dict:
    """django-q2's Q_CLUSTER for the engine: the ORM broker on `database`, or the Redis
    broker at `redis` (a redis:// URL), with `workers` worker processes. `task_timeout` is
    the longest a task may run: pass the project's ORCH_TASK_TIMEOUT when it sets one (this
    runs while the settings load, before they can be read). `overrides` are any other
    django-q2 options, which win."""
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
        cluster.update(redis=redis, broker_class=REDIS_BROKER)
    else:
        cluster.update(orm=database, broker_class=ORM_BROKER)
    return {**cluster, **overrides}
