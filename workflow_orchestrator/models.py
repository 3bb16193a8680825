import uuid
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_fsm import RETURN_VALUE, FSMField, FSMModelMixin, transition

from .attempts import OUTCOMES
from .audit import deletion_digest, digest, sign_deletion_head, sign_head, verify_deletions
from .cron import validate_cron, validate_timezone
from .values import MAX_LABELS

# A workflow's priority: higher first.
MIN_PRIORITY, MAX_PRIORITY = -100, 100
# A workflow's max_parallel: how many of its EXECUTE tasks may be QUEUED or RUNNING at once.
MIN_MAX_PARALLEL, MAX_MAX_PARALLEL = 1, 1000
# A workflow's deadline: at most a year from its start; what its error reads when it passes.
MAX_DEADLINE_SECONDS = 366 * 24 * 3600
DEADLINE_ERROR = "deadline exceeded"


class State(models.TextChoices):
    INIT = "INIT"
    PREPARE = "PREPARE"
    EXECUTE = "EXECUTE"
    VALIDATE = "VALIDATE"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Phase(models.TextChoices):
    """The states in which a workflow's work runs."""

    PREPARE = "PREPARE"
    EXECUTE = "EXECUTE"
    VALIDATE = "VALIDATE"


PHASES = (State.PREPARE, State.EXECUTE, State.VALIDATE)
TERMINAL_STATES = (State.COMPLETE, State.CANCELLED)
# The states a workflow's callback_url is called for (a FAILED workflow may be retried).
ENDING_STATES = (State.COMPLETE, State.FAILED, State.CANCELLED)
# What a user can do to a workflow. Each action but `pause`, `resume` and `delete` fires
# the transition that names it in its `custom["actions"]` (below): `next` is the
# transition that ends the current step, fired by hand (see Workflow.next_refusal). A
# transition no action names (`fail`) is the engine's own. `pause` and `resume` are no
# transitions: they hold and release what of the workflow may start, in whatever state it
# is (see Workflow.pause_refusal); `delete` removes a workflow that is not running.
ACTIONS = ("start", "next", "retry", "cancel", "pause", "resume", "delete")
# The states a workflow may be paused in: before it starts, and while its work runs.
PAUSABLE_STATES = (State.INIT, *PHASES)


class WorkflowQuerySet(models.QuerySet):
    def with_progress(self):
        """Annotate tasks_total and tasks_done (succeeded). Subqueries rather than a join
        with GROUP BY: a paginator's COUNT(*) can then drop them, and stays cheap on large tables."""
        tasks = Task.objects.filter(workflow=OuterRef("pk")).order_by().values("workflow")
        count = tasks.annotate(n=Count("pk")).values("n")
        done = tasks.filter(status=Task.Status.SUCCEEDED).annotate(n=Count("pk")).values("n")
        return self.annotate(tasks_total=Coalesce(Subquery(count), 0), tasks_done=Coalesce(Subquery(done), 0))


