"""Putting jobs on the django-q2 broker.

Jobs are built the way django-q2's `async_task` builds them, but go to the broker in one
call per batch (EXECUTE's fan-out is one bulk enqueue) and may carry a due time.
"""

import contextlib
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from math import inf
from uuid import uuid4

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat

from .conf import app_settings

logger = logging.getLogger("workflow_orchestrator.services")

RUN_TASK = "workflow_orchestrator.jobs.run_task"
RECOVER = "workflow_orchestrator.jobs.recover"
DELIVER_WEBHOOK = "workflow_orchestrator.jobs.deliver_webhook"
WAKE_TASK = "workflow_orchestrator.jobs.wake_task"
CHECK_DEADLINE = "workflow_orchestrator.jobs.check_deadline"
BULK_STEP = "workflow_orchestrator.jobs.bulk_step"

# How long a process goes by its count of the workers of every cluster (`workers_everywhere`).
WORKERS_SEEN_SECONDS = 10

# Seconds django-q2 gives a job beyond its task's own timeout before it kills the
# worker: time for the job to record a timeout itself, which is the normal path.
JOB_TIMEOUT_GRACE = 30


@dataclass(frozen=True)
class Job:
    func: str
    args: tuple
    name: str
    timeout: float | None = None
    eta: datetime | None = None


def budget(timeout: float) -> float:
    """How long a delivery for a task with this timeout may run a task: the longest of the
    task's and the project's task timeout. Any delivery with the project's budget runs any
    task that keeps to it; a longer task's own delivery runs it."""
    return max(float(timeout), float(app_settings.ORCH_TASK_TIMEOUT))


def task_job(task_id: int, attempt: int, timeout: float, eta: datetime | None = None) -> Job:
    """A delivery for a queued attempt: it runs the first ready task in the claim's order
    (its own when that comes first), within its budget (see jobs.run_task)."""
    allowed = budget(timeout)
    return Job(RUN_TASK, (task_id, attempt, allowed), f"task-{task_id}-{attempt}", allowed, eta)


def deliveries(count: int, eta: datetime | None = None) -> list[Job]:
    """Deliveries for no task in particular: a worker each, to claim the first ready tasks
    (a rate window that opens again, a limit raised)."""
    allowed = budget(app_settings.ORCH_TASK_TIMEOUT)
    return [Job(RUN_TASK, (None, None, allowed), f"delivery-{uuid4().hex[:12]}", allowed, eta) for _ in range(count)]


def wake_job(task_id: int, eta: datetime) -> Job:
    """Wakes a waiting task when its timer or deadline is due (services.waits.task_wake)."""
    return Job(WAKE_TASK, (task_id,), f"wake-{task_id}-{int(eta.timestamp())}", eta=eta)


def deadline_job(workflow_id, eta: datetime) -> Job:
    """Fails a workflow whose deadline has passed (services.waits.deadline_check)."""
    return Job(CHECK_DEADLINE, (str(workflow_id),), f"deadline-{workflow_id}", eta=eta)


def webhook_job(workflow_id, seq: int, attempt: int, eta: datetime | None = None) -> Job:
    """Attempt `attempt` at calling a workflow's callback_url for its transition `seq`."""
    return Job(DELIVER_WEBHOOK, (str(workflow_id), seq, attempt), f"webhook-{workflow_id}-{seq}-{attempt}", eta=eta)


def bulk_job(operation_id, position: int) -> Job:
    """The step of a bulk operation that works through its workflows from `position`
    (services.bulk.bulk_step)."""
    return Job(BULK_STEP, (str(operation_id), position), f"bulk-{operation_id}-{position}")


def package(job: Job) -> str:
    pack = {
        "id": uuid4().hex,
        "name": job.name,
        "func": job.func,
        "args": job.args,
        "kwargs": {},
        "started": timezone.now(),
        "ack_failure": True,
    }
    if job.timeout is not None:
        pack["timeout"] = int(job.timeout) + JOB_TIMEOUT_GRACE
    return SignedPackage.dumps(pack)


def in_database() -> bool:
    """Whether the broker keeps its jobs in the project's database (the ORM broker)."""
    return settings.Q_CLUSTER.get("orm") == DEFAULT_DB_ALIAS


@functools.cache
def broker():
    """This process's broker (a Redis broker holds a connection pool: build it once)."""
    return get_broker()


