"""`manage.py bench` at the smallest sizes, on whatever database and broker the environment
selects. No timing is asserted: the report's structure, that its counts add up to the
sizes asked for, and that each figure is the one its measurements give. The generator of
`bench --api` writes workflows the engine reads as its own."""

import json
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from orchestrator_dev.bench import (
    CHAIN_LENGTH,
    CLAIM_KEYS,
    HOP_LINKS,
    Generator,
    Waiting,
    chain_tasks,
    hops_ms,
    idle_waits,
    percentile,
)
from orchestrator_dev.management.commands.bench import API_REQUESTS, TASKS_PER_WORKFLOW
from tests.conftest import ROOT, child_env
from tests.test_attempts import problems
from workflow_orchestrator import audit
from workflow_orchestrator.models import ConcurrencyLimit, MetricCounter, State, Task, Transition, Workflow


def bench(*args: str, timeout: float = 150) -> dict:
    result = subprocess.run(
        [sys.executable, "manage.py", "bench", "--json", *args],
        cwd=ROOT,
        env=child_env(ORCH_WORKERS=1),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def is_rate(per_s: float, count: int, seconds: float) -> bool:
    """Whether `per_s` is `count` in `seconds`, which the report rounds to the millisecond."""
    return count / (seconds + 0.0006) <= per_s <= count / max(seconds - 0.0006, 1e-9)


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile(range(101), 0.95) == 95


def test_hops_run_from_one_finish_to_the_next():
    assert hops_ms([10.0, 10.002, 10.0025]) == pytest.approx([2.0, 0.5])
    assert hops_ms([10.0]) == []


def test_idle_waits_count_only_the_time_a_worker_was_free():
    # Two workers. Task 1 runs 0–10 and task 2 runs 0–4; task 3, runnable at 1, starts at
    # 6: a worker was free from 4, so it waited 2 s of its 5 with one free. Task 4, runnable
    # at 2, starts at 10, when task 3 still runs: free from 4 to 6 only (task 3 took the
    # free worker at 6), 2 s. Task 5 is taken at once.
    tasks = [(0, 0, 10), (0, 0, 4), (1, 6, 12), (2, 10, 11), (11, 11, 12)]
    assert idle_waits(tasks, workers=2) == pytest.approx([0, 0, 2, 2, 0])
    assert idle_waits(tasks, workers=3) == pytest.approx([0, 0, 5, 8, 0]), "one worker more: always one free"


def test_chain_tasks_are_each_after_the_one_before():
    assert [(t["name"], t.get("after")) for t in chain_tasks(3)] == [
        ("link-1", None),
        ("link-2", ["link-1"]),
        ("link-3", ["link-2"]),
    ]


def test_generated_workflows_are_the_engine_s_own_with_valid_audit_chains(db):
    owner = get_user_model().objects.create(username="bench-owner")
    generator = Generator(owner=owner, tag="gen", batch=7)
    long_history = generator.long_history(8)
    generator.grow(21, 21)

    assert (generator.made, Workflow.objects.count()) == (21, 21)
    assert Transition.objects.filter(workflow_id=long_history).count() == 8
    assert generator.transitions == Transition.objects.count() == 8 + 20 * 10
    assert generator.rows == 21 + 21 * 3 + generator.transitions
    assert all(audit.verify(workflow) is None for workflow in Workflow.objects.all())
    states = list(Workflow.objects.exclude(pk=long_history).order_by("name").values_list("state", flat=True))
    assert sorted(set(states)) == sorted([State.COMPLETE, State.FAILED, State.CANCELLED, State.EXECUTE])
    assert not Task.objects.filter(status__in=[Task.Status.QUEUED, Task.Status.RUNNING]).exists(), "recovery's"
    entries = [entry for attempts in Task.objects.values_list("attempts", flat=True) for entry in attempts]
    assert entries and [problems(entry) for entry in entries] == [[]] * len(entries)
    assert set(Workflow.objects.values_list("callback_url", flat=True)) == {""}, "a default the engine's insert gives"


def test_waiting_tasks_are_claimed_in_the_claim_s_order_and_deleted_afterwards(db):
    waiting = Waiting("wait", batch=5)
    waiting.fill(12)
    queued = Task.objects.filter(status=Task.Status.QUEUED)
    assert (queued.count(), Workflow.objects.filter(state=State.EXECUTE).count(), waiting.waiting) == (12, 12, 12)
    assert queued.values("concurrency_key").distinct().count() == CLAIM_KEYS, "keys side by side"
    first = list(queued.order_by("-priority", "turn", "id").values_list("id", flat=True)[:3])

    times, claimed = waiting.time_claims(3)
    assert claimed == 3 and len(times) == 3 and min(times) > 0 and waiting.waiting == 9
    assert sorted(Task.objects.filter(status=Task.Status.RUNNING).values_list("id", flat=True)) == sorted(first)
    with waiting.blocked():
        assert waiting.time_claims(2)[1] == 0, "every key at its limit: nothing to claim"
    assert waiting.time_claims(1)[1] == 1, "the limits are gone again"
    assert waiting.plan() and Task.objects.filter(status=Task.Status.QUEUED).count() == 8, "the plan claimed nothing"

    waiting.delete()
    assert not Workflow.objects.exists() and not Task.objects.exists() and not ConcurrencyLimit.objects.exists()


def test_a_plan_s_full_reads_are_its_whole_table_scans_and_sorts():
    postgresql = [
        "  ->  Index Scan using task_claim_order on workflow_orchestrator_task task_1  (cost=14.18..14655.12)",
        "        ->  Seq Scan on workflow_orchestrator_workflow workflow_1  (cost=0.00..3610.21 rows=1 width=22)",
        "              Rows Removed by Filter: 106121",
    ]
    sqlite = ["SCAN task USING INDEX task_claim_order", "SCAN limits USING COVERING INDEX key", "SCAN workflow",
              "SEARCH task USING INDEX task_status_queued (status=?)", "USE TEMP B-TREE FOR ORDER BY"]  # fmt: skip
    assert Waiting.full_reads(postgresql) == ["Seq Scan on workflow_orchestrator_workflow workflow_1"]
    assert Waiting.full_reads(sqlite) == ["SCAN workflow", "USE TEMP B-TREE FOR ORDER BY"]


def test_bench_refuses_claim_sizes_out_of_order():
    with pytest.raises(CommandError, match="--claim-small"):
        call_command("bench", claims=10, claim_small=5)
    with pytest.raises(CommandError, match="--claim-large"):
        call_command("bench", claim_small=50, claim_large=20)


def assert_noisy_neighbour_adds_up(report: dict, flood: int, neighbours: int) -> None:
    rounds = report["neighbour_rounds"]
    assert set(rounds) == {"fifo", "fair"}
    fifo, fair = rounds["fifo"], rounds["fair"]
    for variant in (fifo, fair):
        assert (variant["flood"], variant["neighbours"]) == (flood, neighbours)
        assert variant["b_p50_ms"] <= variant["b_p95_ms"] <= variant["b_max_ms"]
        assert 0 <= variant["backlog_at_b_start"] <= flood and variant["a_running_samples"] > 0
        assert variant["flood_create_seconds"] <= variant["flood_seconds"]
    assert (fifo["limit"], fifo["key_a"], fifo["key_b"], fifo["a_limit_counter_max"]) == (None, "", "", None)
    assert fair["limit"] == report["neighbour_limit"] == report["workers"], "by default, as many as the workers"
    assert fair["key_a"] != fair["key_b"]
    assert fair["a_running_max"] <= fair["limit"] and fair["a_limit_counter_max"] <= fair["limit"], "the limit holds"
    assert (report["neighbour_b_p50_ms"], report["neighbour_b_p95_ms"]) == (fair["b_p50_ms"], fair["b_p95_ms"])
    assert (report["neighbour_fifo_b_p50_ms"], report["neighbour_fifo_b_p95_ms"]) == (
        fifo["b_p50_ms"], fifo["b_p95_ms"],
    )  # fmt: skip
    assert report["neighbour_a_running_max"] == fair["a_running_max"]


def assert_claim_cost_adds_up(report: dict, claims: int, claim_small: int, claim_large: int) -> None:
    small, large = report["claim_rounds"]
    assert (small["waiting"], large["waiting"]) == (claim_small, claim_large)
    for size in (small, large):
        assert (size["claims"], size["claimed"], size["blocked_claimed"]) == (claims, claims, 0)
        assert 0 < size["p50_ms"] <= size["p95_ms"] and 0 < size["blocked_p50_ms"] <= size["blocked_p95_ms"]
    assert (report["claim_small_p50_ms"], report["claim_large_p50_ms"]) == (small["p50_ms"], large["p50_ms"])
    assert report["claim_ratio"] == pytest.approx(large["p50_ms"] / small["p50_ms"], abs=0.01)
    assert (report["claim_blocked_small_p50_ms"], report["claim_blocked_large_p50_ms"]) == (
        small["blocked_p50_ms"], large["blocked_p50_ms"],
    )  # fmt: skip
    assert report["claim_plan"] and report["claim_plan_uses_index"] == any(
        "task_claim_order" in line for line in report["claim_plan"]
    )
    assert report["claim_plan_full_reads"] == Waiting.full_reads(report["claim_plan"])


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_reports_counts_that_add_up_and_figures_from_its_measurements(transactional_db):
    sizes = {"rounds": 1, "jobs": 3, "workflows": 2, "chains": 2, "latency_samples": 2, "hop_chains": 1,
             "flood": 6, "neighbours": 2, "claims": 3, "claim_small": 5, "claim_large": 20}  # fmt: skip
    report = bench(*[f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()])

    assert {key: report[key] for key in sizes} == sizes
    assert (report["kind"], report["workers"], report["cluster"][:5]) == ("throughput", 1, "bench")
    [a], [b], [c] = report["a_rounds"], report["b_rounds"], report["c_rounds"]
    assert a["jobs"] == 3 and is_rate(a["jobs_per_s"], 3, a["seconds"])
    assert (b["workflows"], b["tasks"]) == (2, 2 * TASKS_PER_WORKFLOW) and report["tasks_per_workflow"] == 6
    assert is_rate(b["tasks_per_s"], b["tasks"], b["seconds"]) and is_rate(c["steps_per_s"], c["steps"], c["seconds"])
    assert (c["chains"], c["steps"]) == (2, 2 * CHAIN_LENGTH)
    assert (report["a_jobs_per_s"], report["b_tasks_per_s"], report["c_steps_per_s"]) == (
        a["jobs_per_s"], b["tasks_per_s"], c["steps_per_s"],
    )  # fmt: skip
    assert report["ratio"] == pytest.approx(b["tasks_per_s"] / a["jobs_per_s"], abs=0.001)
    assert report["ratio_chain"] == pytest.approx(b["tasks_per_s"] / c["steps_per_s"], abs=0.001)
    assert report["ratio_per_round"] == [report["ratio"]] and report["ratio_chain_per_round"] == [report["ratio_chain"]]
    assert report["hop_links"] == HOP_LINKS and report["hops"] == report["q2_hops"] == HOP_LINKS - 1
    assert 0 <= report["hops_inline"] <= report["hops"]
    for figure in ("latency", "latency_observed", "latency_engine", "hop", "q2_hop"):
        assert report[f"{figure}_p50_ms"] <= report[f"{figure}_p95_ms"], figure
    assert report["jobs_run_total"] == 3 + 2 * 6 + 2 * 4 + 2 * 3 + (HOP_LINKS + 2 + HOP_LINKS)
    assert len(report["rss_per_round_mb"]) == 1 and report["rss_start_mb"] == report["rss_end_mb"]
    assert report["rss_peak_mb"] >= report["rss_start_mb"] and report["worker_processes_seen"] >= 1
    assert not Workflow.objects.exists(), "the run deletes the workflows it created"
    assert_noisy_neighbour_adds_up(report, flood=6, neighbours=2)
    assert_claim_cost_adds_up(report, claims=3, claim_small=5, claim_large=20)
    assert not Task.objects.exists(), "and the waiting tasks it timed the claim against"
    assert not ConcurrencyLimit.objects.exists(), "and the limits it set"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_spread_reports_both_rounds_on_two_clusters(transactional_db):
    sizes = {"spread_workers": 1, "spread_tasks": 2, "spread_workflows": 2, "spread_stream": 2,
             "spread_interval_ms": 300}  # fmt: skip
    report = bench("--spread", *[f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()])

    assert (report["kind"], report["clusters"], report["workers"], report["spread_tasks"]) == ("spread", 2, 1, 2)
    rounds = report["spread_rounds"]
    assert list(rounds) == ["burst", "stream"]
    assert (rounds["burst"]["interval_ms"], rounds["stream"]["interval_ms"]) == (0, 300)
    for figures in rounds.values():
        assert figures["workflows"] == 2 and figures["tasks"] == 2 * (2 + 2), "PREPARE, 2 tasks, VALIDATE each"
        assert sum(figures["tasks_per_cluster"]) == figures["tasks"]
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"] <= figures["plain_max_ms"]
        assert figures["plain_p50_ms"] <= figures["plain_p99_ms"] <= figures["plain_max_ms"]
    assert report["spread_tasks_run"] == 16
    assert report["spread_wait_max_ms"] == max(figures["max_ms"] for figures in rounds.values())
    assert report["spread_slow_waits"] == sum(figures["slow_waits"] for figures in rounds.values())
    assert not Workflow.objects.exists(), "the run deletes the workflows it created"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_bench_api_times_every_page_at_both_sizes_and_leaves_nothing_behind(transactional_db):
    report = bench("--api", "--quick", "--api-size=3")

    assert (report["kind"], report["api_size"], report["api_small"], report["tasks"]) == ("api", 3, 3, 9)
    assert report["transitions"] == 50 + 2 * 10, "the detail page's long history, then two generated workflows"
    assert report["audit_chain_valid"] is True
    assert set(report["requests"]) == set(API_REQUESTS)
    for name, figures in report["requests"].items():
        assert figures["ratio"] == pytest.approx(figures["full_ms"] / figures["small_ms"], abs=0.01), name
        assert figures["small_queries"] == figures["full_queries"] > 0, name
    assert not Workflow.objects.exists(), "the generated workflows are deleted afterwards"
    assert not MetricCounter.objects.exists(), "the scrapes' counts of generated workflows are dropped too"


@pytest.mark.integration
@pytest.mark.timeout(60)
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
