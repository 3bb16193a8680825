"""The hot path's interface to the database, and the values that go through it.

Each step of a task's life is a named SQL statement (workflow_orchestrator/sql/*.sql):

    create       a workflow with its tasks, and when it starts, its first audit row and
                 its PREPARE task queued: inserted as they will be, nothing read back
    claim        a queued attempt becomes RUNNING for one worker; it comes back to the
                 worker with what a transition of its workflow needs
    succeed      a success is recorded and the workflow's fan-in counter goes down by one;
                 the tasks waiting for it are released
    transition   a state change: the workflow row (compared and set on its chain head,
                 the phase's results added to its own), its audit row and, entering a
                 phase, that phase's tasks queued (one of them claimed for the worker
                 that made the change); a worker whose task is the last of its phase
                 records the success in the same statement
    workflow_input, results
                 what a handler, or a caller that gathers a phase's results, reads

What these cost is the orchestrator's speed (every statement is a round trip) and its
ceiling across machines (one PostgreSQL's statements per second ÷ statements per task).
On PostgreSQL (backends.postgresql) each operation is one statement. SQLite
(backends.sqlite) cannot write two tables in one statement nor return another table's
columns: there an operation runs its statements in order, in one transaction where they
write. The two files also spell JSON, the lock and the fan-in's view of the workflow's
state each their own way: they share names and behaviour (tests/test_contract.py), not text.

A backend is chosen once per connection alias (`workflow_orchestrator.backends.get_backend`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import DEFERRED, JSONField
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .. import sql
from ..models import Task, Transition, Workflow

# The columns the statements return of a task, and of its workflow (enough to compute a
# transition in memory: its results are extended in the statement, never written back
# from a copy; the head's MAC comes too, so that a worker checks the head before it moves
# the workflow on, without a statement of its own: audit.head_problem; and paused_at, so
# that a worker asks no inline claim for a paused workflow; and max_parallel, so that a
# success of its task locks the workflow's row before it counts the slots free).
TASK_COLUMNS = (
    "id", "workflow_id", "phase", "position", "name", "type", "params", "status", "attempt", "attempt_offset",
    "max_attempts", "timeout", "worker", "started_at", "lease_expires_at", "after", "dependents", "slot",
)  # fmt: skip
WORKFLOW_COLUMNS_READ = (
    "state", "mode", "unfinished", "last_seq", "last_digest", "head_mac", "error", "retries", "failed_phase",
    "started_at", "finished_at", "paused_at", "max_parallel",
)  # fmt: skip
# The times among them.
WORKFLOW_TIMES_READ = ("started_at", "finished_at", "paused_at")
# The columns `create` inserts.
WORKFLOW_COLUMNS = (
    "id", "name", "definition", "state", "mode", "input", "results", "error", "retries", "failed_phase",
    "idempotency_key", "idempotency_scope", "fingerprint", "callback_url", "created_by_id", "created_at", "updated_at",
    "started_at", "finished_at", "unfinished", "last_seq", "last_digest", "head_mac",
    "schedule_id", "priority", "concurrency_key", "max_parallel", "deadline_seconds", "deadline_at",
    "definition_version", "labels",
)  # fmt: skip
INSERTED_TASK_COLUMNS = (
    "workflow_id", "phase", "position", "name", "type", "params", "status", "attempt", "attempt_offset",
    "max_attempts", "timeout", "result", "error", "queued_at", "started_at", "finished_at", "lease_expires_at",
    "worker", "after", "waiting", "dependents", "attempts", "priority", "concurrency_key", "turn", "slot",
)  # fmt: skip
TRANSITION_COLUMNS = (
    "workflow_id", "seq", "source", "target", "event", "actor_id", "actor_label", "reason", "data", "created_at",
    "digest",
)  # fmt: skip


# --- Values out ---------------------------------------------------------------------------


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
    alias: str = DEFAULT_DB_ALIAS

    @classmethod
    def read(cls, row, alias: str = DEFAULT_DB_ALIAS) -> WorkflowRow:
        values = dict(zip(WORKFLOW_COLUMNS_READ, row, strict=True))
        values.update({name: from_time(values[name]) for name in WORKFLOW_TIMES_READ})
        return cls(values, alias)

    @classmethod
    def of(cls, workflow) -> WorkflowRow:
        values = {name: getattr(workflow, name) for name in WORKFLOW_COLUMNS_READ}
        return cls(values, workflow._state.db or DEFAULT_DB_ALIAS)

    def last_of_phase(self, phase: str) -> bool:
        """True when a task of `phase` is the only one of its phase not yet succeeded, and
        the workflow moves on by itself once it succeeds."""
        values = self.values
        return values["state"] == phase and values["unfinished"] == 1 and values["mode"] == Workflow.Mode.AUTO

    def workflow(self, workflow_id) -> Workflow:
        """The workflow with what this row holds; its other fields are deferred (read
        from the database only if something asks for them)."""
        known = {"id": workflow_id, **self.values}
        workflow = Workflow(*[known.get(field.attname, DEFERRED) for field in Workflow._meta.concrete_fields])
        workflow._state.adding, workflow._state.db = False, self.alias
        return workflow


@dataclass
class ClaimedTask:
    """A task as a claim (or a transition's inline claim) returns it."""

    values: dict
    workflow_row: WorkflowRow | None = None
    alias: str = DEFAULT_DB_ALIAS
    # When this claim's start filled its key's rate window: when the window ends, and how
    # many starts the next one allows.
    window_end: datetime | None = None
    window_rate: int | None = None
    # A PREPARE or VALIDATE task's workflow's input and results (JSON), read with the claim.
    read: tuple | None = None

    def instance(self) -> Task:
        """The Task, with `snapshot`: its workflow's row as the claim saw it, and `read`:
        its workflow's input and results, when the claim brought them."""
        values = dict(self.values)
        values["workflow_id"] = uuid.UUID(str(values["workflow_id"]))
        values["params"], values["after"] = from_json(values["params"]), from_json(values["after"])
        values["started_at"], values["lease_expires_at"] = (
            from_time(values["started_at"]),
            from_time(values["lease_expires_at"]),
        )
        task = Task(**values)
        task._state.adding, task._state.db = False, self.alias
        task.snapshot = self.workflow_row
        task.read = None
        if self.read is not None and values["phase"] != Task.Phase.EXECUTE:
            task.read = (from_json(self.read[0]), from_json(self.read[1]))
        return task


@dataclass
class FanIn:
    """What recording a success told about the workflow."""

    in_phase: bool  # the workflow is still in the task's phase (not cancelled, failed, ...)
    workflow_row: WorkflowRow  # its unfinished count has this task counted out
    released: list[ClaimedTask] = field(default_factory=list)  # tasks it queued: they waited for it
    inline: ClaimedTask | None = None  # a released task, claimed for the worker that released it
    claimed: ClaimedTask | None = None  # or the first ready task of any workflow, claimed for that worker

    @property
    def phase_done(self) -> bool:
        return self.in_phase and self.workflow_row.values["unfinished"] == 0


class UNCHANGED:
    """transition(phase_results=UNCHANGED): the change adds no results."""


class GATHER:
    """transition(phase_results=GATHER): the change ends EXECUTE, whose results are its
    tasks', gathered in the statement."""


@dataclass
class Inline:
    """Claim one task of the phase being entered (or released) for this worker, if its
    timeout is at most `max_timeout`; failing that, where the statement can, the first
    ready task of any workflow in the claim's order (see sql/*.sql).

    The statement that looked tells, in `found_nothing`, that nothing was claimable: the
    worker need not look again with a claim of its own. It stays False when the statement
    did not look, or left the task it found (a limited key's) to a claim of its own."""

    worker: str
    lease: datetime
    max_timeout: float
    found_nothing: bool = False


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
    claimed: ClaimedTask | None = None  # or another workflow's first ready task, claimed for it
    callback_url: str = ""  # the workflow's, as the change returned it


# --- The interface ------------------------------------------------------------------------


class Backend:
    """The hot path's operations on one database (a connection alias). Subclasses run
    their database's named statements (`vendor`.sql); the values in and out are the same."""

    vendor = ""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS):
        self.alias = alias
        self.sql = {name: statement.text for name, statement in sql.statements(self.vendor).items()}

    # --- operations (see the module's docstring)

    def create(self, workflow: Workflow, tasks: list[Task], row: Transition | None = None) -> list[ClaimedTask]:
        """Insert `workflow` with its `tasks` (and `row`, its first audit row, when it was
        started in memory), as they are; returns the tasks inserted as QUEUED."""
        raise NotImplementedError

    def claim(
        self,
        task_id: int | None,
        attempt: int | None,
        *,
        worker: str,
        now: datetime,
        lease: datetime,
        budget: float,
        exact: bool = True,
    ) -> ClaimedTask | None:
        """QUEUED → RUNNING for this worker: attempt `attempt` of `task_id`, or, not `exact`,
        the first ready task in the claim's order whose timeout is at most `budget` (the
        delivery's own `task_id`, if given, counts as due); None when nothing is claimable
        (another delivery got there first, the attempt is no longer wanted, the workflow
        is paused, its key is at its limits)."""
        raise NotImplementedError

    def succeed(
        self,
        task_id: int,
        attempt: int,
        *,
        workflow_id,
        result: str | None,
        now: datetime,
        name: str = "",
        dependents: int = 0,
        inline: Inline | None = None,
        gated: bool = False,
    ) -> FanIn | None:
        """The attempt's success (`result` is JSON text, or None for SQL NULL) and the
        fan-in, atomically, and for a task with `dependents` (its `name` in their `after`)
        their release, one of them claimed for `inline`; None when this attempt no longer
        holds the task (a second delivery, or taken back by recovery). `gated`: the task's
        workflow has max_parallel (or may have: it is not known), whose slots the success
        fills with the tasks waiting for one (`FanIn.released`)."""
        raise NotImplementedError

    def transition(
        self,
        *,
        workflow: Workflow,
        row: Transition,
        previous_seq: int,
        previous_mac: str,
        now: datetime,
        queue_phase: bool,
        fresh_budget: bool = False,
        inline: Inline | None = None,
        succeeded: Succeeded | None = None,
        phase_results: str | None | type[GATHER] | type[UNCHANGED] = UNCHANGED,
    ) -> Written:
        """Write the change `workflow` made in memory (from `row.source`, at chain head
        `previous_seq` signed `previous_mac`) with its audit row `row`; add the phase's
        results (JSON text, None for JSON null, or GATHER for EXECUTE's) unless UNCHANGED;
        with `queue_phase`, give the entered phase's unfinished tasks their next attempt
        (with `fresh_budget`, a fresh budget of attempts); with `succeeded`, record that
        success first, and make the change only if it was the phase's last."""
        raise NotImplementedError

    def count_out(self, workflow_id, phase: str) -> FanIn:
        """The fan-in alone, for a success already recorded."""
        params = {"workflow": self.db_uuid(workflow_id), "phase": phase}
        return self._fan_in(self._one("count_out", params))

    def refresh_statistics(self) -> bool:
        """Bring the planner's statistics of the tasks table up to date when many of its
        rows changed since they were taken; True when it did. The claim is planned on
        them (see backends.postgresql)."""
        return False

    def workflow_input(self, workflow_id) -> tuple[dict, dict]:
        """The workflow's input and its results so far."""
        input, results = self._one("workflow_input", {"workflow": self.db_uuid(workflow_id)})
        return from_json(input), from_json(results)

    def results(self, workflow_id, phase: str) -> list[tuple[str, object]]:
        """(name, result) of each of the phase's tasks, in order."""
        rows = self._fetch("task_results", {"workflow": self.db_uuid(workflow_id), "phase": phase})
        return [(name, from_json(result)) for name, result in rows]

    # --- running statements

    @property
    def connection(self):
        return connections[self.alias]  # the calling thread's connection

    def atomic(self):
        return transaction.atomic(using=self.alias, savepoint=False)

    def _fetch(self, name: str, params: dict) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql[name], params)
            return cursor.fetchall() if cursor.description else []

    def _one(self, name: str, params: dict) -> tuple | None:
        rows = self._fetch(name, params)
        return rows[0] if rows else None

    # --- values in

    def db_time(self, value: datetime | None):
        return None if value is None else self.connection.ops.adapt_datetimefield_value(value)

    def db_uuid(self, value):
        # SQLite keeps UUIDs as 32 hex digits, PostgreSQL as its own type: Django's field knows.
        return Workflow._meta.pk.get_db_prep_value(value, self.connection)

    def workflow_json(self, workflow: Workflow) -> str:
        """The workflow's row as a JSON object by column, for `create`."""
        return _to_json(self._rows(Workflow, WORKFLOW_COLUMNS, [workflow])[0])

    def tasks_json(self, tasks: list[Task]) -> str:
        """The tasks' rows as a JSON list of objects by column, for `create`."""
        return _to_json(self._rows(Task, INSERTED_TASK_COLUMNS, tasks))

    def _rows(self, model, columns: tuple, instances: list) -> list[dict]:
        fields = [model._meta.get_field(column.removesuffix("_id")) for column in columns]
        return [{f.column: self.document_value(f, getattr(obj, f.attname)) for f in fields} for obj in instances]

    def document_value(self, field, value):
        return field.get_db_prep_save(value, self.connection)

    def audit_params(self, row: Transition) -> dict:
        return {
            "seq": row.seq,
            "source": row.source,
            "target": row.target,
            "event": row.event,
            "actor": row.actor_id,
            "actor_label": row.actor_label,
            "reason": row.reason,
            "data": json.dumps(row.data),
            "created_at": self.db_time(row.created_at),
            "digest": row.digest,
        }

    def transition_params(
        self, workflow, row, previous_seq, previous_mac, now, fresh_budget, inline, succeeded, phase_results
    ) -> dict:
        """The parameters of a transition's statements."""
        return {
            **self.audit_params(row),
            "workflow": self.db_uuid(workflow.pk),
            "previous_seq": previous_seq,
            "previous_mac": previous_mac,
            "gather": phase_results is GATHER,
            # JSON text to add under the phase's name; NULL adds nothing.
            "phase_results": _phase_results_text(phase_results),
            "task": succeeded.task_id if succeeded else None,
            "attempt": succeeded.attempt if succeeded else None,
            "result": succeeded.result if succeeded else None,
            "error": workflow.error,
            "retries": workflow.retries,
            "failed_phase": workflow.failed_phase,
            "started_at": self.db_time(workflow.started_at),
            "finished_at": self.db_time(workflow.finished_at),
            "now": self.db_time(now),
            "head_mac": workflow.head_mac,
            "fresh_budget": fresh_budget,
            **self.inline_params(inline),
        }

    def claim_params(
        self, task_id, attempt, worker: str, now: datetime, lease: datetime, budget: float, exact: bool
    ) -> dict:
        """The parameters of `claim`."""
        return {
            "task": task_id,
            "attempt": attempt,
            "exact": exact,
            "worker": worker,
            "now": self.db_time(now),
            "lease": self.db_time(lease),
            "budget": budget,
        }

    def succeed_params(
        self, task_id: int, attempt: int, workflow_id, result: str | None, now: datetime, name: str, inline
    ) -> dict:
        """The parameters of a success's statements (and of the release of what waited for it)."""
        return {
            "task": task_id,
            "attempt": attempt,
            "workflow": self.db_uuid(workflow_id),
            "result": result,
            "now": self.db_time(now),
            "name": name,
            **self.inline_params(inline),
        }

    def inline_params(self, inline: Inline | None) -> dict:
        """A NULL inline_timeout makes a statement claim nothing for the worker."""
        return {
            "worker": inline.worker if inline else "",
            "lease": self.db_time(inline.lease) if inline else None,
            "inline_timeout": inline.max_timeout if inline else None,
        }

    # --- values out

    def _task(self, row: tuple, workflow_row: WorkflowRow | None = None) -> ClaimedTask:
        return ClaimedTask(dict(zip(TASK_COLUMNS, row, strict=True)), workflow_row, self.alias)

    def _workflow_row(self, row: tuple) -> WorkflowRow:
        return WorkflowRow.read(row, self.alias)

    def _fan_in(self, row: tuple) -> FanIn:
        return FanIn(bool(row[0]), self._workflow_row(row[1:]))

    def _looked(self, inline: Inline | None, looking, limited, row: tuple) -> ClaimedTask | None:
        """The task an outcome's statement claimed for the worker's `inline` (its columns,
        then its workflow's; all NULL when none), and whether it found nothing."""
        if row[0] is None:
            if inline is not None:
                inline.found_nothing = bool(looking) and not limited
            return None
        if inline is not None:
            inline.found_nothing = False
        return self._claimed(row)

    def _claimed(self, row: tuple) -> ClaimedTask:
        """A claimed task from its columns, its workflow's, and what its handler reads."""
        task_end, workflow_end = len(TASK_COLUMNS), len(TASK_COLUMNS) + len(WORKFLOW_COLUMNS_READ)
        claimed = self._task(row[:task_end], self._workflow_row(row[task_end:workflow_end]))
        claimed.read = row[workflow_end : workflow_end + 2]
        return claimed

    def _released(self, fan_in: FanIn, rows: list) -> FanIn:
        for task in map(self._task, rows):
            if task.values["status"] == "RUNNING":
                task.workflow_row = fan_in.workflow_row
                fan_in.inline = task
            elif task.values["status"] == "QUEUED":
                fan_in.released.append(task)
        return fan_in

    def _written(self, recorded: bool, unfinished: int | None, rows: list, callback_url: str | None = "") -> Written:
        written = Written(recorded, unfinished, callback_url=callback_url or "")
        for task in map(self._task, rows):
            if task.values["status"] == "RUNNING":
                written.inline = task
            elif task.values["status"] == "QUEUED":  # not one held back by max_parallel (PENDING)
                written.queued.append(task)
        return written

    def _written_row(self, row: Transition, pk: int) -> None:
        """The audit row `row`, built in memory, as the statement that wrote it returned it."""
        row.pk = pk
        row._state.adding, row._state.db = False, self.alias

    def _inserted(self, workflow: Workflow) -> None:
        workflow._state.adding, workflow._state.db = False, self.alias


def _phase_results_text(phase_results) -> str | None:
    if phase_results is UNCHANGED or phase_results is GATHER:
        return None
    return "null" if phase_results is None else phase_results


def _to_json(value) -> str:
    """JSON text of rows' values: times and UUIDs as PostgreSQL reads them."""
    return json.dumps(value, default=_json_default)


def _json_default(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def is_json(field) -> bool:
    return isinstance(field, JSONField)
