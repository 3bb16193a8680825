"""Retention: ended workflows older than a cutoff are deleted through the audited deletion
path, in batches, by `workflow purge` and by the hourly job when ORCH_RETENTION_DAYS is
set; the deletion log and the audit checkpoints still verify afterwards."""

import json
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import Schedule

from tests.conftest import reload, wait_for
from workflow_orchestrator import jobs, metrics, services
from workflow_orchestrator.checks import check_settings
from workflow_orchestrator.models import Actor, State, Task, Transition, Workflow, WorkflowDeletion
from workflow_orchestrator.services import retention

# Run on PostgreSQL + Redis as well as SQLite (see tests/conftest.py's ENGINE_MODULES).
pytestmark = pytest.mark.engine

DAYS = timedelta(days=1)
TASKS = [{"type": "noop"}, {"type": "echo", "params": {"n": 1}}, {"type": "noop"}]


def ended(engine, state: str, days_ago: float, name: str = "old") -> Workflow:
    """A workflow with a few tasks that ended in `state` `days_ago` days ago."""
    if state == State.CANCELLED:
        workflow, _ = services.workflow_create(name=name, tasks=TASKS, actor=Actor.CLI)
        engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI)
    else:
        failing = [{"type": "fail", "max_attempts": 1}] if state == State.FAILED else []
        workflow = engine.start(name=name, tasks=[*TASKS, *failing])
        engine.drain()
    assert reload(workflow).state == state
    Workflow.objects.filter(pk=workflow.pk).update(finished_at=timezone.now() - days_ago * DAYS)
    return reload(workflow)


def olds(engine, count: int) -> list[Workflow]:
    return [ended(engine, State.COMPLETE, 40 + i, name=f"old{i}") for i in range(count)]


def purge(*args) -> str:
    out = StringIO()
    call_command("workflow", "purge", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def verify_all(*args) -> str:
    out = StringIO()
    call_command("workflow", "verify", "--all", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def mixed(engine):
    """Old workflows of each ended state, a recent one, a running one and one never started."""
    old = {state: ended(engine, state, 31, name=f"old {state}") for state in services.ENDED_STATES}
    recent = ended(engine, State.COMPLETE, 29, name="recent")
    running = engine.start(name="running", tasks=[{"type": "wait", "params": {"seconds": 3600}}])
    engine.drain(wait=0)
    unstarted, _ = services.workflow_create(name="unstarted", actor=Actor.CLI)
    Workflow.objects.filter(pk=unstarted.pk).update(created_at=timezone.now() - 90 * DAYS)
    return old, [recent, reload(running), unstarted]


# --- what goes, what stays -----------------------------------------------------------------------


def test_purge_deletes_only_ended_workflows_older_than_the_cutoff(mixed):
    old, kept = mixed
    assert services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM) == 3
    assert set(Workflow.objects.values_list("name", flat=True)) == {"recent", "running", "unstarted"}
    assert not Task.objects.filter(workflow_id__in=[w.pk for w in old.values()]).exists()
    assert not Transition.objects.filter(workflow_id__in=[w.pk for w in old.values()]).exists()
    assert Task.objects.filter(workflow__name="recent").count() == len(TASKS) + 2  # and prepare, validate


def test_each_purged_workflow_has_its_row_in_the_deletion_log(mixed):
    old, _ = mixed
    services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM)
    rows = {row.workflow_id: row for row in WorkflowDeletion.objects.all()}
    assert set(rows) == {w.pk for w in old.values()}
    for workflow in old.values():
        row = rows[workflow.pk]
        assert (row.name, row.state, row.last_seq) == (workflow.name, workflow.state, workflow.last_seq)
        assert row.actor_label == "system (retention: older than 30 days)"
    assert WorkflowDeletion.objects.verify() is None


def test_the_audit_chains_the_deletion_log_and_a_checkpoint_still_verify_after_a_purge(mixed, tmp_path):
    checkpoint = str(tmp_path / "before.json")
    call_command("workflow", "checkpoint", "--out", checkpoint, stdout=StringIO())
    purge("--older-than", "30")
    assert verify_all().splitlines()[0] == "audit chain intact for 3 workflow(s); deletion log intact (3 deletion(s))"
    against = verify_all("--checkpoint", checkpoint)
    assert "(6 workflow(s), 3 deleted through the engine since)" in against


def test_the_counters_keep_the_history_of_the_purged_workflows(mixed):
    before = metrics.count_history()
    assert services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM) == 3
    assert metrics.count_history() == before


def test_only_the_states_asked_for_are_purged(mixed):
    old, _ = mixed
    out = purge("--older-than", "30", "--state", "FAILED", "--state", "CANCELLED")
    assert "deleted 2 workflow(s) (FAILED, CANCELLED)" in out
    assert Workflow.objects.filter(pk=old[State.COMPLETE].pk).exists()


