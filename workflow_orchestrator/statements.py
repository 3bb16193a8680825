"""The hot path's SQL, in one place: each step of a task's life is one named statement.

    create       a workflow with its tasks, and when it starts, its first audit row and
                 its PREPARE task queued: inserted as they will be, nothing read back
    claim        a queued attempt becomes RUNNING for one worker; it comes back to the
                 worker with what a transition of its workflow needs
    input        what a handler reads of its workflow, only when it asks
    succeed      a success is recorded and the workflow's fan-in counter goes down by one
    transition   a state change: the workflow row (compared and set on its chain head,
                 the phase's results added to its own), its audit row and, entering a
                 phase, that phase's tasks queued (one of them claimed for the worker
                 that made the change); a worker whose task is the last of its phase
                 records the success in the same statement

What these cost is the orchestrator's speed (every statement is a round trip) and its
ceiling across machines (one PostgreSQL's statements per second ÷ statements per task),
so each is one statement on PostgreSQL. SQLite cannot write two tables in one statement:
there the parts of `create`, `claim`, `succeed` and `transition` run in order, in one
transaction where they write. Both databases run the same SQL text but for the JSON of a
phase's results and the claim's RETURNING, which each spells its own way.

A statement that writes both a task and its workflow locks the workflow's row first, as
the services' transactions do (`services._locked`), so that the two never deadlock.

Values go in as the database stores them: JSON as text (already serialised and checked,
see `runner.storable`), UUIDs and times through Django's own adapters.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

TASK_COLUMNS = (
    "id", "workflow_id", "phase", "position", "name", "type", "params", "status", "attempt", "attempt_offset",
    "max_attempts", "timeout", "worker", "started_at", "lease_expires_at", "after", "dependents",
)  # fmt: skip
# What a transition computed in memory needs of its workflow (its results are extended in
# the statement, never written back from a copy).
# The head's MAC comes too, so that a worker checks the head before it moves the workflow
# on, without a statement of its own (workflow_orchestrator.audit.head_problem).
WORKFLOW_COLUMNS_READ = (
    "state", "mode", "unfinished", "last_seq", "last_digest", "head_mac", "error", "retries", "failed_phase",
    "started_at", "finished_at",
)  # fmt: skip


def _columns(columns: tuple, prefix: str = "") -> str:
    return ", ".join(prefix + column for column in columns)


# --- attempts ---------------------------------------------------------------------------------

# Each attempt is kept in its task's `attempts` (a JSON list), written by the statements
# that start and end it: the history costs no statement of its own.


def attempt_started(number: str, vendor: str) -> str:
    """`attempts` with a running attempt `number` (an SQL expression) appended."""
    if vendor == "postgresql":
        entry = (
            f"jsonb_build_object('attempt', {number}, 'worker', CAST(%(worker)s AS text), 'started_at', %(now)s,"
            " 'outcome', 'running')"
        )
        return f"attempts || jsonb_build_array({entry})"
    entry = f"json_object('attempt', {number}, 'worker', %(worker)s, 'started_at', %(now)s, 'outcome', 'running')"
    return f"json_insert(attempts, '$[#]', {entry})"


def attempt_ended(outcome: str, vendor: str) -> str:
    """`attempts` with the latest attempt ended now with `outcome` (an SQL expression)."""
    if vendor == "postgresql":
        return (
            "CASE WHEN jsonb_array_length(attempts) = 0 THEN attempts ELSE jsonb_set(attempts, '{-1}',"
            f" (attempts -> -1) || jsonb_build_object('outcome', {outcome}, 'finished_at', %(now)s)) END"
        )
    return (
        "CASE WHEN json_array_length(attempts) = 0 THEN attempts ELSE"
        f" json_set(attempts, '$[#-1].outcome', {outcome}, '$[#-1].finished_at', %(now)s) END"
    )


# --- claim ------------------------------------------------------------------------------------

CLAIMED = (
    "status = 'RUNNING', started_at = %(now)s, finished_at = NULL, lease_expires_at = %(lease)s, worker = %(worker)s,"
    " attempts = {attempts}"
)
# A claim need not be durable: one lost with a crash of the database only means that the
# job runs again (recovery re-sends a task left QUEUED), and the outcome that follows is
# committed synchronously, which flushes the claim too. So on PostgreSQL the claim's
# commit does not wait for the disk: set_config(..., true) is SET LOCAL, within the one
# statement.
CLAIM = f"""
UPDATE workflow_orchestrator_task AS task SET {CLAIMED.format(attempts=attempt_started("task.attempt", "postgresql"))}
FROM workflow_orchestrator_workflow AS workflow
WHERE task.id = %(task)s AND task.status = 'QUEUED' AND task.attempt = %(attempt)s AND workflow.id = task.workflow_id
    AND set_config('synchronous_commit', 'off', true) IS NOT NULL
