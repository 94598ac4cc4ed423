"""Benchmark: worst-case scope decisions with the linear matcher vs the old backtracking regex.

What is measured, in one run, single thread, no server:

1. ``Policy.decide`` uncached (every call a distinct resource, so the decision cache misses)
   on crafted worst cases: the two from issue 8, one rule of 512 characters full of wildcards,
   ``**`` before many ``*``, a ``**``-part that holds both ``/`` and ``*`` (the matcher's
   ``O(resource x pattern)`` case), and 256 rules of 512 characters that are all candidates —
   every resource 1000 characters (the limit) unless the issue's example says otherwise. Also
   a realistic 50-rule and a 256-rule policy, uncached and cached.
2. The naive alternative: the old matcher (each wildcard pattern compiled to a Python regex,
   ``[^/]*`` for ``*``, ``.*`` for ``**``, every candidate rule ``fullmatch``-ed) on one
   resource of each case, in a child process killed after ``--cap`` seconds (``re`` holds the
   interpreter, so it cannot be interrupted from inside).

Before measuring it waits (up to a minute) for the machine to be quiet and records how busy the
other cores were. Prints a table; writes bench/results/rules.json.

    .venv/bin/python bench/bench_rules.py [--quick] [--cap SECONDS] [--output PATH]

Options: ``--quick`` (200 calls per case instead of 2,000), ``--cap S`` (seconds the old matcher
may take on one resource; 10), ``--output PATH`` (bench/results/rules.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.rules import MAX_RESOURCE_LENGTH, MAX_RULE_LENGTH, MAX_RULES, Policy  # noqa: E402
from bench.harness.machine import busy_cores, machine_basics, wait_until_quiet  # noqa: E402
from bench.harness.report import RESULTS_DIR, Column, table, write_json  # noqa: E402
from bench.harness.stats import percentile, timer_overhead_ns  # noqa: E402
from bench.harness.workload import policy_rules  # noqa: E402

TARGET_US = 50.0
ISSUABLE_RULES = 22  # rules of 512 characters that fit a 16 KiB token with the default issuer
OLD_MATCHER = """
import json, re, sys, time
def compile(pattern):
    parts = []
    for i, chunk in enumerate(pattern.split("**")):
        if i:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(piece) for piece in chunk.split("*")))
    return re.compile("".join(parts), re.DOTALL)
