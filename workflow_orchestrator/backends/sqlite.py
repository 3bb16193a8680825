"""The hot path on SQLite: an operation runs the statements of sql/sqlite.sql in order, in
one transaction where they write (SQLite cannot write two tables in one statement, nor
return another table's columns)."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..models import Task, Transition, Workflow
from .base import (
    UNCHANGED,
    Backend,
    ClaimedTask,
    FanIn,
    Inline,
    Succeeded,
    Written,
    from_time,
)


class SQLiteBackend(Backend):
    vendor = "sqlite"

    def create(self, workflow: Workflow, tasks: list[Task], row: Transition | None = None) -> list[ClaimedTask]:
        with self.atomic():
            self._fetch("create_workflow", {"workflow": self.workflow_json(workflow)})
            rows = self._fetch("create_tasks", {"tasks": self.tasks_json(tasks)})
            if row is not None:
                params = {**self.audit_params(row), "workflow": self.db_uuid(workflow.pk)}
                self._written_row(row, self._one("insert_audit_row", params)[0])
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
        params = self.claim_params(task_id, attempt, worker, now, lease, budget, exact)
        with self.atomic():
            row = self._one("claim_attempt" if exact else "claim", params)
            if row is None:
                return None
            claimed = self._task(row)
            if claimed.values["slot"]:
                started, period, rate, full = self._one("take_slot", {**params, "slot": claimed.values["slot"]})
                if full:
                    claimed.window_end, claimed.window_rate = from_time(started) + timedelta(seconds=period), rate
        workflow = self._one("workflow_row", {"workflow": claimed.values["workflow_id"]})
        claimed.workflow_row = self._workflow_row(workflow)
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
    ) -> FanIn | None:
        params = self.succeed_params(task_id, attempt, workflow_id, result, now, name, inline)
        with self.atomic():
            done = self._one("succeed", params)
            if done is None:
                return None
            fan_in = self.count_out(workflow_id, done[0])
            if not dependents:
                return fan_in
            return self._released(fan_in, self._fetch("release_waiting", params))

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
        params = self.transition_params(
            workflow, row, previous_seq, previous_mac, now, fresh_budget, inline, succeeded, phase_results
        )
        params["last_of_phase"] = succeeded is not None
        with self.atomic():
            if succeeded and self._one("succeed", params) is None:
                return Written(recorded=False)
            changed = self._one("change_workflow", params)
            if changed is None:
                return Written(recorded=True)
            self._written_row(row, self._one("insert_audit_row", params)[0])
            tasks = self._fetch("queue_phase", params) if queue_phase else []
        return self._written(True, changed[0], tasks, changed[1])
