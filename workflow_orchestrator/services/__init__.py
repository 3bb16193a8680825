"""The engine's service layer: every change to a workflow and its tasks goes through here.

- `validation`: what a request asks for, checked before anything is stored.
- `create`: creating a workflow (and starting it), changing one not yet started.
- `transitions`: state changes, a user's actions (start, next, retry, cancel, pause,
  resume, delete).
- `outcomes`: a task's attempts, claimed, kept alive, handed back, their outcomes recorded.
- `recovery`: what a crash or a lost job left behind, put right.
- `limits`: concurrency keys' limits, set and removed.
- `retention`: ended workflows older than a cutoff, deleted as `workflow_delete` does.
- `holds`: a whole definition or concurrency key paused (held) and resumed (released).
- `waits`: tasks that wait (timers, signals) without a worker, signals, deadlines.
- `bulk`: one action on every workflow a query matched, a chunk per job.
- `exceptions`: what the engine refuses.

Reads live in `workflow_orchestrator.selectors`. There are two ways to write a change
(docs/ARCHITECTURE.md's "Two write paths"): a locked transaction (a user's action,
recovery, a failure: `transitions.changing` holds the workflow's row lock and checks its
audit chain), or a compare-and-set statement (a worker's success that ends a phase:
`outcomes.task_record` holds no lock across the change; its `succeed` statement locks
the row only to count the success out, and the transition's statement loses to any
change made meanwhile). Either way the
workflow row, its audit row and the entered phase's tasks are written together, and
their jobs go with the change (`queue.send_with_change`), so that a job never sees a
rolled-back row and an audit row exists exactly when its state change was committed.
What each step costs the database is pinned by tests (tests/test_hot_path.py).

The names below are the layer's interface: callers (jobs, api, admin, commands,
schedules) import them from here.
"""

from ..models import ACTIONS
from ..selectors import available_actions, is_waiting_for_next, workflow_is_cancelled, workflow_progress
from .bulk import MAX_REASON as MAX_BULK_REASON
from .bulk import SERVICES as BULK_ACTIONS
from .bulk import act_on, bulk_reason, bulk_resume_stalled, bulk_run, bulk_start, bulk_step, check_bulk
from .create import UPDATABLE_FIELDS, workflow_create, workflow_update
from .exceptions import (
    AuditBroken,
    ConcurrentChange,
    HoldNotFound,
    IdempotencyConflict,
    InvalidTransition,
    WorkflowError,
)
from .holds import Held, Released, check_hold, held_counts, hold_release, hold_set
from .limits import check_limit, limit_remove, limit_set
from .outcomes import (
    Recorded,
    backoff_delay,
    inline_claim,
    task_claim,
    task_finished,
    task_hand_back,
    task_heartbeat,
    task_record,
)
from .recovery import recover
from .retention import ENDED_STATES, PURGE_BATCH, workflows_purge, workflows_to_purge
from .transitions import (
    workflow_cancel,
    workflow_delete,
    workflow_next,
    workflow_pause,
    workflow_resume,
    workflow_retry,
    workflow_start,
)
from .validation import MAX_TASK_ATTEMPTS, MAX_TASK_TIMEOUT, MAX_TASKS, normalize_tasks, validate_request
from .waits import (
    NotAnApprover,
    deadline_check,
    signal_names,
    task_decide,
    task_wait,
    task_wake,
    waiting_for_user,
    workflow_signal,
)

__all__ = [
    "ACTIONS",
    "BULK_ACTIONS",
    "MAX_BULK_REASON",
    "MAX_TASK_ATTEMPTS",
    "MAX_TASK_TIMEOUT",
    "MAX_TASKS",
    "UPDATABLE_FIELDS",
    "ENDED_STATES",
    "PURGE_BATCH",
    "AuditBroken",
    "ConcurrentChange",
    "Held",
    "HoldNotFound",
    "IdempotencyConflict",
    "InvalidTransition",
    "NotAnApprover",
    "Recorded",
    "Released",
    "WorkflowError",
    "act_on",
    "available_actions",
    "bulk_reason",
    "bulk_resume_stalled",
    "bulk_run",
    "bulk_start",
    "bulk_step",
    "check_bulk",
    "check_hold",
    "check_limit",
    "backoff_delay",
    "deadline_check",
    "held_counts",
    "hold_release",
    "hold_set",
    "inline_claim",
    "is_waiting_for_next",
    "limit_remove",
    "limit_set",
    "normalize_tasks",
    "recover",
    "signal_names",
    "task_claim",
    "task_decide",
    "task_finished",
    "task_hand_back",
    "task_heartbeat",
    "task_record",
    "task_wait",
    "task_wake",
    "validate_request",
    "waiting_for_user",
    "workflow_cancel",
    "workflow_create",
    "workflow_delete",
    "workflow_is_cancelled",
    "workflow_next",
    "workflow_pause",
    "workflow_progress",
    "workflow_resume",
    "workflow_retry",
    "workflow_signal",
    "workflow_start",
    "workflow_update",
    "workflows_purge",
    "workflows_to_purge",
]
