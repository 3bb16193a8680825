"""What each kind of job costs the database, statement by statement: the hot path's
budget (on PostgreSQL, one statement per task that a worker's chain runs, each outcome
claiming the worker's next task, and one claim per delivery). A change that adds a round
trip fails here; PostgreSQL's own count, BEGIN and COMMIT included, comes from
../shared/tools/pg-statements-per-task (docs/BENCHMARKS.md)."""

import pydoc
import re

import pytest
from django.conf import settings
from django.db import connection
from django_q.conf import Conf
from django_q.signing import SignedPackage

from tests.conftest import reload, task
from workflow_orchestrator import jobs, queue, services
from workflow_orchestrator.models import Actor, State, Task

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit, as in a worker
POSTGRES = connection.vendor == "postgresql"

# The engine's own statements carry their name (workflow_orchestrator/sql/*.sql); the ORM's
# are named here by how they begin.
NAMED = re.compile(r"/\* (\w+) \*/ ")
ORM = [
    ('SELECT "workflow_orchestrator_workflow"', "the workflow"),  # FOR UPDATE (PostgreSQL): "lock the workflow"
    ('SELECT "workflow_orchestrator_task"."name"', "the EXECUTE tasks"),
    ('SELECT "workflow_orchestrator_task"."id"', "the failed attempt"),
    ('UPDATE "workflow_orchestrator_task" SET "status" =', "its next attempt"),
    ('INSERT INTO "django_q_ormq"', "enqueue"),
    ('SELECT "django_q_ormq"."id" AS "id" FROM "django_q_ormq"', "the broker's queue"),
]


def name(sql: str) -> str:
    if named := NAMED.match(sql):
        return named[1]
    sql = " ".join(sql.split())
    for start, label in ORM:
        if sql.startswith(start):
            return "lock the workflow" if label == "the workflow" and "FOR UPDATE" in sql else label
    return sql[:60]


class Statements:
    """The statements a block runs, by name; those that ran in one transaction block
    come as a tuple. Outside a block, each statement is a transaction of its own (on
    PostgreSQL: no BEGIN, no COMMIT)."""

    def __enter__(self):
        self.steps = []
        self.wrapper = connection.execute_wrapper(self.record)
        self.wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        self.wrapper.__exit__(*exc)

    def record(self, execute, sql, params, many, context):
        if sql.startswith("BEGIN"):  # SQLite's, sent through the cursor; its COMMIT is not
            self.steps.append(())
        elif connection.get_autocommit():
            self.steps.append(name(sql))
        elif self.steps and isinstance(self.steps[-1], tuple):
            self.steps[-1] += (name(sql),)
        else:
            self.steps.append((name(sql),))
        return execute(sql, params, many, context)


@pytest.fixture(autouse=True)
def clusters_counted_lately():
    """A worker counts the workers of every cluster (queue.workers_everywhere, which reads
    django-q2's statistics) at most every WORKERS_SEEN_SECONDS, not per job: the jobs here
    run as in a worker that counted them a moment ago (tests/test_spread.py pins the count)."""
    queue.workers_everywhere()


def jobs_on_the_broker() -> list[dict]:
    broker, found = queue.broker(), []
    while broker.queue_size():
        for ack_id, payload in broker.dequeue() or []:
            found.append(SignedPackage.loads(payload))
            broker.acknowledge(ack_id)
    return found


def run(job: dict) -> Statements:
    with Statements() as statements:
        pydoc.locate(job["func"])(*job["args"], **job["kwargs"])
    return statements


def start(tasks) -> object:
    queue.broker().purge_queue()
    workflow, _ = services.workflow_create(name="cost", actor=Actor.CLI, tasks=tasks, start=True)
    return workflow


# One statement each on PostgreSQL; their parts in one transaction on SQLite. The ORM
# broker's jobs go in the transaction of the change that makes them; Redis gets them after.
ORM_BROKER = settings.ORCH_BROKER == "orm"
JOBS = ("enqueue",) if ORM_BROKER else ()
# A busy worker's deliveries are sent unless the broker holds a job for every worker: the
# ORM broker's queue is counted in the change's transaction; Redis's is not the database's.
BUSY_JOBS = ("the broker's queue", "enqueue") if ORM_BROKER else ()
# SQLite: the claim runs in a transaction of its own, with `take_slot` when its task takes a
# slot of a limit; the workflow row is read after it.
CLAIM = ["claim"] if POSTGRES else [("claim",), "workflow_row"]
NOTHING = ["claim"] if POSTGRES else [("claim",)]  # a claim that finds nothing
SUCCEED = ["succeed"] if POSTGRES else [("succeed", "count_out")]
# A success that claims the worker's next task (SQLite: `claim` and its workflow's row in
# the success's transaction).
SUCCEED_AND_CLAIM = ["succeed"] if POSTGRES else [("succeed", "count_out", "claim", "workflow_row")]


