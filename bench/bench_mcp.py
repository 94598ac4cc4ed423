"""Benchmark: what the MCP gateway adds to a tool call, next to the client talking to the server
directly, in the same run on the same machine.

Two sessions of the official mcp client (``Client`` over ``stdio_client``, the 2026-07-28
protocol as its ``auto`` mode negotiates it) are open at once on the test MCP server
(tests/sdk/mcp_files_server.py, a real process each):

- **direct**: the client launches the server itself (the naive alternative: nothing checked);
- **gateway**: the client launches ``agent-passport mcp-proxy`` which launches the server; every
  call is checked against a 50-rule passport plus the server's tool rules and reported.

Each measures ``call_tool("echo", {"text": "x"})`` round trips, in alternating blocks so both
see the same background noise; the gateway's refusal of a forbidden tool (answered by the gateway
without the server) is measured too. The gateway's Guard follows a private redis-server stamped
every 0.2 s (the registry's heartbeat stand-in) and reports to a loopback HTTP stand-in for the
registry's action log (which counts the events: every call must be there). Records the machine's
load (waiting up to a minute for it to be quiet) and the gateway's CPU per call. Writes
bench/results/mcp.json.

    .venv/bin/python bench/bench_mcp.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import redis

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

import agent_passport  # noqa: E402
from bench.bench_sdk_check import ISSUER, signed_passport, stamp_forever  # noqa: E402
from bench.harness.machine import machine_basics, process_cpu, wait_until_quiet  # noqa: E402
from bench.harness.report import Column, table, write_json  # noqa: E402
from bench.harness.run import Run, run_bench  # noqa: E402
from bench.harness.servers import PrivateRedis  # noqa: E402
from bench.harness.stats import summary  # noqa: E402
from bench.harness.workload import policy_rules  # noqa: E402

RESULTS = BASE_DIR / "bench" / "results" / "mcp.json"
SERVER = BASE_DIR / "tests" / "sdk" / "mcp_files_server.py"
SDK_DIR = Path(agent_passport.__file__).resolve().parents[1]
PREFIX = "aps-bench-mcp"
SCOPE = ["tool:files:echo", "!tool:files:delete_*", *policy_rules()]


class ActionSink(ThreadingHTTPServer):
    """The registry's ``POST /api/v1/actions`` stand-in: accepts and counts the events."""

    events: list[dict[str, Any]]


class _SinkHandler(BaseHTTPRequestHandler):
    server: ActionSink

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.events.extend(body.get("events", []))
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


