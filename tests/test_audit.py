import subprocess
import sys
import threading
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from tests import dom
from tests.conftest import ROOT, child_env, reload, wait_for
from workflow_orchestrator import audit, services
from workflow_orchestrator.models import Actor, DeletionLogHead, State, Transition, Workflow, WorkflowDeletion

FOUR = [{"type": "noop"}, {"type": "echo", "params": {"n": 1}}, {"type": "noop"}, {"type": "noop"}]


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


def test_deleting_a_user_who_acted_breaks_no_chain(engine, django_user_model):
    user = django_user_model.objects.create_user("leaver", password="pw")
    workflow, _ = engine.call(services.workflow_create, name="w", tasks=[], actor=Actor.api(user))
    engine.call(services.workflow_start, workflow.pk, actor=Actor.api(user))
    engine.drain()
    user_id = user.pk
    user.delete()
    workflow = reload(workflow)
    assert workflow.transitions.filter(actor_id=user_id).count() == 1  # the id stays, as the digest has it
    assert audit.verify(workflow) is None
    assert "intact for 1 workflow" in verify_command("--all")
    assert APIClient().get(f"/workflow/{workflow.pk}").status_code == 401  # and nothing else reads the user


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


def test_a_signed_row_that_does_not_start_where_the_last_one_ended_is_caught(finished):
    """What the engine wrote before it checked heads: a COMPLETE workflow whose state alone
    was set back to VALIDATE, then moved on by recovery, got a second, properly signed
    VALIDATE → COMPLETE row."""
    Workflow.objects.filter(pk=finished.pk).update(state=State.VALIDATE)
    workflow = reload(finished)
    workflow.complete()
    row = Transition.objects.build(workflow=workflow, source=State.VALIDATE, event="complete", actor=Actor.SYSTEM)
    row.save()
    Workflow.objects.filter(pk=workflow.pk).update(
        state=State.COMPLETE, last_seq=row.seq, last_digest=row.digest, head_mac=workflow.head_mac
    )
    broken = audit.verify(reload(workflow))
    assert broken.seq == 5
    assert broken.problem == "it starts from VALIDATE, but the row before it ended in COMPLETE"


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


# --- verify --all -----------------------------------------------------------------------------


@pytest.fixture
def three(engine):
    workflows = [engine.start(name=f"w{i}", tasks=[{"type": "noop"}]) for i in range(3)]
    engine.drain()
    return [reload(workflow) for workflow in workflows]


def test_verify_all_reports_every_broken_workflow_then_fails(three):
    edited, whole, truncated = three
    Transition.objects.filter(workflow=edited, seq=2).update(reason="rewritten")
    Transition.objects.filter(workflow=truncated, seq=4).delete()
    out = StringIO()
    with pytest.raises(CommandError, match=r"2 of 3 workflow\(s\) have a broken audit chain"):
        call_command("workflow", "verify", "--all", stdout=out)
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(
        [
            f"workflow {edited.pk}: transition #2: its digest does not match: the row was edited or inserted",
            f"workflow {truncated.pk}: transition #4: missing: the log ends in VALIDATE but the workflow is COMPLETE",
        ]
    )
    assert str(whole.pk) not in out.getvalue()


def test_verify_all_sums_up_when_every_chain_is_whole(three, engine):
    engine.call(services.workflow_delete, three[0].pk, actor=Actor.CLI)
    out = verify_command("--all")
    assert out.strip() == "audit chain intact for 2 workflow(s); deletion log intact (1 deletion(s))"


