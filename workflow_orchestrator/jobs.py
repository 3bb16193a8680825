"""django-q2 entry points. Thin: they take ids, load, and call the engine."""

import logging
import time
from datetime import timedelta

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from . import logs, queue, schedules, services, webhooks
from .backoff import backoff
from .conf import app_settings
from .models import Actor
from .runner import run_handler, worker_name

RECOVER_SCHEDULE = "workflow_orchestrator.recover"
RETENTION_SCHEDULE = "workflow_orchestrator.retention"
RETENTION_PURGE = "workflow_orchestrator.jobs.retention_purge"

logger = logging.getLogger(__name__)


# A job runs at most this many tasks in a row (each claimed by the outcome of the one
# before) before the worker goes back to the broker, passing a delivery on.
INLINE_LIMIT = 100
# Time kept back from django-q2's timeout for the job (JOB_TIMEOUT_GRACE beyond its first
# task's timeout) to record the last outcome.
RECORD_MARGIN = 10
# What a connection the database dropped (a restart, a failover, a proxy or a network cut)
# raises at its next statement; a fresh connection is the cure.
DROPPED = (InterfaceError, OperationalError)
# While the database stays away, the pause before each further try doubles from the first
# to the last (the first try again, on a fresh connection, is at once).
RETRY_PAUSE, RETRY_PAUSE_MAX = 0.1, 2.0


class Chain:
    """The tasks one delivery runs in a row. Recording an outcome claims the worker's next
    task in the same statement: the next phase's first task when the outcome ends a
    phase, a task it released, or else the first ready task of any workflow in the
    claim's order. So a busy worker goes back to the broker only when nothing is
    claimable, and a task costs one statement. Where the outcome's statement did not look
    (a failure, a task of a limited key, a slot given back) the worker claims with a
    statement of its own. Each task still runs under its own timeout, lease and
    cancellation; it is taken only while it fits in what is left of django-q2's timeout
    for the job, and at most INLINE_LIMIT in a row; a chain that stops there passes a
    delivery on, so that the tasks it would have claimed are not left without one."""

    def __init__(self, worker: str, budget: float | None = None):
        self.worker = worker
        self.began = time.monotonic()
        self.ran = 0
        self.held_back = queue.held_back.count
        # django-q2 gave the job this long: its budget, or its own task's timeout (a job
        # sent before deliveries carried a budget), and the grace.
        self.backstop: float | None = None if budget is None else int(budget) + queue.JOB_TIMEOUT_GRACE

    def ran_one(self, task) -> None:
        if self.backstop is None:
            self.backstop = int(task.timeout) + queue.JOB_TIMEOUT_GRACE
        self.ran += 1

    def _left(self) -> float | None:
        left = self.backstop - (time.monotonic() - self.began) - RECORD_MARGIN
        return None if self.ran >= INLINE_LIMIT or left < 1 else left

    def next_claim(self):
        left = self._left()
        return None if left is None else services.inline_claim(self.worker, left)

    def hand_on(self):
        """The next ready task, claimed for this worker, if one fits what is left; with no
        time or turns left, a delivery for the next worker instead when this chain left
        tasks it queued without their own (queue.needed)."""
        left = self._left()
        if left is None:
            if queue.held_back.count != self.held_back:
                queue.send(queue.deliveries(1))
            return None
        return _on_fresh_connection(services.task_claim, None, None, left, worker=self.worker)


def run_task(task_id: int | None, attempt: int | None, budget: float | None = None) -> None:
    """A delivery: run the first ready task in the claim's order that fits the job's
    `budget` (its own attempt when that comes first; another's, whose own delivery then
    runs the next), and the tasks its outcomes hand to this worker. Delivered at least
    once: only the delivery that claims an attempt runs it, and each outcome is recorded
    once. A job sent before deliveries (no budget) runs its own attempt or nothing; a
    delivery of a task longer than the project's task timeout tries its own first, which
    no other delivery can run."""
    chain = Chain(worker_name(), budget)
    claim = services.task_claim
    if budget is None:
        task = _on_fresh_connection(claim, task_id, attempt, worker=chain.worker)
    else:
        task = None
        if task_id is not None and budget > queue.budget(0):
            task = _on_fresh_connection(claim, task_id, attempt, budget, worker=chain.worker)
        task = task or _on_fresh_connection(claim, task_id, attempt, budget, worker=chain.worker, exact=False)
    while task is not None:
        chain.ran_one(task)
        outcome = run_handler(task)
        # Still the attempt's for a good part of a lease: the heartbeat renewed it at most a
        # third of a lease ago.
        patience = app_settings.ORCH_LEASE_SECONDS * 2 / 3
        if outcome.stopped:
            hand_back = services.task_hand_back
            _on_fresh_connection(hand_back, task.pk, task.attempt, workflow_id=task.workflow_id, patience=patience)
            raise SystemExit(0)  # the worker process ends; django-q2 does not catch SystemExit
        if outcome.waiting is not None:
            wait, waiting = services.task_wait, outcome.waiting
            _on_fresh_connection(
                wait,
                task.pk,
                task.attempt,
                workflow_id=task.workflow_id,
                until=waiting.until,
                signal=waiting.signal,
                reason=waiting.reason,
                patience=patience,
            )
            task = chain.hand_on()  # the worker is free for the next ready task
            continue
        inline = chain.next_claim()
        record = services.task_record
        recorded = _on_fresh_connection(
            record, task, stored=outcome.stored, error=outcome.error, inline=inline, patience=patience
        )
        _log_outcome(task, outcome.error, recorded.recorded)
        held_slot = bool(task.slot)
        task = recorded.next_task
        # A slot given back may let a task of its key start, which the outcome's statement
        # could not see.
        if task is None and (held_slot or inline is None or not inline.found_nothing):
            task = chain.hand_on()


