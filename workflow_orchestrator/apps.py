from importlib import import_module

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

from .conf import SETTINGS, app_settings


class WorkflowsConfig(AppConfig):
    name = "workflow_orchestrator"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.signals import post_spawn  # imports django-q2's models

        from . import builtin_tasks  # noqa: F401  (registers the built-in task types)
        from .checks import check_definition_versions, check_installed_apps, check_q_cluster, check_settings
        from .jobs import skip_connection_health_checks
        from .metrics import on_workflows_deleting
        from .runner import end_overdue_workers
        from .signals import workflows_deleting

        autodiscover_modules("workflow_tasks")
        import_task_modules()
        for check in (check_settings, check_q_cluster, check_installed_apps, check_definition_versions):
            checks.register(check)
        post_migrate.connect(ensure_periodic_jobs, sender=self)
        post_spawn.connect(skip_connection_health_checks)
        post_spawn.connect(end_overdue_workers)
        # A deleted workflow's history stays in the counters: no counter goes backwards.
        workflows_deleting.connect(on_workflows_deleting, dispatch_uid="workflow_orchestrator.metrics")


def import_task_modules() -> None:
    """Import the modules of ORCH_TASK_MODULES, which register task types. A string there
    (one module, not a list of them) would be read letter by letter: refused here, before
    the system checks could say so."""
    modules = app_settings.ORCH_TASK_MODULES
    if problem := SETTINGS["ORCH_TASK_MODULES"].problem(modules):
        raise ImproperlyConfigured(f"ORCH_TASK_MODULES {problem}, got {modules!r}")
    for module in modules:
        import_module(module)


def ensure_periodic_jobs(using="default", **kwargs) -> None:
    """Create (or correct) the django-q2 schedules that run recovery, and the cron
    schedules' due check, every minute, and the retention purge every hour (it does
    nothing while ORCH_RETENTION_DAYS is off)."""
    from django_q.models import Schedule

    from .jobs import RECOVER_SCHEDULE, RETENTION_PURGE, RETENTION_SCHEDULE
    from .schedules import TICK, TICK_SCHEDULE

    for name, func in [(RECOVER_SCHEDULE, "workflow_orchestrator.jobs.recover_minute"), (TICK_SCHEDULE, TICK)]:
        Schedule.objects.using(using).update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
        )
    Schedule.objects.using(using).update_or_create(
        name=RETENTION_SCHEDULE,
        defaults={"func": RETENTION_PURGE, "schedule_type": Schedule.HOURLY, "repeats": -1},
    )
