"""How long to wait before trying again: the one exponential backoff of the app (step
retries, webhook attempts, a heartbeat that lost its database)."""

import random

# 2.0 ** 1024 overflows a float; long before this many doublings any cap is reached.
MAX_DOUBLINGS = 1000


def backoff(failures: int, *, base: float, cap: float, jitter: bool = False) -> float:
    """Seconds to wait after `failures` failures in a row: `base` after the first, twice as
    long after each further one, at most `cap`. With `jitter`, half of that is fixed and
    half random, so that many waits that began together do not end together."""
    delay = min(base * 2.0 ** min(failures - 1, MAX_DOUBLINGS), cap)
    if jitter:
        return delay / 2 + random.uniform(0, delay / 2)
    return delay