patterns, resource = json.load(sys.stdin)
compiled = [compile(p) for p in patterns]
start = time.perf_counter()
matched = [c.fullmatch(resource) is not None for c in compiled]
print(json.dumps({"seconds": time.perf_counter() - start, "matched": any(matched)}))
"""


@dataclass(frozen=True)
class Case:
    name: str
    scope: list[str]
    action: str
    resource: Callable[[int], str]  # a distinct resource per call, same shape
    note: str

    @property
    def patterns(self) -> list[str]:
        return [rule.split(":", 2)[2] for rule in self.scope if rule.count(":") >= 2]


def padded(body: str, i: int, length: int = MAX_RESOURCE_LENGTH) -> str:
    """``body`` repeated to ``length`` characters, the last ones made distinct by ``i``."""
    tag = f"{i:x}"
    return (body * length)[: length - len(tag) - 1] + "~" + tag


def wildcards(unit: str, prefix: str = "", suffix: str = "") -> str:
    """A pattern of the longest length a rule allows made of repeated ``unit``."""
    room = MAX_RULE_LENGTH - len("fs:read:") - len(prefix) - len(suffix)
    return prefix + unit * (room // len(unit)) + suffix


def cases() -> list[Case]:
    return worst_cases() + realistic_cases()


def worst_cases() -> list[Case]:
    # Every rule finds all its "a"s, then looks for its "b" to the end: a full scan each.
    many = [f"*:*:{wildcards('*a', suffix=f'*b{i:x}*')}" for i in range(MAX_RULES)]
    return [
        Case(
            "issue: *a*a*a*a*b vs 200 'a'",
            ["fs:read:*a*a*a*a*b"],
            "fs:read",
            lambda i: padded("a", i, 200),
            "issue 8: over 1 s before",
        ),
        Case(
            "issue: *.*.*.*:22 vs 300 '.'",
            ["net:connect:*.*.*.*:22"],
            "net:connect",
            lambda i: padded(".", i, 300),
            "issue 8: ~0.5 s before",
        ),
        Case(
            "1 rule, 512 chars of '*a'",
            [f"fs:read:{wildcards('*a', suffix='*b')}"],
            "fs:read",
            lambda i: "a" * 600 + "/" + padded("a", i, 398) + "b",
            "every 'a' placed, then a '/' before the 'b': a full scan",
        ),
        Case(
            "1 rule, '**' then 'a*' x 250",
            [f"fs:read:{wildcards('a*', prefix='**', suffix='b')}"],
            "fs:read",
            lambda i: padded("a", i, 800) + "/" + "a" * 198 + "b",
            "placed from the right until the '/': a full scan",
        ),
        Case(
            "1 rule, '**' + 'a/*' x 167 + 'b**'",
            [f"fs:read:{wildcards('a/*', prefix='**', suffix='b**')}"],
            "fs:read",
            lambda i: padded("a/", i, MAX_RESOURCE_LENGTH - 2) + "/b",
            "O(resource x pattern) shape, resource 'a/' x 500",
        ),
        Case(
            f"{MAX_RULES} rules x {MAX_RULE_LENGTH} chars, all candidates",
            many,
            "fs:read",
            lambda i: padded("a", i),
            "each '*a' x 250, resource 1000 'a'",
        ),
        Case(
            f"{ISSUABLE_RULES} rules x {MAX_RULE_LENGTH} chars (issuable)",
            many[:ISSUABLE_RULES],
            "fs:read",
            lambda i: padded("a", i),
            "the most such rules a 16 KiB passport holds",
        ),
    ]


def realistic_cases() -> list[Case]:
    realistic_256 = policy_rules() + [f"fs:read:/srv/archive/{i}/**" for i in range(206)]
    return [
        Case(
            "realistic 50 rules",
            policy_rules(),
            "fs:read",
            lambda i: f"/srv/data/team{i % 12}/u{i}/file.csv",
            "bench/harness/workload.policy_rules()",
        ),
        Case(
            f"realistic {MAX_RULES} rules",
            realistic_256,
            "fs:read",
            lambda i: f"/srv/archive/{i % 206}/u{i}/file.csv",
            "the 50 plus 206 fs:read prefixes",
        ),
    ]


def measure_uncached(case: Case, calls: int) -> dict[str, float]:
    """Per-call µs of ``decide`` on distinct resources (every call a cache miss)."""
    policy = Policy(case.scope, ["GLOBAL"])
    resources = [case.resource(i) for i in range(calls)]
    assert len(set(resources)) == calls
    clock = time.perf_counter_ns
    samples = []
    for resource in resources:
        start = clock()
        policy.decide(case.action, resource)
        samples.append((clock() - start) / 1000)
    samples.sort()
    return {
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "max_us": samples[-1],
    }


def measure_cached(case: Case, calls: int) -> float:
    policy = Policy(case.scope, ["GLOBAL"])
    resource = case.resource(0)
    policy.decide(case.action, resource)
    start = time.perf_counter_ns()
    for _ in range(calls):
        policy.decide(case.action, resource)
    return (time.perf_counter_ns() - start) / calls / 1000


def measure_old(case: Case, cap: float) -> dict[str, object]:
    """The old regex matcher on one resource, in a child process killed after ``cap`` s."""
    payload = json.dumps([case.patterns, case.resource(0)])
    try:
        done = subprocess.run(
            [sys.executable, "-c", OLD_MATCHER],
            input=payload,
            capture_output=True,
            text=True,
            timeout=cap,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return {"us": None, "capped": True}
    return {"us": json.loads(done.stdout)["seconds"] * 1e6, "capped": False}


def run(calls: int, cap: float) -> list[dict[str, object]]:
    rows = []
    for case in cases():
        uncached = measure_uncached(case, calls)
        rows.append(
            {
                "case": case.name,
                "note": case.note,
                "rules": len(case.scope),
                "uncached": uncached,
                "cached_us": measure_cached(case, calls * 10),
                "old_regex": measure_old(case, cap),
                "within_target": uncached["p99_us"] <= TARGET_US,
            }
        )
    return rows


COLUMNS = (
    Column("case", 45, left=True),
    Column("p50 µs", 9, ".1f"),
    Column("p99 µs", 10, ".1f"),
    Column("max µs", 10, ".1f"),
    Column("cached", 9, ".2f"),
    Column("old regex", 13),
    Column("", 0, left=True),
)


def print_table(rows: list[dict], cap: float) -> None:
    lines = []
    for row in rows:
        old, u = row["old_regex"], row["uncached"]
        old_text = f"> {cap:.0f} s" if old["capped"] else f"{old['us']:.1f} µs"
        flag = "" if row["within_target"] else f"  (p99 over {TARGET_US:.0f} µs)"
        lines.append(
            [row["case"], u["p50_us"], u["p99_us"], u["max_us"], row["cached_us"], old_text, flag]
        )
    print()
    print(table(COLUMNS, lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per case")
    parser.add_argument("--cap", type=float, default=10.0, help="seconds for the old matcher")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "rules.json")
    args = parser.parse_args()
    load_before = wait_until_quiet(limit=60, threshold=0.5)
    rows = run(calls=200 if args.quick else 2000, cap=args.cap)
    load_after = busy_cores(1.0)
    print_table(rows, args.cap)
    report = {
        "machine": {
            **machine_basics(),
            "busy_cores_before": load_before,
            "busy_cores_after": load_after,
            "timer_overhead_ns": timer_overhead_ns(),
        },
        "target_us": TARGET_US,
        "limits": {
            "rules": MAX_RULES,
            "rule_length": MAX_RULE_LENGTH,
            "resource_length": MAX_RESOURCE_LENGTH,
        },
        "old_regex_cap_seconds": args.cap,
        "cases": rows,
    }
    print(f"\nbusy cores outside the bench: {load_before} before, {load_after} after")
    write_json(report, args.output)


if __name__ == "__main__":
    main()
