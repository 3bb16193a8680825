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
            claimed = self._claim(params, exact)
        if claimed is not None:
            self._read_workflow(claimed)
        return claimed

    def _read_workflow(self, claimed: ClaimedTask) -> None:
        row = self._one("workflow_row", {"workflow": claimed.values["workflow_id"]})
        claimed.workflow_row, claimed.read = self._workflow_row(row[:-2]), row[-2:]

    def _claim(self, params: dict, exact: bool) -> ClaimedTask | None:
        """`claim` (or `claim_attempt`) and the slot it takes, in the caller's transaction."""
        row = self._one("claim_attempt" if exact else "claim", params)
        if row is None:
            return None
        claimed = self._task(row)
        if claimed.values["slot"]:
            started, period, rate, full = self._one("take_slot", {**params, "slot": claimed.values["slot"]})
            if full:
                claimed.window_end, claimed.window_rate = from_time(started) + timedelta(seconds=period), rate
        return claimed

    def _look(self, inline: Inline | None, now: datetime) -> ClaimedTask | None:
        """An outcome's search for the worker's next task (`claim`, in the outcome's
        transaction), with its workflow's row as it is now."""
        if inline is None:
            return None
        params = self.claim_params(None, None, inline.worker, now, inline.lease, inline.max_timeout, False)
        claimed = self._claim(params, exact=False)
        inline.found_nothing = claimed is None
        if claimed is not None:
            self._read_workflow(claimed)
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
        # `gated` needs nothing here: one writer at a time, and count_out tells max_parallel.
        params = self.succeed_params(task_id, attempt, workflow_id, result, now, name, inline)
        with self.atomic():
            done = self._one("succeed", params)
            if done is None:
                return None
            fan_in = self.count_out(workflow_id, done[0])
            if dependents:
                self._released(fan_in, self._fetch("release_waiting", params))
            gated = fan_in.workflow_row.values["max_parallel"] is not None and done[0] == "EXECUTE"
            if gated and fan_in.in_phase and not fan_in.phase_done:
                # The slot this success frees goes to the next task waiting for one.
                self._released(fan_in, self._fetch("queue_held", params))
            if fan_in.inline is None and not fan_in.phase_done:
                # The transition that ends a phase claims the worker's next task instead.
                fan_in.claimed = self._look(inline, now)
            return fan_in

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
            written = self._written(True, changed[0], tasks, changed[1])
            # Not when it entered a phase with nothing to run: the change that ends it at once looks.
            if written.inline is None and not (queue_phase and written.unfinished == 0):
                written.claimed = self._look(inline, now)
        return written
