"""What each of the hot path's named statements does, pinned once and run on every backend
(workflow_orchestrator/backends): rows changed, values returned, a lost race changing
nothing; and on PostgreSQL, what two connections at once do.

Both backends run in one pytest run. On the everyday SQLite run, the PostgreSQL backend
runs on the test database of the `postgresql` alias (orchestrator_site/settings.py adds it
under pytest, from ORCH_TEST_POSTGRES_URL); it is skipped, saying why, when that server does
not answer. When the default database is PostgreSQL (CI's second pass), the PostgreSQL
backend runs on it and the SQLite one is skipped: the first pass runs it.
"""

import threading
from dataclasses import dataclass
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

from workflow_orchestrator import attempts, sql
from workflow_orchestrator.audit import sign_head
from workflow_orchestrator.backends import get_backend
from workflow_orchestrator.backends.base import GATHER, UNCHANGED, Backend, Inline, Succeeded
from workflow_orchestrator.models import PHASES, Actor, State, Task, Transition, Workflow

Status = Task.Status
DEFAULT_VENDOR = connections["default"].vendor


def postgresql_alias() -> tuple[str | None, str]:
    """The alias whose database the PostgreSQL backend runs on, or None and why not."""
    if DEFAULT_VENDOR == "postgresql":
        return "default", ""
    database = settings.DATABASES.get("postgresql")
    if database is None:
        return None, "no PostgreSQL database is configured for the tests"
    where = f"{database.get('HOST') or '127.0.0.1'}:{database.get('PORT') or 5432}"
    try:
        psycopg.connect(
            host=database.get("HOST") or "127.0.0.1",
            port=database.get("PORT") or 5432,
            user=database.get("USER") or None,
            password=database.get("PASSWORD") or None,
            dbname="postgres",
            connect_timeout=3,
        ).close()
    except psycopg.OperationalError as error:
        problem = " ".join(str(error).split())
        return None, f"PostgreSQL at {where} (ORCH_TEST_POSTGRES_URL) does not answer: {problem}"
    return "postgresql", ""


def backend_params() -> list:
    if DEFAULT_VENDOR == "sqlite":
        sqlite = pytest.param("default", id="sqlite", marks=pytest.mark.django_db(transaction=True))
    else:
        reason = "the default database is PostgreSQL: the SQLite pass runs the SQLite backend"
        sqlite = pytest.param("default", id="sqlite", marks=pytest.mark.skip(reason=reason))
    alias, reason = postgresql_alias()
    if alias is None:
        postgresql = pytest.param(None, id="postgresql", marks=pytest.mark.skip(reason=reason))
    else:
        marks = pytest.mark.django_db(databases=sorted({"default", alias}), transaction=True)
        postgresql = pytest.param(alias, id="postgresql", marks=marks)
    return [sqlite, postgresql]


POSTGRESQL_ONLY = [param for param in backend_params() if param.id == "postgresql"]


@pytest.fixture
def backend(request) -> Backend:
    return get_backend(request.param)


on_every_backend = pytest.mark.parametrize("backend", backend_params(), indirect=True)
on_postgresql = pytest.mark.parametrize("backend", POSTGRESQL_ONLY, indirect=True)


# --- Workflows and tasks, as the statements leave them -------------------------------------


