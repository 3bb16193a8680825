import pytest
from django_fsm import TransitionNotAllowed

from workflow_orchestrator.models import PHASE_EVENTS, PHASES, STATE_EDGES, State, Transition, Workflow

EVENTS = ["start", "execute", "validate", "complete", "fail", "retry", "cancel"]

# (source, event) -> target: every transition the state machine allows.
ALLOWED = {
    (State.INIT, "start"): State.PREPARE,
    (State.PREPARE, "execute"): State.EXECUTE,
    (State.EXECUTE, "validate"): State.VALIDATE,
    (State.VALIDATE, "complete"): State.COMPLETE,
    **{(phase, "fail"): State.FAILED for phase in PHASES},
    **{(state, "cancel"): State.CANCELLED for state in [State.INIT, *PHASES, State.FAILED]},
}


def workflow_in(state: str, failed_phase: str = State.EXECUTE) -> Workflow:
    return Workflow(name="w", state=state, failed_phase=failed_phase if state == State.FAILED else "")


def fire(workflow: Workflow, event: str) -> None:
    if event == "fail":
        workflow.fail(error="boom")
    else:
        getattr(workflow, event)()


@pytest.mark.parametrize("state", State.values)
@pytest.mark.parametrize("event", [e for e in EVENTS if e != "retry"])
def test_each_transition_is_allowed_exactly_from_its_sources(state, event):
    workflow = workflow_in(state)
    expected = ALLOWED.get((state, event))
    if expected is None:
        with pytest.raises(TransitionNotAllowed):
            fire(workflow, event)
        assert workflow.state == state
    else:
        fire(workflow, event)
        assert workflow.state == expected


@pytest.mark.parametrize("phase", PHASES)
def test_retry_returns_to_the_phase_that_failed(phase):
    workflow = workflow_in(State.FAILED, failed_phase=phase)
    workflow.retry()
    assert workflow.state == phase
    assert workflow.retries == 1


@pytest.mark.parametrize("state", [s for s in State.values if s != State.FAILED])
def test_retry_is_refused_outside_failed(state):
    with pytest.raises(TransitionNotAllowed):
        workflow_in(state).retry()


def test_fail_remembers_the_phase_and_the_error():
    workflow = workflow_in(State.VALIDATE)
    workflow.fail(error="checks failed")
    assert (workflow.failed_phase, workflow.error) == (State.VALIDATE, "checks failed")
    assert workflow.finished_at is not None


def test_state_cannot_be_assigned_directly():
    workflow = workflow_in(State.INIT)
    with pytest.raises(AttributeError):
        workflow.state = State.COMPLETE


@pytest.mark.parametrize("state", State.values)
def test_django_fsm_offers_exactly_the_transitions_of_the_table(state):
    expected = {event for (source, event) in ALLOWED if source == state}
    if state == State.FAILED:
        expected.add("retry")
    assert {change.name for change in workflow_in(state).get_available_state_transitions()} == expected


def test_the_graph_and_the_phase_events_are_read_from_the_transitions():
    retries = {(State.FAILED, phase) for phase in PHASES}
    assert set(STATE_EDGES) == {(source, target) for (source, _), target in ALLOWED.items()} | retries
    assert PHASE_EVENTS == {State.INIT: "start", State.PREPARE: "execute", State.EXECUTE: "validate",
                            State.VALIDATE: "complete"}  # fmt: skip


def test_transition_rows_cannot_be_edited(db):
    workflow = Workflow.objects.create(name="w")
    row = Transition.objects.create(
        workflow=workflow, seq=1, source="INIT", target="PREPARE", event="start", actor_label="system"
    )
    row.reason = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        row.save()
