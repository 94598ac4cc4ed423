"""Benchmark: the egress proxy's CONNECT next to a direct connection, in the same run.

1. **Latency.** One connection at a time to a loopback echo server: connect, send one byte,
   read it back, close — directly (the naive path: no proxy) and through the proxy
   (``CONNECT``, read the 200, then the same byte). p50/p99 µs; the difference is what the
   proxy adds per connection: its accept, the head parse, ``guard.check`` and its connect;
   and the decision alone (parse + ``guard.check``, no sockets), to show which part is which.
2. **Connections per second on one core.** The proxy (its asyncio thread, the guard and its
   watcher) pinned to one core; clients (16 concurrent, asyncio) and the echo server pinned to
   the other; CONNECT + one-byte round trip + close, for a fixed time. Also per proxy
   CPU-second (the proxy process's own CPU time over the window).

The guard is real: a 50-rule passport plus ``net:connect:127.0.0.1:*``, a private
redis-server stamped every 0.2 s, a reporter stand-in that appends to a list (delivery is not
measured here; bench_actions does). The machine is shared: busy cores are recorded before and
after.

    .venv/bin/python bench/bench_egress.py [--quick]

Writes bench/results/egress.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.egress import EgressProxy, parse_request  # noqa: E402
from agent_passport.guard import Guard  # noqa: E402
from agent_passport.protocol import TOKEN_TYPE, RevocationChannel  # noqa: E402
from agent_passport.tokens import keys_from_jwks, public_key_to_jwk  # noqa: E402
from agent_passport.watcher import RevocationWatcher  # noqa: E402
from bench.bench_killswitch import ListReporter  # noqa: E402
from bench.harness.machine import busy_cores, machine_basics, process_cpu  # noqa: E402
from bench.harness.report import Column, table, write_json  # noqa: E402
from bench.harness.servers import PrivateRedis  # noqa: E402
from bench.harness.stats import summary  # noqa: E402
from bench.harness.workload import policy_rules  # noqa: E402

RESULTS = BASE_DIR / "bench" / "results" / "egress.json"
ISSUER = "https://bench.invalid"
PREFIX = "aps-bench-egress"
CONCURRENCY = 16


# --- the echo server and the client, each run as a process of its own ----------------------
def serve_echo() -> None:
    """Echo every byte back; prints the port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def connect_head(echo_port: int) -> bytes:
    target = f"127.0.0.1:{echo_port}"
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def round_trip(port: int, head: bytes | None) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if head is not None:
            sock.sendall(head)
            answer = b""
            while not answer.endswith(b"\r\n\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError(f"the proxy closed: {answer!r}")
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the proxy refused: {answer!r}")
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            raise RuntimeError("no echo")


def measure_latency(proxy_port: int, echo_port: int, runs: int) -> dict[str, Any]:
    """Alternating direct and proxied round trips (so drift in load hits both alike), µs."""
    head = connect_head(echo_port)
    for _ in range(50):  # warm up both paths
        round_trip(echo_port, None)
        round_trip(proxy_port, head)
    direct, proxied = [], []
    for _ in range(runs):
        for port, sent, samples in ((echo_port, None, direct), (proxy_port, head, proxied)):
            started = time.perf_counter_ns()
            round_trip(port, sent)
            samples.append((time.perf_counter_ns() - started) / 1000)
    return {"direct_us": summary(direct), "proxy_us": summary(proxied)}


def measure_throughput(port: int, head: bytes | None, seconds: float) -> dict[str, Any]:
    """Connections completed per second by ``CONCURRENCY`` asyncio clients."""

    async def client(deadline: float, done: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if head is not None:
                writer.write(head)
                answer = await reader.readuntil(b"\r\n\r\n")
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"the proxy refused: {answer!r}")
            writer.write(b"x")
            if await reader.readexactly(1) != b"x":
                raise RuntimeError("no echo")
            writer.close()
            await writer.wait_closed()
            done[0] += 1

    async def main() -> dict[str, Any]:
        done = [0]
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + seconds
        await asyncio.gather(*(client(deadline, done) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        return {"connections": done[0], "seconds": round(elapsed, 3)}

    return asyncio.run(main())


def client_main(config: dict[str, Any]) -> dict[str, Any]:
    proxy, echo, quick = config["proxy_port"], config["echo_port"], config["quick"]
    head = connect_head(echo)
    seconds = 2.0 if quick else 5.0
    result: dict[str, Any] = {"latency": measure_latency(proxy, echo, 300 if quick else 2000)}
    result["direct_rate"] = measure_throughput(echo, None, seconds)
    print(json.dumps({"ready_for_proxy_rate": True}), flush=True)
    sys.stdin.readline()  # the bench starts its CPU clock on the proxy, then says go
    result["proxy_rate"] = measure_throughput(proxy, head, seconds)
    return result


# --- the bench process: redis, the guard and the proxy ---------------------------------------
def measure_decision(guard: Guard, runs: int) -> dict[str, Any]:
    """The proxy's own decision for one CONNECT, without sockets: parse the head, check."""
    head = connect_head(8080)
    samples = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        request = parse_request(head)
        guard.check("net:connect", request.target, details={"proxy": request.method})
        samples.append((time.perf_counter_ns() - started) / 1000)
    return summary(samples)


def signed_passport() -> tuple[str, dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "bench-agent",
        "aud": "agent-passport",
        "jti": "bench-egress",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "scope": [*policy_rules(), "net:connect:127.0.0.1:*"],
        "jurisdiction": ["GLOBAL"],
        "rev": RevocationChannel(PREFIX).as_claim(),
    }
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"typ": TOKEN_TYPE, "kid": "b"})
    return token, {"keys": [public_key_to_jwk("b", key.public_key())]}


def stamp_forever(client: redis.Redis, stop: threading.Event) -> None:
    """The registry's heartbeat stamp (epoch 0, Redis TIME), every 0.2 s."""
    channel = RevocationChannel(PREFIX)
    client.hset(channel.snapshot_key, mapping={"_epoch": 0, "_generation": "bench"})
    while not stop.is_set():
        seconds, micros = client.time()
        client.hset(
            channel.heartbeat_key, mapping={"epoch": 0, "at": seconds * 1000 + micros // 1000}
        )
        stop.wait(0.2)


def pinned(command: list[str], cpu: int, **options: Any) -> subprocess.Popen:
    """Started, then pinned to ``cpu`` (before it has done anything but start Python)."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    os.sched_setaffinity(process.pid, {cpu})
    return process


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpu, client_cpu = cpus[-1], cpus[0]
    os.sched_setaffinity(0, {proxy_cpu})  # this process: the proxy's loop, the watcher
    server = PrivateRedis(workdir)
    server.start()
    stop = threading.Event()
    stamper = threading.Thread(
        target=stamp_forever, args=(redis.Redis.from_url(server.url), stop), daemon=True
    )
    stamper.start()
    token, jwks = signed_passport()
    watcher = RevocationWatcher(server.url, channel=RevocationChannel(PREFIX)).start()
    processes: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 15
        while watcher.status().staleness_s > 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first heartbeat stamp is seen
        guard = Guard(token, keys=keys_from_jwks(jwks), issuer=ISSUER, watcher=watcher)
        reporter = ListReporter()
        guard.reporter = reporter
        decision = measure_decision(guard, 5_000 if quick else 50_000)
        proxy = EgressProxy(guard, max_connections=1024).start()
        me = Path(__file__)
        echo = pinned([sys.executable, str(me), "--echo"], client_cpu, stdout=subprocess.PIPE)
        processes.append(echo)
        assert echo.stdout is not None
        echo_port = int(echo.stdout.readline())
        client = pinned(
            [sys.executable, str(me), "--client"],
            client_cpu,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(client)
        assert client.stdin is not None and client.stdout is not None
        config = {"proxy_port": proxy.port, "echo_port": echo_port, "quick": quick}
        client.stdin.write(json.dumps(config) + "\n")
        client.stdin.flush()
        client.stdout.readline()  # ready for the proxied rate
        cpu_before, wall_before = process_cpu(str(os.getpid())), time.perf_counter()
        client.stdin.write("go\n")
        client.stdin.flush()
        result = json.loads(client.stdout.readline())
        proxy_cpu_s = process_cpu(str(os.getpid())) - cpu_before
        wall = time.perf_counter() - wall_before
        if client.wait(30) != 0:
            raise RuntimeError("the client failed")
        proxy.stop()
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
        watcher.stop()
        stop.set()
        stamper.join(2)
        server.stop()
    rate = result["proxy_rate"]
    rate["per_s"] = round(rate["connections"] / rate["seconds"], 1)
    rate["proxy_cpu_s"] = round(proxy_cpu_s, 3)
    rate["proxy_cpu_share"] = round(proxy_cpu_s / wall, 2)
    rate["per_proxy_cpu_s"] = round(rate["connections"] / proxy_cpu_s, 1) if proxy_cpu_s else None
    direct = result["direct_rate"]
    direct["per_s"] = round(direct["connections"] / direct["seconds"], 1)
    result.update(proxy_cpu=proxy_cpu, client_cpu=client_cpu, checks=len(reporter.events))
    result["decision_us"] = decision
    result["rules"] = len(guard.policy.rules)
    return result


def print_report(report: dict[str, Any]) -> None:
    result = report["egress"]
    latency = result["latency"]
    columns = [Column("path", 12, left=True)] + [
        Column(name, 10, ".0f") for name in ("n", "p50 µs", "p90 µs", "p99 µs", "max µs")
    ]
    rows = [
        [label, s["n"], s["p50"], s["p90"], s["p99"], s["max"]]
        for label, s in (("direct", latency["direct_us"]), ("via proxy", latency["proxy_us"]))
    ]
    print("connect + 1-byte round trip + close, one at a time")
    print(table(columns, rows, indent="  "))
    added = {q: latency["proxy_us"][q] - latency["direct_us"][q] for q in ("p50", "p99")}
    print(f"  added by the proxy: p50 {added['p50']:.0f} µs, p99 {added['p99']:.0f} µs")
    decision = result["decision_us"]
    print(
        f"  of which the decision (parse the CONNECT head + guard.check): "
        f"p50 {decision['p50']:.1f} µs, p99 {decision['p99']:.1f} µs"
    )
    rate, direct = result["proxy_rate"], result["direct_rate"]
    print(
        f"connections/s ({CONCURRENCY} concurrent clients): via proxy {rate['per_s']:.0f} "
        f"(proxy on cpu {result['proxy_cpu']}, {rate['proxy_cpu_share']:.2f} cores busy; "
        f"{rate['per_proxy_cpu_s']} per proxy CPU-second), direct {direct['per_s']:.0f}"
    )
    print(f"busy cores before/after: {report['busy_cores_before']} / {report['busy_cores_after']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        serve_echo()
        return 0
    if args.client:
        print(json.dumps(client_main(json.loads(sys.stdin.readline()))), flush=True)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="aps-bench-egress-"))
    report: dict[str, Any] = {"machine": machine_basics(), "busy_cores_before": busy_cores(1.0)}
    report["machine"]["loadavg"] = os.getloadavg()
    try:
        report["egress"] = run(args.quick, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["busy_cores_after"] = busy_cores(1.0)
    print_report(report)
    write_json(report, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
