"""Task types whose outcomes the database cannot store as they are, for tests/test_outcomes.py;
its integration test's cluster imports them through ORCH_TASK_MODULES."""

import math

from workflow_orchestrator.registry import task_type

RESULTS = {
    "nul": lambda: {"text": "a\x00b"},
    "surrogate": lambda: {"items": ["fine", "\ud800"]},
    "surrogate key": lambda: {"\udfff": 1},
    "nan": lambda: {"ratio": math.nan},
    "infinity": lambda: [math.inf],
    "deep": lambda: _nested(3000),
}


def _nested(depth: int):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@task_type("tests.unstorable")
def unstorable(ctx, params):
    return RESULTS[params["kind"]]()


@task_type("tests.raises")
def raises(ctx, params):
    kind = params["kind"]
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise ValueError("bad\x00bytes and a lone \ud800 surrogate")