class Workflow(FSMModelMixin, models.Model):
    """A run of a workflow definition through INIT → PREPARE → EXECUTE → VALIDATE → COMPLETE.

    The state only changes through the transition methods below, which change only the
    instance, and those only through the service layer (`workflow_orchestrator.services`),
    which writes the change with its audit row in one statement (one transaction on
    SQLite): inside a transaction that holds the row's lock (a user's action, recovery, a
    failure), or as a compare-and-set on the row's state and chain head (a worker's
    success that ends a phase).
    """

    class Mode(models.TextChoices):
        AUTO = "auto"
        MANUAL = "manual"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    definition = models.CharField(max_length=100, default="default")
    state = FSMField(default=State.INIT, choices=State.choices, protected=True, max_length=16)
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.AUTO)
    input = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=dict, blank=True, help_text="Results by phase.")
    error = models.TextField(blank=True)
    retries = models.PositiveIntegerField(default=0, help_text="Manual retries so far.")
    failed_phase = models.CharField(
        max_length=16,
        blank=True,
        choices=Phase.choices,
        help_text="The phase that failed, while the workflow is FAILED.",
    )
    # NULL, not "", when unset: the unique constraints only cover keys that were given.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    # Keys are scoped to their creator: one user's key neither reveals nor blocks another's.
    # The scope is kept apart from created_by, which deleting the user clears.
    callback_url = models.URLField(
        max_length=2000,
        blank=True,
        help_text="Called with a signed POST when the workflow ends (COMPLETE, FAILED or CANCELLED).",
    )
    idempotency_scope = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="Whose idempotency key it is: the creating user's id; empty for the CLI and the system.",
    )
    fingerprint = models.CharField(
        max_length=64, blank=True, help_text="Hash of the creating request, to tell a repeat from a conflict."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="orchestrated_workflows",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was paused: its running tasks finish, nothing new of it starts until it is resumed.",
    )
    # The database's default as well: the create statements (sql/*.sql) do not name the
    # column, and insert a workflow's row unheld.
    held_by = models.CharField(
        max_length=220,
        blank=True,
        default="",
        db_default="",
        editable=False,
        help_text="The hold that paused it (e.g. definition:billing): releasing that hold resumes it; blank when "
        "no hold did.",
    )
    # Flow control (see ConcurrencyLimit and the claim in sql/*.sql).
    priority = models.SmallIntegerField(
        default=0,
        validators=[MinValueValidator(MIN_PRIORITY), MaxValueValidator(MAX_PRIORITY)],
        help_text=f"From {MIN_PRIORITY} to {MAX_PRIORITY}: among ready tasks, a higher priority's are claimed first.",
    )
    concurrency_key = models.CharField(
        max_length=200,
        blank=True,
        help_text="Workflows with the same key share its limits (ConcurrencyLimit) and take turns with other keys.",
    )
    max_parallel = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(MIN_MAX_PARALLEL), MaxValueValidator(MAX_MAX_PARALLEL)],
        help_text=f"From {MIN_MAX_PARALLEL} to {MAX_MAX_PARALLEL}: at most this many of its EXECUTE tasks are queued "
        "or running at once, the others wait (PENDING) for a slot; empty: no limit.",
    )
    definition_version = models.PositiveIntegerField(
        default=1,
        help_text="The version of its definition it started with: it runs that version's handlers to its end.",
    )
    labels = models.JSONField(
        default=dict,
        blank=True,
        help_text=f"Up to {MAX_LABELS} string keys and values to find it by (e.g. customer: acme); "
        "a list filters on them with ?label=key:value.",
    )
    # Deadlines: a workflow not COMPLETE by its deadline fails (services.deadline_passed).
    deadline_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_DEADLINE_SECONDS)],
        help_text="Seconds from its start (or retry) within which it must complete, or it fails with "
        f"'{DEADLINE_ERROR}'; empty: no deadline.",
    )
    deadline_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When its deadline passes: set by its start and each retry."
    )
    # Kept by the engine so that a job decides the fan-in and writes the next audit row
    # without reading the workflow's tasks or its log (see workflow_orchestrator.statements).
    unfinished = models.PositiveIntegerField(
        default=0, help_text="Tasks of the current phase that have not succeeded yet (the fan-in counter)."
    )
    last_seq = models.PositiveIntegerField(default=0, help_text="The seq of the latest audit row (the chain's head).")
    last_digest = models.CharField(max_length=64, blank=True, help_text="The digest of the latest audit row.")
    head_mac = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="HMAC of its id, state and chain head (workflow_orchestrator.audit).",
    )
    schedule = models.ForeignKey(
        "WorkflowSchedule",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="workflows",
        help_text="The cron schedule that started it, if one did.",
    )

    objects = WorkflowQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_scope", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="workflow_idempotency_key_unique_in_scope",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "-created_at"], name="workflow_state_created"),
            models.Index(fields=["definition", "-created_at"], name="workflow_definition_created"),
            models.Index(fields=["mode", "-created_at"], name="workflow_mode_created"),
            models.Index(fields=["created_by", "-created_at"], name="workflow_owner_created"),
            models.Index(fields=["name"], name="workflow_name"),
            # The claim passes over paused workflows' tasks: a look-up in the few paused, not a
            # read of every workflow.
            models.Index(fields=["id"], name="workflow_paused", condition=Q(paused_at__isnull=False)),
            # Releasing a hold finds the workflows it paused among the few held.
            models.Index(fields=["held_by"], name="workflow_held_by", condition=Q(held_by__gt="")),
            # The overview: the latest completions (durations), failures, and ends per minute.
            models.Index(fields=["state", "-finished_at"], name="workflow_state_finished"),
            # The list's finished filter (last 15 min, hour, day, or a range) in any state.
            models.Index(fields=["-finished_at"], name="workflow_finished", condition=Q(finished_at__isnull=False)),
            # Recovery fails the workflows whose deadline passed: a walk of those with one.
            models.Index(fields=["deadline_at"], name="workflow_deadline", condition=Q(deadline_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def is_running(self) -> bool:
        return self.state in PHASES

    @property
    def waiting_for_next(self) -> bool:
        """A manual workflow whose phase's work is done: nothing runs until someone fires `next`."""
        return self.is_running and not self.next_refusal()

    def next_refusal(self) -> str:
        """Why `next` is refused now, "" when it is not: a person ends a step by hand only in
        manual mode, in a step that has a next one, once the phase's work is done (the
        automatic mode's engine fires the same transitions without asking)."""
        if self.mode != self.Mode.MANUAL:
            return "next is only for workflows in manual mode"
        if self.state not in PHASE_EVENTS:
            return f"a workflow in state {self.state} has no next step"
        if self.is_running and self.unfinished:
            return f"the {self.state} phase's work has not finished"
        return ""

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    def pause_refusal(self) -> str:
        """Why `pause` is refused now, "" when it is not: a workflow is paused before it
        starts or while its work runs, once."""
        if self.state not in PAUSABLE_STATES:
            return f"a workflow in state {self.state} cannot be paused"
        if self.is_paused:
            return "the workflow is paused already"
        return ""

    def resume_refusal(self) -> str:
        """Why `resume` is refused now, "" when it is not: only a paused workflow is
        resumed, and not once it has ended for good (a FAILED one may be retried)."""
        if not self.is_paused:
            return "the workflow is not paused"
        if self.state in TERMINAL_STATES:
            return f"a workflow in state {self.state} cannot be resumed"
        return ""

    def offered_actions(self) -> list[str]:
        """The ACTIONS but `delete` that would be accepted now: those of the transitions
        django-fsm allows from this state, `next` only when next_refusal has nothing
        against it, `pause` and `resume` when pause_refusal and resume_refusal have
        nothing against them. (Who may act, and an audit head that does not verify, are
        the services' to add: services.available_actions.)"""
        offered = {action for change in self.get_available_state_transitions() for action in transition_actions(change)}
        if self.next_refusal():
            offered.discard("next")
        if not self.pause_refusal():
            offered.add("pause")
        if not self.resume_refusal():
            offered.add("resume")
        return [action for action in ACTIONS if action in offered]

    # Transitions: each changes this instance's own fields only, and does no I/O. Each names
    # the user actions that fire it (see ACTIONS); the order here is the diagrams' order.

    @transition(field=state, source=State.INIT, target=State.PREPARE, custom={"actions": ("start", "next")})
    def start(self):
        self.started_at = timezone.now()
        self._set_deadline(self.started_at)

    @transition(field=state, source=State.PREPARE, target=State.EXECUTE, custom={"actions": ("next",)})
    def execute(self):
        pass

    @transition(field=state, source=State.EXECUTE, target=State.VALIDATE, custom={"actions": ("next",)})
    def validate(self):
        pass

    @transition(field=state, source=State.VALIDATE, target=State.COMPLETE, custom={"actions": ("next",)})
    def complete(self):
        self.finished_at = timezone.now()

    @transition(field=state, source=PHASES, target=State.FAILED, custom={"actions": ()})
    def fail(self, error: str):
        self.failed_phase = self.state
        self.error = error
        self.finished_at = timezone.now()

    @transition(field=state, source=State.FAILED, target=RETURN_VALUE(*PHASES), custom={"actions": ("retry",)})
    def retry(self):
        """Back to the phase that failed; it no longer counts as failed (the audit log
        keeps the failure)."""
        phase, self.failed_phase = self.failed_phase, ""
        self.retries += 1
        self.error = ""
        self.finished_at = None
        self._set_deadline(timezone.now())  # a new deadline for the new try
        return phase

    @transition(
        field=state, source=[State.INIT, *PHASES, State.FAILED], target=State.CANCELLED, custom={"actions": ("cancel",)}
    )
    def cancel(self):
        self.finished_at = timezone.now()

    def _set_deadline(self, now) -> None:
        self.deadline_at = now + timedelta(seconds=self.deadline_seconds) if self.deadline_seconds else None

    @property
    def deadline_passed(self) -> bool:
        """Whether it failed because its deadline passed (its running handlers are told so,
        as a cancel tells them: ctx.cancelled())."""
        return self.state == State.FAILED and self.error == DEADLINE_ERROR


def state_transitions() -> list:
    """Every transition of Workflow.state as django-fsm holds it (`name`, `source`,
    `target`, `custom`), one per source state, in the order the model declares them."""
    declared = list(vars(Workflow))
    transitions = Workflow._meta.get_field("state").get_all_transitions(Workflow)
    return sorted(transitions, key=lambda change: declared.index(change.name))


def transition_targets(change) -> tuple[str, ...]:
    """The states a transition may lead to (retry's: the phase that failed)."""
    return tuple(getattr(change.target, "allowed_states", None) or (change.target,))


def transition_actions(change) -> tuple[str, ...]:
    """The user actions that fire a transition (none: it is the engine's own)."""
    return change.custom.get("actions", ())


# The state machine's graph (source, target), as the model declares it.
STATE_EDGES = [(change.source, target) for change in state_transitions() for target in transition_targets(change)]
# The transition that ends each step's work and moves the workflow on (the one `next` fires).
PHASE_EVENTS = {change.source: change.name for change in state_transitions() if "next" in transition_actions(change)}


# How an attempt ended, as a task's `attempts` record it.
ATTEMPT_OUTCOMES = OUTCOMES


class Task(models.Model):
    """One unit of a workflow's work, run as one django-q2 job per attempt."""

    Phase = Phase

    class Status(models.TextChoices):
        PENDING = "PENDING"
        QUEUED = "QUEUED"
        RUNNING = "RUNNING"
        WAITING = "WAITING"
        SUCCEEDED = "SUCCEEDED"
        FAILED = "FAILED"
        CANCELLED = "CANCELLED"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="tasks")
    phase = models.CharField(max_length=16, choices=Phase.choices)
    position = models.PositiveIntegerField(default=0, help_text="Order within the workflow.")
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempt = models.PositiveIntegerField(default=0, help_text="Number of the latest attempt; only grows.")
    attempt_offset = models.PositiveIntegerField(
        default=0, help_text="Attempts made before the latest workflow retry granted a fresh budget."
    )
    max_attempts = models.PositiveIntegerField(default=3)
    timeout = models.FloatField(help_text="Seconds one attempt may run.")
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When the latest attempt is due to run.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    # Dependencies within EXECUTE: the names of the tasks that must succeed first.
    after = models.JSONField(default=list, blank=True, help_text="Names of the tasks that must succeed first.")
    waiting = models.PositiveIntegerField(
        default=0, help_text="Tasks named in `after` that have not succeeded yet: the task runs at 0."
    )
    dependents = models.PositiveIntegerField(default=0, help_text="Tasks that name this one in their `after`.")
    attempts = models.JSONField(
        default=list,
        blank=True,
        help_text="Every attempt: its number, worker, start and end, outcome and error (see ATTEMPT_OUTCOMES).",
    )
    # Flow control. The workflow's priority and key, copied when the task is created so that
    # the claim reads one table in one index's order (see sql/*.sql).
    priority = models.SmallIntegerField(default=0, help_text="The workflow's priority.")
    concurrency_key = models.CharField(max_length=200, blank=True, help_text="The workflow's concurrency key.")
    turn = models.BigIntegerField(
        default=0,
        help_text="Its place among ready tasks of equal priority, set by the database when it is queued: "
        "keys (a workflow without one is its own) take turns.",
    )
    slot = models.CharField(
        max_length=200,
        blank=True,
        help_text="While RUNNING: the concurrency key whose limit this attempt counts against.",
    )
    # Long-lived waits (a timer, a signal): a WAITING task holds no worker and no job. The
    # database's defaults as well: the create statements (sql/*.sql) do not name the columns.
    waiting_for = models.CharField(
        max_length=220,
        blank=True,
        default="",
        db_default="",
        help_text="While WAITING, what wakes it: 'timer', or 'signal:<name>' (and its deadline, if it has one).",
    )
    wake_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its timer or deadline wakes it; kept once it has woken, so that its handler knows the time.",
    )

    # Not a column: the workflow's row as this task's claim saw it (workflow_orchestrator.statements).
    snapshot = None

    class Meta:
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "name"], name="task_name_unique_in_workflow"),
        ]
        indexes = [
            models.Index(fields=["workflow", "phase", "status"], name="task_workflow_phase_status"),
            models.Index(fields=["status", "lease_expires_at"], name="task_status_lease"),
            models.Index(fields=["status", "queued_at"], name="task_status_queued"),
            # The overview's tasks per minute. Partial: a claim (finished_at NULL) adds no entry.
            models.Index(fields=["finished_at"], name="task_finished", condition=Q(finished_at__isnull=False)),
            # The claim's order, and the turns (fairness) given when a task is queued: each
            # a walk of a few entries of an index of the ready tasks alone.
            models.Index(fields=["-priority", "turn", "id"], name="task_claim_order", condition=Q(status="QUEUED")),
            models.Index(fields=["concurrency_key", "turn"], name="task_key_turn", condition=Q(status="QUEUED")),
            models.Index(fields=["workflow", "turn"], name="task_workflow_turn", condition=Q(status="QUEUED")),
            models.Index(fields=["turn"], name="task_turn", condition=Q(status="QUEUED")),
            # Recovery wakes the waiting tasks that are due: a walk of the few waiting.
            models.Index(fields=["wake_at"], name="task_waiting_due", condition=Q(status="WAITING")),
        ]

    def __str__(self) -> str:
        return f"{self.name} [{self.type}] {self.status}"

    @property
    def attempt_budget(self) -> int:
        """The last attempt number the current budget allows."""
        return self.attempt_offset + self.max_attempts

    @property
    def attempts_left(self) -> int:
        return self.attempt_budget - self.attempt

    @property
    def is_done(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED)