@dataclass
class Made:
    backend: Backend
    workflow: Workflow
    queued: list

    def task(self, name: str) -> Task:
        return Task.objects.using(self.backend.alias).get(workflow_id=self.workflow.pk, name=name)

    def row(self) -> Workflow:
        return Workflow.objects.using(self.backend.alias).get(pk=self.workflow.pk)

    def transitions(self) -> list[tuple]:
        rows = Transition.objects.using(self.backend.alias).filter(workflow_id=self.workflow.pk).order_by("seq")
        return list(rows.values_list("seq", "source", "target", "event"))

    def set_state(self, state: str) -> None:
        """The workflow's state changed by someone else (a cancel, a failure), as stored."""
        Workflow.objects.using(self.backend.alias).filter(pk=self.workflow.pk).update(state=state)

    def pause(self) -> None:
        """The workflow paused (services.workflow_pause), as stored and as held in memory."""
        self.workflow.paused_at = timezone.now()
        Workflow.objects.using(self.backend.alias).filter(pk=self.workflow.pk).update(paused_at=self.workflow.paused_at)

    def claim(self, name: str, worker: str = "w1"):
        task = self.task(name)
        now = timezone.now()
        lease = now + timedelta(seconds=60)
        return self.backend.claim(task.pk, task.attempt, worker=worker, now=now, lease=lease, budget=300)

    def succeed(self, claimed, result='{"ok": 1}', now=None, **kwargs):
        values = claimed.values
        return self.backend.succeed(
            values["id"],
            values["attempt"],
            workflow_id=self.workflow.pk,
            result=result,
            now=now or timezone.now(),
            name=values["name"],
            dependents=values["dependents"],
            **kwargs,
        )

    def change(self, event: str, *, previous_seq: int | None = None, **kwargs):
        """Fire `event` on the workflow in memory and write it, as services.transitions._commit_change does."""
        workflow, now = self.workflow, timezone.now()
        source, seq, mac = workflow.state, workflow.last_seq, workflow.head_mac
        getattr(workflow, event)(**({"error": "it broke"} if event == "fail" else {}))
        row = Transition.objects.build(workflow=workflow, source=source, event=event, actor=Actor.SYSTEM, now=now)
        written = self.backend.transition(
            workflow=workflow,
            row=row,
            previous_seq=seq if previous_seq is None else previous_seq,
            previous_mac=mac,
            now=now,
            queue_phase=workflow.state in PHASES,
            fresh_budget=event == "retry",
            **kwargs,
        )
        if written.unfinished is not None:
            workflow.unfinished = written.unfinished
        return written


def make(backend: Backend, *, state=State.EXECUTE, tasks=None, mode="auto", row=False, max_parallel=None) -> Made:
    """A workflow in `state` with `tasks` (Task fields by name; EXECUTE by default, QUEUED
    when in the workflow's phase), inserted by `create`."""
    now = timezone.now()
    workflow = Workflow(
        name="contract", state=state, mode=mode, created_at=now, updated_at=now, max_parallel=max_parallel
    )
    specs = tasks if tasks is not None else [{"name": "a"}, {"name": "b"}]
    objects = []
    for position, spec in enumerate(specs, 1):
        spec = {"phase": State.EXECUTE, "type": "noop", "timeout": 10.0, "after": [], **spec}
        ready = spec["phase"] == state and not spec["after"]
        spec.setdefault("status", Status.QUEUED if ready else Status.PENDING)
        spec.setdefault("attempt", 1 if spec["status"] != Status.PENDING else 0)
        spec.setdefault("queued_at", now if spec["status"] == Status.QUEUED else None)
        spec.setdefault("waiting", len(spec["after"]))
        spec.setdefault("dependents", sum(spec["name"] in other.get("after", []) for other in specs))
        objects.append(Task(workflow=workflow, position=position, max_attempts=3, **spec))
    workflow.unfinished = sum(t.phase == state and t.status != Status.SUCCEEDED for t in objects)
    sign_head(workflow)
    audit_row = None
    if row:  # inserted started: its first audit row with it
        audit_row = Transition.objects.build(
            workflow=workflow, source=State.INIT, event="start", actor=Actor.SYSTEM, now=now
        )
    queued = backend.create(workflow, objects, audit_row)
    return Made(backend, workflow, queued)


# --- create ---------------------------------------------------------------------------------


@on_every_backend
def test_create_inserts_the_workflow_and_its_tasks_as_they_are_and_returns_those_queued(backend):
    made = make(
        backend,
        state=State.INIT,
        tasks=[{"name": "a", "params": {"n": 1, "s": "x"}, "timeout": 2.5}, {"name": "b", "after": ["a"]}],
    )
    assert made.queued == []
    stored = made.row()
    assert (stored.state, stored.name, stored.unfinished, stored.head_mac) == (
        State.INIT,
        "contract",
        0,
        made.workflow.head_mac,
    )
    assert stored.created_at == made.workflow.created_at  # times and UUIDs survive the JSON document
    a, b = made.task("a"), made.task("b")
    assert (a.status, a.params, a.timeout, a.after, a.dependents, a.result) == (
        Status.PENDING,
        {"n": 1, "s": "x"},
        2.5,
        [],
        1,
        None,
    )
    assert (b.after, b.waiting, b.attempts) == (["a"], 1, [])
    assert made.transitions() == []


@on_every_backend
def test_create_of_a_started_workflow_writes_its_first_audit_row_and_returns_its_queued_task(backend):
    made = make(
        backend, state=State.PREPARE, tasks=[{"name": "prepare", "phase": State.PREPARE}, {"name": "a"}], row=True
    )
    [queued] = made.queued
    assert (queued.values["name"], queued.values["status"], queued.values["attempt"]) == ("prepare", "QUEUED", 1)
    assert made.transitions() == [(1, State.INIT, State.PREPARE, "start")]
    assert made.task("a").status == Status.PENDING


