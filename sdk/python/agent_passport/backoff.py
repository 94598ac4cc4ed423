"""Retry delays for the SDK's background work: exponential backoff with jitter.

Ten thousand agents that lost Redis or the registry in the same outage must not all come back in
the same millisecond. Each delay is drawn at random between half and all of the exponential
step ("equal jitter"), so the retries of clients that failed together spread out, while no
client waits less than half its step.
"""

from __future__ import annotations

import random

_random = random.SystemRandom()  # os.urandom: forked agents do not share a seed


def backoff_delay(failures: int, *, first: float, cap: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 for the first):
    a random point in [step / 2, step], step = min(cap, first * 2 ** (failures - 1))."""
    step = min(cap, first * 2 ** min(max(failures, 1) - 1, 32))
    return _random.uniform(step / 2, step)
