"""GET /metrics: the Prometheus exposition, checked against the database."""

import shutil
import subprocess
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CaptureQueriesContext, wait_for
from workflow_orchestrator import metrics, queue, services
from workflow_orchestrator.models import Actor, MetricsHead, State, Task, Transition, Workflow

TOKEN = "metrics-token-for-tests"
TASKS = [
    {"type": "echo", "params": {"n": 1}},
    {"type": "fail", "params": {"times": 1}, "max_attempts": 2},
]


@pytest.fixture
def scrape(client, settings):
    settings.ORCH_METRICS_TOKEN = TOKEN
    metrics._reported.clear()  # each test starts a fresh process's view

    def scrape() -> dict:
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples(response.content.decode())

    return scrape


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of every sample in `text`."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(figures: dict, name: str, *labels: str) -> dict:
    """The samples named `name`, by the values of `labels`, zeros left out."""
    found = {}
    for (sample, labelset), value in figures.items():
        if sample == name and value:
            found[tuple(dict(labelset)[label] for label in labels)] = value
    return found


def transitions_in_database() -> dict:
    return dict(Counter(Transition.objects.values_list("event", "target")))


def attempts_in_database() -> dict:
    ended = Counter()
    for task_type, attempts in Task.objects.values_list("type", "attempts"):
        ended.update((task_type, entry["outcome"]) for entry in attempts if entry["outcome"] != "running")
    return dict(ended)


def assert_counters_match_the_database(figures: dict) -> None:
    assert series(figures, "orchestrator_transitions_total", "event", "target") == transitions_in_database()
    assert series(figures, "orchestrator_task_attempts_total", "type", "outcome") == attempts_in_database()
    by_type = Counter()
    for (task_type, _), count in attempts_in_database().items():
        by_type[(task_type,)] += count
    assert series(figures, "orchestrator_task_duration_seconds_count", "type") == dict(by_type)


def fold_everything() -> None:
    """A scrape that takes all history so far as settled, and stores it."""
    metrics.count_history(settle=timedelta(0))


# --- Access ----------------------------------------------------------------------------------


def test_metrics_answer_404_while_no_token_is_configured(client, settings, db):
    settings.ORCH_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer é"])
def test_a_missing_or_wrong_token_answers_401(client, settings, db, header):
    settings.ORCH_METRICS_TOKEN = TOKEN
    response = client.get("/metrics", **({"HTTP_AUTHORIZATION": header} if header else {}))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_only_get_is_allowed(scrape, client, db):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405


# --- Figures ---------------------------------------------------------------------------------


def test_figures_match_the_database_after_real_work(engine, scrape):
    workflows = [engine.start(tasks=TASKS) for _ in range(3)]
    engine.call(services.workflow_create, actor=Actor.SYSTEM, name="waits")
    engine.drain()
    assert {w.state for w in Workflow.objects.filter(pk__in=[w.pk for w in workflows])} == {State.COMPLETE}
    figures = scrape()
    assert series(figures, "orchestrator_workflows", "state") == {("COMPLETE",): 3, ("INIT",): 1}
    assert_counters_match_the_database(figures)
    assert series(figures, "orchestrator_task_attempts_total", "type", "outcome")[("fail", "failed")] == 3
    assert figures[("orchestrator_queue_depth", frozenset())] == 0
    # Every attempt lasted under a second: each bucket from 1 s up holds them all.
    assert figures[("orchestrator_task_duration_seconds_bucket", frozenset({("type", "echo"), ("le", "1.0")}))] == 3
    assert figures[("orchestrator_task_duration_seconds_bucket", frozenset({("type", "echo"), ("le", "+Inf")}))] == 3


def test_settled_history_is_stored_once_and_reads_the_same(engine, scrape):
    for _ in range(2):
        engine.start(tasks=TASKS)
    engine.drain()
    before = scrape()
    fold_everything()
    head = MetricsHead.objects.get()
    assert head.transition_id == Transition.objects.latest("pk").pk
    assert scrape() == before
    engine.start(tasks=TASKS)  # new history, above the watermark
    engine.drain()
    fold_everything()
    fold_everything()  # a second fold of the same history adds nothing
    assert_counters_match_the_database(scrape())