RETURNING {_columns(TASK_COLUMNS, "task.")}, {_columns(WORKFLOW_COLUMNS_READ, "workflow.")}"""
# SQLite: the claim, then (SQLite's RETURNING cannot name another table) the workflow.
CLAIM_TASK = f"""
UPDATE workflow_orchestrator_task SET {CLAIMED.format(attempts=attempt_started("attempt", "sqlite"))}
WHERE id = %(task)s AND status = 'QUEUED' AND attempt = %(attempt)s
RETURNING {_columns(TASK_COLUMNS)}"""
WORKFLOW = f"SELECT {_columns(WORKFLOW_COLUMNS_READ)} FROM workflow_orchestrator_workflow WHERE id = %(workflow)s"

# --- succeed ----------------------------------------------------------------------------------

# The lock returns the workflow's state as it is once locked (a cancel that committed
# while this waited included), where a subquery would see the statement's snapshot.
LOCK_WORKFLOW = "SELECT id, state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s FOR UPDATE"
# A success that comes after its workflow was cancelled is kept, and the task reads
# CANCELLED: the work it did no longer counts.
TASK_SUCCEEDED = """
UPDATE workflow_orchestrator_task
SET status = CASE WHEN {workflow_state} = 'CANCELLED' THEN 'CANCELLED' ELSE 'SUCCEEDED' END,
    result = %(result)s, error = '', finished_at = %(now)s, lease_expires_at = NULL, attempts = {attempts}
WHERE id = %(task)s AND status = 'RUNNING' AND attempt = %(attempt)s {and_locked}
RETURNING phase"""
LOCKED_STATE = "(SELECT state FROM locked)"
# SQLite runs one writer at a time: the workflow's state cannot change under the statement.
CURRENT_STATE = "(SELECT state FROM workflow_orchestrator_workflow WHERE id = %(workflow)s)"
SUCCESS_OUTCOME = "CASE WHEN {state} = 'CANCELLED' THEN 'cancelled' ELSE 'succeeded' END"
SUCCEEDED_LOCKED = TASK_SUCCEEDED.format(
    workflow_state=LOCKED_STATE,
    and_locked="AND EXISTS (SELECT 1 FROM locked)",
    attempts=attempt_ended(SUCCESS_OUTCOME.format(state=LOCKED_STATE), "postgresql"),
)
SUCCEEDED_ALONE = TASK_SUCCEEDED.format(
    workflow_state=CURRENT_STATE,
    and_locked="",
    attempts=attempt_ended(SUCCESS_OUTCOME.format(state=CURRENT_STATE), "sqlite"),
)
# A success releases the tasks waiting for it: each counts it out of `waiting`, and one
# with nothing left to wait for is queued, while the workflow is in EXECUTE (otherwise a
# retry queues it). Counting on the waiting task's own row keeps two successes released
# at once from both missing the last one: PostgreSQL re-reads a row updated meanwhile.
# The first released task that fits `inline_timeout` (`next_up`) goes straight to
# RUNNING for the worker that released it, which runs it itself: a chain of tasks costs
# no trip through the broker and no claim per link.
NAMES_IT = {
    "postgresql": "after @> jsonb_build_array(CAST(%(name)s AS text))",
    "sqlite": "EXISTS (SELECT 1 FROM json_each(workflow_orchestrator_task.after) WHERE value = %(name)s)",
}
WAITING_FOR_IT = (
    "workflow_id = %(workflow)s AND phase = 'EXECUTE' AND status = 'PENDING' AND waiting > 0 AND {names_it}"
)
NEXT_UP = """next_up AS (
    SELECT id FROM workflow_orchestrator_task WHERE {waiting_for_it} AND waiting = 1 AND {state} = 'EXECUTE'
        AND timeout <= %(inline_timeout)s ORDER BY position LIMIT 1)"""
READY = "waiting = 1 AND {state} = 'EXECUTE'"
RUNS_HERE = "id = (SELECT id FROM next_up)"
RELEASE = f"""
UPDATE workflow_orchestrator_task
SET waiting = waiting - 1,
    status = CASE WHEN {RUNS_HERE} THEN 'RUNNING' WHEN {READY} THEN 'QUEUED' ELSE status END,
    attempt = CASE WHEN {READY} THEN attempt + 1 ELSE attempt END,
    queued_at = CASE WHEN {READY} THEN %(now)s ELSE queued_at END,
    started_at = CASE WHEN {RUNS_HERE} THEN %(now)s ELSE started_at END,
    lease_expires_at = CASE WHEN {RUNS_HERE} THEN %(lease)s ELSE lease_expires_at END,
    worker = CASE WHEN {RUNS_HERE} THEN %(worker)s ELSE worker END,
    attempts = CASE WHEN {RUNS_HERE} THEN {{attempts}} ELSE attempts END
