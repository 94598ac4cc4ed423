"""Benchmark: a forbidden action on one copy of an agent -> every copy of it refusing.

The real service (gunicorn + a Celery worker with beat + ``revocation_heartbeat``, PostgreSQL
database ``aps_bench_deny``, the machine's Redis under a key prefix of this run) with one
``deny_pattern`` kill rule on ``tool:bench:forbidden``. Two agents, each run as ``--copies``
guard processes (10: a real deployment, every copy with its own passport, its own
RevocationWatcher and Redis connection, its own ActionReporter posting to the registry):

* **deny at once** — ``ActionReporter`` as shipped: a deny wakes the delivery thread;
* **timer only** (the naive alternative, the behaviour before) — the same reporter whose
  delivery thread only wakes every ``flush_interval`` (0.5 s, the default).

A round: after a random pause (so the deny falls anywhere in the flush timer's period), copy 1
calls ``guard.check("tool:bench:forbidden")`` (ScopeDenied; the reporter records the deny);
every copy waits for its guard's kill and confirms with ``guard.check`` that it refuses
(PassportRevoked). Latency = the last copy's refusal minus the moment copy 1 started the
forbidden check (all on this machine's clock). Split: deny -> copy 1's reporter starts the post
carrying the deny (the part this SDK change is about; a post already in flight, e.g. a heartbeat,
delays it), that post until its answer, deny -> the revocation's stream entry (XADD: the request
stores, runs the rules, revokes and publishes before it answers), and XADD -> the last copy
refusing (Redis -> watchers). The kill is lifted after each round and every copy is seen allowing
again. Rounds alternate between the two agents. The per-agent ingest throttle is lifted (ten
copies exceed the default 600 batches/minute). Target: p99 <= 100 ms (deny at once).

    .venv/bin/python bench/bench_deny.py [--rounds 30] [--copies 10] [--quick] [--keep-logs]

Writes bench/results/deny.json. The machine is shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
import requests

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.errors import PassportRevoked, ScopeDenied  # noqa: E402
from agent_passport.guard import Guard  # noqa: E402
from agent_passport.protocol import RevocationChannel  # noqa: E402
from agent_passport.reporter import ActionReporter  # noqa: E402
from agent_passport.tokens import keys_from_jwks  # noqa: E402
from bench.harness.machine import busy_cores, machine_basics  # noqa: E402
from bench.harness.report import RESULTS_DIR, Column, table, write_json, yes  # noqa: E402
from bench.harness.run import Run, run_bench  # noqa: E402
from bench.harness.servers import (  # noqa: E402
    AUDIENCE,
    HIGH_RATE,
    Api,
    Service,
    manage,
    prepare_database,
    registry_env,
    setup_registry,
)
from bench.harness.stats import summary  # noqa: E402
from registry.devserver import free_port  # noqa: E402

DB_NAME = "aps_bench_deny"
PREFIX = "aps-bench-deny"
ALLOWED = "tool:bench:work"
FORBIDDEN = "tool:bench:forbidden"
TARGET_P99_MS = 100.0
MODES = ("deny_at_once", "timer_only")
ROUND_TIMEOUT = 10.0
# deny: copy 1 starts the forbidden check; post: its reporter starts the post carrying the deny
# (post_ms: until the answer); xadd: the revocation's stream entry; first/all: copies refusing.
MEASURES = (
    "deny_to_all_ms",
    "deny_to_first_ms",
    "deny_to_post_ms",
    "post_ms",
    "deny_to_xadd_ms",
    "xadd_to_all_ms",
)


class TimedReporter(ActionReporter):
    """The shipped reporter, noting when each post carrying a deny started and ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deny_posts: list[list[float]] = []  # [started, answered]

    def _post(self, events: list[dict[str, Any]]) -> Any:
        if not any(event["decision"] == "deny" for event in events):
            return super()._post(events)
        post = [time.time()]
        self.deny_posts.append(post)
        outcome = super()._post(events)
        post.append(time.time())
        return outcome


class TimerOnlyReporter(TimedReporter):
    """The reporter as it was: its thread wakes every flush_interval (or on flush(),
    heartbeat_now(), close()), never for a deny."""

    def _idle(self, delay: float, *, backing_off: bool) -> None:
        self._wake.wait(delay)
        self._wake.clear()


# --- one copy of the agent (a process) --------------------------------------------------------


