"""Random sequences of service calls and worker outcomes, with the engine's invariants
checked after every step (hypothesis stateful testing).

A workflow's EXECUTE tasks form a random DAG (each task's `after` names earlier tasks, so
there is no cycle). Workers claim attempts and hold them while other things happen
(cancel, retry, other workers' outcomes, recovery), record successes and failures,
hand on the task a success releases (`inline`), get the same job twice, and die: recovery
takes their attempts back once their lease has run out, and a dead worker that comes back
records nothing."""

import contextlib
import inspect
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from workflow_orchestrator import audit, services
from workflow_orchestrator.models import (
    ATTEMPT_OUTCOMES,
    PHASES,
    TERMINAL_STATES,
    Actor,
    ConcurrencyLimit,
    State,
    Task,
    Workflow,
    WorkflowSignal,
)
from workflow_orchestrator.statements import from_time

Status = Task.Status
ORDER = {State.PREPARE: 0, State.EXECUTE: 1, State.VALIDATE: 2}
# Statuses a task reaches only by being claimed: its `after` tasks had all succeeded.
CLAIMED_ONCE = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED)
ENDED_BY_FAILURE = ("failed", "timed_out", "lease_expired")
# Large enough for any task: a worker asked to run what its outcome releases takes it.
HAND_ON = 10**6
SIGNAL = "go"  # the signal a waiting handler waits for


@st.composite
def dags(draw, max_tasks: int = 5, min_tasks: int = 0) -> list[dict]:
    """EXECUTE task specs, each `after` some of the tasks before it (none, one, a fan-in)."""
    specs = []
    for i in range(draw(st.integers(min_value=min_tasks, max_value=max_tasks))):
        upstream = draw(st.integers(min_value=0, max_value=2**i - 1))  # a bit for each earlier task
        kind = draw(st.sampled_from(["noop", "echo"]))
        specs.append({"name": f"t{i}", "type": kind, "after": [f"t{j}" for j in range(i) if upstream >> j & 1]})
    return specs


