"""What the API's JSON parser costs: ``registry.parsers.SafeJSONParser`` (bounded nesting, no lone
surrogates or NUL) against DRF's plain ``JSONParser``, on the largest body the SDK sends (1,000
action events with details) and on a small one (an issuance request); and for the action batch,
``ItemwiseJSONParser`` plus ``check_text`` on each event, as ``POST /api/v1/actions`` does.

In-process, one core; the machine's busy cores during the run are reported alongside. Prints a
table; writes bench/results/parser.json (``--output PATH`` elsewhere).

    .venv/bin/python bench/bench_parser.py [--output PATH]
"""

import argparse
import io
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry.settings")

import django  # noqa: E402

django.setup()

from rest_framework.parsers import JSONParser  # noqa: E402

from bench.harness.machine import busy_cores, machine_basics  # noqa: E402
from bench.harness.report import RESULTS_DIR, Column, table, write_json  # noqa: E402
from registry.parsers import (  # noqa: E402
    TEXT_TO_CHECK,
    ItemwiseJSONParser,
    SafeJSONParser,
    check_text,
)

RESULTS_PATH = RESULTS_DIR / "parser.json"
ROUNDS = 30


def batch_body() -> bytes:
    event = {
        "action": "fs:write",
        "resource": "/workspace/ckpt/épocha-0042.pt",
        "jurisdiction": "DE",
        "decision": "allow",
        "reason": "allowed by fs:*:/workspace/**",
        "at": 1795606592.1,
        "details": {"bytes": 4096, "argv": ["python", "train.py", "--lr", "3e-4"], "k": "v" * 200},
    }
    events = [{**event, "id": str(uuid.uuid4())} for _ in range(1000)]
    heartbeat = {"epoch": 41, "host": "trainer-1", "pid": 4242}
    return json.dumps({"events": events, "heartbeat": heartbeat}).encode()


def issue_body() -> bytes:
    scope = ["fs:*:/workspace/**", "tool:python:*", "!net:connect:*:22"]
    return json.dumps({"agent": str(uuid.uuid4()), "scope": scope, "jurisdiction": ["EU"]}).encode()


class ItemwiseChecked:
    """The action batch's path: parse, then check each event's text on its own."""

    def parse(self, stream, media_type, context):
        document = ItemwiseJSONParser().parse(stream, media_type, context)
        if context[TEXT_TO_CHECK]:
            for event in document["events"]:
                check_text(event)
        return document


def median_ms(parser, body: bytes) -> float:
    timings = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        parser.parse(io.BytesIO(body), "application/json", {})
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


COLUMNS = (
    Column("body", 20, left=True),
    Column("bytes", 10),
    Column("DRF ms", 10),
    Column("safe ms", 10),
    Column("added ms", 10),
)


def measure(name: str, body: bytes, parser) -> dict:
    """The same body through DRF's parser and through ``parser``: median ms of each."""
    plain, safe = median_ms(JSONParser(), body), median_ms(parser, body)
    return {
        "body": name,
        "bytes": len(body),
        "drf_json_parser_ms": round(plain, 3),
        "safe_json_parser_ms": round(safe, 3),
        "added_ms": round(safe - plain, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()
    load = busy_cores(1.0)
    batch = batch_body()
    rows = [
        measure("1,000-event batch", batch, SafeJSONParser()),
        measure("batch, per event", batch, ItemwiseChecked()),
        measure("issuance request", issue_body(), SafeJSONParser()),
    ]
    print(f"median of {ROUNDS} parses; busy cores before the run: {load}")
    print(table(COLUMNS, [list(row.values()) for row in rows]))
    report = {"machine": {**machine_basics(), "busy_cores_before": load}, "rows": rows}
    write_json(report, args.output)


if __name__ == "__main__":
    main()
