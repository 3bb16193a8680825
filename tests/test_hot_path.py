"""What each kind of job costs the database, statement by statement: the hot path's
budget (at most 4 statements per task on PostgreSQL, over a 4-task workflow's 6 jobs).
A change that adds a round trip fails here; PostgreSQL's own count, BEGIN and COMMIT
included, comes from ../shared/tools/pg-statements-per-task (docs/BENCHMARKS.md)."""

import pydoc
import re

import pytest
from django.conf import settings
from django.db import connection
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
JOBS = ("enqueue",) if settings.ORCH_BROKER == "orm" else ()
# SQLite: the claim runs in a transaction of its own, with `take_slot` when its task takes a
# slot of a limit; the workflow row is read after it.
CLAIM = ["claim"] if POSTGRES else [("claim",), "workflow_row"]
SUCCEED = ["succeed"] if POSTGRES else [("succeed", "count_out")]


def transition(*, succeeded: bool) -> list:
    if POSTGRES:
        statement = "succeed_and_transition" if succeeded else "transition"
        return [(statement, *JOBS)] if JOBS else [statement]
    parts = ("succeed",) if succeeded else ()
    return [(*parts, "change_workflow", "insert_audit_row", "queue_phase", *JOBS)]


def test_a_task_in_the_middle_of_its_phase_costs_a_claim_and_a_success():
    start([{"type": "noop"}] * 3)
    run(jobs_on_the_broker()[0])  # PREPARE, and the first EXECUTE task
    middle, _last = jobs_on_the_broker()
    assert run(middle).steps == [*CLAIM, *SUCCEED]


def test_the_last_task_of_a_phase_records_its_success_and_the_transition_in_one_statement(monkeypatch):
    # A job that has run its INLINE_LIMIT of tasks runs no more: VALIDATE is queued.
    monkeypatch.setattr(jobs, "INLINE_LIMIT", 1)
    workflow = start([{"type": "noop"}, {"name": "last", "type": "noop"}])
    run(jobs_on_the_broker()[0])  # PREPARE
    first, last = jobs_on_the_broker()
    run(first)  # noop-1
    # Its claim showed it to be the phase's last unfinished task: its success and the
    # transition to VALIDATE (which gathers the EXECUTE results) are one statement.
    assert run(last).steps == [*CLAIM, *transition(succeeded=True)]
    assert reload(workflow).state == State.VALIDATE


def test_a_task_that_turns_out_last_pays_a_separate_transition():
    workflow = start([{"name": "a", "type": "noop"}, {"name": "b", "type": "noop"}, {"name": "c", "type": "noop"}])
    run(jobs_on_the_broker()[0])  # PREPARE, and a
    b, c = (services.task_claim(task(workflow, n).pk, 1, worker=f"w:{n}") for n in "bc")  # at once
    services.task_record(b, stored=None)
    with Statements() as statements:  # c's claim saw b unfinished: its success ends the phase after all
        services.task_record(c, stored=None)
    assert statements.steps == [*SUCCEED, *transition(succeeded=False)]
    assert reload(workflow).state == State.VALIDATE


def test_a_task_others_wait_for_costs_at_most_one_more_statement_and_hands_one_on():
    workflow = start([{"name": "x", "type": "noop"}, {"name": "a", "type": "noop"},
                      {"name": "b", "type": "noop", "after": ["a"]}, {"name": "d", "type": "noop"}])  # fmt: skip
    run(jobs_on_the_broker()[0])  # PREPARE, and x
    a, _d = jobs_on_the_broker()
    release = ["succeed_and_release"] if POSTGRES else [("succeed", "count_out", "release_waiting")]
    # a's success releases b in the same statement (SQLite: transaction), claimed for this
    # worker, which runs it at once: b costs no claim and no job.
    assert run(a).steps == [*CLAIM, *release, *SUCCEED]
    assert task(workflow, "b").status == Task.Status.SUCCEEDED and not jobs_on_the_broker()