# --- claim ----------------------------------------------------------------------------------


@on_every_backend
def test_claim_takes_a_queued_attempt_once_and_returns_its_workflow_row(backend):
    made = make(backend)
    claimed = made.claim("a", worker="w1")
    assert (claimed.values["status"], claimed.values["worker"], claimed.values["attempt"]) == ("RUNNING", "w1", 1)
    assert claimed.workflow_row.values["state"] == State.EXECUTE
    assert claimed.workflow_row.values["unfinished"] == 2
    assert claimed.workflow_row.values["head_mac"] == made.workflow.head_mac
    task = claimed.instance()
    assert (task.pk, task.workflow_id, task._state.db) == (made.task("a").pk, made.workflow.pk, backend.alias)
    stored = made.task("a")
    assert stored.status == Status.RUNNING and stored.lease_expires_at is not None
    assert [(entry["attempt"], entry["worker"], entry["outcome"]) for entry in stored.attempts] == [
        (1, "w1", "running")
    ]
    assert made.claim("a", worker="w2") is None  # a second delivery of the same job
    assert made.task("a").worker == "w1"


@on_every_backend
def test_claim_of_a_paused_workflows_task_takes_nothing_and_leaves_it_queued(backend):
    made = make(backend)
    made.pause()
    assert made.claim("a") is None
    a = made.task("a")
    assert (a.status, a.attempt, a.worker, a.attempts) == (Status.QUEUED, 1, "", [])
    Workflow.objects.using(backend.alias).filter(pk=made.workflow.pk).update(paused_at=None)  # resumed
    claimed = made.claim("a")
    assert claimed.values["status"] == "RUNNING" and claimed.workflow_row.values["paused_at"] is None


@on_every_backend
def test_a_task_running_when_its_workflow_is_paused_succeeds_and_is_counted_out(backend):
    made = make(backend)
    claimed = made.claim("a")
    made.pause()
    fan_in = made.succeed(claimed)  # a running task of a paused workflow finishes, and is counted out
    assert fan_in.in_phase and fan_in.workflow_row.values["paused_at"] == made.workflow.paused_at
    assert made.task("a").status == Status.SUCCEEDED and made.row().unfinished == 1


@on_every_backend
def test_claim_of_an_attempt_no_longer_wanted_changes_nothing(backend):
    made = make(backend)
    task = made.task("a")
    now = timezone.now()
    assert backend.claim(task.pk, task.attempt + 1, worker="w", now=now, lease=now, budget=300) is None
    assert made.task("a").status == Status.QUEUED


# --- succeed and the fan-in -------------------------------------------------------------------


@on_every_backend
def test_succeed_records_the_result_and_counts_the_task_out_of_its_phase(backend):
    made = make(backend)
    fan_in = made.succeed(made.claim("a"), result='{"ok": 1}')
    assert fan_in.in_phase and not fan_in.phase_done
    assert fan_in.workflow_row.values["unfinished"] == 1
    a = made.task("a")
    assert (a.status, a.result, a.lease_expires_at) == (Status.SUCCEEDED, {"ok": 1}, None)
    assert a.attempts[-1]["outcome"] == "succeeded" and a.attempts[-1]["finished_at"]
    fan_in = made.succeed(made.claim("b"), result=None)
    assert fan_in.phase_done and made.row().unfinished == 0
    assert made.task("b").result is None


@on_every_backend
def test_a_second_success_of_the_same_attempt_records_nothing(backend):
    made = make(backend)
    claimed = made.claim("a")
    assert made.succeed(claimed) is not None
    assert made.succeed(claimed, result='"again"') is None
    assert made.task("a").result == {"ok": 1} and made.row().unfinished == 1


@on_every_backend
def test_a_success_after_its_workflow_was_cancelled_is_kept_and_reads_cancelled(backend):
    made = make(backend)
    claimed = made.claim("a")
    made.set_state(State.CANCELLED)
    fan_in = made.succeed(claimed)
    assert not fan_in.in_phase and fan_in.workflow_row.values["state"] == State.CANCELLED
    a = made.task("a")
    assert (a.status, a.result, a.attempts[-1]["outcome"]) == (Status.CANCELLED, {"ok": 1}, "cancelled")
    assert made.row().unfinished == 2  # not counted out: the phase is over


