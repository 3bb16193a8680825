"""django-q2 entry points. Thin: they take ids, load, and call the engine."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import queue, services
from .runner import run_handler, worker_name

RECOVER_SCHEDULE = "workflows.recover"


def run_task(task_id: int, attempt: int) -> None:
    """Run one attempt of a task. Delivered at least once: only the delivery that claims
    the attempt runs it, and its outcome is recorded once."""
    task = services.task_claim(task_id, attempt, worker=worker_name())
    if task is None:
        return
    outcome = run_handler(task)
    if outcome.stopped:
        services.task_hand_back(task_id, attempt, workflow_id=task.workflow_id)
        raise SystemExit(0)  # the worker process ends; django-q2 does not catch SystemExit
    services.task_finished(task_id, attempt, result=outcome.result, error=outcome.error, workflow_id=task.workflow_id)


def recover() -> dict:
    return services.recover()


def recover_minute() -> dict:
    """Run by django-q2's scheduler once a minute. Recovery should come round every half
    lease, so this run also queues the rest of the minute's runs, each with a due time."""
    step = max(settings.ORCH_LEASE_SECONDS / 2, 1)
    now = timezone.now()
    later = [
        queue.Job(queue.RECOVER, (), "recover", eta=now + timedelta(seconds=step * i))
        for i in range(1, int(60 // step))
        if step * i < 60
    ]
    queue.enqueue(later)
    return services.recover()