async def measure(quick: bool, gateway_argv: list[str], env: dict[str, str], pid_file: Path):
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    server = [str(SERVER)]
    direct = StdioServerParameters(command=sys.executable, args=server)
    gated = StdioServerParameters(
        command=sys.executable,
        args=[*gateway_argv, "--", sys.executable, *server, "--pid-file", str(pid_file)],
        env=env,
    )
    blocks, per_block = (6, 50) if quick else (20, 150)
    timings: dict[str, list[float]] = {"direct": [], "gateway": [], "gateway_refusal": []}
    async with Client(direct) as plain, Client(gated) as guarded:
        for client in (plain, guarded):  # warm both (first calls import and cache)
            for _ in range(20):
                await client.call_tool("echo", {"text": "x"})
        gateway_pid = psutil.Process(int(pid_file.read_text())).ppid()  # the server's parent
        idle_from, idle_cpu = time.monotonic(), process_cpu(str(gateway_pid))
        await asyncio.sleep(3)  # the gateway idle: its watcher and reporter threads alone
        cpu_before = process_cpu(str(gateway_pid))
        idle_per_s = (cpu_before - idle_cpu) / (time.monotonic() - idle_from)
        measured_from = time.monotonic()
        calls_before = 20  # the gateway session's warm-up calls
        for block in range(blocks):
            order = [("direct", plain), ("gateway", guarded)]
            for name, client in order if block % 2 == 0 else order[::-1]:
                for _ in range(per_block):
                    start = time.perf_counter()
                    result = await client.call_tool("echo", {"text": "x"})
                    timings[name].append((time.perf_counter() - start) * 1e6)
                    assert not result.is_error
            for _ in range(per_block // 5):
                start = time.perf_counter()
                refused = await guarded.call_tool("delete_everything", {"path": "/"})
                timings["gateway_refusal"].append((time.perf_counter() - start) * 1e6)
                assert refused.is_error
        gateway_calls = len(timings["gateway"]) + len(timings["gateway_refusal"])
        busy = process_cpu(str(gateway_pid)) - cpu_before
        idle = idle_per_s * (time.monotonic() - measured_from)
    cpu = {
        "per_call_us": round(busy / gateway_calls * 1e6, 1),
        "per_call_us_above_idle": round((busy - idle) / gateway_calls * 1e6, 1),
        "idle_ms_per_s": round(idle_per_s * 1e3, 1),
    }
    return timings, cpu, gateway_calls + calls_before


def body(run: Run, quick: bool) -> int:
    quiet = wait_until_quiet(limit=60, threshold=0.5)  # other engineers' runs share the machine
    load_before = {"loadavg": os.getloadavg(), "busy_cores": quiet}
    private = PrivateRedis(run.workdir)
    private.start()
    stop = threading.Event()
    stamper = threading.Thread(
        target=stamp_forever, args=(redis.Redis.from_url(private.url), stop, PREFIX), daemon=True
    )
    stamper.start()
    sink = ActionSink(("127.0.0.1", 0), _SinkHandler)
    sink.events = []
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    token, jwks = signed_passport(SCOPE, jurisdiction=("GLOBAL",), prefix=PREFIX)
    jwks_file = run.workdir / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    registry = f"http://127.0.0.1:{sink.server_address[1]}"
    argv = [
        *("-m", "agent_passport", "mcp-proxy", "--server-name", "files"),
        *("--registry", registry, "--issuer", ISSUER, "--jwks-file", str(jwks_file)),
        *("--redis", private.url),
    ]
    env = {"AGENT_PASSPORT_TOKEN": token, "PYTHONPATH": str(SDK_DIR)}
    pid_file = run.workdir / "server.pid"
    try:
        timings, cpu, calls = asyncio.run(measure(quick, argv, env, pid_file))
        deadline = time.monotonic() + 10
        while len(sink.events) < calls and time.monotonic() < deadline:
            time.sleep(0.1)  # the gateway's reporter flushes as the session ends
    finally:
        stop.set()
        sink.shutdown()
        private.stop()
    rows = {name: summary(values) for name, values in timings.items()}
    added = {q: round(rows["gateway"][q] - rows["direct"][q], 1) for q in ("p50", "p99")}
    report = {
        "machine": {**machine_basics(), "before": load_before, "after_loadavg": os.getloadavg()},
        "scope_rules": len(SCOPE),
        "calls_us": rows,
        "added_per_call_us": added,
        "gateway_cpu": cpu,
        "events_reported": len(sink.events),
        "gateway_calls": calls,
    }
    columns = [Column("path", 18, left=True), *(Column(q, 9, ".0f") for q in ("p50", "p90", "p99"))]
    print(f"tool call round trip, µs (mcp client → server over stdio, {len(SCOPE)}-rule passport)")
    print(
        table(
            columns,
            [[name, *(row[q] for q in ("p50", "p90", "p99"))] for name, row in rows.items()],
        )
    )
    print(f"added by the gateway: p50 {added['p50']:.0f} µs, p99 {added['p99']:.0f} µs")
    print(
        f"gateway CPU per call: {cpu['per_call_us']:.0f} µs "
        f"({cpu['per_call_us_above_idle']:.0f} µs above its idle {cpu['idle_ms_per_s']} ms/s); "
        f"events reported {len(sink.events)}/{calls}"
    )
    print(
        f"load average before {load_before['loadavg']}, after {report['machine']['after_loadavg']}"
    )
    write_json(report, RESULTS)
    return 0 if len(sink.events) >= calls else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    return run_bench(lambda run: body(run, args.quick), name="bench-mcp")


if __name__ == "__main__":
    sys.exit(main())