def test_a_task_that_releases_several_queues_the_rest_with_their_jobs():
    after_a = [{"name": name, "type": "noop", "after": ["a"]} for name in "bc"]
    workflow = start([{"name": "x", "type": "noop"}, {"name": "a", "type": "noop"}, *after_a])
    run(jobs_on_the_broker()[0])  # PREPARE, and x
    [a] = jobs_on_the_broker()
    if POSTGRES:
        release = [("succeed_and_release", *JOBS)] if JOBS else ["succeed_and_release"]
    else:
        release = [("succeed", "count_out", "release_waiting", *JOBS)]
    assert run(a).steps == [*CLAIM, *release, *SUCCEED]  # b runs here; c is queued
    [c] = jobs_on_the_broker()
    assert tuple(c["args"][:2]) == (task(workflow, "c").pk, 1)


def test_prepare_then_the_first_execute_task_in_one_job():
    start([{"type": "noop"}] * 2)
    assert run(jobs_on_the_broker()[0]).steps == [
        *CLAIM,
        "workflow_input",  # read by default.prepare, which checks it
        *transition(succeeded=True),  # noop-2 queued, noop-1 claimed for this worker
        *SUCCEED,  # noop-1, run by the same worker
    ]


def test_a_failed_attempt_is_queued_again_under_the_workflow_lock():
    workflow = start([{"type": "noop"}, {"name": "flaky", "type": "fail", "params": {"times": 1}, "timeout": 1}])
    run(jobs_on_the_broker()[0])  # PREPARE, and noop-1
    [flaky] = jobs_on_the_broker()
    lock = "lock the workflow" if POSTGRES else "the workflow"  # SQLite: BEGIN IMMEDIATE locks it all
    assert run(flaky).steps == [*CLAIM, (lock, "the failed attempt", "its next attempt", *JOBS)]
    assert task(workflow, "flaky").status == Task.Status.QUEUED


def test_a_four_task_workflow_keeps_the_budget():
    workflow = start([{"type": "noop"}] * 4)
    steps = []
    while batch := jobs_on_the_broker():
        for job in batch:
            steps += run(job).steps
    assert reload(workflow).state == State.COMPLETE
    if POSTGRES:  # 12 statements, no BEGIN or COMMIT: 2 per task against a budget of 4
        assert all(isinstance(step, str) for step in steps) and len(steps) == 12, steps


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
    assert with_url[:-1] == without[:-1]
    assert flat(with_url[-1]) == flat(without[-1]) + list(JOBS)


def flat(steps: list) -> list[str]:
    return [name for step in steps for name in (step if isinstance(step, tuple) else (step,))]


def test_a_worker_that_gives_a_slot_back_claims_the_next_task_and_a_late_delivery_costs_one_statement():
    """A limited key's tasks: each claim takes the slot in its own statement (SQLite: in
    its transaction, `take_slot`), each success gives it back (a trigger, no statement of
    its own), and the worker then claims the next ready task itself: one job runs both
    workflows of the key, PREPARE and VALIDATE each, and ends with a claim that finds
    nothing. The other workflow's own delivery then costs that one statement."""
    services.limit_set("acme", max_running=1)
    queue.broker().purge_queue()
    workflows = [
        services.workflow_create(name="slot", actor=Actor.CLI, tasks=[], start=True, concurrency_key="acme")[0]
        for _ in range(2)
    ]
    first, second = jobs_on_the_broker()
    steps = run(first).steps
    claims = [step for step in steps if "claim" in (step if isinstance(step, tuple) else (step,))]
    slotted = ["claim"] * 4 if POSTGRES else [("claim", "take_slot")] * 4
    assert claims == [*slotted, "claim" if POSTGRES else ("claim",)]
    assert {reload(workflow).state for workflow in workflows} == {State.COMPLETE}
    jobs_on_the_broker()  # the VALIDATE tasks' deliveries: as late as the second one
    assert run(second).steps == (["claim"] if POSTGRES else [("claim",)])
