"""Cron schedules: every due run of a WorkflowSchedule starts one workflow.

django-q2's scheduler runs `tick` about once a minute, in whichever worker cluster takes
it first. A tick starts the runs that are due, and queues a job at the due time of each
run that falls due before the next tick (LOOKAHEAD), so that runs start on time rather
than at the next tick; a run that starts queues its schedule's next one the same way.

Each run starts its workflow with the idempotency key `schedule:<id>:<due time>`, in the
transaction that moves the schedule's next_run_at on, with the schedule's row locked: a
run fired twice (two clusters, a restart, a duplicate job) starts one workflow.

Runs missed while no cluster was running are not made up one by one: the first tick
afterwards starts the latest missed run only, and the schedule carries on from there.
"""

import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from . import cron, queue, services
from .models import Actor, Workflow, WorkflowSchedule

logger = logging.getLogger(__name__)

TICK_SCHEDULE = "workflow_orchestrator.schedules"
TICK = "workflow_orchestrator.jobs.schedules_tick"
FIRE = "workflow_orchestrator.jobs.schedule_fire"
# Longer than the time between two ticks: django-q2 looks at its schedules every 30 s, so
# a once-a-minute schedule runs 60 to 90 s after the last.
LOOKAHEAD = timedelta(seconds=90)
# What the admin and the CLI set; the rest (last and next run, last error) is the engine's.
EDITABLE_FIELDS = ["name", "cron", "time_zone", "definition", "mode", "input", "tasks", "enabled"]


def run_key(schedule: WorkflowSchedule, due: datetime) -> str:
    """The idempotency key of the run of `schedule` due at `due`."""
    return f"schedule:{schedule.pk}:{due.astimezone(UTC).isoformat()}"


def _next_after(schedule: WorkflowSchedule, moment: datetime) -> datetime:
    return cron.next_run(schedule.cron, schedule.time_zone, moment)


def _queue_fires(schedules: list[WorkflowSchedule], now: datetime) -> None:
    """Queue, once the transaction commits, a job at the due time of each schedule's next
    run that falls due before the next tick."""
    jobs = [
        queue.Job(FIRE, (schedule.pk,), f"schedule-{schedule.pk}", eta=schedule.next_run_at)
        for schedule in schedules
        if schedule.enabled and schedule.next_run_at and schedule.next_run_at <= now + LOOKAHEAD
    ]
    if jobs:
        transaction.on_commit(lambda: queue.enqueue(jobs))


def validate_workflow(schedule: WorkflowSchedule) -> None:
    """The workflow `schedule` starts must be one the engine accepts: refused when the
    schedule is saved, not at run time. ValidationError names each bad field."""
    services.validate_request(schedule.name, schedule.definition, schedule.mode, schedule.input, schedule.tasks)


def schedule_clean(schedule: WorkflowSchedule) -> None:
    """Check `schedule`'s own fields and the workflow it starts; ValidationError names
    each bad field, all of them at once."""
    errors: dict[str, list] = {}
    for check in (schedule.full_clean, lambda: validate_workflow(schedule)):
        try:
            check()
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(messages)
    if errors:
        raise ValidationError(errors)


def schedule_save(schedule: WorkflowSchedule, *, now: datetime | None = None) -> WorkflowSchedule:
    """Check and save `schedule`, its next run computed afresh from its expression (none
    while paused). ValidationError names each bad field."""
    now = now or timezone.now()
    schedule_clean(schedule)
    schedule.next_run_at = _next_after(schedule, now) if schedule.enabled else None
    with transaction.atomic():
        if schedule._state.adding:
            schedule.save()
        else:  # the runs' own fields are the engine's: a form read before a run must not undo it
            schedule.save(update_fields=[*EDITABLE_FIELDS, "next_run_at", "updated_at"])
        _queue_fires([schedule], now)
    return schedule


def schedule_pause(schedule: WorkflowSchedule) -> WorkflowSchedule:
    schedule.enabled = False
    return schedule_save(schedule)


def schedule_resume(schedule: WorkflowSchedule) -> WorkflowSchedule:
    """Enable `schedule` again: it carries on from its next due time; the runs that fell
    due while it was paused are not made up."""
    schedule.enabled = True
    return schedule_save(schedule)


