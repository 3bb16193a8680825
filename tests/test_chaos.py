"""Chaos: workflows on two clusters while worker processes, and once a whole cluster, are
killed with SIGKILL; workers also kill themselves between recording the success that
ends a phase and firing its transition. A third of the workflows run their tasks side by
side; the others are chains and diamonds joined by a `gather`, so kills also land on
tasks that a success released and handed to its worker. Nothing may be lost, no
transition may happen twice, and no task may start before the tasks in its `after`
succeeded. A third of the workflows share a concurrency key limited to LIMIT running
tasks, which must never be exceeded (sampled all along), and a few are paused and resumed
mid-run.

`make chaos` runs it with CHAOS_WORKFLOWS=200 (`make chaos N=1000` by hand); the plain
suite runs a small size. The figures go to CHAOS_REPORT (JSON) when it is set.
"""

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

import tests.chaos_tasks  # noqa: F401  (registers chaos.probe in this process too)
from workflow_orchestrator import audit, services
from workflow_orchestrator.models import Actor, Decision, State, Task, Transition, Workflow
from workflow_orchestrator.statements import from_time

WORKFLOWS = int(os.environ.get("CHAOS_WORKFLOWS", "30"))
WORKER_KILLS = max(5, WORKFLOWS // 40)
# Each worker process kills itself at every this-many-th success that ends a phase, before
# it fires the transition (tests/chaos_tasks.py). Such successes are rarer with
# dependencies (the last task of a chain knows it is last when it is claimed, and ends the
# phase in one statement): a small run kills at each one it sees.
WINDOW_EVERY = 1 if WORKFLOWS < 100 else 5
# Small runs get longer tasks, so that they are still running when the last kill comes.
PROBE_SECONDS = (0.2, 0.6) if WORKFLOWS < 100 else (0.05, 0.3)
LEASE = 2
KEY, LIMIT = "chaos-key", 2
PAUSES = 3
SIGNAL = "go"
APPROVERS = ["chaos-ann", "chaos-bob"]
# Audit rows that record no state change and that these workflows write besides their four
# transitions (and a paused one's pause and resume).
IN_PLACE = ("signal", "waiting", "decide")

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300 + WORKFLOWS * 3)]


def probe(name: str, seconds: float, after: tuple = ()) -> dict:
    spec = {"name": name, "type": "chaos.probe", "params": {"seconds": seconds}, "max_attempts": 20}
    return {**spec, "after": list(after)} if after else spec


def join(after: list[str]) -> dict:
    return {"name": "join", "type": "gather", "after": after, "max_attempts": 20}


def waiting(i: int, seconds: float) -> dict:
    """A task that waits without a worker: for the signal "go", for two approvers' decisions,
    or a timer of `seconds`, in turn."""
    if i % 9 == 0:
        return {"name": "gate", "type": "wait_signal", "params": {"name": SIGNAL}, "max_attempts": 20}
    if i % 9 == 3:
        params = {"approvers": {"users": APPROVERS}, "quorum": len(APPROVERS)}
        return {"name": "approval", "type": "approval", "params": params, "max_attempts": 20}
    return {"name": "timer", "type": "wait", "params": {"seconds": seconds}, "max_attempts": 20}


def decide_some(workflows: list, approvers: list, rng) -> None:
    """An approver decides one waiting approval; deciding twice is refused (409)."""
    waiting = list(Task.objects.filter(workflow__in=workflows, name="approval", status=Task.Status.WAITING))
    if not waiting:
        return
    task = rng.choice(waiting)
    user = rng.choice(approvers)
    decided = Decision.objects.filter(task=task, user=user).exists()
    try:
        services.task_decide(task.workflow_id, "approval", user=user, decision="approve", actor=Actor.api(user))
    except services.InvalidTransition:
        assert decided or not Task.objects.filter(pk=task.pk, status=Task.Status.WAITING).exists()
    else:
        assert not decided, "a decision taken twice"