WHERE {{waiting_for_it}} {{and_done}}
RETURNING {_columns(TASK_COLUMNS)}"""


def _release(vendor: str, state: str, and_done: str = "") -> tuple[str, str]:
    """The `next_up` CTE and the UPDATE that releases what waited for a success."""
    waiting_for_it = WAITING_FOR_IT.format(names_it=NAMES_IT[vendor])
    next_up = NEXT_UP.format(waiting_for_it=waiting_for_it, state=state)
    release = RELEASE.format(
        state=state,
        attempts=attempt_started("attempt + 1", vendor),
        waiting_for_it=waiting_for_it,
        and_done=and_done,
    )
    return next_up, release


RELEASE_NEXT_UP_LOCKED, RELEASE_LOCKED = _release("postgresql", LOCKED_STATE, "AND EXISTS (SELECT 1 FROM done)")
RELEASE_NEXT_UP_ALONE, RELEASE_ALONE = _release("sqlite", CURRENT_STATE)
# Only a success in the workflow's current phase lowers the counter. The row is updated
# anyway, so that the success waits for (or holds back) a transaction that counts the
# phase's tasks, such as a retry.
FAN_IN = f"""
UPDATE workflow_orchestrator_workflow
SET unfinished = CASE WHEN state = {{phase}} AND unfinished > 0 THEN unfinished - 1 ELSE unfinished END
{{from_done}} WHERE id = %(workflow)s
RETURNING state = {{phase}}, {_columns(WORKFLOW_COLUMNS_READ)}"""

# --- reads ------------------------------------------------------------------------------------

# What a handler reads of its workflow, when it asks (TaskContext.input, .results).
INPUT = "SELECT input, results FROM workflow_orchestrator_workflow WHERE id = %(workflow)s"
# For a caller that gathers a phase's results itself (recovery, a manual workflow).
RESULTS = (
    "SELECT name, result FROM workflow_orchestrator_task"
    " WHERE workflow_id = %(workflow)s AND phase = %(phase)s ORDER BY position"
)

# --- transition -------------------------------------------------------------------------------

# The workflow row, only while it is still in the state, and at the head of its audit
# chain (its seq and the MAC the caller checked), that the change was computed from: a
# caller that holds no lock (a worker ending a phase) loses to any change made meanwhile,
# a head edited since it was checked included. The new head goes with its MAC (made in
# Python by Transition.objects.build, see workflow_orchestrator.audit).
CHANGE = """
UPDATE workflow_orchestrator_workflow
SET state = %(target)s, results = {results}, error = %(error)s, retries = %(retries)s,
    failed_phase = %(failed_phase)s, started_at = %(started_at)s, finished_at = %(finished_at)s,
    updated_at = %(now)s, last_seq = %(seq)s, last_digest = %(digest)s, head_mac = %(head_mac)s,
    unfinished = (SELECT COUNT(*) FROM workflow_orchestrator_task
                  WHERE workflow_id = %(workflow)s AND phase = %(target)s AND status <> 'SUCCEEDED')