@pytest.mark.parametrize("stored_first", [False, True])
def test_counters_never_go_backwards_when_workflows_are_deleted(engine, scrape, stored_first):
    workflows = [engine.start(tasks=TASKS) for _ in range(2)]
    engine.drain()
    if stored_first:
        fold_everything()
    before = scrape()
    metrics._reported.clear()  # a process that never saw these figures still reports them
    for workflow in workflows:
        services.workflow_delete(workflow.pk, actor=Actor.CLI)
    after = scrape()
    counters = [key for key in before if not key[0].startswith(("orchestrator_workflows", "orchestrator_queue"))]
    gauges = ("orchestrator_broker_up", "orchestrator_clusters", "orchestrator_busy_workers")
    counters = [key for key in counters if key[0] not in gauges]
    assert {key: after[key] for key in counters if key[0] != "orchestrator_workers"} == {
        key: before[key] for key in counters if key[0] != "orchestrator_workers"
    }
    assert series(after, "orchestrator_transitions_total", "event", "target")[("complete", "COMPLETE")] == 2
    fold_everything()
    assert scrape() == after


def test_a_scrape_costs_the_same_queries_whatever_the_history(engine, scrape):
    def queries() -> int:
        scrape()  # the first scrape stores the history so far
        with CaptureQueriesContext(connection) as captured:
            scrape()
        # Not the shared cache's: django-q2 reads one more key per cluster that ever
        # reported to it, and earlier tests leave theirs behind.
        return sum("orchestrator_cache" not in query["sql"] for query in captured.captured_queries)

    engine.start(tasks=TASKS)
    engine.drain()
    few = queries()
    for _ in range(10):
        engine.start(tasks=TASKS)
    engine.drain()
    assert queries() == few
    # A transaction (here a savepoint) with the head's lock, the stored counters, the
    # transitions' watermark and counts, the tasks with attempts ended since (their ids,
    # then their attempts: one batch for up to metrics.BATCH tasks) and the head's update;
    # workflows by state; the broken chains found; the tasks running and waiting by key and
    # those keys' limits; the running tasks (which workers are busy), and with the ORM broker
    # its two queue counts (Redis holds both otherwise).
    assert few == (16 if queue.in_database() else 14)


def test_the_exposition_passes_promtool(engine, scrape, client):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package provides it)")
    engine.start(tasks=TASKS)
    engine.drain()
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Two clusters, one scrape ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_two_worker_clusters_feed_one_scrape(cluster, scrape):
    clusters = [cluster(ORCH_RETRY_BACKOFF=0.05), cluster(ORCH_RETRY_BACKOFF=0.05)]

    def live() -> tuple:
        figures = scrape()
        return figures[("orchestrator_clusters", frozenset())], figures[("orchestrator_workers", frozenset())]

    wait_for(lambda: live() == (2, 4), 60, f"both clusters and their 2 workers each to report: {live()}")
    started = [
        services.workflow_create(actor=Actor.SYSTEM, name=f"m{i}", start=True, tasks=TASKS)[0] for i in range(12)
    ]
    ids = [w.pk for w in started]
    wait_for(
        lambda: Workflow.objects.filter(pk__in=ids, state=State.COMPLETE).count() == len(ids),
        120,
        f"12 workflows to complete: {clusters[0].output()[-2000:]}",
    )
    figures = scrape()
    assert series(figures, "orchestrator_workflows", "state") == {("COMPLETE",): 12}
    assert_counters_match_the_database(figures)
    fold_everything()
    assert_counters_match_the_database(scrape())
    for running in clusters:
        running.stop()
    # Their figures leave the shared cache, for the tests that count clusters after this one.
    wait_for(lambda: live() == (0, 0), 60, f"the stopped clusters to leave the figures: {live()}")


def test_the_stored_counts_stay_a_settling_time_behind(db):
    # The watermark never runs ahead of SETTLE: newer rows are counted afresh at each scrape.
    metrics.count_history()
    assert MetricsHead.objects.get().attempts_until <= timezone.now() - metrics.SETTLE + timedelta(seconds=1)
