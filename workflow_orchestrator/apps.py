from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


class WorkflowsConfig(AppConfig):
    name = "workflow_orchestrator"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.signals import post_spawn  # imports django-q2's models

        from . import builtin_tasks  # noqa: F401  (registers the built-in task types)
        from .jobs import skip_connection_health_checks
        from .runner import end_overdue_workers

        autodiscover_modules("workflow_tasks")
        for module in settings.ORCH_TASK_MODULES:
            import_module(module)
        post_migrate.connect(ensure_periodic_jobs, sender=self)
        post_spawn.connect(skip_connection_health_checks)
        post_spawn.connect(end_overdue_workers)


def ensure_periodic_jobs(using="default", **kwargs) -> None:
    """Create (or correct) the django-q2 schedules that run recovery, and the cron
    schedules' due check, every minute."""
    from django_q.models import Schedule

    from .jobs import RECOVER_SCHEDULE
    from .schedules import TICK, TICK_SCHEDULE

    for name, func in [(RECOVER_SCHEDULE, "workflow_orchestrator.jobs.recover_minute"), (TICK_SCHEDULE, TICK)]:
        Schedule.objects.using(using).update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
        )