WHERE id = %(workflow)s AND state = %(source)s AND last_seq = %(previous_seq)s AND head_mac = %(previous_mac)s
    {and_last}
RETURNING unfinished, callback_url"""
AUDIT = """
INSERT INTO workflow_orchestrator_transition
    (workflow_id, seq, source, target, event, actor_id, actor_label, reason, data, created_at, digest)
SELECT %(workflow)s, %(seq)s, %(source)s, %(target)s, %(event)s, %(actor)s, %(actor_label)s, %(reason)s, %(data)s,
    %(created_at)s, %(digest)s {from_change}
RETURNING id"""
# A phase that ends adds its results to the workflow's, under its name: `phase_results`
# (JSON text) for PREPARE and VALIDATE, whose one task's worker knows it; for EXECUTE,
# its tasks' results by name, gathered here (the success recorded in the same statement
# is not visible to it yet: `task` and `result` stand in for it).
PHASE_RESULTS = {
    "postgresql": "results || jsonb_build_object(%(source)s, CAST(%(phase_results)s AS jsonb))",
    "sqlite": "json_set(results, '$.' || %(source)s, json(%(phase_results)s))",
}
EXECUTE_RESULTS = {
    "postgresql": """results || jsonb_build_object(%(source)s, (
        SELECT COALESCE(jsonb_object_agg(name, CASE WHEN id = %(task)s THEN CAST(%(result)s AS jsonb) ELSE result END),
                        '{}')
        FROM workflow_orchestrator_task WHERE workflow_id = %(workflow)s AND phase = %(source)s))""",
    "sqlite": """json_set(results, '$.' || %(source)s, json((
        SELECT json_group_object(name, json(CASE WHEN id = %(task)s THEN %(result)s ELSE result END))
        FROM (SELECT id, name, result FROM workflow_orchestrator_task
              WHERE workflow_id = %(workflow)s AND phase = %(source)s ORDER BY position))))""",
}
# The entered phase's tasks that still have work to do get their next attempt; the first
# that fits `inline_timeout` (`pick`) may go straight to RUNNING for the worker that made
# the change, which runs it itself instead of sending it through the broker.
RUNNABLE = (
    "workflow_id = %(workflow)s AND phase = %(target)s AND status NOT IN ('SUCCEEDED', 'RUNNING') AND waiting = 0"
)
PICK = f"""pick AS (
    SELECT id FROM workflow_orchestrator_task WHERE {RUNNABLE} AND timeout <= %(inline_timeout)s
    ORDER BY position LIMIT 1)"""
QUEUED = "status = 'QUEUED', started_at = NULL, lease_expires_at = NULL, worker = ''"
QUEUED_OR_PICKED = """status = CASE WHEN id = (SELECT id FROM pick) THEN 'RUNNING' ELSE 'QUEUED' END,
    started_at = CASE WHEN id = (SELECT id FROM pick) THEN %(now)s END,
    lease_expires_at = CASE WHEN id = (SELECT id FROM pick) THEN %(lease)s END,
    worker = CASE WHEN id = (SELECT id FROM pick) THEN %(worker)s ELSE '' END,
    attempts = CASE WHEN id = (SELECT id FROM pick) THEN {attempts} ELSE attempts END"""
QUEUE = f"""
UPDATE workflow_orchestrator_task
SET {{status}}, attempt = attempt + 1, attempt_offset = {{offset}}, queued_at = %(now)s, finished_at = NULL
WHERE {RUNNABLE} {{and_changed}}
RETURNING {_columns(TASK_COLUMNS)}"""


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _fetch(sql: str, params) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _one(sql: str, params) -> tuple | None:
    rows = _fetch(sql, params)
    return rows[0] if rows else None


# --- Values in and out --------------------------------------------------------------------


def db_time(value: datetime | None):
    return None if value is None else connection.ops.adapt_datetimefield_value(value)


def db_uuid(value) -> str | uuid.UUID:
    # SQLite keeps UUIDs as 32 hex digits, PostgreSQL as its own type: Django's field knows.
    from .models import Workflow

    return Workflow._meta.pk.get_db_prep_value(value, connection)


def from_time(value) -> datetime | None:
    """SQLite hands times back in UTC without a zone (as text, or parsed by its declared
    type); PostgreSQL's driver as aware datetimes."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        return timezone.make_aware(value, UTC)
    return value