def copy_worker(conn: Connection, config: dict[str, Any]) -> None:
    """A copy of the agent: a Guard with its own watcher (own Redis connection) and reporter.

    Messages: ``{"op": "round", "deny": bool, "pause": s}`` -> ``{"denied_at", "refused_at"}``;
    ``{"op": "lifted"}`` -> ``{"allowed_at"}``; ``{"op": "stop"}``.
    """
    reporter_class = TimerOnlyReporter if config["mode"] == "timer_only" else TimedReporter
    reporter = reporter_class(
        config["actions_url"], config["token"], spill_path=config["spill_path"]
    )
    guard = Guard(
        config["token"],
        keys=keys_from_jwks(config["jwks"]),
        issuer=config["issuer"],
        audience=AUDIENCE,
        redis_url=config["redis_url"],
        reporter=reporter,
    )
    reporter.start()  # after the Guard made itself the reporter's heartbeat (as open_session)
    guard.check(ALLOWED)
    conn.send({"ready": True})
    try:
        while (msg := conn.recv())["op"] != "stop":
            if msg["op"] == "round":
                reporter.deny_posts.clear()
                conn.send(one_round(guard, msg["deny"], msg["pause"]))
            elif msg["op"] == "lifted":
                # The kill reaches the copies before the post that caused it is answered.
                conn.send({"allowed_at": allowed_again(guard), "deny_posts": reporter.deny_posts})
    finally:
        guard.close()
        reporter.close(timeout=5)


def one_round(guard: Guard, deny: bool, pause: float) -> dict[str, Any]:
    denied_at = None
    if deny:
        time.sleep(pause)
        denied_at = time.time()
        try:
            guard.check(FORBIDDEN)
        except ScopeDenied:
            pass
        else:
            raise RuntimeError(f"{FORBIDDEN} was allowed")
    deadline = time.monotonic() + ROUND_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        guard.wait_for_kill(left)
        try:
            guard.check(ALLOWED)
        except PassportRevoked:
            return {"denied_at": denied_at, "refused_at": time.time()}
        time.sleep(0.001)  # not killed after all: the flag of the last round, being cleared
    return {"denied_at": denied_at, "refused_at": None}


def allowed_again(guard: Guard) -> float | None:
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        try:
            guard.check(ALLOWED)
        except PassportRevoked:
            time.sleep(0.005)
            continue
        if not guard.killed:  # the state is swapped first, then the kill flag cleared
            return time.time()
        time.sleep(0.001)
    return None


# --- the coordinator ---------------------------------------------------------------------------