class Engine(RuleBasedStateMachine):
    """One workflow driven by random calls; every example rolls back when it ends."""

    def __init__(self):
        super().__init__()
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        self.workflow_id = None
        self.final_state = None  # a terminal state, once reached, never changes
        self.transitions_seen = 0
        self.claims: set[tuple[int, int]] = set()  # every (task, attempt) a worker was given
        self.held: list[Task] = []  # attempts claimed by live workers, not yet recorded
        self.dead: list[Task] = []  # attempts of workers that died and were taken back
        self.workers = 0

    def teardown(self):
        transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)

    @initialize(
        mode=st.sampled_from(["auto", "manual"]),
        tasks=dags(),
        max_attempts=st.integers(min_value=1, max_value=3),
        start=st.booleans(),
        max_parallel=st.sampled_from([None, None, 1, 2]),
    )
    def create(self, mode, tasks, max_attempts, start, max_parallel=None):
        specs = [{**spec, "max_attempts": max_attempts} for spec in tasks]
        workflow, _ = services.workflow_create(
            name="h", mode=mode, tasks=specs, actor=Actor.SYSTEM, start=start, max_parallel=max_parallel
        )
        self.workflow_id = workflow.pk

    @property
    def workflow(self) -> Workflow:
        return Workflow.objects.get(pk=self.workflow_id)

    def call(self, operation, **kwargs):
        with contextlib.suppress(services.InvalidTransition):  # refusals are part of the game
            operation(self.workflow_id, actor=Actor.CLI, **kwargs)

    @rule()
    def start(self):
        self.call(services.workflow_start)

    @rule()
    def next_step(self):
        self.call(services.workflow_next)

    @rule()
    def retry(self):
        self.call(services.workflow_retry)

    @rule()
    def pause(self):
        self.call(services.workflow_pause)

    @rule()
    def resume(self):
        self.call(services.workflow_resume)

    @rule(now=st.integers(min_value=0, max_value=3))
    def cancel(self, now):
        """Now and then: a cancelled workflow has little left to explore."""
        if now == 0:
            self.call(services.workflow_cancel)

    # --- Workers --------------------------------------------------------------------------

    def queued(self):
        return Task.objects.filter(workflow_id=self.workflow_id, status=Status.QUEUED).order_by("pk")

    @staticmethod
    def outcome(succeed: bool) -> dict:
        if succeed:
            return {"stored": '{"ok": true}'}
        return {"error": "Traceback...\nRuntimeError: boom"}

    def worker(self) -> str:
        self.workers += 1
        return f"hypothesis:{self.workers}"

    def given(self, task: Task) -> Task:
        """A worker was given `task` (a claim, or a success handing it on): it may start
        only while its workflow is in the task's phase and not paused, and only once every
        task in its `after` has succeeded."""
        assert task.status == Status.RUNNING
        assert not self.workflow.is_paused, f"{task.name} started while its workflow was paused"
        assert (task.pk, task.attempt) not in self.claims, "an attempt was given to two workers"
        self.claims.add((task.pk, task.attempt))
        assert self.workflow.state == task.phase, f"{task.name} started in a workflow that left {task.phase}"
        upstream = Task.objects.filter(workflow_id=self.workflow_id, phase=State.EXECUTE, name__in=task.after)
        statuses = dict(upstream.values_list("name", "status"))
        assert statuses == dict.fromkeys(task.after, Status.SUCCEEDED), f"{task.name} started before {statuses}"
        self.held.append(task)
        return task

    def claim(self, pick: int, deliver_twice: bool = False) -> Task | None:
        queued = list(self.queued())
        if not queued:
            return None
        task = queued[pick % len(queued)]
        claimed = services.task_claim(task.pk, task.attempt, worker=self.worker())
        if self.workflow.is_paused:  # its job claims nothing, and the task stays queued
            assert claimed is None and Task.objects.get(pk=task.pk).status == Status.QUEUED
            return None
        assert claimed is not None
        if deliver_twice:  # the broker delivers the same job again: it finds nothing to claim
            assert services.task_claim(task.pk, task.attempt, worker=self.worker()) is None
        return self.given(claimed)

    def record(self, task: Task, succeed: bool, *, hand_on: bool = False, deliver_twice: bool = False) -> Task | None:
        """The worker holding `task` records its outcome; with `hand_on`, it is given what
        the outcome releases (returned, and held until a step records it)."""
        self.held.remove(task)
        inline = services.inline_claim(task.worker, HAND_ON) if hand_on else None
        recorded = services.task_record(task, **self.outcome(succeed), inline=inline)
        assert recorded.recorded is True
        if deliver_twice:  # the same job again, after the outcome: nothing may change
            assert services.task_record(task, **self.outcome(succeed)).recorded is False
        if recorded.next_task is None:
            return None
        assert hand_on
        return self.given(recorded.next_task)

    @precondition(lambda self: self.workflow_id is not None)
    @rule(
        pick=st.integers(min_value=0, max_value=10),
        succeed=st.booleans(),
        hand_on=st.booleans(),
        deliver_twice=st.booleans(),
    )
    def worker_runs_a_job(self, pick, succeed, hand_on, deliver_twice):
        task = self.claim(pick, deliver_twice)
        if task is not None:
            self.record(task, succeed, hand_on=hand_on, deliver_twice=deliver_twice)

    @precondition(lambda self: self.workflow_id is not None)
    @rule(hand_on=st.booleans())
    def workers_run_every_queued_job(self, hand_on):
        """...and they all succeed (what a healthy cluster does most of the time)."""
        for _ in range(0 if self.workflow.is_paused else len(self.queued())):
            task = self.claim(0)
            while task is not None:  # a worker runs what its success hands on, as jobs.run_task does
                task = self.record(task, True, hand_on=hand_on)

    @precondition(lambda self: self.workflow_id is not None)
    @rule(pick=st.integers(min_value=0, max_value=10), deliver_twice=st.booleans())
    def worker_claims_a_job(self, pick, deliver_twice):
        """...and holds it while other steps happen."""
        self.claim(pick, deliver_twice)

    @precondition(lambda self: self.held)
    @rule(
        pick=st.integers(min_value=0, max_value=10),
        succeed=st.booleans(),
        hand_on=st.booleans(),
        deliver_twice=st.booleans(),
    )
    def a_busy_worker_records(self, pick, succeed, hand_on, deliver_twice):
        self.record(self.held[pick % len(self.held)], succeed, hand_on=hand_on, deliver_twice=deliver_twice)

    @precondition(lambda self: self.workflow_id is not None)
    @rule(succeed=st.lists(st.booleans(), min_size=2, max_size=2), reverse=st.booleans(), hand_on=st.booleans())
    def two_workers_at_once(self, succeed, reverse, hand_on):
        """Both claim before either records: neither claim sees itself as the last."""
        queued = [] if self.workflow.is_paused else list(self.queued())[:2]
        claimed = [self.given(services.task_claim(t.pk, t.attempt, worker=self.worker())) for t in queued]
        pairs = list(zip(claimed, succeed, strict=False))
        for task, ok in reversed(pairs) if reverse else pairs:
            self.record(task, ok, hand_on=hand_on)

    def recover(self, now) -> None:
        """Recovery at `now`: attempts whose lease ran out by then are taken back, and
        their workers count as dead."""
        services.recover(now=now)
        for task in list(self.held):
            if not Task.objects.filter(pk=task.pk, status=Status.RUNNING, attempt=task.attempt).exists():
                self.held.remove(task)
                self.dead.append(task)

    @precondition(lambda self: self.workflow_id is not None)
    @rule(pick=st.integers(min_value=0, max_value=10))
    def worker_dies_mid_job(self, pick):
        self.claim(pick)
        self.recover(timezone.now() + timedelta(hours=1))

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(min_value=0, max_value=10))
    def a_busy_worker_dies(self, pick):
        """It stops heartbeating while the others renew their leases: its lease alone runs out."""
        task = self.held[pick % len(self.held)]
        for alive in self.held:
            if alive is not task:
                assert services.task_heartbeat(alive.pk, alive.attempt)
        lease = Task.objects.get(pk=task.pk).lease_expires_at  # as renewed when others died before
        self.recover(lease + timedelta(microseconds=1))
        assert self.dead[-1] is task and task not in self.held

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(min_value=0, max_value=10), for_signal=st.booleans())
    def a_busy_worker_s_handler_waits(self, pick, for_signal):
        """Its handler waits (ctx.wait): for the signal "go", or a timer an hour away. The
        worker is free at once; the task holds nothing until it wakes."""
        task = self.held.pop(pick % len(self.held))
        until = None if for_signal else timezone.now() + timedelta(hours=1)
        signal = SIGNAL if for_signal else None
        assert services.task_wait(task.pk, task.attempt, workflow_id=self.workflow_id, until=until, signal=signal)
        assert services.task_wait(task.pk, task.attempt, workflow_id=self.workflow_id, until=until) is False, (
            "a wait is recorded once"
        )

    @precondition(lambda self: self.workflow_id is not None)
    @rule()
    def a_signal_arrives(self):
        """Someone sends "go": it wakes the first task waiting for it, or is kept."""
        with contextlib.suppress(services.InvalidTransition):  # an ended workflow takes none
            services.workflow_signal(self.workflow_id, name=SIGNAL, payload={"go": True}, actor=Actor.CLI)

    @precondition(lambda self: self.workflow_id is not None)
    @rule()
    def the_timers_come_due(self):
        """An hour passes for the waiting timers (their wake jobs, or recovery, come)."""
        later = timezone.now() + timedelta(hours=2)
        waiting = Task.objects.filter(workflow_id=self.workflow_id, status=Status.WAITING, wake_at__isnull=False)
        for task_id in list(waiting.values_list("pk", flat=True)):
            assert services.task_wake(task_id, now=later)

    @precondition(lambda self: self.dead)
    @rule(pick=st.integers(min_value=0, max_value=10), succeed=st.booleans())
    def a_dead_worker_comes_back(self, pick, succeed):
        """A worker taken for dead (paused, cut off) records its attempt late: nothing changes."""
        task = self.dead[pick % len(self.dead)]
        assert services.task_record(task, **self.outcome(succeed)).recorded is False

    # --- Invariants ---------------------------------------------------------------------

    @invariant()
    def state_is_one_of_the_seven(self):
        if self.workflow_id:
            assert self.workflow.state in State.values

    @invariant()
    def terminal_states_are_final(self):
        if not self.workflow_id:
            return
        state = self.workflow.state
        if self.final_state is not None:
            assert state == self.final_state
        elif state in TERMINAL_STATES:
            self.final_state = state

    @invariant()
    def audit_log_is_contiguous_and_intact(self):
        if not self.workflow_id:
            return
        workflow = self.workflow
        seqs = list(workflow.transitions.order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= self.transitions_seen, "audit rows are never removed"
        self.transitions_seen = len(seqs)
        assert audit.verify(workflow) is None

    @invariant()
    def the_counters_on_the_workflow_row_agree_with_its_rows(self):
        """The fan-in counter is the number of the current phase's tasks not yet
        succeeded, and the chain head is the last audit row's seq and digest."""
        if not self.workflow_id:
            return
        workflow = self.workflow
        if workflow.state in PHASES:
            unfinished = workflow.tasks.filter(phase=workflow.state).exclude(status=Status.SUCCEEDED).count()
            assert workflow.unfinished == unfinished
        last = workflow.transitions.order_by("-seq").values_list("seq", "digest").first() or (0, "")
        assert (workflow.last_seq, workflow.last_digest) == last

    @invariant()
    def task_statuses_agree_with_the_state(self):
        if not self.workflow_id:
            return
        workflow = self.workflow
        tasks = list(workflow.tasks.all())
        if workflow.state == State.INIT:
            assert all(t.status == Status.PENDING and t.attempt == 0 for t in tasks)
        if workflow.state in PHASES:
            for task in tasks:
                if ORDER[task.phase] > ORDER[workflow.state]:
                    assert task.status == Status.PENDING, "later phases have not started"
                if ORDER[task.phase] < ORDER[workflow.state]:
                    assert task.status == Status.SUCCEEDED, "earlier phases are done"
        if workflow.state == State.COMPLETE:
            assert all(t.status == Status.SUCCEEDED for t in tasks)
        if workflow.state == State.CANCELLED:
            assert not any(t.status in (Status.PENDING, Status.QUEUED, Status.WAITING) for t in tasks)
        for task in tasks:
            assert task.attempt <= task.attempt_offset + task.max_attempts
            assert (task.status == Status.RUNNING) == (task.lease_expires_at is not None)
            if task.status in (Status.QUEUED, Status.WAITING):
                assert task.phase == workflow.state, "only the current phase's tasks wait for a worker or a wake"
            if task.status == Status.WAITING:
                assert task.worker == "" and task.waiting_for, "a waiting task holds no worker, and says why"
        progress = services.workflow_progress(workflow)
        assert 0 <= progress["done"] <= progress["total"] == len(tasks)

    @invariant()
    def each_task_waits_for_exactly_its_upstream_not_yet_succeeded(self):
        """`waiting` counts the tasks in `after` that have not succeeded; a task that was
        ever queued had none left."""
        if not self.workflow_id:
            return
        tasks = {t.name: t for t in Task.objects.filter(workflow_id=self.workflow_id, phase=State.EXECUTE)}
        for task in tasks.values():
            not_succeeded = [name for name in task.after if tasks[name].status != Status.SUCCEEDED]
            if task.status != Status.CANCELLED:  # cancelled while waiting: nothing counts it down any more
                assert task.waiting == len(not_succeeded), (task.name, task.waiting, not_succeeded)
            if task.status in CLAIMED_ONCE:
                assert not not_succeeded, f"{task.name} is {task.status} before {not_succeeded} succeeded"
            assert task.dependents == sum(task.name in t.after for t in tasks.values())

    @invariant()
    def a_running_phase_always_has_work_under_way(self):
        """Nothing is left behind: in a phase, a task with nothing to wait for is queued or
        running, or waits for a slot of its workflow's max_parallel while as many others
        are; so the phase either is done or has some attempt queued or running."""
        if not self.workflow_id:
            return
        workflow = self.workflow
        if workflow.state not in PHASES:
            return
        tasks = list(workflow.tasks.filter(phase=workflow.state))
        ready = [t.name for t in tasks if t.status == Status.PENDING and t.waiting == 0]
        active = sum(t.status in (Status.QUEUED, Status.RUNNING, Status.WAITING) for t in tasks)
        held = workflow.state == State.EXECUTE and workflow.max_parallel is not None
        if held and ready:
            assert active == workflow.max_parallel, f"{ready} wait for a slot while {active} are active"
        else:
            assert not ready, f"{ready} can run but nothing will run them"
        assert active or workflow.unfinished == 0

    @invariant()
    def no_more_execute_tasks_are_active_than_max_parallel(self):
        if not self.workflow_id:
            return
        workflow = self.workflow
        if workflow.max_parallel is None or workflow.state != State.EXECUTE:
            return
        holding = (Status.QUEUED, Status.RUNNING, Status.WAITING)  # a waiting task keeps its slot
        active = workflow.tasks.filter(phase=State.EXECUTE, status__in=holding).count()
        assert active <= workflow.max_parallel, (active, workflow.max_parallel)

    @invariant()
    def no_signal_is_lost_or_delivered_twice(self):
        """A signal goes to one task, once (its row names it, with when), and none is kept
        while a task waits for its name."""
        if not self.workflow_id:
            return
        signals = WorkflowSignal.objects.filter(workflow_id=self.workflow_id)
        for task_id, delivered_at in signals.values_list("task_id", "delivered_at"):
            assert (task_id is None) == (delivered_at is None)
        waiting = Task.objects.filter(workflow_id=self.workflow_id, status=Status.WAITING)
        if waiting.filter(waiting_for=f"signal:{SIGNAL}").exists():
            assert not signals.filter(task__isnull=True).exists(), "a signal kept from the task waiting for it"

    @invariant()
    def every_attempt_given_to_a_worker_is_kept_once_in_order(self):
        """A task's `attempts` hold one entry per attempt a worker was given, numbered in
        order, ended with an outcome except the running one, which is the task's latest."""
        if not self.workflow_id:
            return
        for task in Task.objects.filter(workflow_id=self.workflow_id):
            numbers = [a["attempt"] for a in task.attempts]
            assert numbers == sorted(set(numbers)), numbers
            assert set(numbers) == {attempt for pk, attempt in self.claims if pk == task.pk}
            assert all(number <= task.attempt for number in numbers)
            running = [a for a in task.attempts if a["outcome"] == "running"]
            assert len(running) == (task.status == Status.RUNNING)
            if running:
                assert task.attempts[-1] is running[0] and running[0]["attempt"] == task.attempt
            for entry in task.attempts:
                assert entry["outcome"] in ATTEMPT_OUTCOMES
                if entry["outcome"] != "running":
                    assert from_time(entry["started_at"]) <= from_time(entry["finished_at"])
            succeeded = [a for a in task.attempts if a["outcome"] == "succeeded"]
            assert len(succeeded) == (task.status == Status.SUCCEEDED), "a task succeeds once"
            if task.status == Status.SUCCEEDED:
                assert succeeded[0] is task.attempts[-1] and succeeded[0]["attempt"] == task.attempt
            if task.status == Status.FAILED:
                assert task.attempts[-1]["outcome"] in ENDED_BY_FAILURE

    @invariant()
    def no_attempt_started_before_its_upstream_succeeded(self):
        if not self.workflow_id:
            return
        tasks = {t.name: t for t in Task.objects.filter(workflow_id=self.workflow_id, phase=State.EXECUTE)}
        for task in tasks.values():
            for entry in task.attempts:
                started = from_time(entry["started_at"])
                for name in task.after:
                    (success,) = [a for a in tasks[name].attempts if a["outcome"] == "succeeded"]
                    assert from_time(success["finished_at"]) <= started, (task.name, entry, name, success)


def check_every_invariant(machine: Engine) -> None:
    for _, check in inspect.getmembers(machine, lambda f: hasattr(f, "hypothesis_stateful_invariant")):
        check()


def test_a_success_recorded_after_its_workflow_failed_releases_nothing_until_a_retry(db):
    """A sequence random runs reach only now and then, replayed step by step with every
    invariant checked: t0's worker is still running when t1 fails for good; t0's success
    then counts itself out of t2's `waiting`, but t2 may not be queued in a FAILED workflow;
    the retry queues it."""
    machine = Engine()
    try:
        machine.create(
            mode="auto",
            tasks=[
                {"name": "t0", "type": "noop", "after": []},
                {"name": "t1", "type": "noop", "after": []},
                {"name": "t2", "type": "noop", "after": ["t0"]},
            ],  # fmt: skip
            max_attempts=1,
            start=True,
        )
        steps = [
            lambda: machine.workers_run_every_queued_job(hand_on=False),  # PREPARE: t0 and t1 queued
            lambda: machine.worker_claims_a_job(pick=0, deliver_twice=False),  # t0, held
            lambda: machine.worker_runs_a_job(pick=0, succeed=False, hand_on=True, deliver_twice=False),  # t1
            lambda: machine.a_busy_worker_records(pick=0, succeed=True, hand_on=True, deliver_twice=True),  # t0
            lambda: machine.retry(),
            lambda: machine.workers_run_every_queued_job(hand_on=True),
            lambda: machine.workers_run_every_queued_job(hand_on=True),  # VALIDATE
        ]
        for step in steps:
            step()
            check_every_invariant(machine)
        assert machine.workflow.state == State.COMPLETE
        assert [a["outcome"] for a in Task.objects.get(workflow_id=machine.workflow_id, name="t1").attempts] == [
            "failed",
            "succeeded",
        ]
    finally:
        machine.teardown()


class GatedEngine(Engine):
    """The same, from EXECUTE on, with a max_parallel smaller than its number of tasks."""

    @initialize(
        mode=st.sampled_from(["auto", "manual"]),
        tasks=dags(min_tasks=3),
        max_attempts=st.integers(min_value=1, max_value=3),
        max_parallel=st.integers(min_value=1, max_value=2),
    )
    def create(self, mode, tasks, max_attempts, max_parallel):
        super().create(mode, tasks, max_attempts, True, max_parallel)
        self.record(self.claim(0), True)  # PREPARE
        if mode == "manual":
            self.next_step()


def machine_settings(examples: int) -> settings:
    """The state machines' runs: `examples` sequences of 30 steps, the same every run."""
    return settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.mark.timeout(300)
def test_engine_invariants_hold_with_max_parallel_under_random_operations(db):
    run_state_machine_as_test(
        GatedEngine,
        settings=machine_settings(25),
    )


@pytest.mark.timeout(300)
def test_engine_invariants_hold_under_random_operations(db):
    run_state_machine_as_test(
        Engine,
        settings=machine_settings(50),
    )


# --- Flow control: several workflows, keys with limits, priorities, pauses ------------------

KEYS = ["", "a", "b"]  # "a" starts with a limit
BUDGET = 300.0


class Flow(RuleBasedStateMachine):
    """Workflows under concurrency keys with limits, of three priorities, paused and
    resumed, whose ready tasks workers claim in the claim's order; every claim is checked
    against the order computed here from the rows, and a claim of nothing against there
    being nothing claimable. Every example rolls back when it ends."""

    def __init__(self):
        super().__init__()
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        self.workflows: list = []
        self.held: list[Task] = []
        self.claims: set[tuple[int, int]] = set()
        self.workers = 0

    def teardown(self):
        transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)

    @initialize(max_running=st.integers(1, 2))
    def a_key_has_a_limit(self, max_running):
        services.limit_set("a", max_running=max_running)

    def worker(self) -> str:
        self.workers += 1
        return f"flow:{self.workers}"

    def limits(self) -> dict:
        return {limit.key: limit for limit in ConcurrencyLimit.objects.all()}

    def claimable(self) -> list[Task]:
        """The ready tasks in the claim's order, computed from the rows."""
        now, limits = timezone.now(), self.limits()
        ready = []
        for task in Task.objects.filter(status=Status.QUEUED).select_related("workflow"):
            limit = limits.get(task.concurrency_key)
            full = limit is not None and limit.max_running is not None and limit.running >= limit.max_running
            if task.queued_at <= now and not task.workflow.is_paused and not full and task.timeout <= BUDGET:
                ready.append(task)
        return sorted(ready, key=lambda t: (-t.priority, t.turn, t.pk))

    def given(self, task: Task) -> Task:
        assert task.status == Status.RUNNING
        assert (task.pk, task.attempt) not in self.claims, "an attempt was given to two workers"
        self.claims.add((task.pk, task.attempt))
        assert not Workflow.objects.get(pk=task.workflow_id).is_paused, "a paused workflow started a task"
        self.held.append(task)
        return task

    @precondition(lambda self: len(self.workflows) < 6)
    @rule(
        key=st.sampled_from(["a", "a", *KEYS]),
        priority=st.sampled_from([-1, 0, 1]),
        tasks=st.integers(0, 3),
        max_parallel=st.sampled_from([None, 1, 2]),
    )
    def start(self, key, priority, tasks, max_parallel):
        specs = [{"name": f"t{i}", "type": "noop"} for i in range(tasks)]
        workflow, _ = services.workflow_create(
            name="f",
            tasks=specs,
            actor=Actor.SYSTEM,
            start=True,
            priority=priority,
            concurrency_key=key,
            max_parallel=max_parallel,
        )
        self.workflows.append(workflow.pk)

    @rule(key=st.sampled_from(KEYS[1:]), max_running=st.integers(1, 2))
    def set_limit(self, key, max_running):
        """A limit is only lowered to what runs now: the claim never exceeds it (a limit
        set below what already runs is exceeded until those end, by design)."""
        running = Task.objects.filter(status=Status.RUNNING, concurrency_key=key).count()
        if running <= max_running:
            services.limit_set(key, max_running=max_running)

    @rule(key=st.sampled_from(KEYS[1:]))
    def remove_limit(self, key):
        services.limit_remove(key)

    @precondition(lambda self: self.workflows)
    @rule(pick=st.integers(0, 5), pause=st.booleans())
    def pause_or_resume(self, pick, pause):
        workflow_id = self.workflows[pick % len(self.workflows)]
        with contextlib.suppress(services.InvalidTransition):
            (services.workflow_pause if pause else services.workflow_resume)(workflow_id, actor=Actor.CLI)

    @rule()
    def a_worker_claims(self):
        """The claim takes exactly the first ready task in the claim's order, and finds
        nothing only when nothing is ready: no ready task is passed over by an idle worker."""
        expected = self.claimable()
        claimed = services.task_claim(None, None, BUDGET, worker=self.worker())
        if not expected:
            assert claimed is None
            return
        assert claimed is not None and claimed.pk == expected[0].pk, (claimed, expected[:3])
        self.given(claimed)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 5), succeed=st.booleans(), hand_on=st.booleans())
    def a_busy_worker_records(self, pick, succeed, hand_on):
        self.record(self.held.pop(pick % len(self.held)), succeed, hand_on)

    @precondition(lambda self: self.held and Task.objects.filter(status=Status.QUEUED).exists())
    @rule(pick=st.integers(0, 5))
    def a_busy_worker_succeeds_while_tasks_wait(self, pick):
        """The one-statement hand-on: the success claims the worker's next task."""
        self.record(self.held.pop(pick % len(self.held)), True, True)

    def record(self, task: Task, succeed: bool, hand_on: bool) -> None:
        inline = services.inline_claim(task.worker, BUDGET) if hand_on else None
        outcome = {"stored": "1"} if succeed else {"error": "RuntimeError: boom"}
        recorded = services.task_record(task, inline=inline, **outcome)
        if recorded.next_task is not None:
            # The outcome claimed the worker's next task (one statement): never ahead of a
            # ready task of a higher priority; another workflow's only as the first ready
            # task in the claim's order (the tasks this outcome queued in its own workflow
            # aside: a statement does not see what it writes), as a delivery's claim would.
            handed = Task.objects.get(pk=recorded.next_task.pk)
            ready = self.claimable()
            assert not [t for t in ready if t.priority > handed.priority], (handed, ready[:3])
            if handed.workflow_id != task.workflow_id:
                place = (-handed.priority, handed.turn, handed.pk)
                others = [t for t in ready if t.workflow_id != task.workflow_id]
                assert all(place < (-t.priority, t.turn, t.pk) for t in others), (handed, others[:3])
            self.given(recorded.next_task)

    @rule()
    def recovery_takes_back_every_lease(self):
        services.recover(now=timezone.now() + timedelta(days=1))
        self.held = [t for t in self.held if Task.objects.filter(pk=t.pk, status=Status.RUNNING).exists()]

    @invariant()
    def a_limits_counter_is_the_number_of_tasks_holding_its_slots(self):
        for key, limit in self.limits().items():
            holding = Task.objects.filter(status=Status.RUNNING, slot=key).count()
            assert limit.running == holding, (key, limit.running, holding)

    @invariant()
    def no_key_runs_more_than_its_limit(self):
        for key, limit in self.limits().items():
            running = Task.objects.filter(status=Status.RUNNING, concurrency_key=key).count()
            assert running <= limit.max_running, (key, running, limit.max_running)

    @invariant()
    def a_workflows_active_execute_tasks_are_at_most_its_max_parallel(self):
        """And while any wait for a slot, its slots are all taken."""
        for workflow in Workflow.objects.filter(max_parallel__isnull=False, state=State.EXECUTE):
            tasks = workflow.tasks.filter(phase=State.EXECUTE)
            active = tasks.filter(status__in=(Status.QUEUED, Status.RUNNING)).count()
            assert active <= workflow.max_parallel, (workflow.name, active, workflow.max_parallel)
            if tasks.filter(status=Status.PENDING, waiting=0).exists():
                assert active == workflow.max_parallel, (workflow.name, active, workflow.max_parallel)

    @invariant()
    def a_paused_workflow_starts_nothing(self):
        for workflow in Workflow.objects.filter(paused_at__isnull=False):
            for task in workflow.tasks.all():
                starts = [from_time(a["started_at"]) for a in task.attempts]
                assert all(start < workflow.paused_at for start in starts), (task.name, starts, workflow.paused_at)


@pytest.mark.timeout(300)
def test_flow_control_invariants_hold_under_random_operations(db):
    # A failed attempt's next one is due an hour later: no task falls due between the
    # order computed here and the claim, which would make a run depend on the clock.
    with override_settings(ORCH_RETRY_BACKOFF=3600, ORCH_RETRY_BACKOFF_MAX=3600):
        run_state_machine_as_test(
            Flow,
            settings=machine_settings(60),
        )