def transition(*, succeeded: bool, jobs: tuple = JOBS, looks: str = "") -> list:
    """A transition's statement; `looks`: "found" or "nothing", when it looks for the
    worker's next task in another workflow (SQLite: a `claim` in its transaction)."""
    if POSTGRES:
        statement = "succeed_and_transition" if succeeded else "transition"
        return [(statement, *jobs)] if jobs else [statement]
    parts = ("succeed",) if succeeded else ()
    looked = {"": (), "found": ("claim", "workflow_row"), "nothing": ("claim",)}[looks]
    queued = () if looks == "nothing" else ("queue_phase",)  # a change to COMPLETE queues nothing
    return [(*parts, "change_workflow", "insert_audit_row", *queued, *looked, *jobs)]


# The end of a workflow run by one worker: VALIDATE's task, claimed by the transition that
# ends EXECUTE, reads EXECUTE's tasks (default.validate), and its success ends the workflow
# and looks for the worker's next task.
THE_END = [
    *transition(succeeded=True, jobs=()),
    "the EXECUTE tasks",
    *transition(succeeded=True, jobs=(), looks="nothing"),
]


def test_a_job_runs_a_whole_workflow_at_one_statement_per_task():
    """PREPARE's delivery claims; from then on each outcome claims the worker's next task
    in its own statement: PREPARE's success the first EXECUTE task (the others queued with
    their deliveries, the broker being idle), each success the next ready task (its
    sibling), the last the VALIDATE task. PREPARE's claim brings its input (default.prepare
    reads it). 5 tasks, 6 statements and the validation's read."""
    start([{"type": "noop"}] * 3)
    [prepare] = jobs_on_the_broker()
    assert run(prepare).steps == [
        *CLAIM,
        *transition(succeeded=True, jobs=BUSY_JOBS),
        *SUCCEED_AND_CLAIM,
        *SUCCEED_AND_CLAIM,
        *THE_END,
    ]
    # The other EXECUTE tasks' deliveries find them taken: one statement each.
    deliveries = jobs_on_the_broker()
    assert len(deliveries) == 2 and all(run(job).steps == NOTHING for job in deliveries)


def test_a_busy_worker_sends_no_deliveries_while_the_broker_holds_a_job_for_every_worker():
    start([{"type": "noop"}] * 3)
    [prepare] = jobs_on_the_broker()
    waiting = [
        services.workflow_create(name="waiting", actor=Actor.CLI, tasks=[], start=True)[0] for _ in range(Conf.WORKERS)
    ]
    steps = run(prepare).steps
    # Its EXECUTE tasks go to no broker: this worker's chain claims them, and the broker's
    # jobs (the waiting workflows' deliveries) wake every other worker already.
    assert steps[len(CLAIM)] == transition(succeeded=True, jobs=BUSY_JOBS[:1])[0]
    left = jobs_on_the_broker()
    assert len(left) == Conf.WORKERS and {job["args"][0] for job in left} == {
        task(workflow, "prepare").pk for workflow in waiting
    }


def test_a_task_that_turns_out_last_pays_a_separate_transition(monkeypatch):
    workflow = start([{"name": "a", "type": "noop"}, {"name": "b", "type": "noop"}, {"name": "c", "type": "noop"}])
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 2)
    run(jobs_on_the_broker()[0])  # PREPARE, and a
    b, c = (services.task_claim(task(workflow, n).pk, 1, worker=f"w:{n}") for n in "bc")  # at once
    services.task_record(b, stored=None)
    with Statements() as statements:  # c's claim saw b unfinished: its success ends the phase after all
        services.task_record(c, stored=None)
    assert statements.steps == [*SUCCEED, *transition(succeeded=False)]
    assert reload(workflow).state == State.VALIDATE


def test_a_task_others_wait_for_costs_at_most_one_more_statement_and_hands_one_on(monkeypatch):
    workflow = start([{"name": "x", "type": "noop"}, {"name": "a", "type": "noop"},
                      {"name": "b", "type": "noop", "after": ["a"]}, {"name": "d", "type": "noop"}])  # fmt: skip
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 2)
    run(jobs_on_the_broker()[0])  # PREPARE, and x
    a, _d = jobs_on_the_broker()
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 100)
    release = ["succeed_and_release"] if POSTGRES else [("succeed", "count_out", "release_waiting")]
    # a's success releases b in the same statement (SQLite: transaction), claimed for this
    # worker, which runs it at once: b costs no claim and no job. b's success claims d.
    assert run(a).steps == [*CLAIM, *release, *SUCCEED_AND_CLAIM, *THE_END]
    assert task(workflow, "b").status == Task.Status.SUCCEEDED and not jobs_on_the_broker()