class Agent:
    """One agent run as ``copies`` processes, all with one reporter behaviour (``mode``)."""

    def __init__(self, mode: str, api: Api, config: dict[str, Any], copies: int, workdir: Path):
        self.mode = mode
        self.id = api.create_agent({"name": f"deny-bench-{mode}", "fleet": "deny-bench"})
        context = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes = []
        for i in range(copies):
            token = api.issue(self.id, [ALLOWED], ["GLOBAL"])
            ours, theirs = context.Pipe()
            spill = workdir / f"{mode}-{i}.jsonl"
            copy_config = {**config, "mode": mode, "token": token, "spill_path": str(spill)}
            process = context.Process(target=copy_worker, args=(theirs, copy_config), daemon=True)
            process.start()
            self.conns.append(ours)
            self.processes.append(process)
        for conn in self.conns:
            recv(conn, 60)

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send({"op": "stop"})
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def recv(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError("a copy did not answer")
    return conn.recv()


def active_revocations(api: Api, agent_id: str) -> list[dict[str, Any]]:
    api.session.close()  # gunicorn closes idle keep-alive connections after 2 s: start afresh
    api.session = api.new_session()
    listed = api.get("/api/v1/killswitch", {"active": "true", "target_type": "agent"})
    rows = listed["results"] if isinstance(listed, dict) else listed
    return [row for row in rows if row["target"].get("agent") == agent_id]


def run_round(
    agent: Agent, api: Api, stream: redis.Redis, stream_key: str, rnd: random.Random
) -> dict[str, Any]:
    pause = rnd.uniform(0.0, 1.0)
    for i, conn in enumerate(agent.conns):
        conn.send({"op": "round", "deny": i == 0, "pause": pause})
    answers = [recv(conn, ROUND_TIMEOUT + pause + 5) for conn in agent.conns]
    denied_at = answers[0]["denied_at"] * 1000
    refused = [a["refused_at"] for a in answers]
    result: dict[str, Any] = {"mode": agent.mode, "pause": round(pause, 3)}
    if None in refused:
        result["missed"] = refused.count(None)
    else:
        last = max(refused) * 1000
        xadd = float(stream.xrevrange(stream_key, count=1)[0][0].split("-")[0])
        result.update(
            deny_to_all_ms=last - denied_at,
            deny_to_first_ms=min(refused) * 1000 - denied_at,
            deny_to_xadd_ms=xadd - denied_at,
            xadd_to_all_ms=last - xadd,
        )
    for revocation in active_revocations(api, agent.id):
        api.post(f"/api/v1/killswitch/{revocation['id']}/lift", {"reason": "bench round"}, 200)
    for conn in agent.conns:
        conn.send({"op": "lifted"})
    lifted = [recv(conn, ROUND_TIMEOUT + 5) for conn in agent.conns]
    if None in (answer["allowed_at"] for answer in lifted):
        raise RuntimeError("a copy still refused after the lift")
    posts = [post for post in lifted[0]["deny_posts"] if len(post) == 2]
    if posts and "missed" not in result:
        posted, answered = posts[0]
        result.update(deny_to_post_ms=posted * 1000 - denied_at, post_ms=(answered - posted) * 1000)
    return result


def admin_token(env: dict[str, str]) -> str:
    output = manage(env, "create_operator", "benchdeny-admin", "--role", "admin", "--reset")
    return next(
        line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("token:")
    )


def bench(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    db = prepare_database(admin_url, DB_NAME, True, run.workdir)
    base_url = f"http://127.0.0.1:{free_port()}"
    prefix = f"{PREFIX}-{os.getpid()}"
    run.delete_keys_at_exit(run.redis_url, [f"{prefix}*"])
    env = registry_env(
        database_url=db.url,
        redis_url=run.redis_url,
        prefix=prefix,
        issuer=base_url,
        CELERY_BROKER_URL=run.redis_url,
        # Ten copies of one agent share its batch budget (600/minute by default): their
        # heartbeats, the acknowledgements of every kill and lift and the checks of this bench
        # exceed it, and a throttled deny waits for Retry-After. Measured here: the path itself.
        ACTIONS_RATE_LIMIT=HIGH_RATE,
    )
    api = Api(base_url, setup_registry(env, "benchdeny"))
    admin = Api(base_url, admin_token(env))
    manage(env, "reconcile_revocations")
    service = Service(env, base_url).start(run.workdir, "deny")
    service.wait_ready()
    admin.post(
        "/api/v1/rules",
        {"name": "forbidden tool", "kind": "deny_pattern", "pattern": FORBIDDEN},
        201,
    )
    config = {
        "actions_url": f"{base_url}/api/v1/actions",
        "jwks": requests.get(f"{base_url}/.well-known/jwks.json", timeout=10).json(),
        "issuer": base_url,
        "redis_url": run.redis_url,
    }
    load_before = {**machine_basics(), "loadavg": os.getloadavg(), "busy_cores": busy_cores(1.0)}
    agents = [Agent(mode, api, config, args.copies, run.workdir) for mode in MODES]
    rnd = random.Random(args.seed)
    stream = redis.Redis.from_url(run.redis_url, decode_responses=True)
    stream_key = RevocationChannel(prefix).stream_key
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for agent in agents if r % 2 == 0 else reversed(agents):
                rounds.append(run_round(agent, api, stream, stream_key, rnd))
            print(f"round {r + 1}/{args.rounds} load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        for agent in agents:
            agent.stop()
        service.stop()
    report: dict[str, Any] = {
        "bench": "deny",
        "copies": args.copies,
        "rounds": args.rounds,
        "flush_interval_s": 0.5,
        "database": db.engine,
        "machine_before": load_before,
        "machine_after": {"loadavg": os.getloadavg(), "busy_cores": busy_cores(1.0)},
        "target_p99_ms": TARGET_P99_MS,
        "modes": {},
        "rounds_raw": rounds,
    }
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        done = [r for r in mine if "missed" not in r]
        report["modes"][mode] = {
            "missed_rounds": len(mine) - len(done),
            **{key: summary([r[key] for r in done if key in r]) for key in MEASURES},
        }
    at_once = report["modes"]["deny_at_once"]
    report["pass"] = (
        at_once["missed_rounds"] == 0 and at_once["deny_to_all_ms"].get("p99", 1e9) <= TARGET_P99_MS
    )
    return report


def print_report(report: dict[str, Any]) -> None:
    columns = [
        Column("reporter", 14, left=True),
        Column("measure", 22, left=True),
        Column("n", 5),
        Column("p50 ms", 9, ".1f"),
        Column("p99 ms", 9, ".1f"),
        Column("max ms", 9, ".1f"),
    ]
    rows = []
    for mode, figures in report["modes"].items():
        for key in MEASURES:
            s = figures.get(key, {})
            rows.append(
                [
                    mode,
                    key.removesuffix("_ms"),
                    s.get("n"),
                    s.get("p50"),
                    s.get("p99"),
                    s.get("max"),
                ]
            )
    print(
        f"Forbidden action on copy 1 -> all {report['copies']} copies refusing "
        f"({report['rounds']} rounds per reporter, flush_interval {report['flush_interval_s']} s)"
    )
    print(table(columns, rows))
    for mode, figures in report["modes"].items():
        if figures["missed_rounds"]:
            print(f"{mode}: {figures['missed_rounds']} round(s) where a copy was never killed")
    print(f"machine before: {report['machine_before']}")
    print(f"machine after:  {report['machine_after']}")
    p99 = report["modes"]["deny_at_once"]["deny_to_all_ms"].get("p99")
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms (deny at once): {p99} ms {yes(report['pass'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="5 rounds, 4 copies")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "deny.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.copies = 5, 4

    def body(run: Run) -> int:
        report = bench(run, args)
        print_report(report)
        write_json(report, args.output)
        return 0 if report["pass"] else 1

    return run_bench(body, name="bench-deny", keep_logs=args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