def shape(i: int, sleeps: list[float]) -> list[dict]:
    """Four tasks: side by side (the fourth waits: a timer or a signal), a chain into a
    gather, or a diamond into a gather."""
    if i % 3 == 0:
        return [*(probe(f"probe-{j}", s) for j, s in enumerate(sleeps[:3])), waiting(i, sleeps[3])]
    if i % 3 == 1:  # probe-0 → probe-1 → probe-2 → join
        chain = [probe("probe-0", sleeps[0])]
        chain += [probe(f"probe-{j}", sleeps[j], (f"probe-{j - 1}",)) for j in (1, 2)]
        return [*chain, join(["probe-2"])]
    # probe-0 → (probe-1, probe-2) → join
    diamond = [probe("probe-0", sleeps[0])]
    diamond += [probe(f"probe-{j}", sleeps[j], ("probe-0",)) for j in (1, 2)]
    return [*diamond, join(["probe-1", "probe-2"])]


def in_order(tasks: list[Task], left_execute) -> list[str]:
    """What ran out of order in one workflow's EXECUTE: an attempt that started before
    one of its `after` tasks' success was recorded, or after the workflow left EXECUTE
    (at `left_execute`), and a gather whose result is not its upstream's results."""
    by_name = {task.name: task for task in tasks}
    problems = []
    for task in tasks:
        for entry in task.attempts:
            started = from_time(entry["started_at"])
            if started > left_execute:
                problems.append(f"{task.name} attempt {entry['attempt']} started after EXECUTE ended")
            for name in task.after:
                (success,) = [a for a in by_name[name].attempts if a["outcome"] == "succeeded"]
                if started < from_time(success["finished_at"]):
                    problems.append(f"{task.name} attempt {entry['attempt']} started before {name} succeeded")
        if task.type == "gather" and task.result != {name: by_name[name].result for name in task.after}:
            problems.append(f"{task.name} gathered {task.result}")
    return problems


def succeeded_once(task: Task) -> bool:
    """The task's attempts, in order, end with its one success, the attempt the row names."""
    numbers = [a["attempt"] for a in task.attempts]
    outcomes = [a["outcome"] for a in task.attempts]
    return (
        numbers == sorted(set(numbers))
        and outcomes.count("succeeded") == 1
        and outcomes[-1] == "succeeded"
        and numbers[-1] == task.attempt
        and "running" not in outcomes
    )


def pause_or_resume(workflows: list, elapsed: float) -> None:
    """The chosen workflows are paused from the start until 3 s in, and resumed then
    (those already complete cannot be: nothing to do)."""
    action = services.workflow_pause if elapsed < 3 else services.workflow_resume
    for workflow_id in workflows:
        with contextlib.suppress(services.InvalidTransition):
            action(workflow_id, actor=Actor.SYSTEM, reason="chaos")


def running_workers() -> list[tuple[int, int, int]]:
    """(pid, task id, attempt) of the tasks running now."""
    rows = Task.objects.filter(status=Task.Status.RUNNING).values_list("worker", "pk", "attempt")
    return [(int(worker.rsplit(":", 1)[1]), pk, attempt) for worker, pk, attempt in rows if worker]


