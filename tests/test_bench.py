"""`manage.py bench` runs end to end on whatever database and broker the environment
selects. Timings are not asserted: only that every figure is there and makes sense."""

import json
import subprocess
import sys

import pytest

from orchestrator_dev.bench import chain_tasks, hops_ms, percentile
from tests.conftest import ROOT, child_env
from workflow_orchestrator.models import MetricCounter, Workflow


def bench(*args: str, timeout: float = 150) -> dict:
    result = subprocess.run(
        [sys.executable, "manage.py", "bench", *args],
        cwd=ROOT,
        env=child_env(ORCH_WORKERS=2),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def positive(report: dict, *keys: str) -> None:
    for key in keys:
        value = report[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile(range(101), 0.95) == 95


def test_hops_run_from_one_finish_to_the_next():
    assert hops_ms([10.0, 10.002, 10.0025]) == pytest.approx([2.0, 0.5])
    assert hops_ms([10.0]) == []


def test_chain_tasks_are_each_after_the_one_before():
    links = chain_tasks(3)
    assert [(t["name"], t.get("after")) for t in links] == [
        ("link-1", None),
        ("link-2", ["link-1"]),
        ("link-3", ["link-2"]),
    ]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_quick_reports_every_figure(transactional_db):
    report = bench("--quick", "--json")
    positive(
        report,
        "ratio",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_observed_p50_ms",
        "latency_engine_p50_ms",
        "a_jobs_per_s",
        "b_tasks_per_s",
        "b_workflows_per_s",
        "c_steps_per_s",
        "ratio_chain",
        "hop_p50_ms",
        "hop_p95_ms",
        "q2_hop_p50_ms",
        "q2_hop_p95_ms",
        "rss_peak_mb",
        "rss_start_mb",
        "rss_end_mb",
        "workers",
        "jobs",
        "workflows",
        "chains",
        "rounds",
    )
    assert report["database"] in {"sqlite", "postgresql"}
    assert report["broker"] in {"orm", "redis"}
    assert report["cluster"].startswith("bench")
    assert report["rounds"] == len(report["a_rounds"]) == len(report["b_rounds"]) == len(report["c_rounds"]) == 2
    assert report["tasks_per_workflow"] == 6, "PREPARE + 4 tasks + VALIDATE"
    for b in report["b_rounds"]:
        assert b["tasks"] == 6 * b["workflows"]
    assert report["steps_per_chain"] == 4
    for c in report["c_rounds"]:
        assert c["chains"] == report["chains"] and c["steps"] == 4 * c["chains"]
        assert c["steps_per_s"] > 0 and c["seconds"] > 0
    assert report["ratio_chain"] == pytest.approx(report["b_tasks_per_s"] / report["c_steps_per_s"], rel=0.01)
    assert len(report["ratio_chain_per_round"]) == 2 and all(r > 0 for r in report["ratio_chain_per_round"])
    assert report["latency_p50_ms"] <= report["latency_p95_ms"]
    # Chains of 20 links, one hop between each two: timed on the orchestrator and on django-q2.
    assert report["hop_links"] == 20 and report["hop_chains"] == 3
    assert report["hops"] == report["q2_hops"] == 3 * 19
    assert report["hop_p50_ms"] <= report["hop_p95_ms"]
    assert report["q2_hop_p50_ms"] <= report["q2_hop_p95_ms"]
    assert 0 <= report["hops_inline"] <= report["hops"]
    assert report["worker_processes_seen"] >= report["workers"]
    assert not Workflow.objects.exists(), "the run deletes the workflows it created"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_api_quick_reports_times_and_equal_query_counts(transactional_db):
    report = bench("--api", "--quick", "--json")
    assert report["api_size"] == 2000 and report["api_small"] == 1000
    assert report["transitions"] > 10 * 1999
    assert report["audit_chain_valid"] is True
    for name in ("list", "detail", "changelist", "overview", "metrics"):
        figures = report["requests"][name]
        for key in ("small_ms", "full_ms", "ratio", "small_queries", "full_queries"):
            assert isinstance(figures[key], int | float) and figures[key] > 0, (name, key, figures)
    for name in ("list", "detail", "overview", "metrics"):
        figures = report["requests"][name]
        assert figures["small_queries"] == figures["full_queries"], (name, figures)
    assert not Workflow.objects.exists(), "the generated workflows are deleted afterwards"
    assert not MetricCounter.objects.exists(), "the scrapes' counts of generated workflows are dropped too"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_api_refuses_a_database_that_holds_workflows(transactional_db):
    Workflow.objects.create(name="someone's")
    result = subprocess.run(
        [sys.executable, "manage.py", "bench", "--api", "--quick", "--json"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--yes" in result.stderr
    assert Workflow.objects.count() == 1