@on_every_backend
def test_count_out_lowers_the_counter_only_in_the_phase_and_never_below_zero(backend):
    made = make(backend, tasks=[{"name": "a"}])
    assert backend.count_out(made.workflow.pk, State.PREPARE).in_phase is False
    assert made.row().unfinished == 1
    fan_in = backend.count_out(made.workflow.pk, State.EXECUTE)
    assert fan_in.phase_done and made.row().unfinished == 0
    assert backend.count_out(made.workflow.pk, State.EXECUTE).workflow_row.values["unfinished"] == 0


# --- releasing what waited ------------------------------------------------------------------


def waiting_tasks() -> list[dict]:
    return [{"name": "a"}, {"name": "b", "after": ["a"], "timeout": 5.0}, {"name": "c", "after": ["a"], "timeout": 1.0}]


@on_every_backend
def test_a_success_queues_the_tasks_that_waited_only_for_it(backend):
    made = make(backend, tasks=[*waiting_tasks(), {"name": "d", "after": ["a", "b"]}])
    fan_in = made.succeed(made.claim("a"))
    assert sorted(task.values["name"] for task in fan_in.released) == ["b", "c"]
    assert fan_in.inline is None  # no inline claim asked for: a NULL inline_timeout picks nothing
    b, d = made.task("b"), made.task("d")
    assert (b.status, b.attempt, b.waiting, b.queued_at is not None) == (Status.QUEUED, 1, 0, True)
    assert (d.status, d.waiting) == (Status.PENDING, 1)  # still waits for b


@on_every_backend
def test_a_success_hands_the_first_released_task_that_fits_inline_timeout_to_its_worker(backend):
    made = make(backend, tasks=waiting_tasks())
    lease = timezone.now() + timedelta(seconds=60)
    fan_in = made.succeed(made.claim("a"), inline=Inline(worker="w9", lease=lease, max_timeout=2.0))
    assert fan_in.inline.values["name"] == "c"  # b comes first but its 5 s do not fit in 2
    assert fan_in.inline.workflow_row is fan_in.workflow_row
    assert [task.values["name"] for task in fan_in.released] == ["b"]
    c = made.task("c")
    assert (c.status, c.worker, c.attempt, c.attempts[-1]["outcome"]) == (Status.RUNNING, "w9", 1, "running")


@on_every_backend
@pytest.mark.parametrize("inline", [True, False], ids=["claimed inline", "queued"])
def test_a_released_task_starts_no_earlier_than_its_upstreams_succeeded(backend, inline):
    """Two workers record the two successes a task waits for. The one whose clock read
    earlier may write last (it waited for the workflow's lock): the task it releases is
    stamped queued and started at the later success, never before it."""
    made = make(backend, tasks=[{"name": "a"}, {"name": "b"}, {"name": "join", "after": ["a", "b"]}])
    claimed_a, claimed_b = made.claim("a"), made.claim("b", worker="w2")
    earlier = timezone.now()
    later = earlier + timedelta(milliseconds=40)
    made.succeed(claimed_b, now=later)
    lease = later + timedelta(seconds=60)
    fan_in = made.succeed(
        claimed_a, now=earlier, inline=Inline(worker="w9", lease=lease, max_timeout=100.0) if inline else None
    )
    join, b = made.task("join"), made.task("b")
    assert b.finished_at == later
    assert join.queued_at == later if not inline else join.started_at == later
    if inline:
        assert fan_in.inline.values["name"] == "join" and join.status == Status.RUNNING
        assert attempts.time_of(join.attempts[-1]["started_at"]) == later
    else:
        assert join.status == Status.QUEUED


@on_every_backend
def test_a_success_queues_but_hands_no_released_task_to_its_worker_while_the_workflow_is_paused(backend):
    made = make(backend, tasks=waiting_tasks())
    claimed = made.claim("a")
    made.pause()
    fan_in = made.succeed(claimed, inline=Inline(worker="w9", lease=timezone.now(), max_timeout=100.0))
    assert fan_in.inline is None
    assert sorted(task.values["name"] for task in fan_in.released) == ["b", "c"]
    assert {made.task("b").status, made.task("c").status} == {Status.QUEUED}
    assert made.claim("b") is None  # their jobs claim nothing until it is resumed


