"""The hot path on PostgreSQL: every operation is one statement of sql/postgresql.sql."""

from __future__ import annotations

from datetime import datetime

from ..models import Task, Transition, Workflow
from .base import (
    TASK_COLUMNS,
    UNCHANGED,
    WORKFLOW_COLUMNS_READ,
    Backend,
    ClaimedTask,
    FanIn,
    Inline,
    Succeeded,
    Written,
    from_time,
    is_json,
)

# The columns of a task an outcome's statement claimed: the task's, its workflow's, and what
# its handler reads (input, results).
CLAIMED_WIDTH = len(TASK_COLUMNS) + len(WORKFLOW_COLUMNS_READ) + 2


# The tasks table's statistics are taken again once this many of its rows changed since
# the last time, and at least this share of them (see PostgreSQLBackend.refresh_statistics).
ANALYZE_AFTER_ROWS, ANALYZE_AFTER_SHARE = 1000, 0.01


class PostgreSQLBackend(Backend):
    vendor = "postgresql"

    def refresh_statistics(self) -> bool:
        """A burst of queued tasks comes faster than autovacuum's ANALYZE (a minute apart
        at best): until it runs, the planner counts almost no QUEUED tasks, and plans the
        claim as a read of every ready task and a sort of them, where its order is a walk
        of a few entries of task_claim_order (3.4 ms against 0.9 at 2,000 ready tasks; see
        docs/BENCHMARKS.md). Recovery, every half lease, takes the statistics again when
        many rows changed since: ANALYZE reads a sample of the table, whatever its size."""
        changed = self._one("tasks_changed", {"rows": ANALYZE_AFTER_ROWS, "share": ANALYZE_AFTER_SHARE})
        if not (changed and changed[0]):
            return False
        self._fetch("analyze_tasks", {})
        return True

    def document_value(self, field, value):
        # jsonb_populate_record reads a jsonb column's value as the JSON it is given.
        return value if is_json(field) else super().document_value(field, value)

    def create(self, workflow: Workflow, tasks: list[Task], row: Transition | None = None) -> list[ClaimedTask]:
        params = {
            "workflow": self.workflow_json(workflow),
            "tasks": self.tasks_json(tasks),
        }
        if row is None:
            rows = self._fetch("create", params)
        else:
            params.update(self.audit_params(row), workflow_id=self.db_uuid(workflow.pk))
            rows = self._fetch("create_started", params)
            self._written_row(row, rows[0][0])
            rows = [task[1:] for task in rows if task[1] is not None]
        self._inserted(workflow)
        return [task for task in map(self._task, rows) if task.values["status"] == "QUEUED"]

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
        row = self._one("claim", self.claim_params(task_id, attempt, worker, now, lease, budget, exact))
        if row is None:
            return None
        claimed = self._claimed(row[:-2])
        claimed.window_end, claimed.window_rate = from_time(row[-2]), row[-1]
        return claimed

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
        params = self.succeed_params(task_id, attempt, workflow_id, result, now, name, inline)
        if not gated:
            return self._succeed(params, workflow_id, dependents, inline)
        # max_parallel: the statement counts the slots free in its snapshot, which must show
        # every success recorded before it holds the workflow's lock: so the lock comes first.
        with self.atomic():
            self._one("lock_workflow", params)
            return self._succeed(params, workflow_id, dependents, inline)

    def _succeed(self, params: dict, workflow_id, dependents: int, inline: Inline | None) -> FanIn | None:
        width = 1 + len(WORKFLOW_COLUMNS_READ)
        if not dependents:
            rows = self._fetch("succeed", params)
            if not rows:
                return None
            row = rows[0]
            fan_in = self._fan_in(row[:width])
            filled_at = width + 2 + CLAIMED_WIDTH
            fan_in.claimed = self._looked(inline, row[width], row[width + 1], row[width + 2 : filled_at])
            if fan_in.claimed is not None and str(fan_in.claimed.values["workflow_id"]) == str(workflow_id):
                # Its own workflow's row as the success left it, not as the statement began.
                fan_in.claimed.workflow_row = fan_in.workflow_row
            return self._released(fan_in, [row[filled_at:] for row in rows if row[filled_at] is not None])
        rows = self._fetch("succeed_and_release", params)
        if not rows:
            return None
        return self._released(self._fan_in(rows[0][:width]), [row[width:] for row in rows if row[width] is not None])

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
        phase_results=UNCHANGED,
    ) -> Written:
        # `queue_phase` needs no parameter: only a phase (the target) has tasks to queue.
        params = self.transition_params(
            workflow, row, previous_seq, previous_mac, now, fresh_budget, inline, succeeded, phase_results
        )
        rows = self._fetch("succeed_and_transition" if succeeded else "transition", params)
        recorded, unfinished, callback_url, row_id, looking, limited = rows[0][:6]
        if row_id is not None:
            self._written_row(row, row_id)
        task_end = 6 + len(TASK_COLUMNS)
        queued = [r[6:task_end] for r in rows if r[6] is not None]
        written = self._written(bool(recorded), unfinished, queued, callback_url)
        written.claimed = self._looked(inline, looking, limited, rows[0][task_end:])
        return written
