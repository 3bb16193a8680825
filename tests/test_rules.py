"""One source for the rules: what the engine offers a user is exactly what it accepts, in
every state of a workflow; the state graph the admin draws and the buttons it shows are
the django-fsm transitions'; and every change of a task's status the engine makes is one
of models.TASK_TRANSITIONS."""

import itertools
import json
import xml.etree.ElementTree as ET
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils import timezone

from workflow_orchestrator import audit, services, sql
from workflow_orchestrator.diagrams import _edge_points, state_graph_svg
from workflow_orchestrator.models import (
    ACTIONS,
    PHASES,
    TASK_STATUS_CHANGES,
    TASK_TRANSITIONS,
    Actor,
    State,
    Task,
    Workflow,
    task_status_after,
)

SERVICES = {
    "start": services.workflow_start,
    "next": services.workflow_next,
    "retry": services.workflow_retry,
    "cancel": services.workflow_cancel,
    "pause": services.workflow_pause,
    "resume": services.workflow_resume,
    "delete": services.workflow_delete,
}
FAILS = {"type": "fail", "max_attempts": 1}  # fails on every attempt

# Every situation a workflow can be in, as far as the rules tell them apart: its state, its
# mode, in a phase, whether the phase's work is done (auto mode: a worker died between
# recording the last success and moving the workflow on), and whether it is paused (a
# cancel ends a pause; a workflow paused in a phase may fail or complete and stay paused).
SITUATIONS = [
    (state, mode, done, paused)
    for state, mode in itertools.product(State.values, ["auto", "manual"])
    for done in ([False, True] if state in PHASES else [None])
    for paused in ([False] if state == State.CANCELLED else [False, True])
]


def situation_id(situation) -> str:
    state, mode, done, paused = situation
    return (
        f"{state}-{mode}" + ("" if done is None else ("-done" if done else "-working")) + ("-paused" if paused else "")
    )


def bring(engine, state: str, mode: str, done: bool | None, paused: bool = False) -> Workflow:
    """A workflow in `state`, brought there through the services: by hand (manual mode) one
    phase at a time, its jobs run by `engine`; an automatic one is the same workflow with
    its mode set (what the rules read of it is its state, mode, unfinished count and
    paused_at). One paused before it starts or in a phase is paused by the service; one
    that failed or completed while paused keeps the paused_at it had."""
    tasks = [FAILS] if state == State.FAILED else [{"type": "noop"}]
    workflow, _ = services.workflow_create(name=f"{state} {mode}", mode="manual", tasks=tasks, actor=Actor.SYSTEM)
    if state == State.CANCELLED:
        services.workflow_cancel(workflow.pk, actor=Actor.SYSTEM)
    while (workflow := Workflow.objects.get(pk=workflow.pk)).state not in (state, State.FAILED, State.CANCELLED):
        if workflow.state in PHASES and workflow.unfinished:
            engine.drain()  # the phase's work runs, and ends
        else:
            engine.call(services.workflow_next, workflow.pk, actor=Actor.SYSTEM)
    assert workflow.state == state
    if done:
        engine.drain()
    engine.pending()  # jobs of work left undone stay undone
    Workflow.objects.filter(pk=workflow.pk).update(mode=mode)
    if paused and state in (State.INIT, *PHASES):
        services.workflow_pause(workflow.pk, actor=Actor.SYSTEM)
    elif paused:
        Workflow.objects.filter(pk=workflow.pk).update(paused_at=timezone.now())
    workflow = Workflow.objects.get(pk=workflow.pk)
    assert (workflow.state, workflow.mode, workflow.is_paused) == (state, mode, paused)
    if done is not None:
        assert (workflow.unfinished == 0) == done
    return workflow


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("situation", SITUATIONS, ids=situation_id)
def test_an_action_is_offered_exactly_when_the_service_accepts_it(engine, situation, action):
    workflow = bring(engine, *situation)
    offered = services.available_actions(workflow)
    try:
        engine.call(SERVICES[action], workflow.pk, actor=Actor.SYSTEM)
    except services.InvalidTransition as refused:
        assert action not in offered, f"{action} was offered in {situation}, and refused: {refused}"
        assert (refused.state, refused.allowed) == (workflow.state, offered)
        assert Workflow.objects.get(pk=workflow.pk).state == workflow.state
    else:
        assert action in offered, f"{action} was not offered in {situation}, and was accepted"


def signed(**fields) -> Workflow:
    """A workflow in memory, its head signed as the engine signs it."""
    workflow = Workflow(name="w", **fields)
    audit.sign_head(workflow)
    return workflow


