"""Random sequences of service calls and worker outcomes, with the engine's invariants
checked after every step (hypothesis stateful testing)."""

import contextlib
from datetime import timedelta

import pytest
from django.db import transaction
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

from workflows import audit, services
from workflows.models import PHASES, TERMINAL_STATES, Actor, State, Task, Workflow

Status = Task.Status
ORDER = {State.PREPARE: 0, State.EXECUTE: 1, State.VALIDATE: 2}


class Engine(RuleBasedStateMachine):
    """One workflow driven by random calls; every example rolls back when it ends."""

    def __init__(self):
        super().__init__()
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        self.workflow_id = None
        self.final_state = None  # a terminal state, once reached, never changes
        self.transitions_seen = 0

    def teardown(self):
        transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)

    @initialize(
        mode=st.sampled_from(["auto", "manual"]),
        tasks=st.lists(st.sampled_from(["noop", "echo"]), min_size=0, max_size=3),
        max_attempts=st.integers(min_value=1, max_value=3),
        start=st.booleans(),
    )
    def create(self, mode, tasks, max_attempts, start):
        specs = [{"type": t, "max_attempts": max_attempts} for t in tasks]
        workflow, _ = services.workflow_create(name="h", mode=mode, tasks=specs, actor=Actor.SYSTEM, start=start)
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
    def cancel(self):
        self.call(services.workflow_cancel)

    def queued(self):
        return Task.objects.filter(workflow_id=self.workflow_id, status=Status.QUEUED).order_by("pk")

    @staticmethod
    def outcome(succeed: bool) -> dict:
        if succeed:
            return {"stored": '{"ok": true}'}
        return {"error": "Traceback...\nRuntimeError: boom"}

    @precondition(lambda self: self.workflow_id is not None)
    @rule(pick=st.integers(min_value=0, max_value=10), succeed=st.booleans(), deliver_twice=st.booleans())
    def worker_runs_a_job(self, pick, succeed, deliver_twice):
        queued = list(self.queued())
        if not queued:
            return
        task = queued[pick % len(queued)]
        claimed = services.task_claim(task.pk, task.attempt, worker="hypothesis:1")
        assert claimed is not None
        assert services.task_record(claimed, **self.outcome(succeed)).recorded is True
        if deliver_twice:  # the broker delivers the same job again: nothing may change
            assert services.task_claim(task.pk, task.attempt, worker="hypothesis:2") is None
            assert services.task_record(claimed, **self.outcome(succeed)).recorded is False

    @precondition(lambda self: self.workflow_id is not None)
    @rule(succeed=st.lists(st.booleans(), min_size=2, max_size=2), reverse=st.booleans())
    def two_workers_at_once(self, succeed, reverse):
        """Both claim before either records: neither claim sees itself as the last."""
        queued = list(self.queued())[:2]
        claimed = [services.task_claim(t.pk, t.attempt, worker=f"hypothesis:{t.pk}") for t in queued]
        pairs = list(zip(claimed, succeed, strict=False))
        for task, ok in reversed(pairs) if reverse else pairs:
            services.task_record(task, **self.outcome(ok))

    @precondition(lambda self: self.workflow_id is not None)
    @rule(pick=st.integers(min_value=0, max_value=10))
    def worker_dies_mid_job(self, pick):
        queued = list(self.queued())
        if not queued:
            return
        task = queued[pick % len(queued)]
        services.task_claim(task.pk, task.attempt, worker="doomed:1")
        services.recover(now=timezone.now() + timedelta(hours=1))

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
            assert not any(t.status in (Status.PENDING, Status.QUEUED) for t in tasks)
        for task in tasks:
            assert task.attempt <= task.attempt_offset + task.max_attempts
            assert (task.status == Status.RUNNING) == (task.lease_expires_at is not None)
        progress = services.workflow_progress(workflow)
        assert 0 <= progress["done"] <= progress["total"] == len(tasks)


@pytest.mark.timeout(240)
def test_engine_invariants_hold_under_random_operations(db):
    run_state_machine_as_test(
        Engine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