def enqueue(jobs: list[Job]) -> None:
    """Send `jobs` to the broker: one call for those due now, one per due time after."""
    if not jobs:
        return
    now = timezone.now()
    batches: dict[datetime | None, list[str]] = defaultdict(list)
    for job in jobs:
        due = job.eta if job.eta and job.eta > now else None
        batches[due].append(package(job))
    for eta, packages in batches.items():
        broker().enqueue_many(packages, eta=eta)


# --- Jobs sent with a change ---------------------------------------------------------------


def send_with_change(jobs: list[Job]) -> None:
    """Send the jobs of a change. The ORM broker keeps them in this database: they go in
    the change's own transaction, so that a change rolled back takes its jobs with it
    and one committed cannot lose them. Any other broker gets them once the change is
    committed, so that a job never sees a row that was rolled back."""
    if not jobs:
        return
    if in_database():
        enqueue(jobs)
    else:
        transaction.on_commit(lambda: send(jobs))


def send(jobs: list[Job]) -> None:
    """Send `jobs` now; an unreachable broker is logged, not raised (recovery re-sends)."""
    try:
        enqueue(jobs)
    except Exception as exc:
        # The state change is committed and its tasks are QUEUED in the database, which is
        # the source of truth: recovery re-sends their jobs once the broker answers again.
        # An outage is one line; its traceback is for debugging.
        reason = " ".join(str(exc).split())
        logger.warning("could not reach the broker (%s): %d job(s) will be re-sent by recovery", reason, len(jobs))
        logger.debug("the broker's error", exc_info=True)


def task_jobs(queued, *, busy: bool = False) -> list[Job]:
    """The jobs of tasks a statement queued (statements.ClaimedTask). `busy`: the worker
    that queued them claimed its next task in the same statement (see `needed`)."""
    jobs = [task_job(task.values["id"], task.values["attempt"], task.values["timeout"]) for task in queued]
    return needed(jobs) if busy else jobs


def needed(jobs: list[Job]) -> list[Job]:
    """Of the deliveries of tasks a busy worker queued, those worth sending.

    The worker claimed its next task with them: after each outcome its chain looks for
    the next ready task again (jobs.Chain), and passes a delivery on when it stops with
    work maybe left, so no ready task is left behind without its own delivery. A delivery
    only wakes another worker. While the broker holds at least as many due jobs as all
    the clusters on the queue have workers, every worker has one waiting already: the
    deliveries are not sent, and the database is spared the claims that would find their
    tasks taken. (A cluster takes a job only for a free worker, workflow_orchestrator.cluster:
    the jobs on the broker are there for the free workers of every cluster.) A task longer
    than the project's task timeout keeps its own: no other delivery's budget fits it."""
    standard = budget(0)
    own = [job for job in jobs if job.timeout != standard or job.eta is not None]
    if len(own) == len(jobs) or not broker().holds_at_least(workers_everywhere()):
        return jobs
    held_back.count += len(jobs) - len(own)
    return own


@dataclass
class Tally:
    count: int = 0


# The deliveries `needed` did not send in this process (a worker runs one job at a time):
# a worker's chain that stops early passes one on if it left any (jobs.Chain.hand_on).
held_back = Tally()


@dataclass
class Reading:
    value: int = 0
    at: float = -inf  # time.monotonic() when read


# The workers of every cluster, as this process last counted them.
workers_seen = Reading()


def workers_everywhere() -> int:
    """How many workers the running clusters on this queue have between them, from
    django-q2's cluster statistics, and never fewer than a cluster of this project's
    settings has; counted again at most every WORKERS_SEEN_SECONDS in a process."""
    now = time.monotonic()
    if now - workers_seen.at >= WORKERS_SEEN_SECONDS:
        running = (Conf.IDLE, Conf.WORKING)
        try:
            reported = sum(len(stat.workers) for stat in Stat.get_all(broker()) if stat.status in running)
        except Exception:  # statistics are a hint: a cache that does not answer costs nothing here
            logger.debug("could not read the clusters' statistics", exc_info=True)
            reported = 0
        workers_seen.value, workers_seen.at = max(reported, Conf.WORKERS), now
    return workers_seen.value


def change_transaction():
    """A transaction for a change and its jobs, when the jobs live in the database too;
    a single statement needs none."""
    return transaction.atomic(savepoint=False) if in_database() else contextlib.nullcontext()