def test_a_workflow_retried_after_it_was_listed_is_kept(engine):
    failed, other = ended(engine, State.FAILED, 40), ended(engine, State.COMPLETE, 40)
    cutoff = timezone.now() - 30 * DAYS
    engine.call(services.workflow_retry, failed.pk, actor=Actor.CLI)
    assert retention._purge_batch([failed.pk, other.pk], cutoff, services.ENDED_STATES, Actor.SYSTEM) == 1
    assert Workflow.objects.filter(pk=failed.pk).exists()
    assert list(WorkflowDeletion.objects.values_list("workflow_id", flat=True)) == [other.pk]


def test_a_cutoff_that_is_not_positive_is_refused(db):
    with pytest.raises(ValueError, match="older_than must be positive"):
        services.workflows_purge(timedelta(0), actor=Actor.SYSTEM)


def cancelled_long_ago(count: int) -> list[Workflow]:
    """Workflows cancelled before they started (no tasks run), finished 40 days ago."""
    workflows = [services.workflow_create(name=f"c{i}", actor=Actor.CLI)[0] for i in range(count)]
    for workflow in workflows:
        services.workflow_cancel(workflow.pk, actor=Actor.CLI)
    Workflow.objects.update(finished_at=timezone.now() - 40 * DAYS)
    return workflows


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_a_purge_and_deletions_by_hand_at_once_record_each_workflow_once_without_deadlock():
    workflows = cancelled_long_ago(40)
    by_hand = [workflow.pk for workflow in workflows[::5]]
    barrier = threading.Barrier(1 + len(by_hand))
    errors: list[BaseException] = []
    purged: list[int] = []

    def run(work):
        try:
            barrier.wait(timeout=30)
            work()
        except Workflow.DoesNotExist:
            pass  # the other side deleted it first
        except BaseException as exc:  # reported below, in the test thread (a deadlock, say)
            errors.append(exc)
        finally:
            connection.close()

    def purge_all():
        purged.append(services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM, batch=10))

    threads = [threading.Thread(target=run, args=(purge_all,))]
    for workflow_id in by_hand:
        delete = lambda workflow_id=workflow_id: services.workflow_delete(workflow_id, actor=Actor.CLI)  # noqa: E731
        threads.append(threading.Thread(target=run, args=(delete,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    assert not Workflow.objects.exists()
    log = list(WorkflowDeletion.objects.values_list("workflow_id", "actor_label"))
    assert sorted(str(pk) for pk, _ in log) == sorted(str(workflow.pk) for workflow in workflows)
    assert sum(label.startswith("system") for _, label in log) == purged[0]
    assert WorkflowDeletion.objects.verify() is None


# --- dry run -------------------------------------------------------------------------------------


def test_a_dry_run_counts_and_lists_what_would_go_and_deletes_nothing(mixed):
    old, _ = mixed
    assert services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM, dry_run=True) == 3
    out = purge("--older-than", "30", "--dry-run").splitlines()
    assert out[-1] == "3 workflow(s) would be deleted (dry run: none was)"
    assert sorted(line.split()[0] for line in out[:-1]) == sorted(str(w.pk) for w in old.values())
    assert Workflow.objects.count() == 6
    assert not WorkflowDeletion.objects.exists()


# --- batches -------------------------------------------------------------------------------------


def test_a_backlog_larger_than_a_batch_is_purged_batch_by_batch(engine):
    olds(engine, 7)
    done = []
    assert services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM, batch=3, progress=done.append) == 7
    assert done == [3, 6, 7]
    assert not Workflow.objects.exists()
    assert list(WorkflowDeletion.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 8))
    assert WorkflowDeletion.objects.verify() is None


def test_a_limit_stops_the_purge_with_the_rest_left_for_later(engine):
    olds(engine, 5)
    assert services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM, batch=2, limit=3) == 3
    assert Workflow.objects.count() == 2


def statements_to_purge(engine, count: int) -> int:
    olds(engine, count)
    with CaptureQueriesContext(connection) as purging:
        assert services.workflows_purge(30 * DAYS, actor=Actor.SYSTEM, batch=count + 1) == count
    return len(purging.captured_queries)


# A batch: its listing, the transaction's savepoint (its own transaction, outside the
# test's), the workflows locked (with the conditions they were listed by); for the
# metrics, their head locked, the workflows' transitions and their tasks' attempts read,
# the stored counters read and the new ones written; the delete with its cascades (the
# workflows, their tasks and webhook deliveries read, then 8 statements; Django deletes
# tasks and workflows 100 rows a statement, so a full batch of 500 takes a few more); the
# savepoint released.
PER_BATCH = 21
# Each workflow: the deletion log's head locked, its row appended, the head moved on.
PER_WORKFLOW = 3


