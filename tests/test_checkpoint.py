"""Audit checkpoints: what the database alone cannot show (an earlier copy of a row written
back over a cut log, a workflow deleted with raw SQL) shows against a signed checkpoint of
every chain head kept outside it; and `checkpoint` and `verify --all` stream, in a fixed
number of queries and a memory that does not grow with the number of workflows."""

import json
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestrator_dev.bench import Generator
from tests.conftest import ROOT, child_env, reload
from workflow_orchestrator import checkpoints, services
from workflow_orchestrator.checkpoints import FORMAT
from workflow_orchestrator.models import (
    Actor,
    DeletionLogHead,
    State,
    Task,
    Transition,
    WebhookAttempt,
    WebhookDelivery,
    Workflow,
    WorkflowDeletion,
)

HEAD = ("state", "last_seq", "last_digest", "head_mac")


@dataclass
class Run:
    out: str
    err: str
    error: str  # the CommandError's message (exit status 1), or "" (exit status 0)


def workflow_command(*args) -> Run:
    out, err = StringIO(), StringIO()
    try:
        call_command("workflow", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return Run(out.getvalue(), err.getvalue(), str(exc))
    return Run(out.getvalue(), err.getvalue(), "")


@pytest.fixture
def take(tmp_path):
    """Take a checkpoint into a new file; its path."""
    taken = iter(range(1, 1000))

    def take_checkpoint() -> str:
        path = str(tmp_path / f"checkpoint-{next(taken)}.json")
        run = workflow_command("checkpoint", "--out", path)
        assert not run.error, run.err + run.error
        return path

    return take_checkpoint


def verify(path: str | None = None) -> Run:
    return workflow_command("verify", "--all", *(["--checkpoint", path] if path else []))


def head_of(workflow) -> dict:
    """The workflow row's chain head as stored: what an earlier copy of the row holds."""
    return Workflow.objects.filter(pk=workflow.pk).values(*HEAD).get()


def manual_workflow(engine) -> Workflow:
    workflow = engine.start(mode="manual", tasks=[{"type": "noop"}])
    engine.drain()
    return reload(workflow)


def next_phase(engine, workflow) -> Workflow:
    engine.call(services.workflow_next, workflow.pk, actor=Actor.CLI)
    engine.drain()
    return reload(workflow)


def delete_with_raw_sql(workflow) -> None:
    """What someone with database access, but not the engine, can do: delete the rows that
    refer to the workflow, then the workflow itself."""
    quote = connection.ops.quote_name
    pk = Workflow._meta.pk.get_db_prep_value(workflow.pk, connection)
    deliveries = f"SELECT id FROM {quote(WebhookDelivery._meta.db_table)} WHERE workflow_id = %s"
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {quote(WebhookAttempt._meta.db_table)} WHERE delivery_id IN ({deliveries})", [pk])
        for model in (WebhookDelivery, Task, Transition):
            cursor.execute(f"DELETE FROM {quote(model._meta.db_table)} WHERE workflow_id = %s", [pk])
        cursor.execute(f"DELETE FROM {quote(Workflow._meta.db_table)} WHERE id = %s", [pk])


# --- (a) an earlier copy of a workflow row written back over its cut log ---------------------


def test_a_workflow_row_replayed_over_its_cut_log_is_caught_against_a_checkpoint(engine, take):
    workflow = manual_workflow(engine)
    earlier = head_of(workflow)  # PREPARE, at #1
    workflow = next_phase(engine, workflow)
    path = take()  # EXECUTE, at #2
    Transition.objects.filter(workflow=workflow, seq__gt=earlier["last_seq"]).delete()
    Workflow.objects.filter(pk=workflow.pk).update(**earlier)

    assert not verify().error  # the database alone cannot tell
    run = verify(path)
    assert run.out.splitlines() == [
        f"workflow {workflow.pk}: transition #2: missing: the log ends at #1 but the checkpoint saw #2: "
        "its end was cut off and its head set back to an earlier copy"
    ]
    assert run.error == (
        "1 of 1 workflow(s) have a broken audit chain or one that does not extend the checkpoint; "
        "the deletion log is intact"
    )


def test_a_replayed_workflow_that_moved_on_again_is_caught_against_a_checkpoint(engine, take):
    """After the replay the engine carries on from the earlier head: the log is as long as
    the checkpoint's again, but its row at the checkpoint's head is another one."""
    workflow = manual_workflow(engine)
    earlier = head_of(workflow)
    workflow = next_phase(engine, workflow)
    path = take()
    Transition.objects.filter(workflow=workflow, seq__gt=earlier["last_seq"]).delete()
    Workflow.objects.filter(pk=workflow.pk).update(**earlier)
    workflow = next_phase(engine, reload(workflow))
    assert workflow.last_seq == 2

    assert not verify().error
    assert verify(path).out.splitlines() == [
        f"workflow {workflow.pk}: transition #2: it is not the row the checkpoint saw here: "
        "the log was replaced from this row on"
    ]


def test_a_replayed_workflow_deleted_through_the_engine_is_caught_against_a_checkpoint(engine, take):
    workflow = manual_workflow(engine)
    earlier = head_of(workflow)
    workflow = next_phase(engine, workflow)
    path = take()
    Transition.objects.filter(workflow=workflow, seq__gt=earlier["last_seq"]).delete()
    Workflow.objects.filter(pk=workflow.pk).update(**earlier)
    engine.call(services.workflow_cancel, workflow.pk, actor=Actor.CLI)
    engine.call(services.workflow_delete, workflow.pk, actor=Actor.CLI)
    # Cancelled at #2 from the earlier copy: the deletion records #2, but not the #2 the checkpoint saw.
    assert WorkflowDeletion.objects.get().last_seq == 2

    assert not verify().error
    run = verify(path)
    assert run.out.splitlines() == [
        f"workflow {workflow.pk}: deletion #1 records it at #2, not at or after the head the checkpoint saw (#2): "
        "its log was cut or replaced before it was deleted"
    ]
    assert "1 workflow(s) of the checkpoint are gone without a deletion record" in run.error


# --- (b) the deletion log cut and an earlier head written back -------------------------------


def delete_one(engine, name: str) -> None:
    workflow, _ = services.workflow_create(name=name, actor=Actor.CLI)
    engine.call(services.workflow_delete, workflow.pk, actor=Actor.CLI)


def test_a_deletion_log_cut_with_its_earlier_head_written_back_is_caught_against_a_checkpoint(engine, take):
    for i in range(3):
        delete_one(engine, f"d{i}")
    earlier = DeletionLogHead.objects.values("last_seq", "last_digest", "head_mac").get()
    delete_one(engine, "d3")
    path = take()
    WorkflowDeletion.objects.filter(seq=4).delete()
    DeletionLogHead.objects.update(**earlier)

    assert not verify().error
    run = verify(path)
    assert run.out.splitlines() == [
        "deletion log: deletion #4: missing: the log ends at #3 but the checkpoint saw #4: "
        "its end was cut off and its head set back to an earlier copy"
    ]
    assert run.error == (
        "0 of 0 workflow(s) have a broken audit chain or one that does not extend the checkpoint; "
        "the deletion log is broken"
    )


def test_a_deletion_log_emptied_with_its_head_is_caught_against_a_checkpoint(engine, take):
    delete_one(engine, "d0")
    path = take()
    WorkflowDeletion.objects.all().delete()
    DeletionLogHead.objects.all().delete()

    assert not verify().error
    assert verify(path).out.splitlines() == [
        "deletion log: deletion #1: missing: the log ends at #0 but the checkpoint saw #1: "
        "its end was cut off and its head set back to an earlier copy"
    ]


# --- (c) a workflow deleted with raw SQL ----------------------------------------------------


def test_a_workflow_deleted_with_raw_sql_is_caught_against_a_checkpoint(engine, take):
    kept = engine.start(name="kept", tasks=[{"type": "noop"}])
    gone = engine.start(name="gone", tasks=[{"type": "noop"}])
    engine.drain()
    delivery = WebhookDelivery.objects.create(
        workflow=gone, seq=4, event="complete", url="http://127.0.0.1/hook", body="{}"
    )
    WebhookAttempt.objects.create(delivery=delivery, number=1, status_code=200)
    path = take()
    delete_with_raw_sql(gone)
    assert not Workflow.objects.filter(pk=gone.pk).exists()

    assert not verify().error  # no trace left in the database
    run = verify(path)
    assert run.out.splitlines() == [
        f"workflow {gone.pk}: gone, and not in the deletion log (the checkpoint saw it at #4): "
        "it was deleted outside the engine"
    ]
    assert run.error == (
        "0 of 1 workflow(s) have a broken audit chain or one that does not extend the checkpoint; "
        "1 workflow(s) of the checkpoint are gone without a deletion record; the deletion log is intact"
    )
    assert str(kept.pk) not in run.out


# --- What still verifies --------------------------------------------------------------------


def test_a_checkpoint_taken_while_nothing_changed_verifies(engine, take):
    engine.start(tasks=[{"type": "noop"}])
    manual_workflow(engine)
    services.workflow_create(name="unstarted", actor=Actor.CLI)
    delete_one(engine, "d0")
    engine.drain()
    path = take()
    run = verify(path)
    assert not run.error, run.out + run.error
    assert run.out.splitlines()[0] == "audit chain intact for 3 workflow(s); deletion log intact (1 deletion(s))"
    assert run.out.splitlines()[1].startswith("every chain extends the checkpoint taken at ")
    assert run.out.splitlines()[1].endswith(" UTC (3 workflow(s), 0 deleted through the engine since)")


def test_what_happens_through_the_engine_after_a_checkpoint_extends_it(engine, take):
    """Workflows move on, new ones start, checkpointed ones and new ones are deleted through
    the engine: every chain still extends the checkpoint."""
    moving = manual_workflow(engine)
    deleted = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    delete_one(engine, "before")
    path = take()
    next_phase(engine, moving)
    engine.call(services.workflow_delete, deleted.pk, actor=Actor.CLI)
    engine.start(name="new", tasks=[{"type": "noop"}])
    engine.drain()
    delete_one(engine, "after")

    run = verify(path)
    assert not run.error, run.out + run.error
    assert run.out.splitlines()[0] == "audit chain intact for 2 workflow(s); deletion log intact (3 deletion(s))"
    assert run.out.splitlines()[1].endswith("(2 workflow(s), 1 deleted through the engine since)")


def test_a_workflow_created_after_the_checkpoint_is_checked_as_all_checks_it(engine, take):
    path = take()
    new = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    Transition.objects.filter(workflow=new, seq=2).update(reason="rewritten")
    assert (
        verify(path).out.splitlines()
        == verify().out.splitlines()
        == [f"workflow {new.pk}: transition #2: its digest does not match: the row was edited or inserted"]
    )


def test_a_chain_broken_when_the_checkpoint_is_taken_is_left_out_and_named(engine, tmp_path):
    whole, broken = (engine.start(name=name, tasks=[{"type": "noop"}]) for name in ("whole", "broken"))
    engine.drain()
    Transition.objects.filter(workflow=broken, seq=3).update(reason="rewritten")
    path = str(tmp_path / "checkpoint.json")

    run = workflow_command("checkpoint", "--out", path)
    assert run.error == "checkpoint written without 1 workflow(s) whose audit chain is broken"
    assert run.err.splitlines() == [
        f"workflow {broken.pk}: transition #3: its digest does not match: the row was edited or inserted"
    ]
    document = json.loads(Path(path).read_text())
    assert [entry["id"] for entry in document["workflows"]] == [str(whole.pk)]
    assert checkpoints.Checkpoint(path).workflows == 1
    # Against it, the broken workflow is checked as --all checks it: still broken.
    assert verify(path).out.splitlines() == verify().out.splitlines()


def test_a_broken_deletion_log_is_left_out_of_the_checkpoint(engine, tmp_path):
    delete_one(engine, "d0")
    WorkflowDeletion.objects.update(name="renamed")
    path = str(tmp_path / "checkpoint.json")
    run = workflow_command("checkpoint", "--out", path)
    assert run.error == "checkpoint written without the deletion log, which is broken"
    assert run.err.strip() == "deletion log: deletion #1: its digest does not match: the row was edited or inserted"
    assert json.loads(Path(path).read_text())["deletion_log"] is None


# --- The document ---------------------------------------------------------------------------


def test_the_document_goes_to_stdout_without_out(engine):
    workflows = [engine.start(name=f"w{i}", tasks=[{"type": "noop"}]) for i in range(3)]
    engine.drain()
    delete_one(engine, "d0")
    run = workflow_command("checkpoint")
    assert not run.error
    document = json.loads(run.out)
    assert list(document) == ["format", "taken_at", "deletion_log", "workflows", "signature"]
    assert document["format"] == "workflow_orchestrator.audit.checkpoint/1"
    assert document["deletion_log"] == {"seq": 1, "digest": WorkflowDeletion.objects.get().digest}
    heads = {str(w.pk): {"id": str(w.pk), "seq": 4, "digest": reload(w).last_digest} for w in workflows}
    assert document["workflows"] == [heads[pk] for pk in sorted(heads)]
    assert run.err.startswith("checkpoint of 3 workflow(s) and the deletion log at #1, taken at ")


def test_a_checkpoint_with_a_changed_entry_is_refused(engine, take):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    path = take()
    # Set the checkpoint back to what a replayed row would show: it no longer matches its signature.
    text = Path(path).read_text()
    Path(path).write_text(text.replace('"seq": 4', '"seq": 3'))
    run = verify(path)
    assert run.out == ""
    assert run.error == (
        f"checkpoint {path} refused: its signature does not match: it was changed after it was written, "
        "or signed with another key"
    )
    assert str(workflow.pk) in text


def test_a_checkpoint_with_an_entry_removed_is_refused(engine, take):
    for i in range(2):
        engine.start(name=f"w{i}", tasks=[{"type": "noop"}])
    engine.drain()
    path = take()
    lines = Path(path).read_text().splitlines()
    Path(path).write_text("\n".join([lines[0], lines[1].rstrip(","), *lines[3:]]))
    assert "its signature does not match" in verify(path).error


def test_a_checkpoint_signed_with_another_key_is_refused_before_anything_is_checked(engine, take, settings):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    delete_with_raw_sql(workflow)
    # Written by the engine's code, but signed with a key the forger guessed (the real one
    # only as a fallback, so that the chains still verify): it hides the deletion.
    real_key = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a key the forger guessed " + "x" * 30, [real_key]
    forged = take()
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = real_key, []
    Transition.objects.filter(seq=1).update(reason="rewritten")  # would be reported, were the file accepted
    run = verify(forged)
    assert run.out == ""
    assert "its signature does not match" in run.error


def test_a_checkpoint_verifies_after_a_secret_key_rotation(engine, take, settings):
    engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    path = take()
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "c" * 40
    assert "its signature does not match" in verify(path).error
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert not verify(path).error


def test_only_the_content_is_signed_not_its_layout(engine, take):
    for i in range(3):
        engine.start(name=f"w{i}", tasks=[{"type": "noop"}])
    engine.drain()
    path = Path(take())
    document = json.loads(path.read_text())
    path.write_text(json.dumps(document, indent=4))
    assert not verify(str(path)).error
    path.write_text(json.dumps(document, separators=(",", ":")))  # one line, as a log line
    assert not verify(str(path)).error
    document["workflows"].reverse()
    path.write_text(json.dumps(document))
    assert "its signature does not match" in verify(str(path)).error


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "not JSON: expected '{' at character 0, found 'the end'"),
        ("[1, 2]", "not JSON: expected '{' at character 0, found '['"),
        ('{"format": "something else"}', f"not a checkpoint: its format is not '{FORMAT}'"),
        ('{"taken_at": "2025-01-01"}', "expected the member 'format', found 'taken_at'"),
        (f'{{"format": "{FORMAT}", "taken_at": "yesterday"}}', "taken_at is not a time: 'yesterday'"),
        (f'{{"format": "{FORMAT}", "taken_at": "2025-01-01T00:00:00+00:00", "deletion_log": nul',
         f"not JSON: Expecting value at character {len(FORMAT) + 72}"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_a_checkpoint_is_refused_with_the_reason(db, tmp_path, content, reason):
    path = tmp_path / "checkpoint.json"
    path.write_text(content)
    run = verify(str(path))
    assert (run.out, run.error) == ("", f"checkpoint {path} refused: {reason}")


def test_a_missing_checkpoint_is_refused(db, tmp_path):
    path = tmp_path / "nowhere.json"
    assert verify(str(path)).error.startswith(f"checkpoint {path} refused: cannot be read: [Errno 2]")


def test_checkpoint_goes_with_all(db, tmp_path):
    assert workflow_command("verify", "some-id", "--checkpoint", "x").error == "--checkpoint goes with --all"


def test_a_checkpoint_that_cannot_be_written_is_a_one_line_error(db, tmp_path):
    run = workflow_command("checkpoint", "--out", str(tmp_path / "no" / "such" / "folder.json"))
    assert run.error.startswith(f"cannot write the checkpoint to {tmp_path}/no/such/folder.json: ")


# --- Streaming: queries and memory ----------------------------------------------------------


@pytest.fixture
def generated(django_user_model, monkeypatch):
    """Grow the number of workflows (with valid chains and signed heads) on demand. The
    database is read in chunks of 50 rows here, and checkpoints 4,000 characters at a time,
    so that every size below takes several."""
    monkeypatch.setattr(checkpoints, "CHUNK", 50)
    monkeypatch.setattr(checkpoints, "READ_CHARS", 4000)
    generator = Generator(owner=django_user_model.objects.create(username="generated"), tag="generated")

    def grow(to: int) -> None:
        generator.grow(to, total=to)

    return grow


def test_checkpoint_and_verify_read_the_database_in_a_fixed_number_of_queries(generated, tmp_path):
    counts = []
    for size in (60, 240):
        generated(size)
        path = str(tmp_path / f"checkpoint-{size}.json")
        with CaptureQueriesContext(connection) as writing:
            call_command("workflow", "checkpoint", "--out", path, stdout=StringIO())
        with CaptureQueriesContext(connection) as verifying:
            call_command("workflow", "verify", "--all", "--checkpoint", path, stdout=StringIO())
        assert checkpoints.Checkpoint(path).workflows == size
        counts.append((len(writing), len(verifying)))
    # Writing: the deletion log's rows, its head, its head again for the document, the
    # workflows, their transitions. Verifying: the workflows, their transitions, the deletion
    # log's rows, its head, and the count of deletions.
    assert counts == [(5, 5), (5, 5)]


def peak_bytes(*args) -> int:
    tracemalloc.start()
    try:
        call_command("workflow", *args, stdout=StringIO(), stderr=StringIO())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checkpoint_and_verify_hold_no_more_memory_for_more_workflows(generated, tmp_path):
    def peaks(size: int) -> tuple[int, int]:
        generated(size)
        path = str(tmp_path / f"checkpoint-{size}.json")
        return peak_bytes("checkpoint", "--out", path), peak_bytes("verify", "--all", "--checkpoint", path)

    peaks(50)  # the first run's imports and caches are not what is measured
    small, large = peaks(200), peaks(1600)
    # Eight times the workflows (1,400 more, 14,000 more transitions, 140 kB more of
    # checkpoint): holding anything per workflow (an id and a digest are over 150 bytes
    # as Python objects) would add more than 100 bytes each; the peak moves by no more
    # than what the rest of the process allocates meanwhile (tens of kB).
    for before, after in zip(small, large, strict=True):
        assert after - before < 1400 * 100, (small, large)


# --- From a shell, against the real database connection --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_blocks_no_writer_and_sees_none_of_its_writes():
    services.workflow_create(name="before", actor=Actor.CLI)
    errors = []

    def write():
        try:
            services.workflow_create(name="during", actor=Actor.CLI)
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)
        finally:
            connection.close()

    with checkpoints.snapshot():
        assert Workflow.objects.count() == 1
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=10)  # a writer held back by the snapshot would wait out the 20 s busy timeout
        assert not writer.is_alive() and not errors, errors
        assert Workflow.objects.count() == 1
    assert Workflow.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_checkpoint_then_verify_from_a_shell(tmp_path):
    workflows = [services.workflow_create(name=f"w{i}", actor=Actor.CLI)[0] for i in range(3)]
    path = tmp_path / "checkpoint.json"

    def manage(*args, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "workflow", *args],
            cwd=ROOT, env=child_env(), stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip

    with path.open("w") as out:
        taken = manage("checkpoint", stdout=out)
    assert taken.returncode == 0, taken.stderr
    assert "checkpoint of 3 workflow(s)" in taken.stderr
    assert manage("verify", "--all", "--checkpoint", str(path)).returncode == 0
    delete_with_raw_sql(workflows[1])
    result = manage("verify", "--all", "--checkpoint", str(path))
    assert result.returncode == 1, result.stderr
    assert result.stdout.split()[1] == f"{workflows[1].pk}:"
    assert "1 workflow(s) of the checkpoint are gone without a deletion record" in result.stderr


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_checkpoints_taken_while_a_cluster_runs_are_extended_by_what_it_does_next(cluster, tmp_path):
    """Each checkpoint is one moment of the database: heads read while workers move the
    workflows on are extended by the rows they write next, and no chain looks broken
    halfway through a change."""
    cluster(ORCH_WORKERS=2)
    tasks = [{"type": "sleep", "params": {"seconds": 0.05}} for _ in range(4)]
    workflows = [
        services.workflow_create(name=f"busy-{i}", tasks=tasks, actor=Actor.CLI, start=True)[0] for i in range(12)
    ]
    taken = []
    deadline = time.monotonic() + 120
    while Workflow.objects.exclude(state=State.COMPLETE).exists():
        assert time.monotonic() < deadline, "the workflows did not complete"
        path = str(tmp_path / f"checkpoint-{len(taken)}.json")
        run = workflow_command("checkpoint", "--out", path)
        assert not run.error, run.err + run.error
        taken.append(path)
        time.sleep(0.05)
    assert len(taken) >= 2
    services.workflow_delete(workflows[0].pk, actor=Actor.CLI)
    for path in taken:
        run = verify(path)
        assert not run.error, (path, run.out, run.error)