class TaskTransition(NamedTuple):
    """A change of a task's status the engine makes: from any of `sources` (None: the task
    is being inserted) to `target`."""

    name: str
    sources: tuple[str | None, ...]
    target: str
    when: str


_S = Task.Status
# Every change of a task's status, by name. Task.status has no state machine of its own:
# the hot path writes tasks with one SQL statement per step (workflow_orchestrator.statements),
# and the ORM paths of the services say which of these they make (task_status_after).
TASK_TRANSITIONS = {
    change.name: change
    for change in (
        TaskTransition("create", (None,), _S.PENDING, "inserted with its workflow"),
        TaskTransition("create_queued", (None,), _S.QUEUED, "inserted in the first phase, its workflow started"),
        TaskTransition(
            "queue",
            (_S.PENDING,),
            _S.QUEUED,
            "its phase begins, the last task it waited for succeeds, or a slot of its workflow's max_parallel frees",
        ),
        TaskTransition(
            "claim_inline",
            (_S.PENDING, _S.QUEUED, _S.FAILED, _S.CANCELLED),
            _S.RUNNING,
            "as for queue (or requeue), but the worker whose change entered the phase, or whose success released "
            "it, runs it",
        ),
        TaskTransition("claim", (_S.QUEUED,), _S.RUNNING, "a worker takes the attempt its job names"),
        TaskTransition(
            "wait",
            (_S.RUNNING,),
            _S.WAITING,
            "its handler waits (a timer, a signal): it holds no worker and no job until it wakes",
        ),
        TaskTransition(
            "wait_over",
            (_S.RUNNING,),
            _S.QUEUED,
            "its handler waits for what is there already (the time has come, the signal arrived): queued again at "
            "once (not counted)",
        ),
        TaskTransition(
            "wake",
            (_S.WAITING,),
            _S.QUEUED,
            "its timer or deadline is due, or its signal arrives: its handler runs again (not counted)",
        ),
        TaskTransition("succeed", (_S.RUNNING,), _S.SUCCEEDED, "its attempt succeeds"),
        TaskTransition(
            "retry_later",
            (_S.RUNNING,),
            _S.QUEUED,
            "its attempt fails, or recovery takes it back (lease expired), with attempts left: after a backoff",
        ),
        TaskTransition("hand_back", (_S.RUNNING,), _S.QUEUED, "a stopping worker gives its attempt back (not counted)"),
        TaskTransition("fail", (_S.RUNNING,), _S.FAILED, "its last attempt fails, or one fails after its phase failed"),
        TaskTransition(
            "end_cancelled",
            (_S.RUNNING,),
            _S.CANCELLED,
            "its attempt ends (succeeds, fails, is handed back) after its workflow was cancelled, or is handed back "
            "after the workflow left its phase: the work no longer counts",
        ),
        TaskTransition(
            "hold",
            (_S.QUEUED, _S.WAITING),
            _S.PENDING,
            "its phase fails before it ran, or while it waits: it waits for a retry",
        ),
        TaskTransition(
            "hold_back",
            (_S.QUEUED, _S.FAILED, _S.CANCELLED),
            _S.PENDING,
            "its workflow is retried with more of the phase's tasks to run than its max_parallel: it waits for a slot",
        ),
        TaskTransition(
            "cancel",
            (_S.PENDING, _S.QUEUED, _S.WAITING),
            _S.CANCELLED,
            "its workflow is cancelled before it ran, or while it waits",
        ),
        TaskTransition(
            "requeue",
            (_S.PENDING, _S.FAILED, _S.CANCELLED),
            _S.QUEUED,
            "its workflow is retried: the failed phase's unfinished tasks get a fresh budget",
        ),
    )
}
# The status changes the table allows, (source, target).
TASK_STATUS_CHANGES = {(source, change.target) for change in TASK_TRANSITIONS.values() for source in change.sources}


