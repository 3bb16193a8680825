"""Flow control in the database: the claim takes the first ready task by priority, then
keys in turn, then age, within each key's limits; a job is a delivery that runs
whichever task comes first; a slot given back by any path lets the key's next task start."""

import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from tests.conftest import reload, task
from workflow_orchestrator import queue, services, statements
from workflow_orchestrator.models import Actor, ConcurrencyLimit, State, Task, Workflow

Status = Task.Status
BUDGET = 300.0


def claim(worker: str = "w1", budget: float = BUDGET) -> Task | None:
    return services.task_claim(None, None, budget, worker=worker)


def started(engine, count: int = 1, **kwargs) -> list[Workflow]:
    """Workflows started with one EXECUTE task each: their PREPARE tasks are ready."""
    return [engine.start(tasks=[{"name": "a", "type": "noop"}], **kwargs) for _ in range(count)]


def claimed_workflows(count: int) -> list:
    """The workflows of the next `count` claims, in order (None for a claim of nothing)."""
    return [getattr(claim(), "workflow_id", None) for _ in range(count)]


def running(key: str) -> int:
    return ConcurrencyLimit.objects.get(key=key).running


# --- Priorities ----------------------------------------------------------------------------


def test_the_higher_priority_is_claimed_first_then_the_oldest(engine):
    low = started(engine, 2)
    high = started(engine, priority=50)
    urgent = started(engine, priority=100)
    lowest = started(engine, priority=-100)
    assert claimed_workflows(6) == [w.pk for w in urgent + high + low + lowest] + [None]


def test_the_definition_gives_the_default_priority_and_key_and_a_request_overrides_them(engine, settings):
    from workflow_orchestrator.registry import WorkflowDefinition, _definitions, register_definition

    register_definition(
        WorkflowDefinition(
            key="tenanted",
            prepare="noop",
            priority=7,
            concurrency_key=lambda input: f"tenant-{input['tenant']}",
        )
    )
    try:
        by_default = engine.start(definition="tenanted", input={"tenant": "acme"})
        given = engine.start(definition="tenanted", input={"tenant": "acme"}, priority=-3, concurrency_key="k")
        assert (by_default.priority, by_default.concurrency_key) == (7, "tenant-acme")
        assert (given.priority, given.concurrency_key) == (-3, "k")
        assert set(reload(by_default).tasks.values_list("priority", "concurrency_key")) == {(7, "tenant-acme")}
        with pytest.raises(ValidationError) as refused:
            engine.start(definition="tenanted", input={})
        assert "concurrency_key" in refused.value.message_dict
    finally:
        _definitions.pop("tenanted")


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", 101), ("priority", -101), ("priority", 1.5), ("priority", True), ("concurrency_key", "k" * 201)],
)
def test_a_bad_priority_or_key_is_refused_naming_the_field_and_stores_nothing(engine, field, value):
    with pytest.raises(ValidationError) as refused:
        engine.start(**{field: value})
    assert field in refused.value.message_dict
    assert not Workflow.objects.exists()


# --- Fairness -------------------------------------------------------------------------------


def test_a_key_with_a_backlog_does_not_hold_back_another_keys_first_task(engine):
    flood = started(engine, 10, concurrency_key="a")
    late = started(engine, concurrency_key="b")
    order = claimed_workflows(11)
    assert order.index(late[0].pk) <= 1  # its turn comes with the backlog's first
    assert [w for w in order if w != late[0].pk] == [w.pk for w in flood]  # the key's own, oldest first


def test_workflows_without_a_key_take_turns_with_a_fan_out(engine):
    """A workflow without a key is its own: a 20-task fan-out does not hold back a
    one-task workflow started after it."""
    fan_out = engine.start(tasks=[{"name": f"t{i}", "type": "noop"} for i in range(20)])
    engine.call(services.task_record, claim())  # its PREPARE: now 20 tasks are ready
    assert Task.objects.filter(workflow=fan_out, status=Status.QUEUED).count() == 20
    single = started(engine)[0]
    order = claimed_workflows(3)
    assert single.pk in order[:2]


# --- Concurrency limits ---------------------------------------------------------------------