def from_json(value):
    """PostgreSQL's driver hands jsonb to Django as text, as SQLite does."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass
class WorkflowRow:
    """A workflow's row as a statement returned it: enough to compute its next transition
    in memory and write it without reading the workflow again."""

    values: dict

    @classmethod
    def read(cls, row) -> WorkflowRow:
        values = dict(zip(WORKFLOW_COLUMNS_READ, row, strict=True))
        values["started_at"], values["finished_at"] = from_time(values["started_at"]), from_time(values["finished_at"])
        return cls(values)

    @classmethod
    def of(cls, workflow) -> WorkflowRow:
        return cls({name: getattr(workflow, name) for name in WORKFLOW_COLUMNS_READ})

    def last_of_phase(self, phase: str) -> bool:
        """True when a task of `phase` is the only one of its phase not yet succeeded, and
        the workflow moves on by itself once it succeeds."""
        return self.values["state"] == phase and self.values["unfinished"] == 1 and self.values["mode"] == "auto"

    def workflow(self, workflow_id):
        """The workflow with what this row holds; its other fields are deferred (read
        from the database only if something asks for them)."""
        from django.db.models import DEFERRED

        from .models import Workflow

        known = {"id": workflow_id, **self.values}
        workflow = Workflow(*[known.get(field.attname, DEFERRED) for field in Workflow._meta.concrete_fields])
        workflow._state.adding, workflow._state.db = False, connection.alias
        return workflow


@dataclass
class ClaimedTask:
    """A task as a claim (or a transition's inline claim) returns it."""

    values: dict
    workflow_row: WorkflowRow | None = None

    def instance(self):
        """The Task, with `snapshot`: its workflow's row as the claim saw it."""
        from .models import Task

        values = dict(self.values)
        values["workflow_id"] = uuid.UUID(str(values["workflow_id"]))
        values["params"], values["after"] = from_json(values["params"]), from_json(values["after"])
        values["started_at"], values["lease_expires_at"] = (
            from_time(values["started_at"]),
            from_time(values["lease_expires_at"]),
        )
        task = Task(**values)
        task._state.adding, task._state.db = False, connection.alias
        task.snapshot = self.workflow_row
        return task


def _task(row: tuple, workflow_row: WorkflowRow | None = None) -> ClaimedTask:
    return ClaimedTask(dict(zip(TASK_COLUMNS, row, strict=True)), workflow_row)


# --- create -----------------------------------------------------------------------------------

WORKFLOW_COLUMNS = (
    "id", "name", "definition", "state", "mode", "input", "results", "error", "retries", "failed_phase",
    "idempotency_key", "idempotency_scope", "fingerprint", "callback_url", "created_by_id", "created_at", "updated_at",
    "started_at", "finished_at", "unfinished", "last_seq", "last_digest", "head_mac",
    "schedule_id",
)  # fmt: skip
INSERTED_TASK_COLUMNS = (
    "workflow_id", "phase", "position", "name", "type", "params", "status", "attempt", "attempt_offset",
    "max_attempts", "timeout", "result", "error", "queued_at", "started_at", "finished_at", "lease_expires_at",
    "worker", "after", "waiting", "dependents", "attempts",
)  # fmt: skip
TRANSITION_COLUMNS = (
    "workflow_id", "seq", "source", "target", "event", "actor_id", "actor_label", "reason", "data", "created_at",
    "digest",
)  # fmt: skip


def _insert(model, columns: tuple, instances: list, returning: str = "") -> tuple[str, list]:
    """An INSERT of `instances`, their values prepared by the model's own fields."""
    fields = [model._meta.get_field(column.removesuffix("_id")) for column in columns]
    marks = ", ".join(["%s"] * len(columns))
    values = [field.get_db_prep_save(getattr(obj, field.attname), connection) for obj in instances for field in fields]
    rows = ", ".join([f"({marks})"] * len(instances))
    return f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) VALUES {rows} {returning}", values


