"""The engine never writes over a broken audit chain: recovery, workers and users leave a
workflow whose chain does not verify as it is, and say so (logs, BrokenChain, /metrics,
the admin's overview, `workflow recover`), until the chain verifies again."""

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from tests import dom
from tests.conftest import reload, task, wait_for
from tests.test_api import client_for
from workflow_orchestrator import audit, queue, services
from workflow_orchestrator.models import Actor, BrokenChain, State, Task, Transition, Workflow


@pytest.fixture
def finished(engine):
    workflow = engine.start(tasks=[{"type": "noop"}])
    engine.drain()
    return reload(workflow)


def cut_off_the_last_row(workflow):
    """The last audit row deleted and the row set back to VALIDATE with the previous
    row's head (its MAC, which an attacker cannot make, left as it was)."""
    third = workflow.transitions.get(seq=3)
    Transition.objects.filter(workflow=workflow, seq=4).delete()
    Workflow.objects.filter(pk=workflow.pk).update(state=State.VALIDATE, last_seq=3, last_digest=third.digest)


def set_the_state_back(workflow):
    """Only the state set back to VALIDATE."""
    Workflow.objects.filter(pk=workflow.pk).update(state=State.VALIDATE)


def history(workflow) -> list[tuple]:
    return list(Transition.objects.filter(workflow=workflow).order_by("seq").values_list("seq", "event", "digest"))


def recover_command() -> str:
    out = StringIO()
    call_command("workflow", "recover", stdout=out)
    return out.getvalue()


TAMPERING = [cut_off_the_last_row, set_the_state_back]


@pytest.mark.parametrize("tamper", TAMPERING)
def test_recovery_leaves_a_tampered_workflow_as_it_is_and_says_so(finished, engine, tamper, caplog):
    tamper(finished)
    broken = audit.verify(reload(finished))
    assert broken is not None
    rows = history(finished)

    found = engine.call(services.recover)
    assert found["moved_on"] == 0
    assert found["audit_broken"] == {str(finished.pk): str(broken)}
    assert history(finished) == rows, "recovery wrote nothing over the evidence"
    assert audit.verify(reload(finished)) == broken
    assert reload(finished).state == State.VALIDATE
    finding = BrokenChain.objects.get(workflow=finished)
    assert (finding.problem, finding.refused) == (str(broken), "recover")
    assert any(r.levelname == "ERROR" and str(finished.pk) in r.getMessage() for r in caplog.records)

    printed = recover_command()
    assert "audit chains broken, left as they are: 1" in printed
    assert f"audit broken: {broken}" in printed
    assert history(finished) == rows
    with pytest.raises(CommandError, match="broken audit chain"):
        call_command("workflow", "verify", str(finished.pk), stdout=StringIO())


def start_two_tasks(engine) -> tuple[Workflow, dict]:
    """A workflow in EXECUTE with `a` done and `b`'s job waiting on the broker."""
    workflow = engine.start(tasks=[{"name": "a", "type": "noop"}, {"name": "b", "type": "noop"}])
    [prepare] = engine.pending()
    engine.run(prepare, tasks=2)  # PREPARE, then `a`, which its transition hands to the same worker
    [b_job] = engine.pending()
    assert reload(workflow).state == State.EXECUTE and task(workflow, "a").status == Task.Status.SUCCEEDED
    return workflow, b_job


def break_the_head(workflow) -> None:
    Workflow.objects.filter(pk=workflow.pk).update(head_mac="0" * 64)


def test_a_worker_keeps_its_success_but_does_not_move_on_a_workflow_whose_head_is_broken(engine):
    workflow, b_job = start_two_tasks(engine)
    break_the_head(workflow)
    rows = history(workflow)
    engine.run(b_job)
    assert task(workflow, "b").status == Task.Status.SUCCEEDED, "the work done is kept"
    assert reload(workflow).state == State.EXECUTE and history(workflow) == rows
    assert BrokenChain.objects.get(workflow=workflow).refused == "validate"
    assert engine.call(services.recover)["audit_broken"] == {str(workflow.pk): str(audit.verify(reload(workflow)))}
    assert history(workflow) == rows


def test_a_head_broken_after_the_claim_still_stops_the_worker(engine):
    """The claim saw a signed head, so the success and the transition would be one
    statement: the transition compares the head's MAC too, and loses."""
    workflow, b_job = start_two_tasks(engine)
    claimed = services.task_claim(*b_job["args"][:2], worker="w:1")
    assert claimed.snapshot.last_of_phase(State.EXECUTE)
    break_the_head(workflow)
    rows = history(workflow)
    assert engine.call(services.task_record, claimed, stored=None).recorded
    assert task(workflow, "b").status == Task.Status.SUCCEEDED
    assert reload(workflow).state == State.EXECUTE and history(workflow) == rows
    assert BrokenChain.objects.get(workflow=workflow).refused == "validate"


def test_a_failure_is_not_recorded_on_a_workflow_whose_head_is_broken(engine):
    workflow = engine.start(tasks=[{"name": "a", "type": "noop"}, {"name": "f", "type": "fail", "max_attempts": 1}])
    [prepare] = engine.pending()
    engine.run(prepare, tasks=2)
    [f_job] = engine.pending()
    break_the_head(workflow)
    rows = history(workflow)
    engine.run(f_job)
    assert task(workflow, "f").status == Task.Status.RUNNING, "its lease will run out; recovery leaves it too"
    assert reload(workflow).state == State.EXECUTE and history(workflow) == rows
    assert BrokenChain.objects.get(workflow=workflow).refused == "record a failure"