def task_status_after(name: str, *sources: str) -> str:
    """The status task transition `name` leads to, from tasks now in `sources`; ValueError
    when the transition does not start from one of them (a change the table lacks)."""
    change = TASK_TRANSITIONS[name]
    if not set(sources) <= set(change.sources):
        raise ValueError(f"task transition {name} does not start from {', '.join(sorted(map(str, sources)))}")
    return change.target


class Actor:
    """Who caused a transition: a user (API or admin), or the system, a worker or the CLI."""

    def __init__(self, label: str, user=None):
        self.label = label
        self.user = user

    def __repr__(self) -> str:
        return f"Actor({self.label!r})"

    @classmethod
    def api(cls, user) -> "Actor":
        return cls(f"api:{user.get_username()}", user)

    @classmethod
    def admin(cls, user) -> "Actor":
        return cls(f"admin:{user.get_username()}", user)


Actor.SYSTEM = Actor("system")
Actor.WORKER = Actor("worker")
Actor.CLI = Actor("cli")


class TransitionManager(models.Manager):
    def build(
        self, *, workflow: Workflow, source: str, event: str, actor: Actor, reason: str = "", data=None, now=None
    ) -> "Transition":
        """The audit row of the change `workflow` has just made in memory (from `source` to
        its state), chained to the workflow's head, which moves on to the new row.

        The only way rows are made. The engine writes the row in the statement that saves
        the change (`workflow_orchestrator.statements.transition`), so that a row exists exactly when
        its change was committed, and seq numbers are gap-free and unique.
        """
        row = self.model(
            workflow=workflow,
            seq=workflow.last_seq + 1,
            source=source,
            target=workflow.state,
            event=event,
            actor=actor.user,
            actor_label=actor.label,
            reason=reason,
            data=data or {},
            created_at=now or timezone.now(),
        )
        row.digest = digest(row, workflow.last_digest)
        workflow.last_seq, workflow.last_digest = row.seq, row.digest
        sign_head(workflow)
        return row