def test_chaos(cluster, tmp_path):
    rng = random.Random(20261126)
    probe_log = tmp_path / "probe.log"
    window_log = tmp_path / "window.log"
    env = {
        "ORCH_TASK_MODULES": "tests.chaos_tasks",
        "CHAOS_PROBE_LOG": probe_log,
        "CHAOS_WINDOW_LOG": window_log,
        "CHAOS_WINDOW_EVERY": WINDOW_EVERY,
        "ORCH_LEASE_SECONDS": LEASE,
        "ORCH_REQUEUE_SECONDS": 5,
        "ORCH_RETRY_BACKOFF": 0.1,
        "ORCH_RETRY_BACKOFF_MAX": 1,
    }
    started = time.monotonic()
    services.limit_set(KEY, max_running=LIMIT)
    workflows = []
    for i in range(WORKFLOWS):
        sleeps = [round(rng.uniform(*PROBE_SECONDS), 3) for _ in range(4)]
        # The chains share the limited key. The side-by-side workflows share a key with no
        # limit: a key's tasks take consecutive turns, so that a workflow's four run side
        # by side and the last success often learns only when recorded that it ends the
        # phase (the window this test kills workers in).
        key = {0: "chaos-side", 1: KEY}.get(i % 3, "")
        workflow, _ = services.workflow_create(
            name=f"chaos-{i}", tasks=shape(i, sleeps), actor=Actor.SYSTEM, start=True, concurrency_key=key
        )
        workflows.append(workflow.pk)
    paused = rng.sample(workflows, PAUSES)
    keyed_running_seen = 0
    # The workflows that wait for a signal get it once, at a random moment: before their
    # task waits, or while it does.
    unsignalled = [w for i, w in enumerate(workflows) if i % 3 == 0 and i % 9 == 0]
    signalled = list(unsignalled)
    approved = [w for i, w in enumerate(workflows) if i % 3 == 0 and i % 9 == 3]
    approvers = [get_user_model().objects.create_user(name) for name in APPROVERS]

    clusters = [cluster(**env), cluster(**env)]
    kills, cluster_kills, taken_back = [], 0, {}
    deadline = started + 120 + WORKFLOWS * 2
    while Workflow.objects.filter(pk__in=workflows, state=State.COMPLETE).count() < WORKFLOWS:
        assert time.monotonic() < deadline, "workflows did not all complete in time"
        time.sleep(rng.uniform(0.3, 0.8))
        keyed_running = Task.objects.filter(status=Task.Status.RUNNING, concurrency_key=KEY).count()
        keyed_running_seen = max(keyed_running_seen, keyed_running)
        assert keyed_running <= LIMIT, f"{keyed_running} tasks of {KEY} running, limit {LIMIT}"
        pause_or_resume(paused, time.monotonic() - started)
        if unsignalled and rng.random() < 0.4:
            target = unsignalled.pop(rng.randrange(len(unsignalled)))
            services.workflow_signal(target, name=SIGNAL, payload={"to": str(target)}, actor=Actor.SYSTEM)
        decide_some(approved, approvers, rng)
        busy = running_workers()
        if len(kills) < WORKER_KILLS and busy:
            pid, task_id, attempt = rng.choice(busy)
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append((time.monotonic(), time.time(), task_id, attempt))
            except ProcessLookupError:
                pass
        elif cluster_kills == 0 and len(kills) >= WORKER_KILLS // 2:
            victim = clusters[0]
            os.killpg(victim.process.pid, signal.SIGKILL)  # the whole cluster, at once
            victim.process.wait()
            cluster_kills += 1
            time.sleep(1)
            clusters[0] = cluster(**env)  # and a new one in its place
        services.recover()  # as the clusters' schedule does every half lease
        for kill in kills:  # when was each killed attempt taken back (queued again)?
            _, _, task_id, attempt = kill
            if kill not in taken_back and Task.objects.filter(pk=task_id, attempt__gt=attempt).exists():
                taken_back[kill] = time.monotonic()
    elapsed = time.monotonic() - started
    assert len(kills) >= min(5, WORKER_KILLS) and cluster_kills == 1, (kills, cluster_kills)
    window_kills = len(window_log.read_text().splitlines()) if window_log.exists() else 0
    assert window_kills >= 1, "no worker died between a phase's last success and its transition"

    # Nothing lost, nothing twice: every workflow COMPLETE with exactly its four state
    # changes, in order (a paused one's pause and resume besides).
    complete = Workflow.objects.filter(pk__in=workflows, state=State.COMPLETE)
    assert complete.count() == WORKFLOWS
    sequences, changes = Counter(), {}
    rows = Transition.objects.filter(workflow__in=workflows).order_by("seq")
    for workflow_id, event in rows.values_list("workflow", "event"):
        if event not in IN_PLACE:
            sequences[workflow_id] += 1
        if event not in ("pause", "resume", *IN_PLACE):
            changes.setdefault(workflow_id, []).append(event)
    assert all(events == ["start", "execute", "validate", "complete"] for events in changes.values())
    pauses = Transition.objects.filter(workflow__in=paused, event__in=["pause", "resume"]).count()
    assert set(sequences.values()) <= {4, 6} and sum(sequences.values()) == 4 * WORKFLOWS + pauses

    # Waits: every timer fired after its due time, and every signal went to its one task,
    # once, whose result is its payload.
    signals = Transition.objects.filter(workflow__in=workflows, event="signal")
    assert sorted(signals.values_list("workflow", flat=True)) == sorted(signalled), "one signal each"
    for gate in Task.objects.filter(workflow__in=signalled, name="gate"):
        assert gate.result == {"to": str(gate.workflow_id)} and gate.signals.count() == 1
    for gate in Task.objects.filter(workflow__in=approved, name="approval"):
        assert sorted(d["by"] for d in gate.result["decisions"]) == [f"api:{name}" for name in APPROVERS]
        assert gate.decisions.count() == len(APPROVERS), "each approver decided once"
    decide_rows = Transition.objects.filter(workflow__in=approved, event="decide").count()
    assert decide_rows == len(APPROVERS) * len(approved)
    timers = Task.objects.filter(workflow__in=workflows, type="wait")
    assert all(timer.finished_at >= timer.wake_at for timer in timers)
    waiters = Task.objects.filter(workflow__in=workflows, type__in=["wait", "wait_signal", "approval"])
    waits_recorded = sum([entry["outcome"] for entry in task.attempts].count("waiting") for task in waiters)
    assert all(audit.verify(w) is None for w in complete)
    tasks = Task.objects.filter(workflow__in=workflows, phase=State.EXECUTE)
    assert set(tasks.values_list("status", flat=True)) == {Task.Status.SUCCEEDED}

    # Nothing out of order: each attempt of a task started after the success of every task
    # in its `after`, and before its workflow left EXECUTE; each task succeeded once.
    all_tasks = Task.objects.filter(workflow__in=workflows)
    not_once = [(t.workflow_id, t.name, t.attempts) for t in all_tasks if not succeeded_once(t)]
    assert not not_once, not_once[:5]
    left_execute = dict(
        Transition.objects.filter(workflow__in=workflows, event="validate").values_list("workflow", "created_at")
    )
    by_workflow = {}
    for task in tasks:
        by_workflow.setdefault(task.workflow_id, []).append(task)
    out_of_order = {w: p for w, ts in by_workflow.items() if (p := in_order(ts, left_execute[w]))}
    assert not out_of_order, out_of_order
    with_dependencies = sum(any(t.after for t in ts) for ts in by_workflow.values())

    # Work may have run more than once (a kill after the handler, before the record), but
    # every task's outcome was recorded by exactly one attempt: the one the row names.
    executions = Counter(tuple(map(int, line.split()[:2])) for line in probe_log.read_text().splitlines())
    per_task = Counter()
    for (task_id, _attempt), count in executions.items():
        per_task[task_id] += count
    final = dict(all_tasks.values_list("pk", "attempt"))
    probes = dict(tasks.filter(type="chaos.probe").values_list("pk", "attempt"))
    assert all((task_id, attempt) in executions for task_id, attempt in probes.items())
    rerun = sum(count - 1 for count in per_task.values() if count > 1)

    # From a kill to the killed task running again: the take-back plus the wait in the queue.
    recovered = dict(all_tasks.values_list("pk", "started_at"))
    recoveries = [
        recovered[task_id].timestamp() - wall for _, wall, task_id, attempt in kills if final.get(task_id, 0) > attempt
    ]
    report = {
        "workflows": WORKFLOWS,
        "with_dependencies": with_dependencies,
        "tasks": WORKFLOWS * 4,
        "task_runs_recorded": sum(final.values()),
        "clusters": 2,
        "worker_kills": len(kills),
        "cluster_kills": cluster_kills,
        "kills_between_success_and_transition": window_kills,
        "lost": WORKFLOWS - complete.count(),
        "duplicated_transitions": sum(sequences.values()) - 4 * WORKFLOWS - pauses,
        "limited_key_workflows": Workflow.objects.filter(pk__in=workflows, concurrency_key=KEY).count(),
        "limit": LIMIT,
        "limited_key_max_running_seen": keyed_running_seen,
        "paused_and_resumed": pauses // 2,
        "timers": timers.count(),
        "signals": len(signalled),
        "approvals": len(approved),
        "waits_recorded": waits_recorded,
        "out_of_order": len(out_of_order),
        "work_run_again": rerun,
        "slowest_take_back_seconds": round(max((at - kill[0] for kill, at in taken_back.items()), default=0), 2),
        "slowest_rerun_seconds": round(max(recoveries, default=0), 2),
        "lease_seconds": LEASE,
        "elapsed_seconds": round(elapsed, 1),
        "database": connection.vendor,
        "broker": settings.ORCH_BROKER,
    }
    print("chaos report:", json.dumps(report))
    if os.environ.get("CHAOS_REPORT"):
        Path(os.environ["CHAOS_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert report["lost"] == 0 and report["duplicated_transitions"] == 0 and report["out_of_order"] == 0