def test_a_key_runs_at_most_its_limit_and_a_slot_given_back_lets_the_next_start(engine):
    services.limit_set("acme", max_running=2)
    acme = started(engine, 4, concurrency_key="acme")
    other = started(engine, priority=-1)  # after all of acme's, but for the limit
    first, second = claim(), claim()
    assert {first.workflow_id, second.workflow_id} <= {w.pk for w in acme}
    assert first.slot == second.slot == "acme" and running("acme") == 2
    assert claim().workflow_id == other[0].pk  # the full key is passed over
    assert claim() is None
    engine.call(services.task_record, first)  # a success gives the slot back
    assert running("acme") == 1
    third = claim()
    assert third.workflow_id in {w.pk for w in acme} and running("acme") == 2


@pytest.mark.parametrize("how", ["success", "failure", "last failure", "hand back", "lease expiry", "cancel"])
def test_every_way_out_of_running_gives_the_slot_back(engine, how):
    services.limit_set("acme", max_running=1)
    workflow = started(engine, concurrency_key="acme")[0]
    running_task = claim()
    assert running("acme") == 1
    if how == "success":
        engine.call(services.task_record, running_task)
    elif how == "failure":
        engine.call(services.task_record, running_task, error="boom")
    elif how == "last failure":
        Task.objects.filter(pk=running_task.pk).update(max_attempts=1)
        engine.call(services.task_record, running_task, error="boom")
        assert reload(workflow).state == State.FAILED
    elif how == "hand back":
        engine.call(services.task_hand_back, running_task.pk, running_task.attempt, workflow_id=workflow.pk)
    elif how == "lease expiry":
        engine.call(services.recover, now=timezone.now() + timedelta(days=1))
    elif how == "cancel":
        engine.call(services.workflow_cancel, workflow.pk, actor=Actor.SYSTEM)
        engine.call(services.task_record, running_task)
    assert running("acme") == 0
    assert task(workflow, "prepare").status != Status.RUNNING


def test_a_limit_set_while_tasks_run_counts_them_and_removing_it_lets_the_rest_start(engine):
    started(engine, 3, concurrency_key="acme")
    claim()
    services.limit_set("acme", max_running=1)
    assert running("acme") == 1
    assert claim() is None
    assert services.limit_remove("acme") and not services.limit_remove("acme")
    assert claim() is not None and claim() is not None


def test_a_rate_allows_so_many_starts_per_window_and_wakes_deliveries_when_it_opens(engine):
    services.limit_set("api", rate=2, per_seconds=30)
    started(engine, 3, concurrency_key="api")
    engine.pending()  # the tasks' own deliveries: played by hand here
    assert claim() is not None and claim() is not None
    assert claim() is None  # the window is full
    assert engine.broker.delayed_size() == 2  # two deliveries, due when the next window opens
    ConcurrencyLimit.objects.filter(key="api").update(window_started_at=timezone.now() - timedelta(seconds=31))
    assert claim() is not None


@pytest.mark.parametrize(
    "limits",
    [{}, {"max_running": 0}, {"rate": 1}, {"rate": 0, "per_seconds": 1}, {"max_running": 1, "per_seconds": 2}],
)
def test_a_bad_limit_is_refused_naming_the_field(limits, db):
    with pytest.raises(ValidationError):
        services.limit_set("acme", **limits)
    assert not ConcurrencyLimit.objects.exists()