class Transition(models.Model):
    """The append-only audit log: one row per committed state change."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="transitions")
    seq = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=State.choices)
    target = models.CharField(max_length=16, choices=State.choices)
    event = models.CharField(max_length=32)
    # Not a constraint: the row keeps the id of a user deleted since, which its digest
    # covers (clearing it would break the chain of every workflow that user acted on).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False
    )
    actor_label = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    digest = models.CharField(
        max_length=64,
        editable=False,
        help_text="HMAC of this row and the previous row's digest (see workflow_orchestrator.audit).",
    )

    objects = TransitionManager()

    class Meta:
        ordering = ["workflow", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "seq"], name="transition_seq_unique_in_workflow"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.event}: {self.source} → {self.target}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("Transitions are append-only and cannot be changed.")
        super().save(*args, **kwargs)


class WorkflowSignal(models.Model):
    """A named message sent to a running workflow (`POST /workflows/{id}/signal`): delivered
    to the first of its `wait_signal` tasks waiting for that name, or kept until one waits.
    Its audit row is in the workflow's chain; this row is what a handler reads."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="signals")
    name = models.CharField(max_length=200)
    payload = models.JSONField(default=dict, blank=True)
    sent_by = models.CharField(max_length=200, help_text="Who sent it, as the audit log names actors.")
    idempotency_key = models.CharField(
        max_length=200, blank=True, help_text="The Idempotency-Key it was sent with: a repeat is the same signal."
    )
    seq = models.PositiveIntegerField(help_text="The seq of its row in the workflow's audit log.")
    created_at = models.DateTimeField(default=timezone.now)
    task = models.ForeignKey(
        Task,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="signals",
        help_text="The task it was delivered to; empty while it waits for one.",
    )
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["workflow", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "idempotency_key"],
                name="signal_idempotency_key_unique_in_workflow",
                condition=~Q(idempotency_key=""),
            ),
        ]
        indexes = [models.Index(fields=["workflow", "name", "task"], name="signal_workflow_name")]

    def __str__(self) -> str:
        return f"signal {self.name} to {self.workflow_id}"