def test_every_user_action_is_offered_in_some_situation_and_refused_in_another():
    # Guards the test above against situations that cannot tell an action's rule apart.
    offered = {action: set() for action in ACTIONS}
    for state, mode, done, paused in SITUATIONS:
        unfinished = 0 if done in (None, True) else 1
        workflow = signed(state=state, mode=mode, unfinished=unfinished, paused_at=timezone.now() if paused else None)
        for action in services.available_actions(workflow):
            offered[action].add((state, mode, done, paused))
    for action, situations in offered.items():
        assert situations and len(situations) < len(SITUATIONS), action


def test_a_workflow_whose_head_does_not_verify_offers_and_accepts_only_delete(engine):
    workflow = bring(engine, State.INIT, "manual", None)
    Workflow.objects.filter(pk=workflow.pk).update(head_mac="0" * 64)
    workflow = Workflow.objects.get(pk=workflow.pk)
    assert services.available_actions(workflow) == ["delete"]
    for action in ("start", "next", "cancel", "pause"):
        with pytest.raises(services.AuditBroken):
            SERVICES[action](workflow.pk, actor=Actor.SYSTEM)
    services.workflow_delete(workflow.pk, actor=Actor.SYSTEM)
    assert not Workflow.objects.filter(pk=workflow.pk).exists()


@pytest.mark.parametrize("state", State.values)
def test_who_may_act_narrows_the_offer_and_nothing_else(state):
    workflow = signed(state=state, mode="manual")
    everything = services.available_actions(workflow)
    assert services.available_actions(workflow, may_change=False) == [a for a in everything if a == "delete"]
    assert services.available_actions(workflow, may_delete=False) == [a for a in everything if a != "delete"]


# --- The diagram and the admin's buttons -------------------------------------------------------


def fsm_edges() -> set[tuple[str, str]]:
    """(source, target) of every transition django-fsm knows for Workflow.state."""
    edges = set()
    for change in Workflow._meta.get_field("state").get_all_transitions(Workflow):
        targets = getattr(change.target, "allowed_states", None) or [change.target]
        edges |= {(change.source, target) for target in targets}
    return edges


def test_the_state_graph_draws_one_arrow_per_transition_of_the_state_machine():
    svg = ET.fromstring(str(state_graph_svg(State.INIT, [])))
    drawn = [
        tuple(float(line.get(k)) for k in ("x1", "y1", "x2", "y2"))
        for line in svg.iter("{http://www.w3.org/2000/svg}line")
    ]
    assert len(drawn) == len(fsm_edges()) == 15
    assert set(drawn) == {_edge_points(source, target) for source, target in fsm_edges()}


class ActionButtons(HTMLParser):
    """The ids of the change page's action buttons and links (id="action-<action>")."""

    def __init__(self, html: str):
        super().__init__()
        self.actions: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element_id = dict(attrs).get("id") or ""
        if element_id.startswith("action-") and tag in ("a", "button"):
            self.actions.append(element_id.removeprefix("action-"))


@pytest.mark.parametrize("situation", SITUATIONS, ids=situation_id)
def test_the_admin_shows_a_button_for_each_offered_action(engine, admin_client, situation):
    workflow = bring(engine, *situation)
    page = admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk]))
    assert page.status_code == 200
    assert ActionButtons(page.content.decode()).actions == services.available_actions(workflow)


# --- Task statuses --------------------------------------------------------------------------------


def test_task_transitions_name_statuses_that_exist_and_each_change_once_per_name():
    statuses = set(Task.Status.values)
    for name, change in TASK_TRANSITIONS.items():
        assert change.name == name and change.target in statuses and set(change.sources) <= statuses | {None}
        assert change.target not in change.sources  # a status change, not a write that keeps it
    assert task_status_after("cancel", Task.Status.PENDING, Task.Status.QUEUED) == Task.Status.CANCELLED
    with pytest.raises(ValueError, match="does not start from RUNNING"):
        task_status_after("cancel", Task.Status.RUNNING)


class StatusChanges:
    """Every task's status before and after each call of the services' entry points, read
    from the database: the changes each call made, whatever statement made them."""

    ENTRY_POINTS = [
        "workflow_create", "workflow_start", "workflow_next", "workflow_retry", "workflow_cancel", "workflow_pause",
        "workflow_resume", "task_claim", "task_record", "task_hand_back", "recover",
    ]  # fmt: skip

    def __init__(self, monkeypatch):
        self.seen: set[tuple[str | None, str]] = set()
        for name in self.ENTRY_POINTS:
            monkeypatch.setattr(services, name, self.watching(getattr(services, name)))

    @staticmethod
    def statuses() -> dict[int, str]:
        return dict(Task.objects.values_list("pk", "status"))

    def watching(self, service):
        def watched(*args, **kwargs):
            before = self.statuses()
            try:
                return service(*args, **kwargs)
            finally:
                after = self.statuses()
                self.seen |= {(before.get(pk), status) for pk, status in after.items() if before.get(pk) != status}

        return watched


