"""Percentiles and summaries of timings."""

from __future__ import annotations

import time
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def summary(values: list[float]) -> dict[str, Any]:
    """n, min, p50, p90, p99, max and mean of ``values`` (in their unit, 2 decimals)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "min": round(ordered[0], 2),
        "p50": round(percentile(ordered, 50), 2),
        "p90": round(percentile(ordered, 90), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


def timer_overhead_ns() -> float:
    """Median cost of one ``perf_counter_ns`` pair, as included in every per-call timing."""
    now = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        start = now()
        samples.append(now() - start)
    return percentile(sorted(float(v) for v in samples), 50)