@pytest.fixture
def owner(db):
    return User.objects.create_user("owner", password="pw")


def test_users_cannot_change_a_workflow_whose_head_is_broken(owner):
    workflow, _ = services.workflow_create(name="w", tasks=[{"type": "noop"}], actor=Actor.api(owner))
    break_the_head(workflow)
    api = client_for(owner)
    assert api.get(f"/workflow/{workflow.pk}").json()["available_transitions"] == ["delete"]
    refused = api.post(f"/execution/workflows/{workflow.pk}/start")
    assert refused.status_code == 409
    body = refused.json()
    assert "its audit chain does not verify" in body["detail"] and "its MAC does not match" in body["detail"]
    assert (body["state"], body["available_transitions"]) == ("INIT", ["delete"])
    assert reload(workflow).state == State.INIT and not history(workflow)
    assert BrokenChain.objects.get(workflow=workflow).refused == "start"
    with pytest.raises(CommandError, match="audit chain does not verify"):
        call_command("workflow", "cancel", str(workflow.pk), stdout=StringIO())
    assert api.delete(f"/workflow/{workflow.pk}").status_code == 204, "deleting it stays possible, and is logged"


def test_users_cannot_retry_a_workflow_with_a_row_missing_in_the_middle(engine):
    """Its head is signed and matches its last row: only reading the whole chain, as every
    user action does, shows the hole."""
    failed = engine.start(tasks=[{"type": "fail", "max_attempts": 1}])
    engine.drain()
    assert reload(failed).state == State.FAILED
    Transition.objects.filter(workflow=failed, seq=2).delete()
    rows = history(failed)
    with pytest.raises(services.AuditBroken, match="transition #2: missing"):
        engine.call(services.workflow_retry, failed.pk, actor=Actor.CLI)
    assert reload(failed).state == State.FAILED and history(failed) == rows


def test_a_rotated_secret_key_without_its_fallback_stops_the_engine_until_it_is_listed(engine, settings):
    """What an operator meets when DJANGO_SECRET_KEY changes without
    DJANGO_SECRET_KEY_FALLBACKS: every head fails to verify, the engine moves nothing and
    says so; once the old key is listed, recovery clears the findings and moves on."""
    workflow, b_job = start_two_tasks(engine)
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-rotated-secret-key-" + "z" * 40
    engine.run(b_job)
    assert reload(workflow).state == State.EXECUTE and BrokenChain.objects.filter(workflow=workflow).exists()
    assert engine.call(services.recover)["moved_on"] == 0

    settings.SECRET_KEY_FALLBACKS = [old_key]
    found = engine.call(services.recover)
    assert (found["moved_on"], found["audit_broken"]) == (1, {})
    assert not BrokenChain.objects.exists()
    engine.drain()
    workflow = reload(workflow)
    assert workflow.state == State.COMPLETE and audit.verify(workflow) is None


def test_metrics_and_the_overview_count_broken_chains(finished, engine, admin_client, client, settings):
    set_the_state_back(finished)
    engine.call(services.recover)
    settings.ORCH_METRICS_TOKEN = "t"
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t").content.decode()
    assert "\norchestrator_audit_broken_workflows 1.0\n" in scraped

    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_dashboard")))
    figure = page.one("#figure-audit-broken")
    link = figure.one("a")
    assert (link.text, link["href"]) == ("1", "/admin/workflow_orchestrator/workflow/?audit=broken")
    assert "alarm" in figure.parent.classes, "the figure is raised as an alarm"
    listed = admin_client.get(link["href"]).context["cl"].result_list
    assert [workflow.pk for workflow in listed] == [finished.pk]
    page = dom.parse(admin_client.get(reverse("admin:workflow_orchestrator_workflow_change", args=[finished.pk])))
    chain = page.one(".field-audit_chain .readonly")
    assert chain.one(".audit-broken").text == "broken"
    assert chain.text.startswith("broken: transition #5: missing: the log ends in COMPLETE")


def found_again(last: list | None) -> list | None:
    """When both findings were (found and) found again since `last`, their times."""
    now = list(BrokenChain.objects.order_by("pk").values_list("found_at", flat=True))
    if len(now) == 2 and (last is None or all(a > b for a, b in zip(now, last, strict=True))):
        return now
    return None


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_real_cluster_s_recovery_leaves_both_tampered_workflows_as_they_are(cluster):
    """Both tamperings, then recovery run three times by a real cluster (the jobs its
    schedule queues, sent at once rather than waiting for django-q2's scheduler): nothing
    was written."""
    workflows = []
    for tamper in TAMPERING:
        workflow, _ = services.workflow_create(name="t", tasks=[{"type": "noop"}], actor=Actor.SYSTEM, start=True)
        workflows.append((workflow, tamper))
    cluster()
    wait_for(lambda: all(reload(w).state == State.COMPLETE for w, _ in workflows), 60, "the workflows to complete")
    before = {}
    for workflow, tamper in workflows:
        tamper(reload(workflow))
        before[workflow.pk] = (history(workflow), audit.verify(reload(workflow)))
    last = None
    for run in range(3):
        queue.enqueue([queue.Job(queue.RECOVER, (), "recover")])
        last = wait_for(lambda last=last: found_again(last), 30, f"recovery run {run + 1} to find both")
    for workflow, _ in workflows:
        rows, broken = before[workflow.pk]
        assert history(workflow) == rows and audit.verify(reload(workflow)) == broken
        assert reload(workflow).state == State.VALIDATE
