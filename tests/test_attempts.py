"""A task's `attempts` hold entries of one shape (workflow_orchestrator.attempts), whether
the hot path's SQL wrote them (a claim, an outcome) or the services did (a failure)."""

from typing import get_type_hints

from tests.conftest import task
from workflow_orchestrator.api.serializers import AttemptSerializer
from workflow_orchestrator.attempts import OUTCOMES, AttemptEntry, time_of
from workflow_orchestrator.models import Task
from workflow_orchestrator.registry import task_type

KEYS = get_type_hints(AttemptEntry)  # key → type, NotRequired stripped
seen_while_running: list[dict] = []


@task_type("tests.look_at_own_attempts")
def look_at_own_attempts(ctx, params):
    seen_while_running.extend(Task.objects.get(pk=ctx.task.id).attempts)


def problems(entry: dict) -> list[str]:
    """How `entry` departs from AttemptEntry: keys, their types, the outcome, the times."""
    found = [f"missing {key}" for key in sorted(AttemptEntry.__required_keys__ - set(entry))]
    found += [f"unknown key {key}" for key in sorted(set(entry) - set(KEYS))]
    found += [f"{key} is {value!r}" for key, value in entry.items() if key in KEYS and type(value) is not KEYS[key]]
    if entry.get("outcome") not in OUTCOMES:
        found.append(f"outcome {entry.get('outcome')!r}")
    if ("finished_at" in entry) == (entry.get("outcome") == "running"):
        found.append("finished_at is there exactly when it has ended")
    for key in ("started_at", "finished_at"):
        try:
            time_of(entry.get(key))
        except ValueError:
            found.append(f"{key} is not a time: {entry[key]!r}")
    return found


def test_every_entry_the_engine_stores_has_the_one_shape(engine):
    seen_while_running.clear()
    workflow = engine.start(
        tasks=[
            {"name": "ok", "type": "noop"},
            {"name": "looks", "type": "tests.look_at_own_attempts"},
            {"name": "bad", "type": "fail", "params": {"message": "disk full"}, "max_attempts": 2},
        ]
    )
    engine.drain()

    [running] = seen_while_running
    assert (running["outcome"], problems(running)) == ("running", [])
    stored = {name: task(workflow, name).attempts for name in ("ok", "looks", "bad")}
    assert [entry["outcome"] for entry in stored["ok"]] == ["succeeded"]
    assert [entry["outcome"] for entry in stored["bad"]] == ["failed", "failed"]
    assert [entry["attempt"] for entry in stored["bad"]] == [1, 2]
    assert "disk full" in stored["bad"][0]["error"]
    assert {
        entry_problem for entries in stored.values() for entry in entries for entry_problem in problems(entry)
    } == set()


def test_a_departure_from_the_shape_is_found():
    entry = {"attempt": 1, "worker": "h:1", "started_at": "2026-01-01T00:00:00+00:00", "outcome": "running"}
    assert problems(entry) == []
    ended = {**entry, "outcome": "succeeded", "finished_at": "2026-01-01T00:00:01+00:00"}
    assert problems(ended) == []
    assert problems({**ended, "outcome": "exploded"}) == ["outcome 'exploded'"]
    assert problems({**entry, "attempt": "1", "extra": 0}) == ["unknown key extra", "attempt is '1'"]
    assert problems({**entry, "outcome": "failed"}) == ["finished_at is there exactly when it has ended"]
    assert problems({**entry, "started_at": "yesterday"}) == ["started_at is not a time: 'yesterday'"]


def test_a_time_without_an_offset_is_utc():
    assert time_of("2026-01-01 12:00:00.5") == time_of("2026-01-01T12:00:00.500000+00:00")
    assert time_of("2026-01-01T13:00:00+01:00") == time_of("2026-01-01T12:00:00Z")
    assert time_of(None) is None


def test_the_api_shows_each_key_of_an_attempt_and_only_those():
    assert set(AttemptSerializer().fields) == set(KEYS)
    assert set(AttemptSerializer().fields["outcome"].choices) == set(OUTCOMES)
