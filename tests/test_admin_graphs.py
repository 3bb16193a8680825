"""The workflow page of a large workflow, through Django's test client: a 1,000-task
workflow's page stays small (its task table paged, its graph summarised by status) and
costs a fixed number of queries, whatever the number of tasks."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tests import dom
from workflow_orchestrator import services
from workflow_orchestrator.models import Actor, Phase, Task, Workflow

THOUSAND = 1000


def a_workflow_that_ran(count: int, actor: Actor, *, tasks: list | None = None, starts: list | None = None) -> Workflow:
    """A workflow of `count` EXECUTE tasks (or of `tasks`), none waiting for another, each run
    once by a worker for half a second (starting a second apart, or `starts` seconds after
    the first), one in 97 of them failed: the rows the engine leaves, written directly."""
    specs = tasks or [{"name": f"part-{i:04d}", "type": "echo", "params": {"part": i}} for i in range(count)]
    workflow, _ = services.workflow_create(name=f"{len(specs)} parts", tasks=specs, actor=actor)
    rows = list(workflow.tasks.filter(phase=Phase.EXECUTE).order_by("position"))
    origin = timezone.now() - timedelta(hours=3)
    for index, task in enumerate(rows):
        began = origin + timedelta(seconds=starts[index] if starts else task.position)
        ended = began + timedelta(seconds=0.5)
        failed = task.position % 97 == 0
        task.status = Task.Status.FAILED if failed else Task.Status.SUCCEEDED
        task.attempt, task.started_at, task.finished_at, task.worker = 1, began, ended, "worker-1"
        task.error = "Traceback (most recent call last):\nTaskFailed: disk full" if failed else ""
        task.attempts = [
            {
                "attempt": 1, "worker": "worker-1", "started_at": began.isoformat(), "finished_at": ended.isoformat(),
                "outcome": "failed" if failed else "succeeded", **({"error": task.error} if failed else {}),
            }
        ]  # fmt: skip
    Task.objects.bulk_update(rows, ["status", "attempt", "started_at", "finished_at", "worker", "error", "attempts"])
    return workflow


@pytest.fixture
def thousand(db, admin_user):
    return a_workflow_that_ran(THOUSAND, Actor.admin(admin_user))


def change_url(workflow: Workflow, **query) -> str:
    url = reverse("admin:workflow_orchestrator_workflow_change", args=[workflow.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


# A workflow's page, whatever its size: the session and user, the workflow (twice), all its
# tasks once (for the pictures), a page of them for the table, its transitions (three times)
# and its webhook deliveries. The first page in a process also reads the content type.
PAGE_QUERIES = 10


def queries_of_a_page(client, url: str) -> tuple[int, bytes]:
    client.get(url)  # the content type's cache filled
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries), response.content


def test_a_thousand_task_workflow_s_page_is_under_300_kb_in_a_fixed_number_of_queries(admin_client, thousand):
    """2,685,275 bytes before its tasks were paged and its graph summarised (docs/BENCHMARKS.md)."""
    queries, content = queries_of_a_page(admin_client, change_url(thousand))
    assert len(content) < 300_000, len(content)
    assert queries == PAGE_QUERIES
    page = dom.parse(content)
    assert len(page.select("#tasks-group tbody tr.has_original")) == 100
    assert page.one("#task-pager").text.startswith("Tasks 1–100 of 1002.")
    assert not page.select("svg.task-graph")  # a summary instead, the graph on its own page
    assert len(page.select("svg.task-timeline g.bar")) == 100  # the attempts of this page's tasks


def test_the_task_table_pages_through_every_task(admin_client, thousand):
    page = dom.parse(admin_client.get(change_url(thousand)))
    links = page.select("#task-pager a.task-page")
    assert [link.text for link in links] == [str(n) for n in range(2, 12)]
    assert page.one("#task-pager [aria-current=page]").text == "1"
    last = dom.parse(admin_client.get(change_url(thousand) + links[-1]["href"].removesuffix("#tasks-group")))
    assert [row.one("td.field-name").text for row in last.select("#tasks-group tbody tr.has_original")] == [
        "part-0999", "validate",
    ]  # fmt: skip
    second = dom.parse(admin_client.get(change_url(thousand, tasks_page=2)))
    names = [row.one("td.field-name").text for row in second.select("#tasks-group tbody tr.has_original")]
    assert names[0] == "part-0099" and names[-1] == "part-0198" and len(names) == 100
    everything = page.one("#task-pager a", text="All 1002 tasks in the task list")["href"]
    assert admin_client.get(everything).context["cl"].result_count == 1002


@pytest.mark.parametrize(("given", "status"), [("0", 404), ("12", 404), ("two", 400), ("-1", 400), ("1.5", 400)])
def test_a_task_page_that_is_not_there_is_refused_in_words(admin_client, thousand, given, status):
    response = admin_client.get(change_url(thousand, tasks_page=given))
    assert response.status_code == status


def test_over_sixty_tasks_the_graph_is_a_summary_by_status_each_count_a_link(admin_client, thousand):
    page = dom.parse(admin_client.get(change_url(thousand)))
    counts = {item.one(".badge").text: item for item in page.select("#task-summary .task-status-counts li")}
    assert {status: item.one(".task-status-count").text for status, item in counts.items()} == {
        "SUCCEEDED": "990", "FAILED": "10",
    }  # fmt: skip
    failed = admin_client.get(counts["FAILED"].one("a")["href"])
    assert sorted(task.name for task in failed.context["cl"].result_list) == [
        f"part-{n - 1:04d}" for n in range(97, 1001, 97)
    ]
    details = page.one("details#full-graph")
    graph = admin_client.get(details["data-graph-src"])
    assert graph.status_code == 200
    assert len(dom.parse(graph).select("#execute-graph-full svg.task-graph g.task-node")) == THOUSAND
    assert details.one("a")["href"] == details["data-graph-src"]  # without script, a link to it


def test_up_to_sixty_tasks_the_graph_is_on_the_page_with_a_skip_link(admin_client, admin_user):
    tasks = [{"name": f"t{i}", "type": "noop", "after": [f"t{i - 1}"] if i else []} for i in range(60)]
    workflow, _ = services.workflow_create(name="sixty", tasks=tasks, actor=Actor.admin(admin_user))
    queries, content = queries_of_a_page(admin_client, change_url(workflow))
    assert queries == PAGE_QUERIES  # as many as for a thousand
    page = dom.parse(content)
    assert len(page.select("#execute-graph svg.task-graph g.task-node")) == 60
    assert not page.select("#task-summary") and not page.select("#task-pager")
    skip = page.one("#execute-graph a.skip-graph")
    end = page.one(skip["href"])
    assert end.get("tabindex") == "-1"
    assert page.one("#execute-graph .graph-scroll")["tabindex"] == "0"


def test_the_graph_page_is_for_those_who_may_view_the_workflow(client, thousand, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    url = reverse("admin:workflow_orchestrator_workflow_graph", args=[thousand.pk])
    assert client.get(url).status_code == 403
    missing = reverse("admin:workflow_orchestrator_workflow_graph", args=["00000000-0000-0000-0000-000000000000"])
    staff.is_superuser = True
    staff.save()
    assert client.get(missing).status_code == 404
    assert client.get(reverse("admin:workflow_orchestrator_workflow_graph", args=["not-a-uuid"])).status_code == 404


def test_without_execute_tasks_there_is_nothing_to_skip(admin_client, admin_user):
    workflow, _ = services.workflow_create(name="empty", tasks=[], actor=Actor.admin(admin_user))
    page = dom.parse(admin_client.get(change_url(workflow)))
    assert page.one("#execute-graph").text.endswith("No EXECUTE tasks.")
    assert not page.select("#execute-graph a.skip-graph") and not page.select("#execute-graph .graph-scroll")
