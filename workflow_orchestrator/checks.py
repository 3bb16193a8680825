"""System checks: the app's settings, the django-q2 cluster the engine runs on, and the
definition versions that unfinished workflows still run.

They run at start-up (`runserver`, `migrate`, `qcluster`, `manage.py check`), so that a
project's bad value stops it there, naming the setting, instead of failing a job later.
"""

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Warning
from django.db import DatabaseError
from django.db.models import Count

from .conf import ORM_BROKER, REDIS_BROKER, SETTINGS, app_settings
from .models import TERMINAL_STATES, Workflow
from .queue import JOB_TIMEOUT_GRACE
from .registry import definition_versions

APP = "workflow_orchestrator"
ADVICE = "Build it with workflow_orchestrator.conf.q_cluster(), which a project may extend with keyword arguments."
PER_PROCESS_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


def check_settings(**kwargs) -> list[Error]:
    """Each of the app's settings: its type (E001), then its range (E002)."""
    errors = []
    for name, setting in SETTINGS.items():
        value = getattr(app_settings, name)
        if problem := setting.type_problem(value):
            errors.append(Error(f"{name} {problem}, got {value!r}.", id=f"{APP}.E001"))
        elif problem := setting.range_problem(value):
            errors.append(Error(f"{name} {problem}, got {value!r}.", id=f"{APP}.E002"))
    return errors


def check_q_cluster(**kwargs) -> list[Error | Warning]:
    """django-q2's Q_CLUSTER: what the engine relies on, key by key."""
    cluster = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(cluster, dict):
        problem = "is not set" if cluster is None else f"must be a dict, got {type(cluster).__name__}"
        return [Error(f"Q_CLUSTER {problem}: the engine runs its jobs on django-q2.", hint=ADVICE, id=f"{APP}.E003")]
    return [*_attempts_and_failures(cluster), *_timeouts(cluster), *_broker(cluster), *_shared_cache(cluster)]


def _key_error(key: str, problem: str, number: int, hint: str = ADVICE) -> Error:
    return Error(f"Q_CLUSTER[{key!r}] {problem}", hint=hint, id=f"{APP}.E{number:03}")


def _attempts_and_failures(cluster: dict) -> list[Error]:
    errors = []
    if (attempts := cluster.get("max_attempts")) != 1:
        problem = (
            f"must be 1, got {attempts!r}: a job that raised must not be delivered again by django-q2 (0, its "
            "default, delivers it without end); the engine retries a task itself, up to its max_attempts."
        )
        errors.append(_key_error("max_attempts", problem, 4))
    if (acknowledged := cluster.get("ack_failures")) is not True:
        problem = (
            f"must be True, got {acknowledged!r}: without it, a job that django-q2 queues itself (every minute's "
            "recovery, the cron schedules' tick) and that raised is delivered again by the ORM broker."
        )
        errors.append(_key_error("ack_failures", problem, 5))
    return errors


def _timeouts(cluster: dict) -> list[Error]:
    timeout, retry = cluster.get("timeout"), cluster.get("retry", 60)  # 60: django-q2's default retry
    task_timeout = app_settings.ORCH_TASK_TIMEOUT
    if SETTINGS["ORCH_TASK_TIMEOUT"].problem(task_timeout):
        return []  # check_settings reports it
    least = int(task_timeout) + JOB_TIMEOUT_GRACE  # what queue.package gives a task's job
    if not _is_number(timeout) or timeout < least:
        problem = (
            f"must be at least {least} seconds, got {timeout!r}: it bounds the jobs django-q2 runs (and `retry`, "
            "above it, is when the ORM broker delivers a job again), and a task's job takes up to "
            f"ORCH_TASK_TIMEOUT ({task_timeout:g}) seconds plus {JOB_TIMEOUT_GRACE} to record its own timeout."
        )
        return [_key_error("timeout", problem, 6, hint=f"{ADVICE} Pass it task_timeout=ORCH_TASK_TIMEOUT.")]
    if not _is_number(retry) or retry <= timeout:
        problem = (
            f"must be above its timeout ({timeout!r}), got {retry!r}: the ORM broker delivers again a job that is "
            "not done after `retry` seconds, while it may still be running."
        )
        return [_key_error("retry", problem, 7)]
    return []


def _broker(cluster: dict) -> list[Error]:
    if (broker := cluster.get("broker_class")) in (ORM_BROKER, REDIS_BROKER):
        return []
    problem = (
        f"must be {ORM_BROKER} or {REDIS_BROKER}, got {broker!r}: the engine puts jobs on the broker with due "
        "times (retry backoff, timers), which django-q2's own brokers lack."
    )
    return [_key_error("broker_class", problem, 8)]


def _shared_cache(cluster: dict) -> list[Warning]:
    alias = cluster.get("cache", "default")
    backend = settings.CACHES.get(alias, {}).get("BACKEND")
    if backend not in PER_PROCESS_CACHES:
        return []
    return [
        Warning(
            f"CACHES[{alias!r}] is {backend.rsplit('.', 1)[-1]}, which each process keeps to itself: django-q2 keeps "
            "its cluster statistics in this cache, so `qinfo`, GET /execution/stats and the admin see nothing of "
            "the workers, which run in other processes.",
            hint="Use a cache that every process shares: DatabaseCache, RedisCache or Memcached.",
            id=f"{APP}.W001",
        )
    ]


# The apps the engine needs beside it (by label), and why.
NEEDED_APPS = {
    "django_q": "its worker clusters run the engine's jobs",
    "rest_framework": "the REST API is built on it",
    "authtoken": "the API takes tokens (rest_framework.authtoken)",
    "django_filters": "the API's lists are filtered with it",
}


def check_installed_apps(**kwargs) -> list[Error]:
    """The apps the engine needs, and workflow_orchestrator before django_q, so that its
    `qcluster` command wins."""
    order = [config.label for config in apps.get_app_configs()]
    errors = [
        Error(f"INSTALLED_APPS lacks {label}: {why}.", id=f"{APP}.E010")
        for label, why in NEEDED_APPS.items()
        if label not in order
    ]
    if "django_q" in order and order.index("workflow_orchestrator") > order.index("django_q"):
        errors.append(
            Error(
                "INSTALLED_APPS must list workflow_orchestrator before django_q: the app's `qcluster` command "
                "(workers that stop in order and give back the jobs they did not run) must take the place of "
                "django-q2's.",
                id=f"{APP}.E009",
            )
        )
    return errors


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_definition_versions(**kwargs) -> list[Error]:
    """Every definition version that workflows not yet ended (running, waiting to start or
    for a retry) started with is still registered: a deploy that drops one leaves them
    without their handlers. One grouped query; nothing to check before the tables exist."""
    registered = definition_versions()
    try:
        used = list(
            Workflow.objects.exclude(state__in=TERMINAL_STATES)
            .order_by()
            .values_list("definition", "definition_version")
            .annotate(count=Count("pk"))
        )
    except DatabaseError:  # not migrated yet, or no database at hand: nothing to compare
        return []
    return [
        Error(
            f"definition {key!r} version {version} is not registered, but {count} workflow(s) not yet ended use it",
            hint=f"Keep registering WorkflowDefinition(key={key!r}, version={version}, ...) until they have ended "
            "(manage.py workflow versions lists them), or cancel them.",
            id=f"{APP}.E011",
        )
        for key, version, count in used
        if version not in registered.get(key, [])
    ]