def _on_fresh_connection(step, *args, patience: float = 0.0, **kwargs):
    """`step(*args, **kwargs)`, tried again on a fresh connection when the database
    connection fails: at once, then, for up to `patience` seconds, with backoff.

    Workers skip Django's connection health check (a SELECT 1 before every job), so a
    connection the database dropped since the last statement fails here instead. The
    engine's steps are idempotent by attempt number: a step whose commit went through
    but whose answer was lost finds, when tried again, that there is nothing left to do."""
    give_up_at = time.monotonic() + patience
    failures = 0
    while True:
        try:
            return step(*args, **kwargs)
        except DROPPED as exc:
            connection.close()
            failures += 1
            pause = 0.0 if failures == 1 else backoff(failures - 1, base=RETRY_PAUSE, cap=RETRY_PAUSE_MAX)
            if failures > 1 and time.monotonic() + pause > give_up_at:
                raise
            logger.warning("%s: the database connection failed (%s); trying again", step.__name__, str(exc).strip())
            time.sleep(pause)


def _log_outcome(task, error: str | None, recorded: bool) -> None:
    event = "task_succeeded" if error is None else "task_failed"
    fields = logs.fields(workflow_id=task.workflow_id, task_id=task.pk, attempt=task.attempt, event=event)
    how = "" if recorded else " (not recorded: a duplicate, or taken back)"
    if error is None:
        logger.info("task %s, attempt %s succeeded%s", task.pk, task.attempt, how, extra=fields)
    else:
        last_line = error.strip().splitlines()[-1] if error.strip() else "failed"
        logger.warning("task %s, attempt %s failed%s: %s", task.pk, task.attempt, how, last_line, extra=fields)


def skip_connection_health_checks(**kwargs) -> None:
    """Connected to django-q2's post_spawn signal: in worker processes, the first
    statement of a job (the claim) stands in for the health check; see _on_fresh_connection."""
    connection.settings_dict["CONN_HEALTH_CHECKS"] = False


def recover(*, now=None) -> dict:
    """Recovery of everything a crash or a lost job can leave behind: the engine's
    (services.recover) and the webhooks' deliveries whose worker died mid-attempt."""
    now = now or timezone.now()
    return {
        **services.recover(now=now),
        "webhooks_taken_back": webhooks.take_back_stalled(now),
        "bulk_steps_resent": services.bulk_resume_stalled(now),
    }


def recover_minute() -> dict:
    """Run by django-q2's scheduler once a minute. Recovery should come round every half
    lease, so this run also queues the rest of the minute's runs, each with a due time."""
    step = max(app_settings.ORCH_LEASE_SECONDS / 2, 1)
    now = timezone.now()
    later = [
        queue.Job(queue.RECOVER, (), "recover", eta=now + timedelta(seconds=step * i))
        for i in range(1, int(60 // step))
        if step * i < 60
    ]
    queue.enqueue(later)
    return recover(now=now)


def schedules_tick() -> dict:
    """Run by django-q2's scheduler once a minute: start the cron schedules' due runs."""
    return schedules.tick()


def retention_purge() -> dict:
    """Run by django-q2's scheduler every hour: delete a batch of the ended workflows that
    finished more than ORCH_RETENTION_DAYS ago (nothing when it is 0 or unset). While a
    backlog lasts, each run queues the next, so that no run holds a worker for long."""
    days = app_settings.ORCH_RETENTION_DAYS
    if not days:
        return {"purged": 0}
    purged = services.workflows_purge(timedelta(days=days), actor=Actor.SYSTEM, limit=services.PURGE_BATCH)
    if purged == services.PURGE_BATCH:  # more may be left
        queue.enqueue([queue.Job(RETENTION_PURGE, (), "retention")])
    return {"purged": purged}


def schedule_fire(schedule_id: int) -> None:
    """Queued at a schedule's due time: start its run, unless that was done already."""
    schedules.schedule_fire(schedule_id)


def wake_task(task_id: int) -> None:
    """Queued with a waiting task's due time: wake it (its handler runs again), unless it
    woke already or its due time moved."""
    services.task_wake(task_id)


def check_deadline(workflow_id: str) -> None:
    """Queued with a workflow's deadline: fail it if the deadline passed before it completed."""
    services.deadline_check(workflow_id)


def deliver_webhook(workflow_id: str, seq: int, attempt: int) -> None:
    """Call a workflow's callback_url for its transition `seq` (see workflow_orchestrator.webhooks)."""
    webhooks.deliver(workflow_id, seq, attempt)


def bulk_step(operation_id: str, position: int) -> None:
    """A bulk operation's next chunk of workflows, from `position`; it sends the step
    after it (services.bulk.bulk_step)."""
    services.bulk_step(operation_id, position)