class Decision(models.Model):
    """A decision on an `approval` task: someone allowed to decide approved or rejected it
    (with the task's form filled in), or its deadline did (by `system`). Its audit row is in
    the workflow's chain (event `decide`); this row is what the task's handler counts."""

    class Choice(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="decisions")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="decisions")
    round = models.PositiveIntegerField(
        help_text="The workflow's retries when it was made: a retry asks again, and counts only the new round's."
    )
    decision = models.CharField(max_length=8, choices=Choice.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="decisions"
    )
    actor_label = models.CharField(max_length=200, help_text="Who decided, as the audit log names actors.")
    data = models.JSONField(default=dict, blank=True, help_text="The task's form, as filled in.")
    comment = models.TextField(blank=True)
    seq = models.PositiveIntegerField(help_text="The seq of its row in the workflow's audit log.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["workflow", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "round", "user"],
                name="decision_once_per_user_and_round",
                condition=Q(user__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.decision} by {self.actor_label}"


class WorkflowDeletionManager(models.Manager):
    def verify(self, since: tuple[int, str] | None = None):
        """The first broken link of the deletion log or of its head (audit.BrokenDeletion),
        or None when both are whole; `since`, a checkpoint's (seq, digest) of the head."""
        head = DeletionLogHead.objects.filter(pk=DeletionLogHead.ONLY).first()
        return verify_deletions(self.order_by("seq").iterator(), head, since)

    def record(self, *, workflow: Workflow, actor: Actor, now=None) -> "WorkflowDeletion":
        """Append the deletion of `workflow` (its last values, as read under its lock) to
        the deletion log, chained to the log's head, which moves on to the new row.

        The only way rows are made; call it in the transaction that deletes the workflow,
        after the delete: the log's head stays locked until that transaction ends, so
        deletions are recorded one after another. A transaction that deletes several
        workflows (a retention batch) locks them all before it records the first: holding
        the head while locking another workflow could deadlock with a deletion that holds
        that one.
        """
        head = DeletionLogHead.objects.locked()
        row = self.model(
            seq=head.last_seq + 1,
            workflow_id=workflow.pk,
            name=workflow.name,
            state=workflow.state,
            last_seq=workflow.last_seq,
            last_digest=workflow.last_digest,
            actor_id=actor.user.pk if actor.user else None,
            actor_label=actor.label,
            deleted_at=now or timezone.now(),
        )
        row.digest = deletion_digest(row, head.last_digest)
        row.save()
        head.last_seq, head.last_digest = row.seq, row.digest
        sign_deletion_head(head)
        head.save()
        return row


class WorkflowDeletion(models.Model):
    """The deletion log: one row per deleted workflow, append-only, one HMAC chain across
    all workflows (see workflow_orchestrator.audit)."""

    seq = models.PositiveIntegerField(unique=True)
    workflow_id = models.UUIDField(db_index=True, help_text="The deleted workflow's id.")
    name = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=State.choices, help_text="Its state when it was deleted.")
    last_seq = models.PositiveIntegerField(help_text="The seq of its latest audit row.")
    last_digest = models.CharField(max_length=64, blank=True, help_text="The digest of its latest audit row.")
    # Not a constraint: the row keeps the id of a user deleted since (the digest covers it).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_label = models.CharField(max_length=200)
    deleted_at = models.DateTimeField(default=timezone.now, db_index=True)
    digest = models.CharField(
        max_length=64,
        editable=False,
        help_text="HMAC of this row and the previous row's digest (see workflow_orchestrator.audit).",
    )

    objects = WorkflowDeletionManager()

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.name} ({self.state}) deleted by {self.actor_label}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("Workflow deletions are append-only and cannot be changed.")
        super().save(*args, **kwargs)


class HeadManager(models.Manager):
    """For a model of one row (pk ONLY), such as a log's head."""

    def locked(self):
        """The row, locked until the transaction ends (made on first use)."""
        head = self.select_for_update().filter(pk=self.model.ONLY).first()
        if head is None:
            # Two first users at once: the second waits for the first's row here.
            self.bulk_create([self.model(pk=self.model.ONLY)], ignore_conflicts=True)
            head = self.select_for_update().get(pk=self.model.ONLY)
        return head


class DeletionLogHead(models.Model):
    """The deletion log's head (one row): the last seq and digest, signed, so that a
    removed last row is noticed (see workflow_orchestrator.audit)."""

    ONLY = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ONLY)
    last_seq = models.PositiveIntegerField(default=0)
    last_digest = models.CharField(max_length=64, blank=True)
    head_mac = models.CharField(max_length=64, blank=True)

    objects = HeadManager()

    def __str__(self) -> str:
        return f"deletion log head at #{self.last_seq}"