@on_every_backend
def test_tasks_are_released_only_while_their_workflow_is_in_execute(backend):
    made = make(backend, tasks=waiting_tasks())
    claimed = made.claim("a")
    made.set_state(State.FAILED)  # a retry queues them
    fan_in = made.succeed(claimed, inline=Inline(worker="w", lease=timezone.now(), max_timeout=100.0))
    assert (fan_in.released, fan_in.inline) == ([], None)
    b = made.task("b")
    assert (b.status, b.waiting, b.attempt) == (Status.PENDING, 0, 0)


# --- transition -----------------------------------------------------------------------------


@on_every_backend
def test_entering_a_phase_queues_its_tasks_and_writes_the_audit_row(backend):
    made = make(backend, state=State.PREPARE, tasks=[{"name": "p", "phase": State.PREPARE, "status": "SUCCEEDED"},
                                                     {"name": "a"}, {"name": "b", "after": ["a"]}])  # fmt: skip
    written = made.change("execute", phase_results='{"prepared": true}')
    assert (written.recorded, written.unfinished, written.inline) == (True, 2, None)
    assert [task.values["name"] for task in written.queued] == ["a"]  # b waits for a
    assert made.task("a").status == Status.QUEUED and made.task("a").attempt == 1
    stored = made.row()
    assert (stored.state, stored.unfinished, stored.results) == (State.EXECUTE, 2, {"PREPARE": {"prepared": True}})
    assert (stored.last_seq, stored.head_mac) == (1, made.workflow.head_mac)
    assert made.transitions() == [(1, State.PREPARE, State.EXECUTE, "execute")]


@on_every_backend
def test_a_transition_computed_from_a_stale_head_writes_nothing(backend):
    made = make(backend, state=State.PREPARE, tasks=[{"name": "a"}])
    written = made.change("execute", previous_seq=7)
    assert (written.recorded, written.unfinished, written.queued) == (True, None, [])
    assert made.row().state == State.PREPARE and made.transitions() == []
    assert made.task("a").status == Status.PENDING


@on_every_backend
def test_entering_a_phase_hands_its_first_task_that_fits_inline_timeout_to_the_worker(backend):
    tasks = [{"name": "p", "phase": State.PREPARE, "status": "SUCCEEDED"}, {"name": "a", "timeout": 30.0},
             {"name": "b", "timeout": 3.0}, {"name": "c", "timeout": 1.0}]  # fmt: skip
    made = make(backend, state=State.PREPARE, tasks=tasks)
    lease = timezone.now() + timedelta(seconds=60)
    written = made.change("execute", inline=Inline(worker="w7", lease=lease, max_timeout=5.0))
    assert written.inline.values["name"] == "b"
    assert sorted(task.values["name"] for task in written.queued) == ["a", "c"]
    b = made.task("b")
    assert (b.status, b.worker, b.attempts[-1]["worker"]) == (Status.RUNNING, "w7", "w7")
    assert made.task("a").worker == "" and made.task("a").lease_expires_at is None


@on_every_backend
def test_entering_a_phase_of_a_paused_workflow_queues_its_tasks_and_hands_none_to_the_worker(backend):
    tasks = [{"name": "p", "phase": State.PREPARE, "status": "SUCCEEDED"}, {"name": "a"}, {"name": "b"}]
    made = make(backend, state=State.PREPARE, tasks=tasks)
    made.pause()
    lease = timezone.now() + timedelta(seconds=60)
    written = made.change("execute", inline=Inline(worker="w7", lease=lease, max_timeout=100.0))
    assert (written.unfinished, written.inline) == (2, None)
    assert sorted(task.values["name"] for task in written.queued) == ["a", "b"]
    assert {made.task("a").status, made.task("b").status} == {Status.QUEUED}
    assert made.row().paused_at == made.workflow.paused_at  # a transition leaves the pause as it is


@on_every_backend
def test_the_last_success_of_a_paused_workflows_phase_moves_it_on_and_hands_nothing_to_the_worker(backend):
    made = make(backend, tasks=[{"name": "a"}, {"name": "v", "phase": State.VALIDATE}])
    claimed = made.claim("a")
    made.pause()
    inline = Inline(worker="w7", lease=timezone.now() + timedelta(seconds=60), max_timeout=100.0)
    written = made.change(
        "validate", succeeded=Succeeded(claimed.values["id"], 1, "1"), phase_results=GATHER, inline=inline
    )
    assert (written.recorded, written.unfinished, written.inline) == (True, 1, None)
    assert [task.values["name"] for task in written.queued] == ["v"]
    assert made.task("v").status == Status.QUEUED and made.row().state == State.VALIDATE