def test_every_task_status_change_the_engine_makes_is_in_the_table(engine, monkeypatch, settings):
    changes = StatusChanges(monkeypatch)
    S = Task.Status
    system = Actor.SYSTEM

    # Successes, a dependency released, a failed attempt retried after a backoff.
    tasks = [{"name": "a", "type": "noop"}, {"name": "b", "type": "noop", "after": ["a"]}]
    engine.start(tasks=[*tasks, {"name": "flaky", "type": "fail", "params": {"times": 1}}])
    engine.drain()

    # A phase that fails holds its queued tasks back; a retry queues them again with the failed one.
    failing = engine.start(tasks=[FAILS, {"type": "noop"}, {"type": "noop"}])
    engine.drain()
    assert Workflow.objects.get(pk=failing.pk).state == State.FAILED
    engine.call(services.workflow_retry, failing.pk, actor=system)
    engine.pending()
    services.workflow_cancel(failing.pk, actor=system)  # its tasks queued again are cancelled

    # A stopping worker hands its attempt back; after a cancel, a handed-back attempt and a
    # late success end CANCELLED, and the tasks that had not run are cancelled.
    for late in ("hand_back", "success"):
        workflow = engine.start(tasks=[{"type": "noop"}])
        (job,) = engine.pending()
        claimed = services.task_claim(*job["args"], worker="w1")
        if late == "hand_back":  # its job is sent with the change (after commit, with Redis)
            engine.call(services.task_hand_back, claimed.pk, claimed.attempt, workflow_id=workflow.pk)
            (job,) = engine.pending()
            claimed = services.task_claim(*job["args"], worker="w1")
        services.workflow_cancel(workflow.pk, actor=system)
        if late == "hand_back":
            services.task_hand_back(claimed.pk, claimed.attempt, workflow_id=workflow.pk)
        else:
            services.task_record(claimed, stored=json.dumps("late"))

    # A paused workflow's job claims nothing; resumed, its job is sent again and runs.
    paused = engine.start(tasks=[{"type": "noop"}])
    engine.call(services.workflow_pause, paused.pk, actor=system)
    engine.drain()
    engine.call(services.workflow_resume, paused.pk, actor=system)
    engine.drain()
    assert Workflow.objects.get(pk=paused.pk).state == State.COMPLETE

    # Recovery takes back an attempt whose worker stopped heartbeating.
    engine.start(tasks=[{"type": "noop"}])
    (job,) = engine.pending()
    claimed = services.task_claim(*job["args"], worker="w1")
    Task.objects.filter(pk=claimed.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    engine.call(services.recover)
    engine.pending()

    assert changes.seen <= TASK_STATUS_CHANGES, changes.seen - TASK_STATUS_CHANGES
    # The scenario saw every change the ORM paths make, and those of the hot path.
    assert changes.seen >= {
        (None, S.PENDING), (None, S.QUEUED), (S.PENDING, S.QUEUED), (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.QUEUED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
        (S.QUEUED, S.PENDING), (S.PENDING, S.CANCELLED), (S.QUEUED, S.CANCELLED), (S.FAILED, S.QUEUED),
    }  # fmt: skip


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite"])
def test_every_task_status_change_the_sql_makes_is_in_the_table(vendor):
    """Each named statement lists the task status changes it can make (`-- transitions:` in
    workflow_orchestrator/sql/), each by the name of the task transition it performs: the
    name must be in the table, from that source to that target."""
    by_statement = sql.task_transitions_by_statement(vendor)
    assert by_statement["claim"] == {("claim", Task.Status.QUEUED, Task.Status.RUNNING)}
    outside = {
        statement: sorted(
            (name, source, target)
            for name, source, target in changes
            if name not in TASK_TRANSITIONS
            or source not in TASK_TRANSITIONS[name].sources
            or target != TASK_TRANSITIONS[name].target
        )
        for statement, changes in by_statement.items()
    }
    assert {statement: changes for statement, changes in outside.items() if changes} == {}


def test_the_sql_of_both_databases_makes_the_same_task_status_changes():
    """The two databases differ in how they write a step, never in what it does to a task."""
    made = {
        vendor: set().union(*sql.task_transitions_by_statement(vendor).values()) for vendor in ("postgresql", "sqlite")
    }
    assert made["postgresql"] == made["sqlite"]