def create(workflow, tasks: list, row=None) -> list[ClaimedTask]:
    """`create`: insert `workflow` with its `tasks` (and `row`, its first audit row, when it
    was started in memory), as they are; returns the tasks inserted as QUEUED."""
    from .models import Task, Transition, Workflow

    parts = [_insert(Workflow, WORKFLOW_COLUMNS, [workflow])]
    if tasks:
        parts.append(_insert(Task, INSERTED_TASK_COLUMNS, tasks, f"RETURNING {_columns(TASK_COLUMNS)}"))
    if row is not None:
        parts.append(_insert(Transition, TRANSITION_COLUMNS, [row], "RETURNING id"))
    if _postgres():
        names = ["workflow", "tasks", "audit"][: len(parts)]
        ctes = ", ".join(f"{name} AS ({sql})" for name, (sql, _) in zip(names, parts, strict=True))
        if row is not None:  # the audit row's id comes last
            tail = f"SELECT {_columns(TASK_COLUMNS)}, (SELECT id FROM audit) FROM tasks" if tasks else ""
            tail = tail or "SELECT (SELECT id FROM audit)"
        else:
            tail = f"SELECT {_columns(TASK_COLUMNS)} FROM tasks" if tasks else "SELECT 1 FROM workflow WHERE FALSE"
        rows = _fetch(f"WITH {ctes} {tail}", [value for _, values in parts for value in values])
        if row is not None:
            _written_row(row, rows[0][-1])
            rows = [task[:-1] for task in rows] if tasks else []
    else:
        with transaction.atomic(savepoint=False):
            rows = [returned for sql, values in parts for returned in _fetch(sql, values)]
        if row is not None:
            _written_row(row, rows.pop()[0])
    workflow._state.adding, workflow._state.db = False, connection.alias
    return [task for task in map(_task, rows) if task.values["status"] == "QUEUED"]


def _written_row(row, pk: int) -> None:
    """The audit row `row`, built in memory, as the statement that wrote it returned it."""
    row.pk = pk
    row._state.adding, row._state.db = False, connection.alias


# --- claim ------------------------------------------------------------------------------------


def claim(task_id: int, attempt: int, *, worker: str, now: datetime, lease: datetime) -> ClaimedTask | None:
    """`claim`: QUEUED → RUNNING for this attempt and worker; None when another delivery
    of the job got there first or the attempt is no longer wanted."""
    params = {"task": task_id, "attempt": attempt, "worker": worker, "now": db_time(now), "lease": db_time(lease)}
    if _postgres():
        row = _one(CLAIM, params)
        return _task(row[: len(TASK_COLUMNS)], WorkflowRow.read(row[len(TASK_COLUMNS) :])) if row else None
    row = _one(CLAIM_TASK, params)
    if row is None:
        return None
    claimed = _task(row)
    claimed.workflow_row = WorkflowRow.read(_one(WORKFLOW, {"workflow": claimed.values["workflow_id"]}))
    return claimed


# --- succeed -------------------------------------------------------------------------------


@dataclass
class FanIn:
    """What recording a success told about the workflow."""

    in_phase: bool  # the workflow is still in the task's phase (not cancelled, failed, ...)
    workflow_row: WorkflowRow  # its unfinished count has this task counted out
    released: list[ClaimedTask] = field(default_factory=list)  # tasks it queued: they waited for it
    inline: ClaimedTask | None = None  # a released task, claimed for the worker that released it

    @property
    def phase_done(self) -> bool:
        return self.in_phase and self.workflow_row.values["unfinished"] == 0


def _fan_in(row) -> FanIn:
    return FanIn(bool(row[0]), WorkflowRow.read(row[1:]))