def test_statements_per_batch_are_pinned(engine):
    statements_to_purge(engine, 1)  # the first deletion ever makes the metrics' and the log's heads
    assert statements_to_purge(engine, 2) == PER_BATCH + 2 * PER_WORKFLOW
    assert statements_to_purge(engine, 5) == PER_BATCH + 5 * PER_WORKFLOW


# --- the scheduled job ---------------------------------------------------------------------------


def test_the_hourly_schedule_of_the_purge_exists_once(db):
    call_command("migrate", verbosity=0)
    [schedule] = Schedule.objects.filter(name=jobs.RETENTION_SCHEDULE)
    assert (schedule.func, schedule.schedule_type, schedule.repeats) == (jobs.RETENTION_PURGE, Schedule.HOURLY, -1)


@pytest.mark.parametrize("off", [0, None])
def test_the_job_does_nothing_while_retention_is_off(mixed, settings, off):
    settings.ORCH_RETENTION_DAYS = off
    assert jobs.retention_purge() == {"purged": 0}
    assert Workflow.objects.count() == 6
    assert check_settings() == []


def test_the_job_purges_when_retention_is_on(mixed, settings):
    settings.ORCH_RETENTION_DAYS = 30
    assert jobs.retention_purge() == {"purged": 3}
    assert Workflow.objects.count() == 3
    labels = set(WorkflowDeletion.objects.values_list("actor_label", flat=True))
    assert labels == {"system (retention: older than 30 days)"}


def test_the_job_queues_itself_again_while_a_backlog_lasts(engine, settings, monkeypatch):
    settings.ORCH_RETENTION_DAYS = 30
    olds(engine, 5)
    monkeypatch.setattr(services, "PURGE_BATCH", 2)
    assert engine.call(jobs.retention_purge) == {"purged": 2}
    assert Workflow.objects.count() == 3
    assert engine.drain() == 2  # 2 more, then the last 1 (a batch not full: no further job)
    assert not Workflow.objects.exists()
    assert WorkflowDeletion.objects.verify() is None


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_real_cluster_purges_once_retention_is_on(cluster):
    """The schedule that `migrate` made runs the job in a worker once it is due (the test
    makes it due now, as it is when `migrate` first makes it) on a cluster started with
    ORCH_RETENTION_DAYS."""
    old = cancelled_long_ago(7)
    recent, _ = services.workflow_create(name="recent", actor=Actor.CLI)
    services.workflow_cancel(recent.pk, actor=Actor.CLI)
    Schedule.objects.filter(name=jobs.RETENTION_SCHEDULE).update(next_run=timezone.now())
    running = cluster(ORCH_RETENTION_DAYS=30)
    wait_for(lambda: not Workflow.objects.filter(pk__in=[w.pk for w in old]).exists(), 120, "the purge", 0.5)
    assert list(Workflow.objects.values_list("name", flat=True)) == ["recent"], running.output()
    assert set(WorkflowDeletion.objects.values_list("actor_label", flat=True)) == {
        "system (retention: older than 30 days)"
    }
    assert WorkflowDeletion.objects.verify() is None


# --- the command's errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--older-than", "0"], "--older-than must be a whole number of days from 1 to 999999999, not 0"),
        (["--older-than", "-3"], "--older-than must be a whole number of days from 1 to 999999999, not -3"),
        (["--older-than", "10000000000"], "--older-than must be a whole number of days from 1 to 999999999, not 1"),
        (["--older-than", "1.5"], "argument --older-than: invalid int value: '1.5'"),
        ([], "the following arguments are required: --older-than"),
        (["--older-than", "30", "--state", "EXECUTE"], "argument --state: invalid choice: 'EXECUTE'"),
    ],
)
def test_the_command_refuses_a_bad_age_or_state_and_deletes_nothing(mixed, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        purge(*args)
    assert Workflow.objects.count() == 6


def test_the_command_says_how_many_it_deleted(mixed):
    assert purge("--older-than", "30").strip() == (
        "deleted 3 workflow(s) (COMPLETE, CANCELLED, FAILED) that finished more than 30 day(s) ago; "
        "each is recorded in the deletion log"
    )
    assert purge("--older-than", "30").startswith("deleted 0 workflow(s)")
    assert purge("--older-than", "100000000").startswith("deleted 0 workflow(s)")  # before the year 1


# --- the benchmark -------------------------------------------------------------------------------


def test_the_retention_benchmark_purges_what_it_generated_and_counts_its_statements(db):
    out = StringIO()
    call_command("bench", "--retention", "--retention-size", "30", "--json", stdout=out, stderr=StringIO())
    report = json.loads(out.getvalue())
    assert (report["kind"], report["purged"], report["generated"]) == ("retention", 30, 31)  # 1 in 20 still runs
    assert report["statements_per_workflow"] == round(report["statements"] / 30, 2)
    assert report["deletion_log_intact"] is True
    assert not Workflow.objects.exists()  # the one still running is deleted afterwards
    assert WorkflowDeletion.objects.count() == 30
