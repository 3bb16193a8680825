import importlib
from io import StringIO

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import reload
from workflows import audit, services
from workflows.models import Actor, State, Transition, Workflow


@pytest.fixture
def finished(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    return reload(workflow)


def verify_command(*args) -> str:
    out = StringIO()
    call_command("workflow", "verify", *args, stdout=out)
    return out.getvalue()


def test_an_untouched_chain_verifies(finished):
    assert finished.transitions.count() == 4
    assert audit.verify(finished) is None
    assert "intact for 1 workflow" in verify_command(str(finished.pk))
    assert "intact for 1 workflow" in verify_command("--all")


def test_each_row_carries_a_digest_chained_to_the_previous_one(finished):
    rows = list(finished.transitions.order_by("seq"))
    assert all(len(row.digest) == 64 for row in rows)
    assert len({row.digest for row in rows}) == 4
    assert rows[1].digest == audit.digest(rows[1], rows[0].digest)


def test_an_edited_row_is_caught(finished):
    Transition.objects.filter(workflow=finished, seq=2).update(actor_label="admin:mallory")
    broken = audit.verify(finished)
    assert broken.seq == 2 and "edited" in broken.problem
    with pytest.raises(CommandError, match=r"transition #2: its digest does not match"):
        verify_command(str(finished.pk))


def test_a_deleted_row_is_caught(finished):
    Transition.objects.filter(workflow=finished, seq=3).delete()
    broken = audit.verify(finished)
    assert broken.seq == 3 and "deleted" in broken.problem


def test_a_deleted_last_row_is_caught(finished):
    Transition.objects.filter(workflow=finished, seq=4).delete()
    broken = audit.verify(finished)
    assert broken.seq == 4 and "ends in VALIDATE but the workflow is COMPLETE" in broken.problem


def test_an_inserted_row_is_caught(finished):
    Transition.objects.filter(workflow=finished, seq=4).update(seq=5)
    forged = Transition(
        workflow=finished,
        seq=4,
        source="VALIDATE",
        target="FAILED",
        event="fail",
        actor_label="worker",
        digest="0" * 64,
    )
    forged.save()
    broken = audit.verify(finished)
    assert broken.seq == 4


def test_a_forged_digest_without_the_key_is_caught(finished, settings):
    row = finished.transitions.get(seq=4)
    previous = finished.transitions.get(seq=3).digest
    Transition.objects.filter(pk=row.pk).update(
        reason="rewritten", digest=audit.digest(row, previous, secret="a key the forger guessed")
    )
    assert audit.verify(finished).seq == 4


def test_rows_verify_after_a_secret_key_rotation(finished, settings):
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    assert audit.verify(finished) is not None
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert audit.verify(finished) is None


def test_verify_needs_an_id_or_all(db):
    with pytest.raises(CommandError, match="one workflow id, or --all"):
        verify_command()


# --- The chain's head on the workflow row ---------------------------------------------------


def test_a_removed_tail_is_caught_with_the_state_set_back(finished):
    Transition.objects.filter(workflow=finished, seq=4).delete()
    Workflow.objects.filter(pk=finished.pk).update(state=State.VALIDATE)
    broken = audit.verify(reload(finished))
    assert broken.seq == 4 and "the log ends at #3 but its head is at #4" in broken.problem


def test_a_removed_tail_is_caught_with_the_head_moved_back_too(finished):
    third = finished.transitions.get(seq=3)
    Transition.objects.filter(workflow=finished, seq=4).delete()
    Workflow.objects.filter(pk=finished.pk).update(state=State.VALIDATE, last_seq=3, last_digest=third.digest)
    broken = audit.verify(reload(finished))
    assert broken.seq is None and "its MAC does not match" in broken.problem
    with pytest.raises(CommandError, match=r"head: its MAC does not match"):
        verify_command(str(finished.pk))


def test_a_state_changed_without_its_row_is_caught(engine):
    unstarted, _ = services.workflow_create(name="later", tasks=[{"type": "noop"}], actor=Actor.SYSTEM)
    assert audit.verify(reload(unstarted)) is None
    Workflow.objects.filter(pk=unstarted.pk).update(state=State.COMPLETE)
    broken = audit.verify(reload(unstarted))
    assert broken.seq == 1 and "the log is empty but the workflow is COMPLETE" in broken.problem


def test_a_head_whose_mac_does_not_match_is_caught(finished):
    forged = audit.head_mac(finished, secret="a key the forger guessed")
    Workflow.objects.filter(pk=finished.pk).update(head_mac=forged)
    assert "its MAC does not match" in audit.verify(reload(finished)).problem
    Workflow.objects.filter(pk=finished.pk).update(head_mac="")
    assert "its MAC does not match" in audit.verify(reload(finished)).problem


def test_the_head_verifies_after_a_secret_key_rotation(finished, settings):
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "y" * 40
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert audit.verify(finished) is None
    workflow, _ = services.workflow_create(name="after", tasks=[{"type": "noop"}], actor=Actor.SYSTEM)
    assert audit.verify(reload(workflow)) is None


def test_every_way_a_workflow_changes_keeps_its_head_signed(engine, settings):
    """Creating, starting, the hot path, a failure, a retry, a manual `next`, a cancel and
    recovery each move the head; after each, the chain and its head verify."""

    def intact(workflow):
        workflow = reload(workflow)
        assert audit.verify(workflow) is None, (workflow.state, audit.verify(workflow))
        return workflow

    unstarted, _ = services.workflow_create(name="unstarted", tasks=[{"type": "noop"}], actor=Actor.SYSTEM)
    intact(unstarted)
    engine.call(services.workflow_start, unstarted.pk, actor=Actor.CLI)
    engine.drain()
    assert intact(unstarted).state == State.COMPLETE

    failing = engine.start(tasks=[{"type": "fail", "params": {"times": 1}, "max_attempts": 1}])
    engine.drain()
    assert intact(failing).state == State.FAILED
    engine.call(services.workflow_retry, failing.pk, actor=Actor.CLI)
    engine.drain()
    assert intact(failing).state == State.COMPLETE

    manual = engine.start(mode="manual", tasks=[{"type": "noop"}])
    engine.drain()
    engine.call(services.workflow_next, manual.pk, actor=Actor.CLI)
    assert intact(manual).state == State.EXECUTE
    engine.call(services.workflow_cancel, manual.pk, actor=Actor.CLI, reason="enough")
    assert intact(manual).state == State.CANCELLED

    stranded = engine.start(tasks=[{"type": "noop"}])
    engine.pending()  # its PREPARE job is lost; recovery re-sends it once it is stale
    settings.ORCH_REQUEUE_SECONDS = 0
    engine.call(services.recover)
    engine.drain()
    assert intact(stranded).state == State.COMPLETE


def test_the_migration_signs_the_heads_of_existing_workflows(finished):
    migration = importlib.import_module("workflows.migrations.0005_audit_head_mac_and_deletion_log")
    Workflow.objects.update(head_mac="")
    assert audit.verify(reload(finished)) is not None
    migration.sign_heads(django_apps, None)
    assert audit.verify(reload(finished)) is None
