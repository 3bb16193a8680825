"""`manage.py demo` on a real cluster: its workflows end as it says, and the nightly
import's tasks run in the order their dependencies set."""

from io import StringIO

import pytest
from django.core.management import call_command
from django_q.status import Stat

from tests.conftest import task, wait_for
from workflow_orchestrator import queue
from workflow_orchestrator.models import State, Workflow
from workflow_orchestrator.statements import from_time


def attempt_times(workflow: Workflow, name: str) -> tuple:
    """When the task's last attempt started and finished."""
    last = task(workflow, name).attempts[-1]
    return from_time(last["started_at"]), from_time(last["finished_at"])


def runs_after(workflow: Workflow, name: str, *upstream: str) -> bool:
    started, _ = attempt_times(workflow, name)
    return all(attempt_times(workflow, before)[1] <= started for before in upstream)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_demo_runs_its_workflows_and_the_nightly_import_in_dependency_order(cluster):
    cluster(ORCH_RETRY_BACKOFF=0.05)
    wait_for(lambda: Stat.get_all(broker=queue.broker()), 60, "the cluster reports itself")
    out = StringIO()
    call_command("demo", timeout=120, stdout=out, stderr=StringIO())

    workflows = {w.name: w for w in Workflow.objects.all()}
    assert {name: w.state for name, w in workflows.items()} == {
        "demo nightly import 1": State.COMPLETE,
        "demo flaky 1": State.COMPLETE,
        "demo fails, retried 1": State.COMPLETE,
        "demo cancelled 1": State.CANCELLED,
        "demo expense approval 1": State.COMPLETE,
    }
    nightly = workflows["demo nightly import 1"]
    assert runs_after(nightly, "transform", "fetch")
    assert runs_after(nightly, "load", "transform")
    assert runs_after(nightly, "notify", "transform")
    assert runs_after(nightly, "report", "load", "notify")
    report = task(nightly, "report").result
    assert report["load"] == {"transform": {"fetch": {"rows": 3}}}
    assert report["notify"] == {"slept": 0.3}, "its whole nap, not cut short"

    flaky = workflows["demo flaky 1"]
    assert [a["outcome"] for a in task(flaky, "flaky").attempts] == ["failed", "failed", "succeeded"]
    assert runs_after(flaky, "then", "flaky")
    assert workflows["demo fails, retried 1"].retries == 1
    assert "nightly import" in out.getvalue() and "COMPLETE" in out.getvalue()

    expense = workflows["demo expense approval 1"]
    decided = task(expense, "approve").result["decisions"]
    assert [(d["decision"], d["by"], d["data"]["cost_centre"]) for d in decided] == [
        ("approve", "cli:demo-approver", "support")
    ]
    assert task(expense, "pay").result == {"approve": task(expense, "approve").result}
    assert expense.transitions.filter(event="decide").count() == 1