@pytest.mark.django_db(transaction=True)
def test_verify_all_exits_1_with_every_broken_workflow_from_a_shell():
    workflows = [services.workflow_create(name=f"w{i}", actor=Actor.CLI)[0] for i in range(3)]
    for workflow in workflows[:2]:
        Workflow.objects.filter(pk=workflow.pk).update(state=State.FAILED)
    result = subprocess.run(
        [sys.executable, "manage.py", "workflow", "verify", "--all"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert {str(w.pk) for w in workflows[:2]} == {line.split()[1].rstrip(":") for line in result.stdout.splitlines()}
    assert "2 of 3 workflow(s) have a broken audit chain" in result.stderr


# --- The deletion log -------------------------------------------------------------------------


def test_a_deletion_is_recorded_with_who_when_and_the_chain_head(engine, admin_user):
    workflow = engine.start(name="gone", tasks=[{"type": "noop"}])
    engine.drain()
    workflow = reload(workflow)
    before = timezone.now()
    engine.call(services.workflow_delete, workflow.pk, actor=Actor.api(admin_user))
    row = WorkflowDeletion.objects.get()
    assert (row.seq, row.workflow_id, row.name, row.state) == (1, workflow.pk, "gone", State.COMPLETE)
    assert (row.last_seq, row.last_digest) == (4, workflow.last_digest)
    assert (row.actor_id, row.actor_label) == (admin_user.pk, f"api:{admin_user.username}")
    assert before <= row.deleted_at <= timezone.now()
    assert len(row.digest) == 64 and row.digest == audit.deletion_digest(row, "")
    assert WorkflowDeletion.objects.verify() is None


def test_a_refused_deletion_records_nothing(engine):
    running = engine.start(tasks=[{"type": "noop"}])
    with pytest.raises(services.InvalidTransition):
        engine.call(services.workflow_delete, running.pk, actor=Actor.CLI)
    assert not WorkflowDeletion.objects.exists()


def test_the_deletion_log_outlives_the_user_who_deleted(engine, django_user_model, admin_client):
    user = django_user_model.objects.create_user("leaver")
    workflow, _ = services.workflow_create(name="x", actor=Actor.api(user))
    engine.call(services.workflow_delete, workflow.pk, actor=Actor.api(user))
    user_id = user.pk
    user.delete()
    row = WorkflowDeletion.objects.get()
    assert (row.actor_id, row.actor_label) == (user_id, "api:leaver")
    assert WorkflowDeletion.objects.verify() is None
    page = admin_client.get(reverse("admin:workflow_orchestrator_workflowdeletion_change", args=[row.pk]))
    assert page.status_code == 200 and dom.parse(page).one(".field-actor_label .readonly").text == "api:leaver"


def test_the_api_the_cli_the_admin_and_its_bulk_action_record_deletions(engine, admin_user, admin_client):
    made = {name: services.workflow_create(name=name, actor=Actor.SYSTEM)[0] for name in ("a", "c", "d", "b1", "b2")}
    api = APIClient()
    api.force_authenticate(admin_user)
    assert api.delete(f"/workflow/{made['a'].pk}").status_code == 204
    call_command("workflow", "delete", str(made["c"].pk), stdout=StringIO())
    admin_client.post(reverse("admin:workflow_orchestrator_workflow_delete", args=[made["d"].pk]), {"post": "yes"})
    bulk = {"action": "delete_selected", "_selected_action": [str(made["b1"].pk), str(made["b2"].pk)], "post": "yes"}
    admin_client.post(reverse("admin:workflow_orchestrator_workflow_changelist"), bulk)
    assert not Workflow.objects.exists()
    log = list(WorkflowDeletion.objects.order_by("seq").values_list("seq", "name", "actor_label"))
    admin = f"admin:{admin_user.username}"
    assert log[:3] == [(1, "a", f"api:{admin_user.username}"), (2, "c", "cli"), (3, "d", admin)]
    assert {(name, label) for _, name, label in log[3:]} == {("b1", admin), ("b2", admin)}
    assert [seq for seq, _, _ in log] == [1, 2, 3, 4, 5]
    assert WorkflowDeletion.objects.verify() is None


@pytest.fixture
def deletions(engine):
    for i in range(4):
        workflow, _ = services.workflow_create(name=f"d{i}", actor=Actor.CLI)
        engine.call(services.workflow_delete, workflow.pk, actor=Actor.CLI)
    return list(WorkflowDeletion.objects.order_by("seq"))


def test_an_edited_deletion_row_is_caught(deletions):
    WorkflowDeletion.objects.filter(seq=2).update(actor_label="admin:mallory")
    broken = WorkflowDeletion.objects.verify()
    assert broken.seq == 2 and "edited or inserted" in broken.problem
    out = StringIO()
    with pytest.raises(CommandError, match=r"the deletion log is broken"):
        call_command("workflow", "verify", "--all", stdout=out)
    assert out.getvalue().strip() == (
        "deletion log: deletion #2: its digest does not match: the row was edited or inserted"
    )


def test_a_removed_deletion_row_is_caught(deletions):
    WorkflowDeletion.objects.filter(seq=3).delete()
    broken = WorkflowDeletion.objects.verify()
    assert broken.seq == 3 and "a row was removed" in broken.problem


def test_a_removed_last_deletion_row_is_caught(deletions):
    WorkflowDeletion.objects.filter(seq=4).delete()
    broken = WorkflowDeletion.objects.verify()
    assert broken.seq == 4 and "the log ends at #3 but its head is at #4" in broken.problem


def test_a_removed_last_deletion_row_is_caught_with_the_head_moved_back(deletions):
    WorkflowDeletion.objects.filter(seq=4).delete()
    DeletionLogHead.objects.update(last_seq=3, last_digest=deletions[2].digest)
    broken = WorkflowDeletion.objects.verify()
    assert broken.seq is None and "its MAC does not match" in broken.problem


def test_an_inserted_deletion_row_is_caught(deletions):
    WorkflowDeletion.objects.filter(seq=4).update(seq=5)
    forged = WorkflowDeletion(
        seq=4,
        workflow_id=uuid.uuid4(),
        name="planted",
        state=State.COMPLETE,
        last_seq=4,
        actor_label="cli",
        digest="0" * 64,
    )
    forged.save()
    assert WorkflowDeletion.objects.verify().seq == 4


def test_a_deletion_log_without_its_head_is_caught(deletions):
    DeletionLogHead.objects.all().delete()
    broken = WorkflowDeletion.objects.verify()
    assert broken.seq is None and "its head is missing" in broken.problem


def test_deletion_rows_are_append_only(deletions):
    row = deletions[0]
    row.name = "renamed"
    with pytest.raises(ValueError, match="append-only"):
        row.save()


def test_the_deletion_log_verifies_after_a_secret_key_rotation(deletions, settings):
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "z" * 40
    assert WorkflowDeletion.objects.verify() is not None
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert WorkflowDeletion.objects.verify() is None


def test_the_deletion_log_is_read_only_in_the_admin(deletions, admin_client):
    changelist = admin_client.get(reverse("admin:workflow_orchestrator_workflowdeletion_changelist"))
    assert changelist.status_code == 200
    listed = dom.parse(changelist)
    shown = " ".join(listed.texts("#result_list tbody tr"))
    assert all(row.name in shown for row in deletions)
    assert not listed.select("option[value=delete_selected]")
    assert not listed.select(f"a[href='{reverse('admin:workflow_orchestrator_workflowdeletion_add')}']")
    row = deletions[0]
    page = admin_client.get(reverse("admin:workflow_orchestrator_workflowdeletion_change", args=[row.pk]))
    assert page.status_code == 200 and not dom.parse(page).select("[name=_save]")
    assert admin_client.post(reverse("admin:workflow_orchestrator_workflowdeletion_add"), {}).status_code == 403
    admin_client.post(reverse("admin:workflow_orchestrator_workflowdeletion_change", args=[row.pk]), {"name": "x"})
    delete = admin_client.post(
        reverse("admin:workflow_orchestrator_workflowdeletion_delete", args=[row.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    assert list(WorkflowDeletion.objects.order_by("seq")) == deletions
    assert WorkflowDeletion.objects.get(pk=row.pk).name == row.name
    assert WorkflowDeletion.objects.verify() is None


def delete_concurrently(workflow_ids: list) -> None:
    """Delete each workflow from its own thread (and database connection), all at once."""
    barrier = threading.Barrier(len(workflow_ids))
    errors: list[BaseException] = []

    def delete(workflow_id):
        try:
            barrier.wait(timeout=30)
            services.workflow_delete(workflow_id, actor=Actor.CLI)
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=delete, args=(workflow_id,)) for workflow_id in workflow_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_concurrent_deletions_chain_one_after_another():
    workflows = [services.workflow_create(name=f"c{i}", actor=Actor.CLI)[0] for i in range(12)]
    delete_concurrently([workflow.pk for workflow in workflows])
    assert not Workflow.objects.exists()
    log = WorkflowDeletion.objects.order_by("seq")
    assert list(log.values_list("seq", flat=True)) == list(range(1, 13))
    assert {row.workflow_id for row in log} == {workflow.pk for workflow in workflows}
    assert WorkflowDeletion.objects.verify() is None


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_deletions_run_alongside_a_real_cluster_without_deadlock(cluster):
    """Deleting ended workflows (the log's head locked until each commits) while a real
    cluster runs other workflows' jobs: both finish, and every chain verifies."""
    idle = [services.workflow_create(name=f"idle-{i}", actor=Actor.CLI)[0] for i in range(10)]
    cluster(ORCH_WORKERS=2)
    busy = [services.workflow_create(name=f"busy-{i}", tasks=FOUR, actor=Actor.CLI, start=True)[0] for i in range(8)]
    delete_concurrently([workflow.pk for workflow in idle])
    wait_for(
        lambda: Workflow.objects.filter(state=State.COMPLETE).count() == len(busy), 120, "the busy workflows to end"
    )
    assert Workflow.objects.count() == len(busy)
    assert all(audit.verify(workflow) is None for workflow in Workflow.objects.all())
    assert WorkflowDeletion.objects.count() == len(idle) and WorkflowDeletion.objects.verify() is None
