from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import reload
from workflows import audit
from workflows.models import Transition


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
        verify_command("--all")


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