class BrokenChainManager(models.Manager):
    def report(self, *, workflow_id, problem: str, refused: str, now=None) -> None:
        """Keep (or refresh) the finding that `workflow_id`'s chain does not verify and that
        the engine refused `refused` on it. Call it outside the transaction that was refused:
        the finding must outlive its rollback."""
        defaults = {"problem": problem, "refused": refused, "found_at": now or timezone.now()}
        # A workflow deleted meanwhile leaves nothing to report.
        if Workflow.objects.filter(pk=workflow_id).exists():
            self.update_or_create(workflow_id=workflow_id, defaults=defaults)


class BrokenChain(models.Model):
    """A workflow whose audit chain the engine found broken, and which it left as it is: no
    transition is written to it, and recovery touches none of its tasks, while its chain
    does not verify. Recovery looks at each again on every run and removes the finding
    once the chain verifies (its rows restored, or a rotated SECRET_KEY listed again in
    SECRET_KEY_FALLBACKS)."""

    workflow = models.OneToOneField(Workflow, on_delete=models.CASCADE, primary_key=True, related_name="broken_chain")
    problem = models.TextField(help_text="The first broken link, as `workflow verify` names it.")
    refused = models.CharField(max_length=32, help_text="What the engine was about to do: an event, or recover.")
    found_at = models.DateTimeField(default=timezone.now, help_text="When it was last found broken.")

    objects = BrokenChainManager()

    class Meta:
        ordering = ["-found_at"]

    def __str__(self) -> str:
        return f"{self.workflow_id}: {self.problem}"