def schedule_next_runs(schedule: WorkflowSchedule, count: int = 5) -> list[datetime]:
    """The due times of its next `count` runs, in its own time zone: the stored next run
    first (overdue, if no cluster has run it yet), then the ones that follow. None while paused,
    nor for one stored before its expression or zone was refused."""
    if schedule.next_run_at is None or cron.cron_problem(schedule.cron) or cron.timezone_problem(schedule.time_zone):
        return []
    first = schedule.next_run_at.astimezone(ZoneInfo(schedule.time_zone))
    return [first, *cron.next_runs(schedule.cron, schedule.time_zone, first, count - 1)]


def schedule_local_time(schedule: WorkflowSchedule, moment: datetime | None) -> datetime | None:
    """`moment` in the schedule's time zone (as it is, for a zone that is no longer known)."""
    if moment is None or cron.timezone_problem(schedule.time_zone):
        return moment
    return moment.astimezone(ZoneInfo(schedule.time_zone))


def schedule_remove(schedule: WorkflowSchedule) -> None:
    """Delete `schedule`; the workflows it started stay (their `schedule` is cleared)."""
    schedule.delete()


def _start_run(schedule: WorkflowSchedule, due: datetime, actor: Actor) -> Workflow:
    workflow, _ = services.workflow_create(
        name=schedule.name,
        definition=schedule.definition,
        mode=schedule.mode,
        input=schedule.input,
        tasks=schedule.tasks,
        idempotency_key=run_key(schedule, due),
        actor=actor,
        start=True,
        schedule=schedule,
    )
    return workflow


def schedule_fire(schedule_id: int, *, now: datetime | None = None) -> Workflow | None:
    """Start the run of the schedule that is due by `now` (the latest one, when several
    were missed) and move its next run on. None when nothing is due: the schedule was
    paused, removed or changed, or this run was started already."""
    now = now or timezone.now()
    with transaction.atomic():
        schedule = (
            WorkflowSchedule.objects.select_for_update()
            .filter(pk=schedule_id, enabled=True, next_run_at__lte=now)
            .first()
        )
        if schedule is None:
            return None
        due = max(schedule.next_run_at, cron.latest_run(schedule.cron, schedule.time_zone, now))
        workflow = None
        try:
            workflow = _start_run(schedule, due, Actor.SYSTEM)
            schedule.last_error = ""
        except services.IdempotencyConflict as exc:  # started already, before the schedule was edited
            workflow = exc.workflow
        except ValidationError as exc:
            # E.g. its definition is no longer registered: this run is skipped, not retried forever.
            schedule.last_error = f"run due at {due.isoformat()} not started: {'; '.join(exc.messages)}"
            logger.error("schedule %r: %s", schedule.name, schedule.last_error)
        schedule.last_run_at = due
        schedule.next_run_at = _next_after(schedule, now)
        schedule.save(update_fields=["last_run_at", "next_run_at", "last_error", "updated_at"])
        _queue_fires([schedule], now)
    return workflow


def schedule_run_now(schedule: WorkflowSchedule, *, actor: Actor) -> Workflow:
    """Start a run of `schedule` at once, besides its due runs (which stay as they were)."""
    now = timezone.now()
    workflow = _start_run(schedule, now, actor)
    WorkflowSchedule.objects.filter(pk=schedule.pk).update(last_run_at=now)
    return workflow


def tick(*, now: datetime | None = None) -> dict:
    """Start every run that is due, and queue a job at the due time of every run that
    falls due before the next tick."""
    now = now or timezone.now()
    enabled = WorkflowSchedule.objects.filter(enabled=True)
    soon = list(enabled.filter(next_run_at__gt=now, next_run_at__lte=now + LOOKAHEAD))
    due = list(enabled.filter(next_run_at__lte=now).values_list("pk", flat=True))
    started = [schedule_fire(pk, now=now) for pk in due]
    _queue_fires(soon, now)
    return {"started": sum(workflow is not None for workflow in started), "queued": len(soon)}