@on_every_backend
def test_a_retry_gives_the_failed_phase_a_fresh_budget_and_leaves_its_successes(backend):
    made = make(backend, state=State.EXECUTE, tasks=[{"name": "a", "status": "FAILED", "attempt": 3},
                                                     {"name": "b", "status": "SUCCEEDED"}])  # fmt: skip
    made.change("fail")
    written = made.change("retry")
    assert [task.values["name"] for task in written.queued] == ["a"] and written.unfinished == 1
    a = made.task("a")
    assert (a.status, a.attempt, a.attempt_offset) == (Status.QUEUED, 4, 3)
    assert made.task("b").status == Status.SUCCEEDED
    assert [event for *_, event in made.transitions()] == ["fail", "retry"]


# --- max_parallel -----------------------------------------------------------------------------


def statuses(made: Made) -> dict[str, str]:
    tasks = Task.objects.using(made.backend.alias).filter(workflow_id=made.workflow.pk, phase=State.EXECUTE)
    return dict(tasks.order_by("position").values_list("name", "status"))


@on_every_backend
def test_entering_execute_queues_only_the_first_tasks_that_fit_max_parallel(backend):
    tasks = [{"name": "p", "phase": State.PREPARE, "status": "SUCCEEDED"}, *({"name": n} for n in "abcd")]
    made = make(backend, state=State.PREPARE, tasks=tasks, max_parallel=2)
    lease = timezone.now() + timedelta(seconds=60)
    written = made.change("execute", inline=Inline(worker="w7", lease=lease, max_timeout=100.0))
    assert (written.inline.values["name"], [task.values["name"] for task in written.queued]) == ("a", ["b"])
    assert written.unfinished == 4
    assert statuses(made) == {"a": "RUNNING", "b": "QUEUED", "c": "PENDING", "d": "PENDING"}
    assert (made.task("c").attempt, made.task("c").queued_at) == (0, None)


@on_every_backend
def test_a_success_queues_the_first_task_waiting_for_a_slot(backend):
    tasks = [{"name": n, "status": "PENDING" if n in "cd" else "QUEUED"} for n in "abcd"]
    made = make(backend, tasks=tasks, max_parallel=2)
    fan_in = made.succeed(made.claim("a"), gated=True)
    assert [task.values["name"] for task in fan_in.released] == ["c"]
    assert (fan_in.workflow_row.values["max_parallel"], fan_in.workflow_row.values["unfinished"]) == (2, 3)
    c = made.task("c")
    assert (c.status, c.attempt, c.queued_at is not None) == (Status.QUEUED, 1, True)
    assert statuses(made) == {"a": "SUCCEEDED", "b": "QUEUED", "c": "QUEUED", "d": "PENDING"}


@on_every_backend
def test_a_success_that_releases_tasks_queues_the_first_by_position_of_those_and_those_waiting(backend):
    tasks = [{"name": "a"}, {"name": "b"}, {"name": "c", "after": ["a"]}, {"name": "d", "status": "PENDING"},
             {"name": "e", "after": ["a"]}]  # fmt: skip
    made = make(backend, tasks=tasks, max_parallel=2)
    fan_in = made.succeed(made.claim("a"), gated=True)
    assert [task.values["name"] for task in fan_in.released] == ["c"]
    assert statuses(made) == {"a": "SUCCEEDED", "b": "QUEUED", "c": "QUEUED", "d": "PENDING", "e": "PENDING"}
    assert made.task("e").waiting == 0  # released, and waiting for a slot
    fan_in = made.succeed(made.claim("b"), gated=True)
    assert [task.values["name"] for task in fan_in.released] == ["d"]


@on_every_backend
def test_a_retry_queues_up_to_max_parallel_beside_the_tasks_still_running(backend):
    running = {"name": "b", "status": "RUNNING", "lease_expires_at": timezone.now()}
    tasks = [
        {"name": "a", "status": "FAILED"},
        running,
        {"name": "c", "status": "PENDING"},
        {"name": "d", "status": "FAILED"},
    ]
    made = make(backend, tasks=tasks, max_parallel=2)
    made.change("fail")
    written = made.change("retry")
    assert [task.values["name"] for task in written.queued] == ["a"] and written.unfinished == 4
    assert statuses(made) == {"a": "QUEUED", "b": "RUNNING", "c": "PENDING", "d": "PENDING"}
    d = made.task("d")
    assert (d.attempt, d.attempt_offset, d.queued_at) == (1, 1, None)  # a fresh budget, from its next attempt