def succeed(
    task_id: int,
    attempt: int,
    *,
    workflow_id,
    result: str | None,
    now: datetime,
    name: str = "",
    dependents: int = 0,
    inline: Inline | None = None,
) -> FanIn | None:
    """`succeed`: the attempt's success (`result` is JSON text, or None for SQL NULL) and the
    fan-in, atomically, and for a task with `dependents` (its `name` in their `after`)
    their release, one of them claimed for `inline`; None when this attempt no longer
    holds the task (a second delivery, or taken back by recovery)."""
    params = {"task": task_id, "attempt": attempt, "workflow": db_uuid(workflow_id), "result": result}
    params.update(
        now=db_time(now),
        name=name,
        worker=inline.worker if inline else "",
        lease=db_time(inline.lease) if inline else None,
        inline_timeout=inline.max_timeout if inline else None,
    )
    if _postgres():
        fan_in = FAN_IN.format(phase="done.phase", from_done="FROM done")
        head = f"WITH locked AS ({LOCK_WORKFLOW}), done AS ({SUCCEEDED_LOCKED})"
        if not dependents:
            row = _one(f"{head} {fan_in}", params)
            return _fan_in(row) if row else None
        rows = _fetch(
            f"{head}, {RELEASE_NEXT_UP_LOCKED}, released AS ({RELEASE_LOCKED}), fan AS ({fan_in})"
            " SELECT fan.*, released.* FROM fan LEFT JOIN released ON TRUE",
            params,
        )
        if not rows:
            return None
        width = 1 + len(WORKFLOW_COLUMNS_READ)
        return _released(_fan_in(rows[0][:width]), [row[width:] for row in rows if row[width] is not None])
    with transaction.atomic(savepoint=False):
        done = _one(SUCCEEDED_ALONE, params)
        if done is None:
            return None
        fan_in = count_out(workflow_id, done[0])
        if not dependents:
            return fan_in
        return _released(fan_in, _fetch(f"WITH {RELEASE_NEXT_UP_ALONE} {RELEASE_ALONE}", params))


def _released(fan_in: FanIn, rows: list) -> FanIn:
    for task in map(_task, rows):
        if task.values["status"] == "RUNNING":
            task.workflow_row = fan_in.workflow_row
            fan_in.inline = task
        elif task.values["status"] == "QUEUED":
            fan_in.released.append(task)
    return fan_in


def count_out(workflow_id, phase: str) -> FanIn:
    """The fan-in alone, for a success already recorded."""
    params = {"workflow": db_uuid(workflow_id), "phase": phase}
    return _fan_in(_one(FAN_IN.format(phase="%(phase)s", from_done=""), params))


# --- results --------------------------------------------------------------------------------


def workflow_input(workflow_id) -> tuple[dict, dict]:
    """The workflow's input and its results so far."""
    input, results = _one(INPUT, {"workflow": db_uuid(workflow_id)})
    return from_json(input), from_json(results)


def results(workflow_id, phase: str) -> list[tuple[str, object]]:
    """(name, result) of each of the phase's tasks, in order."""
    rows = _fetch(RESULTS, {"workflow": db_uuid(workflow_id), "phase": phase})
    return [(name, from_json(result)) for name, result in rows]


# --- transition ----------------------------------------------------------------------------


class UNCHANGED:
    """transition(phase_results=UNCHANGED): the change adds no results."""


class GATHER:
    """transition(phase_results=GATHER): the change ends EXECUTE, whose results are its
    tasks', gathered in the statement."""


@dataclass
class Inline:
    """Claim one task of the phase being entered for this worker, if its timeout fits."""

    worker: str
    lease: datetime
    max_timeout: float


@dataclass
class Succeeded:
    """A task's success to record with the transition it causes: the task was the last of
    its phase (see WorkflowRow.last_of_phase)."""

    task_id: int
    attempt: int
    result: str | None


@dataclass
class Written:
    recorded: bool  # with `Succeeded`: the success was recorded (else: nothing was written)
    unfinished: int | None = None  # None: the workflow was not where the change started from
    queued: list[ClaimedTask] = field(default_factory=list)  # to send through the broker
    inline: ClaimedTask | None = None  # claimed for the worker that made the change
    callback_url: str = ""  # the workflow's, as the change returned it