def test_a_task_that_releases_several_queues_the_rest_with_their_jobs(monkeypatch):
    after_a = [{"name": name, "type": "noop", "after": ["a"]} for name in "bc"]
    workflow = start([{"name": "x", "type": "noop"}, {"name": "a", "type": "noop"}, *after_a])
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 2)
    run(jobs_on_the_broker()[0])  # PREPARE, and x
    [a] = jobs_on_the_broker()
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 100)
    if POSTGRES:
        release = [("succeed_and_release", *BUSY_JOBS)] if BUSY_JOBS else ["succeed_and_release"]
    else:
        release = [("succeed", "count_out", "release_waiting", *BUSY_JOBS)]
    # b runs here; c is queued with its delivery, then claimed by b's success.
    assert run(a).steps == [*CLAIM, *release, *SUCCEED_AND_CLAIM, *THE_END]
    [c] = jobs_on_the_broker()
    assert tuple(c["args"][:2]) == (task(workflow, "c").pk, 1)
    assert run(c).steps == NOTHING


def test_a_failed_attempt_is_queued_again_under_the_workflow_lock(monkeypatch):
    workflow = start([{"type": "noop"}, {"name": "flaky", "type": "fail", "params": {"times": 1}, "timeout": 1}])
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 2)
    run(jobs_on_the_broker()[0])  # PREPARE, and noop-1
    [flaky] = jobs_on_the_broker()
    lock = "lock the workflow" if POSTGRES else "the workflow"  # SQLite: BEGIN IMMEDIATE locks it all
    # The failure's transaction looks for no next task: the worker claims with a statement
    # of its own, which finds nothing (the next attempt is due after its backoff).
    steps = [*CLAIM, (lock, "the failed attempt", "its next attempt", *JOBS), *NOTHING]
    assert run(flaky).steps == steps
    assert task(workflow, "flaky").status == Task.Status.QUEUED


def test_a_four_task_workflow_keeps_the_budget():
    """Its 6 tasks in one job: 8 statements on PostgreSQL (the validation's read included),
    against 12 before outcomes claimed; its 3 other EXECUTE tasks' deliveries, sent to an
    idle broker, then find nothing: one statement each."""
    workflow = start([{"type": "noop"}] * 4)
    counts = []
    while batch := jobs_on_the_broker():
        for job in batch:
            counts.append(len(flat(run(job).steps)))
    assert reload(workflow).state == State.COMPLETE
    if POSTGRES and not ORM_BROKER:
        assert counts == [8, 1, 1, 1]


def test_a_callback_url_costs_nothing_until_the_task_that_ends_the_workflow(settings):
    """The statement that ends a workflow returns its callback_url: only the job that ends
    it queues the webhook's job (on the ORM broker, one INSERT in its transaction)."""
    settings.ORCH_WEBHOOK_SECRET, settings.ORCH_WEBHOOK_ALLOWED_HOSTS = "s", ["127.0.0.1"]

    def cost(**kwargs) -> list:
        queue.broker().purge_queue()
        services.workflow_create(name="cost", actor=Actor.CLI, tasks=[{"type": "noop"}] * 4, start=True, **kwargs)
        jobs, steps = jobs_on_the_broker(), []
        while jobs:
            steps.append(run(jobs.pop(0)).steps)
            jobs += [job for job in jobs_on_the_broker() if job["func"] == queue.RUN_TASK]
        return steps

    without, with_url = cost(), cost(callback_url="http://127.0.0.1:9/hook")
    # One job runs the whole workflow; the ORM broker's webhook job is its last statement.
    assert with_url[1:] == without[1:]
    assert flat(with_url[0]) == flat(without[0]) + list(JOBS)


def flat(steps: list) -> list[str]:
    return [name for step in steps for name in (step if isinstance(step, tuple) else (step,))]


def test_a_worker_that_gives_a_slot_back_claims_the_next_task_and_a_late_delivery_costs_one_statement():
    """A limited key's tasks: each claim takes the slot (SQLite: in its transaction,
    `take_slot`), each success gives it back (a trigger, no statement of its own), and the
    worker then claims the next ready task, which may be the key's: one job runs both
    workflows of the key, PREPARE and VALIDATE each, and ends with a claim that finds
    nothing. On PostgreSQL a limited key's slot is taken by a claim of its own; on SQLite
    the success's transaction takes it. The other workflow's own delivery then costs one
    statement."""
    services.limit_set("acme", max_running=1)
    queue.broker().purge_queue()
    workflows = [
        services.workflow_create(name="slot", actor=Actor.CLI, tasks=[], start=True, concurrency_key="acme")[0]
        for _ in range(2)
    ]
    first, second = jobs_on_the_broker()
    claims = [name for name in flat(run(first).steps) if name in ("claim", "take_slot")]
    if POSTGRES:
        assert claims == ["claim"] * 5
    else:
        assert claims == ["claim", "take_slot"] * 4 + ["claim", "claim"]
    assert {reload(workflow).state for workflow in workflows} == {State.COMPLETE}
    jobs_on_the_broker()  # the VALIDATE tasks' deliveries: as late as the second one
    assert run(second).steps == NOTHING