@on_every_backend
def test_a_transition_to_a_state_without_tasks_queues_nothing(backend):
    made = make(backend, tasks=[{"name": "a", "status": "FAILED"}, {"name": "b", "status": "PENDING", "attempt": 0}])
    written = made.change("cancel")
    assert (written.queued, written.unfinished) == ([], 0)
    assert made.task("b").status == Status.PENDING


@on_every_backend
def test_ending_execute_gathers_its_tasks_results_by_name(backend):
    made = make(backend, tasks=[{"name": "a", "status": "SUCCEEDED", "result": {"n": 1}},
                                {"name": "b", "status": "SUCCEEDED", "result": [2]}])  # fmt: skip
    made.change("validate", phase_results=GATHER)
    assert made.row().results == {"EXECUTE": {"a": {"n": 1}, "b": [2]}}


@on_every_backend
@pytest.mark.parametrize(("phase_results", "results"), [(UNCHANGED, {}), (None, {"VALIDATE": None})])
def test_a_transition_adds_the_results_it_is_given(backend, phase_results, results):
    made = make(backend, state=State.VALIDATE, tasks=[{"name": "v", "phase": State.VALIDATE, "status": "SUCCEEDED"}])
    made.change("complete", phase_results=phase_results)
    assert made.row().results == results


@on_every_backend
def test_the_last_success_of_a_phase_and_its_transition_are_written_together(backend):
    made = make(backend, tasks=[{"name": "a", "status": "SUCCEEDED", "result": 1}, {"name": "b"},
                                {"name": "v", "phase": State.VALIDATE}])  # fmt: skip
    claimed = made.claim("b")
    succeeded = Succeeded(claimed.values["id"], 1, '{"b": true}')
    written = made.change("validate", succeeded=succeeded, phase_results=GATHER)
    assert (written.recorded, written.unfinished) == (True, 1)
    assert [task.values["name"] for task in written.queued] == ["v"]
    assert made.task("b").status == Status.SUCCEEDED
    assert made.row().results == {"EXECUTE": {"a": 1, "b": {"b": True}}}  # b's own result is in it


@on_every_backend
def test_a_success_that_turns_out_not_to_be_the_last_is_recorded_without_the_transition(backend):
    made = make(backend)
    claimed = made.claim("a")
    written = made.change("validate", succeeded=Succeeded(claimed.values["id"], 1, "1"), phase_results=GATHER)
    assert (written.recorded, written.unfinished) == (True, None)  # b is unfinished: the change loses
    assert made.task("a").status == Status.SUCCEEDED
    assert made.row().state == State.EXECUTE and made.transitions() == []


@on_every_backend
def test_a_success_no_longer_held_writes_neither_it_nor_the_transition(backend):
    made = make(backend, tasks=[{"name": "a"}])
    claimed = made.claim("a")
    written = made.change("validate", succeeded=Succeeded(claimed.values["id"], 2, "1"), phase_results=GATHER)
    assert (written.recorded, written.unfinished) == (False, None)
    assert made.task("a").status == Status.RUNNING and made.row().state == State.EXECUTE


# --- reads ----------------------------------------------------------------------------------


@on_every_backend
def test_the_reads_return_the_workflows_input_and_a_phases_results_in_order(backend):
    made = make(backend, tasks=[{"name": "b", "result": {"x": 1}}, {"name": "a", "result": None}])
    Workflow.objects.using(backend.alias).filter(pk=made.workflow.pk).update(input={"k": "v"}, results={"P": 1})
    assert backend.workflow_input(made.workflow.pk) == ({"k": "v"}, {"P": 1})
    assert backend.results(made.workflow.pk, State.EXECUTE) == [("b", {"x": 1}), ("a", None)]


# --- PostgreSQL: two connections at once ------------------------------------------------------


WAITING = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"


class Holder:
    """A second connection that holds a row lock in an open transaction, so that statements
    run meanwhile by other threads wait for it; `waiting()` says how many do."""

    def __init__(self, alias: str):
        database = connections[alias].settings_dict
        self.connection = psycopg.connect(
            host=database["HOST"] or "127.0.0.1",
            port=database["PORT"] or 5432,
            user=database["USER"] or None,
            password=database["PASSWORD"] or None,
            dbname=database["NAME"],
        )

    def execute(self, sql: str, *params):
        return self.connection.execute(sql, params)

    def wait_for(self, count: int) -> None:
        """Until `count` statements wait for a lock (each must: the test's timeout ends it otherwise)."""
        with psycopg.connect(self.connection.info.dsn, autocommit=True) as watcher:
            while watcher.execute(WAITING).fetchone()[0] < count:
                threading.Event().wait(0.05)

    def close(self):
        self.connection.commit()
        self.connection.close()