def test_claims_made_at_once_never_exceed_the_limit(engine, transactional_db):
    """Workers racing for the last slots: the limit is checked and taken in the claim's
    own statement, so that no two claims take the same slot."""
    services.limit_set("acme", max_running=3)
    started(engine, 12, concurrency_key="acme")
    got, barrier = [], threading.Barrier(6)

    def worker(n):
        barrier.wait()
        try:
            while (claimed := claim(f"w{n}")) is not None:
                got.append(claimed.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(set(got)) == 3
    assert Task.objects.filter(status=Status.RUNNING, concurrency_key="acme").count() == running("acme") == 3


def test_a_key_with_a_limit_of_one_runs_all_its_workflows_one_task_at_a_time(engine):
    services.limit_set("acme", max_running=1)
    workflows = [
        engine.start(tasks=[{"name": n, "type": "noop"} for n in "abc"], concurrency_key="acme") for _ in range(3)
    ]
    engine.drain()
    assert {reload(w).state for w in workflows} == {State.COMPLETE}
    assert running("acme") == 0
    starts = sorted(
        (attempt["started_at"], attempt["finished_at"])
        for t in Task.objects.filter(concurrency_key="acme")
        for attempt in t.attempts
    )
    assert all(end <= next_start for (_, end), (next_start, _) in zip(starts, starts[1:], strict=False))


# --- Deliveries and the inline chain -----------------------------------------------------


def test_a_delivery_whose_task_was_taken_runs_the_next_ready_one(engine):
    first, second = started(engine, 2)
    jobs = engine.pending()
    claim()  # another worker takes the first workflow's PREPARE
    engine.run(jobs[0])  # the first PREPARE's delivery runs the second's
    assert reload(second).state != State.PREPARE
    assert task(first, "prepare").status == Status.RUNNING


def test_a_delivery_runs_only_tasks_that_fit_its_budget(engine):
    engine.start(tasks=[{"name": "a", "type": "noop"}])
    engine.call(services.task_record, claim())
    Task.objects.filter(name="a").update(timeout=3600)
    assert claim(budget=BUDGET) is None
    assert claim(budget=3600).name == "a"


def test_the_inline_chain_yields_to_a_ready_task_of_a_higher_priority(engine):
    workflow = started(engine)[0]
    prepare = claim()
    urgent = started(engine, priority=10)[0]
    recorded = engine.call(services.task_record, prepare, stored=None, inline=services.inline_claim("w1", BUDGET))
    # The EXECUTE task is queued for the claim's order; the worker takes the urgent one.
    assert task(workflow, "a").status == Status.QUEUED
    assert (recorded.next_task.workflow_id, recorded.next_task.name) == (urgent.pk, "prepare")


def test_a_limited_keys_next_phase_is_not_claimed_inline_but_through_a_slot(engine):
    services.limit_set("acme", max_running=5)
    workflow = started(engine, concurrency_key="acme")[0]
    recorded = engine.call(services.task_record, claim(), inline=services.inline_claim("w1", BUDGET))
    # Queued, then taken by a claim with its slot: the outcome's own on SQLite; on PostgreSQL,
    # where the transition's statement cannot see the task it queued, the next delivery's.
    assert task(workflow, "a").status in (Status.QUEUED, Status.RUNNING)
    assert (recorded.next_task or claim()).slot == "acme" and running("acme") == 1


def test_a_job_sent_before_deliveries_runs_its_own_attempt_only(engine):
    first, second = started(engine, 2)
    prepare = task(second, "prepare")
    engine.pending()
    engine.run({"func": queue.RUN_TASK, "args": [prepare.pk, prepare.attempt], "kwargs": {}}, tasks=1)
    assert task(first, "prepare").status == Status.QUEUED
    assert task(second, "prepare").status == Status.SUCCEEDED


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's claim names its index (INDEXED BY)")
@pytest.mark.django_db(transaction=True)
def test_recovery_takes_the_tasks_statistics_again_after_a_burst_so_the_claim_walks_its_index():
    """Statistics taken while nothing was queued, then a burst of ready tasks: the claim
    was planned as a read of all of them and a sort, until recovery took them again."""

    def estimated_ready() -> int:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN SELECT id FROM workflow_orchestrator_task WHERE status = 'QUEUED'")
            plan = cursor.fetchone()[0]
        return int(plan.split("rows=")[1].split()[0])

    def flush() -> None:  # this session's counters, which PostgreSQL publishes a second late
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE workflow_orchestrator_task")
    for _ in range(400):
        services.workflow_create(name="burst", actor=Actor.CLI, tasks=[{"type": "noop"}] * 3, start=True)
    assert estimated_ready() < 50  # the planner still counts (almost) no ready task
    flush()
    services.recover()
    assert estimated_ready() > 200  # 400 PREPARE tasks are ready
    flush()
    assert statements.refresh_statistics() is False  # nothing changed since: no second ANALYZE


def test_the_task_table_keeps_its_flow_control_triggers_through_every_migration(db):
    """Turns and slots given back are the database's own (0005_flow_control's triggers);
    SQLite rebuilds the task table to add a column, and the triggers must be made again."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [Task._meta.db_table]
            )
        else:
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [Task._meta.db_table]
            )
        found = {name for (name,) in cursor.fetchall()}
    assert found == {
        f"workflow_orchestrator_task_{name}" for name in ("queued", "requeued", "left_running", "deleted_running")
    }