class ConcurrencyLimit(models.Model):
    """The limits of the workflows that share a concurrency key: at most `max_running` of
    their tasks RUNNING at once, and at most `rate` starts per `per_seconds`, across every
    worker and machine.

    The claim checks and takes a slot in the same statement that makes a task RUNNING
    (`running` up by one, only while below the limit: a compare-and-set on this row); the
    database gives it back whenever a task that holds one leaves RUNNING, whichever way
    (a trigger: outcome, failure, hand-back, recovery of an expired lease, deletion)."""

    key = models.CharField(max_length=200, unique=True)
    max_running = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many tasks of the key's workflows RUNNING at once."
    )
    rate = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many task starts per `per_seconds` (a fixed window)."
    )
    per_seconds = models.FloatField(null=True, blank=True, help_text="The rate's window, in seconds.")
    running = models.PositiveIntegerField(
        default=0, editable=False, help_text="Tasks RUNNING under this limit now (kept by the database)."
    )
    window_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    window_starts = models.PositiveIntegerField(
        default=0, editable=False, help_text="Task starts in the rate's current window."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_running__isnull=False) | Q(rate__isnull=False), name="limit_has_a_limit"
            ),
            models.CheckConstraint(
                condition=Q(rate__isnull=True) | Q(per_seconds__gt=0), name="limit_rate_has_a_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key}: {self.describe()}"

    def describe(self) -> str:
        parts = []
        if self.max_running is not None:
            parts.append(f"at most {self.max_running} running")
        if self.rate is not None:
            parts.append(f"at most {self.rate} starts per {self.per_seconds:g} s")
        return ", ".join(parts)


class HoldQuerySet(models.QuerySet):
    def covering(self, definition: str, concurrency_key: str):
        """The holds on `definition` or on `concurrency_key` (a workflow without a key is
        under no key's hold), the definition's first."""
        covers = Q(kind=Hold.Kind.DEFINITION, value=definition)
        if concurrency_key:
            covers |= Q(kind=Hold.Kind.KEY, value=concurrency_key)
        return self.filter(covers).order_by("kind")


class Hold(models.Model):
    """A whole definition or concurrency key paused (a deploy, an outage downstream): each
    of its workflows that may be paused is, new ones start paused, and releasing it
    resumes exactly the workflows it paused (`Workflow.held_by` names it). Set and
    released through services.hold_set and services.hold_release."""

    class Kind(models.TextChoices):
        DEFINITION = "definition", "definition"
        KEY = "key", "concurrency key"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    value = models.CharField(max_length=200, help_text="The definition's key, or the concurrency key.")
    reason = models.TextField(blank=True, help_text="Kept in the audit row of each workflow it pauses.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(
        max_length=200, help_text="Who set it, as the audit log names them (cli, admin:<user>, …)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = HoldQuerySet.as_manager()

    class Meta:
        ordering = ["kind", "value"]
        constraints = [models.UniqueConstraint(fields=["kind", "value"], name="hold_unique_kind_value")]

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"

    @property
    def label(self) -> str:
        """What `Workflow.held_by` says of a workflow it paused, e.g. definition:billing."""
        return hold_label(self.kind, self.value)

    @property
    def field(self) -> str:
        """The workflow's field it holds by."""
        return "definition" if self.kind == self.Kind.DEFINITION else "concurrency_key"

    def workflows(self):
        """Every workflow it covers, whatever its state."""
        return Workflow.objects.filter(**{self.field: self.value})

    def covers(self, workflow: Workflow) -> bool:
        return getattr(workflow, self.field) == self.value


def hold_label(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def hold_text(label: str) -> str:
    """A hold's label as a sentence says it: definition:billing -> definition billing."""
    return " ".join(label.split(":", 1))


class WorkflowSchedule(models.Model):
    """Starts a workflow each time its cron expression falls due in its time zone
    (workflow_orchestrator.schedules runs it; workflow_orchestrator.cron says when).

    Save one with `schedules.schedule_save`: it checks the workflow the schedule starts
    too (`schedules.schedule_clean`), which `full_clean()` alone does not."""

    name = models.CharField(max_length=200, unique=True)
    cron = models.CharField(
        max_length=100,
        validators=[validate_cron],
        help_text="Five fields: minute hour day-of-month month day-of-week (e.g. 0 9 * * 1-5), or @hourly, "
        "@daily, @weekly, @monthly, @yearly.",
    )
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="IANA time zone the expression is read in, e.g. Europe/Paris.",
    )
    definition = models.CharField(max_length=100, default="default")
    mode = models.CharField(max_length=8, choices=Workflow.Mode.choices, default=Workflow.Mode.AUTO)
    input = models.JSONField(default=dict, blank=True)
    tasks = models.JSONField(
        null=True, blank=True, help_text="The EXECUTE tasks of each run, a JSON list; empty: the definition's own."
    )
    enabled = models.BooleanField(default=True, help_text="A paused schedule starts nothing.")
    last_run_at = models.DateTimeField(null=True, blank=True, help_text="Due time of the latest run started.")
    next_run_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="Due time of the next run; empty while paused."
    )
    last_error = models.TextField(blank=True, help_text="Why the latest run could not start, if it could not.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(models.Model):
    """The call of a workflow's callback_url for one transition that ended it: at most one
    per transition (workflow and seq), its body kept so that every attempt sends the same
    bytes under the same signature."""

    class Status(models.TextChoices):
        PENDING = "PENDING"  # waiting for its next attempt
        SENDING = "SENDING"  # an attempt is under way
        DELIVERED = "DELIVERED"
        FAILED = "FAILED"  # gave up: a final answer, a refused host or attempts used up

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="webhook_deliveries")
    seq = models.PositiveIntegerField(help_text="The seq of the transition it reports.")
    event = models.CharField(max_length=32)
    url = models.URLField(max_length=2000)
    body = models.TextField(help_text="The JSON sent, byte for byte, on every attempt.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts made (or under way).")
    sending_since = models.DateTimeField(
        null=True, blank=True, help_text="When the attempt under way (SENDING) began; empty otherwise."
    )
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["workflow", "seq"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["workflow", "seq"], name="webhook_delivery_once_per_transition"),
        ]
        indexes = [
            # Recovery looks for attempts under way for too long: few rows, whatever the table's size.
            models.Index(
                fields=["sending_since"], name="webhook_delivery_sending", condition=Q(sending_since__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.seq} to {self.url}: {self.status}"


class WebhookAttempt(models.Model):
    """One POST of a delivery (or one refused before it was sent)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True, help_text="None: no HTTP answer.")
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    duration = models.FloatField(default=0, help_text="Seconds the attempt took.")

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number_unique"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"


class MetricsHead(models.Model):
    """How far the stored counters (MetricCounter) have counted the engine's history (one
    row): the audit log up to a transition id, task attempts up to an end time."""

    ONLY = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ONLY)
    transition_id = models.BigIntegerField(default=0, help_text="Transitions up to this id are counted.")
    attempts_until = models.DateTimeField(null=True, blank=True, help_text="Attempts ended by then are counted.")

    objects = HeadManager()

    def __str__(self) -> str:
        return f"metrics counted up to transition {self.transition_id} and {self.attempts_until}"


class MetricCounter(models.Model):
    """One series of a Prometheus counter (or histogram part) as counted so far, kept so
    that it never goes backwards when workflows, with their history, are deleted."""

    name = models.CharField(max_length=100)
    labels = models.CharField(max_length=400, help_text="The series' labels, as sorted JSON.")
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="metric_counter_unique_series")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} {self.value:g}"


class BulkOperation(models.Model):
    """One action (retry, cancel, pause, resume) on every workflow a query matched when it
    was started: their ids are kept (the N its confirmation showed), and a background job
    works through them a chunk at a time, each workflow through its own service (its own
    audit row, with this operation's actor and reason). services.bulk runs it."""

    class Action(models.TextChoices):
        RETRY = "retry"
        CANCEL = "cancel"
        PAUSE = "pause"
        RESUME = "resume"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    action = models.CharField(max_length=16, choices=Action.choices)
    reason = models.TextField(help_text="Why, kept in each workflow's audit row.")
    # As on Transition: the id of a user deleted since stays, with the label that names them.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False
    )
    actor_label = models.CharField(max_length=200)
    criteria = models.JSONField(default=dict, blank=True, help_text="The filter as it was given.")
    workflow_ids = models.JSONField(default=list, help_text="The workflows it matched when it was started.")
    total = models.PositiveIntegerField(default=0)
    position = models.PositiveIntegerField(default=0, help_text="How many of workflow_ids have been dealt with.")
    done = models.PositiveIntegerField(default=0, help_text="How many were changed.")
    skipped = models.JSONField(default=dict, blank=True, help_text="How many were refused, by reason.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # A step holds the operation while it works on its chunk: another delivery of it waits
    # its turn; recovery sends the step again once the claim (or the last progress) is old.
    claimed_until = models.DateTimeField(null=True, blank=True)
    progressed_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "progressed_at"], name="bulk_unfinished")]

    def __str__(self) -> str:
        return f"{self.action} {self.total} workflow(s) ({self.status})"

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    @property
    def is_finished(self) -> bool:
        return self.status == self.Status.FINISHED