def in_threads(alias: str, *calls) -> tuple[list[threading.Thread], list]:
    """Start each call in a thread of its own (its own connection): the threads, and the list
    their results (or errors) go into, in order."""
    results = [None] * len(calls)

    def run(index, call):
        try:
            results[index] = call()
        except Exception as error:  # reported by the test
            results[index] = error
        finally:
            connections[alias].close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, results


@on_postgresql
def test_a_claim_passes_over_a_task_another_claim_holds_and_of_two_at_once_one_wins(backend):
    made = make(backend)
    task = made.task("a")
    holder = Holder(backend.alias)
    holder.execute("SELECT id FROM workflow_orchestrator_task WHERE id = %s FOR UPDATE", task.pk)
    # SKIP LOCKED: no claim waits behind another's pick; this one finds nothing else.
    threads, results = in_threads(backend.alias, lambda: made.claim("a", "w1"))
    threads[0].join(30)
    assert results == [None]
    holder.close()
    barrier = threading.Barrier(2)

    def claim(worker):
        barrier.wait()
        return made.claim("a", worker)

    threads, results = in_threads(backend.alias, lambda: claim("w1"), lambda: claim("w2"))
    for thread in threads:
        thread.join(30)
    assert not [result for result in results if isinstance(result, Exception)], results
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert made.task("a").worker == winners[0].values["worker"]


@on_postgresql
def test_a_success_that_waits_for_the_workflow_lock_sees_a_cancel_committed_meanwhile(backend):
    made = make(backend)
    claimed = made.claim("a")
    holder = Holder(backend.alias)
    holder.execute("SELECT id FROM workflow_orchestrator_workflow WHERE id = %s FOR UPDATE", made.workflow.pk)
    holder.execute("UPDATE workflow_orchestrator_workflow SET state = 'CANCELLED' WHERE id = %s", made.workflow.pk)
    threads, results = in_threads(backend.alias, lambda: made.succeed(claimed))
    holder.wait_for(1)
    holder.close()  # the cancel commits while the success waits
    threads[0].join(30)
    [fan_in] = results
    assert not fan_in.in_phase
    assert made.task("a").status == Status.CANCELLED and made.row().unfinished == 2


@on_postgresql
def test_of_two_successes_at_once_exactly_one_sees_the_phase_end(backend):
    made = make(backend)
    a, b = made.claim("a"), made.claim("b")
    holder = Holder(backend.alias)
    holder.execute("SELECT id FROM workflow_orchestrator_workflow WHERE id = %s FOR UPDATE", made.workflow.pk)
    threads, results = in_threads(backend.alias, lambda: made.succeed(a), lambda: made.succeed(b))
    holder.wait_for(2)
    holder.close()
    for thread in threads:
        thread.join(30)
    assert sorted(fan_in.phase_done for fan_in in results) == [False, True]
    assert made.row().unfinished == 0


# --- the statements' files --------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite"])
def test_every_statement_carries_its_name_and_says_which_task_statuses_it_changes(vendor):
    statements = sql.statements(vendor)
    assert {"claim", "succeed", "count_out", "workflow_input", "task_results"} <= set(statements)
    for name, statement in statements.items():
        assert statement.text.startswith(f"/* {name} */ ") and statement.comment
    assert sql.task_transitions_by_statement(vendor)["claim"] == {("claim", "QUEUED", "RUNNING")}
    assert sql.task_transitions_by_statement(vendor)["count_out"] == frozenset()


def test_a_file_with_a_name_used_twice_or_a_text_without_its_name_is_refused():
    header = "-- name: claim\n-- Claims.\n-- transitions: claim QUEUED->RUNNING\n"
    with pytest.raises(sql.SQLFileError, match="named twice"):
        sql.parse(f"{header}/* claim */ SELECT 1\n\n{header}/* claim */ SELECT 2\n")
    with pytest.raises(sql.SQLFileError, match="must start with"):
        sql.parse(f"{header}SELECT 1\n")
    for unnamed in ("QUEUED->RUNNING", "claim QUEUED to RUNNING"):
        with pytest.raises(sql.SQLFileError, match="TRANSITION SOURCE->TARGET"):
            sql.parse(f"-- name: claim\n-- Claims.\n-- transitions: {unnamed}\n/* claim */ SELECT 1\n")