def transition(
    *,
    workflow,
    row,
    previous_seq: int,
    previous_mac: str,
    now: datetime,
    queue_phase: bool,
    fresh_budget: bool = False,
    inline: Inline | None = None,
    succeeded: Succeeded | None = None,
    phase_results: str | None | type[GATHER] = UNCHANGED,
) -> Written:
    """`transition`: write the change `workflow` made in memory (from `row.source`, at
    chain head `previous_seq` signed `previous_mac`) with its audit row `row`; add the phase's results (JSON
    text, or GATHER for EXECUTE's) unless UNCHANGED; with `queue_phase`, give the
    entered phase's unfinished tasks their next attempt; with `succeeded`, record that
    success first, and make the change only if it was the phase's last."""
    vendor = connection.vendor
    if phase_results is UNCHANGED:
        results = "results"
    elif phase_results is GATHER:
        results = EXECUTE_RESULTS[vendor]
    else:
        results = PHASE_RESULTS[vendor]
    params = {
        "workflow": db_uuid(workflow.pk),
        "source": row.source,
        "target": row.target,
        "previous_seq": previous_seq,
        "previous_mac": previous_mac,
        "phase_results": None if phase_results is UNCHANGED or phase_results is GATHER else phase_results,
        "task": succeeded.task_id if succeeded else None,
        "result": succeeded.result if succeeded else None,
        "error": workflow.error,
        "retries": workflow.retries,
        "failed_phase": workflow.failed_phase,
        "started_at": db_time(workflow.started_at),
        "finished_at": db_time(workflow.finished_at),
        "now": db_time(now),
        "seq": row.seq,
        "digest": row.digest,
        "head_mac": workflow.head_mac,
        "event": row.event,
        "actor": row.actor_id,
        "actor_label": row.actor_label,
        "reason": row.reason,
        "data": json.dumps(row.data),
        "created_at": db_time(row.created_at),
        "worker": inline.worker if inline else "",
        "lease": db_time(inline.lease) if inline else None,
        "inline_timeout": inline.max_timeout if inline else None,
    }
    if succeeded:
        params["attempt"] = succeeded.attempt
    postgres = vendor == "postgresql"
    queue = QUEUE.format(
        status=QUEUED_OR_PICKED.format(attempts=attempt_started("attempt + 1", vendor)) if inline else QUEUED,
        offset="attempt" if fresh_budget else "attempt_offset",
        and_changed="AND EXISTS (SELECT 1 FROM change)" if postgres else "",
    )
    if postgres:
        return _transition_in_one(row, params, results, queue, queue_phase, inline, succeeded)
    with transaction.atomic(savepoint=False):
        if succeeded and _one(SUCCEEDED_ALONE, params) is None:
            return Written(recorded=False)
        changed = _one(CHANGE.format(results=results, and_last="AND unfinished = 1" if succeeded else ""), params)
        if changed is None:
            return Written(recorded=True)
        _written_row(row, _one(AUDIT.format(from_change=""), params)[0])
        tasks = _fetch(f"WITH {PICK} {queue}" if inline else queue, params) if queue_phase else []
    return _written(True, changed[0], tasks, changed[1])


def _transition_in_one(row, params: dict, results: str, queue: str, queue_phase: bool, inline, succeeded) -> Written:
    parts = []
    if succeeded:
        parts += [f"locked AS ({LOCK_WORKFLOW})", f"done AS ({SUCCEEDED_LOCKED})"]
    and_last = "AND unfinished = 1 AND EXISTS (SELECT 1 FROM done)" if succeeded else ""
    parts += [
        f"change AS ({CHANGE.format(results=results, and_last=and_last)})",
        f"audit AS ({AUDIT.format(from_change='FROM change')})",
    ]
    recorded = "(SELECT COUNT(*) FROM done)" if succeeded else "1"
    changed = "(SELECT unfinished FROM change), (SELECT callback_url FROM change), (SELECT id FROM audit)"
    head = f"SELECT {recorded}, {changed}"
    if queue_phase:
        parts += [PICK] if inline else []
        parts.append(f"queued AS ({queue})")
        tail = f"{head}, queued.* FROM (SELECT 1) AS one LEFT JOIN queued ON TRUE"
    else:
        tail = head
    rows = _fetch(f"WITH {', '.join(parts)} {tail}", params)
    recorded, unfinished, callback_url, row_id = rows[0][:4]
    if row_id is not None:
        _written_row(row, row_id)
    return _written(bool(recorded), unfinished, [r[4:] for r in rows if queue_phase and r[4] is not None], callback_url)


def _written(recorded: bool, unfinished: int | None, rows: list, callback_url: str | None = "") -> Written:
    written = Written(recorded, unfinished, callback_url=callback_url or "")
    for task in map(_task, rows):
        if task.values["status"] == "RUNNING":
            written.inline = task
        else:
            written.queued.append(task)
    return written
