"""Benchmark: the action log as a transparency log (issue 12, "Figures").

What is measured, in one run (PostgreSQL, two databases of the bench's own, dropped at the end):

(a) **Ingestion over HTTP with the tree maintained.** gunicorn ``registry.wsgi`` (DEFAULT_CONFIG)
    against ``aps_bench_transparency``; ``--agents`` agents (8) post 1,000-event batches back to
    back, one client thread and connection each, in this process (bodies are built beforehand:
    per post only the first 8 hex digits of every id change, so the client costs little). Each
    batch reserves its leaf indexes in its transaction, as ``ingest_actions`` does; meanwhile a
    separate process runs ``transparency.sign_tree_head()`` every second (extends the stored
    tree, signs a head). Phases, in the same run and on the same database:
      - ``before``: the code of ``--baseline`` (9113fe7: DRF validation of every event, model
        instances, bulk_create), tree maintained;
      - ``now``: this tree's code (fast validation path, rows as dicts, COPY), tree maintained;
      - ``now, no heads``: this tree's code without the signing loop (what the tree costs).
    Reported: events/s over the window, batch latency, CPU cores and CPU time per event of the
    client, gunicorn, PostgreSQL, the signer and the rest of the machine, heads signed.
(b) **STH creation over 1M events**: ``--events`` events (1,000,000) stored by
    ``ingest_actions`` in-process (valid chains, COPY), then one ``sign_tree_head()``: the tree
    extended from 0 and the head signed.
(c) **Inclusion proofs** p50/p99 at 1M and at ``--leaves`` (10M) leaves: after (b), the leaves up
    to ``--leaves`` are added server-side (``INSERT ... SELECT generate_series``: one chain of
    plausible events of an extra agent; faster still than COPY from Python) and the tree is
    extended once (timed too); then 1,000 random leaves are proved at each size
    (``transparency.inclusion_proof``), and a sample of the proofs is checked with the SDK.
(d) **Offline verification of the 1M-event export**: ``audit.export_jsonl`` written to a file,
    then ``python -m agent_passport verify-audit FILE --jwks-file`` (everything: event hashes,
    dense leaves, the tree against every head, the heads' chain and signature, chains and
    checkpoints) and, for comparison, the tree alone over the same events' leaf hashes
    (``CompactTree`` + ``verify_head``), each timed in a process of its own.

The machine is shared (2 cores on the bench host): the load before each phase is printed; the
CPU time per event does not depend much on it, the rates do.

    .venv/bin/python bench/bench_transparency.py [--quick] [--agents 8] [--duration 15]
        [--config sync:2] [--baseline 9113fe7|none] [--events 1000000] [--leaves 10000000]

``--quick``: 6 s windows, 100,000 events, 1,000,000 leaves (a few minutes). ``--keep-db`` keeps
the databases, ``--output`` (bench/results/transparency.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.bench_actions import PASSPORT_SCOPE, _event  # noqa: E402
from bench.harness.load import BadAnswer, closed_loop  # noqa: E402
from bench.harness.machine import (  # noqa: E402
    CpuSnapshot,
    busy_cores,
    machine_basics,
    process_cpu,
)
from bench.harness.report import RESULTS_DIR, Column, table, write_json  # noqa: E402
from bench.harness.run import Run, run_bench  # noqa: E402
from bench.harness.servers import (  # noqa: E402
    HIGH_RATE,
    Api,
    GunicornConfig,
    drop_database,
    gunicorn_command,
    prepare_database,
    registry_env,
    setup_registry,
    stop_group,
    wait_healthy,
    with_database,
)
from bench.harness.stats import percentile  # noqa: E402
from registry.devserver import free_port  # noqa: E402

RESULTS_PATH = RESULTS_DIR / "transparency.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
HTTP_DB = "aps_bench_transparency"
TREE_DB = "aps_bench_transparency_tree"
ISSUER = "http://aps-bench-transparency.invalid"
DEFAULT_CONFIG = "sync:2"
BASELINE = "9113fe7"  # main before the ingestion work: DRF per event, bulk_create
TARGET_EVENTS_PER_S = 20_000
TARGET_PROOF_MS = 10.0
BATCH = 1000
ID_SLOT = b"@@@@@@@@"  # the first 8 hex digits of every id in a body template
PROOFS = 1000

SIGNER = """
import json, os, signal, sys, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry.settings")
django.setup()
from actions import transparency
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
times, sizes = [], []
due = time.monotonic()
while not stop:
    started = time.perf_counter()
    head = transparency.sign_tree_head()
    times.append(time.perf_counter() - started)
    if head is not None:
        sizes.append(head.tree_size)
    due += 1.0
    time.sleep(max(0.0, due - time.monotonic()))
print(json.dumps({"runs": len(times), "heads": len(sizes), "sizes": sizes, "seconds": times}))
"""


# --- (a) ingestion over HTTP ---------------------------------------------------------------------


@dataclass
class Agent:
    index: int
    token: str


def templates(rng: random.Random, count: int, agent: int) -> list[bytes]:
    """Batch bodies whose ids start with ID_SLOT (the rest random): a post fills the slot."""
    heartbeat = {"epoch": 0, "host": f"bench-host-{agent}", "pid": 10_000 + agent}
    bodies = []
    for _ in range(count):
        events = [_event(rng, time.time()) for _ in range(BATCH)]
        for event in events:
            event["id"] = ID_SLOT.decode() + event["id"][8:]
        document = {"events": events, "heartbeat": heartbeat}
        bodies.append(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode())
    return bodies


def client(base_url: str, agent: Agent, bodies: list[bytes], serial: itertools.count):
    session = requests.Session()
    headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"}
    url = base_url + "/api/v1/actions"

    def post(sequence: int) -> int:
        body = bodies[sequence % len(bodies)].replace(ID_SLOT, b"%08x" % next(serial))
        response = session.post(url, data=body, headers=headers, timeout=120)
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}", response.text[:300])
        answer = response.json()
        if answer["errors"] or answer["receipt"]["promise"] is None:
            raise BadAnswer("rejected events", json.dumps(answer["errors"])[:300])
        return int(answer["accepted"])

    return post


@contextmanager
def server(code_dir: Path, env: dict[str, str], config: GunicornConfig, log: Path):
    """gunicorn serving the registry from ``code_dir`` (this tree or the baseline's)."""
    port = free_port()
    command = gunicorn_command(port, config.workers, config.threads, config.worker_class)
    env = {**env, "PYTHONPATH": str(code_dir / "sdk" / "python")}
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=code_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}", log, timeout=90)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop_group(process)


@contextmanager
def signer(env: dict[str, str], log: Path, enabled: bool):
    """A process signing a head every second (extending the tree first); yields its pid."""
    if not enabled:
        yield None, {}
        return
    env = {**env, "PYTHONPATH": str(BASE_DIR / "sdk" / "python")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SIGNER],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stats: dict[str, Any] = {}
    try:
        yield process.pid, stats
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(process)
        lines = log.read_text().strip().splitlines()
        try:
            stats.update(json.loads(lines[-1]))
        except (IndexError, ValueError):
            stats["error"] = "\n".join(lines[-20:])


def http_phase(
    label: str,
    code_dir: Path,
    env: dict[str, str],
    agents: list[Agent],
    bodies: list[list[bytes]],
    serial: itertools.count,
    s: dict[str, Any],
    workdir: Path,
    heads: bool,
) -> dict[str, Any]:
    config = GunicornConfig.parse(s["config"])
    slug = label.replace(" ", "-").replace(",", "")
    before = busy_cores(2.0)
    with server(code_dir, env, config, workdir / f"gunicorn-{slug}.log") as (process, base_url):
        with signer(env, workdir / f"signer-{slug}.log", heads) as (signer_pid, stats):
            signer_cpu: list[float] = []

            def cpu() -> CpuSnapshot:
                if signer_pid is not None:
                    signer_cpu.append(process_cpu(str(signer_pid)))
                return CpuSnapshot.take(process.pid, HTTP_DB, postgres_writers=True, redis=True)

            clients = [client(base_url, a, bodies[a.index], serial) for a in agents]
            load = closed_loop(
                clients,
                duration=s["window_s"],
                warmup=s["warmup_s"],
                cpu=cpu,
                pause_after_error=0.05,
            )
    window = load.window[1] - load.window[0]
    ok = load.ok_in_window()
    accepted = sum(c.result for c in ok)
    rate = accepted / window
    cores = dict(load.cores)
    if len(signer_cpu) >= 2:
        cores["signer"] = round((signer_cpu[-1] - signer_cpu[0]) / window, 2)
        if cores.get("other") is not None:
            cores["other"] = round(max(0.0, cores["other"] - cores["signer"]), 2)
    latencies = sorted(c.latency_s * 1e3 for c in ok)
    per_event = {
        name: round(value / rate * 1e6, 1)
        for name, value in cores.items()
        if value is not None and rate and name in ("client", "gunicorn", "postgres", "signer")
    }
    seconds = stats.get("seconds") or [0.0]
    return {
        "label": label,
        "code": s["baseline"] if code_dir != BASE_DIR else "this tree",
        "heads_every_s": 1.0 if heads else None,
        "busy_cores_before": before,
        "window_s": round(window, 2),
        "events_per_s": round(rate, 1),
        "batches": len(ok),
        "errors": len([c for c in load.calls if c.error is not None]),
        "error_samples": load.error_samples[:3],
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
        },
        "cores": cores,
        "cpu_us_per_event": per_event,
        "signer": {
            "heads": stats.get("heads"),
            "runs": stats.get("runs"),
            "mean_ms": round(1e3 * sum(seconds) / len(seconds), 1),
            "max_ms": round(1e3 * max(seconds), 1),
            "last_size": (stats.get("sizes") or [None])[-1],
            "error": stats.get("error"),
        }
        if heads
        else None,
    }


def baseline_tree(commit: str, workdir: Path) -> Path:
    """The code of ``commit`` (``git archive``, no checkout: the worktree stays as it is)."""
    target = workdir / f"code-{commit}"
    archive = workdir / f"{commit}.tar"
    subprocess.run(
        ["git", "-C", str(BASE_DIR), "archive", "--format=tar", "-o", str(archive), commit],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


def ingestion(env: dict[str, str], token: str, s: dict[str, Any], workdir: Path) -> list[dict]:
    rng = random.Random(12)
    print("building request bodies…", file=sys.stderr)
    bodies = [templates(rng, 3, i) for i in range(s["agents"])]
    serial = itertools.count(1)
    agents: list[Agent] = []
    config = GunicornConfig.parse(s["config"])
    with server(BASE_DIR, env, config, workdir / "gunicorn-setup.log") as (_, base_url):
        api = Api(base_url, token)
        for i in range(s["agents"]):
            body = {"name": f"tlog-agent-{i}", "fleet": f"f{i % 2}", "description": "bench"}
            agent_id = api.create_agent(body)
            agents.append(Agent(i, api.issue(agent_id, PASSPORT_SCOPE, ["EU", "US-CA"])))
    phases = []
    plan = [("now, heads every 1 s", BASE_DIR, True), ("now, no heads", BASE_DIR, False)]
    if s["baseline"] != "none":
        plan.insert(
            0,
            (
                f"before ({s['baseline']}), heads every 1 s",
                baseline_tree(s["baseline"], workdir),
                True,
            ),
        )
    for label, code, heads in plan:
        print(f"(a) {label}: {s['warmup_s']:g} s warm-up + {s['window_s']:g} s…", file=sys.stderr)
        phases.append(http_phase(label, code, env, agents, bodies, serial, s, workdir, heads))
    return phases


# --- (b)-(d): the tree, in a Django process of its own ----------------------------------------


def tree_worker(events: int, leaves: int, workdir: Path) -> dict[str, Any]:
    """Runs with DATABASE_URL = the tree database (``--tree-worker``)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry.settings")
    django.setup()
    from datetime import UTC, datetime

    from django.contrib.auth import get_user_model
    from django.db import connection

    from actions import audit, services, transparency
    from passports import signing
    from passports.models import Agent as AgentRow
    from passports.services import issue_passport

    report: dict[str, Any] = {}
    owner = get_user_model().objects.create_user(username="tlog-owner", password=None)
    passports = []
    for i in range(8):
        agent = AgentRow.objects.create(name=f"tree-agent-{i}", fleet=f"f{i % 2}", owner=owner)
        passports.append(
            issue_passport(
                agent=agent,
                scope=PASSPORT_SCOPE,
                jurisdiction=["EU"],
                ttl_seconds=None,
                issued_by=owner,
            ).passport
        )
    rng = random.Random(3)
    wire = [_event(rng, time.time()) for _ in range(BATCH)]

    def batch() -> list[dict[str, Any]]:
        out = []
        for w in wire:
            action, resource = w["action"], w["resource"] or ""
            if not resource:
                parts = action.split(":", 2)
                action, resource = ":".join(parts[:2]), parts[2] if len(parts) == 3 else ""
            out.append(
                {
                    "id": uuid.uuid4(),
                    "action": action,
                    "resource": resource,
                    "jurisdiction": w["jurisdiction"] or "",
                    "decision": w["decision"],
                    "reason": w["reason"],
                    "occurred_at": datetime.fromtimestamp(w["at"], tz=UTC),
                    "details": w["details"],
                }
            )
        return out

    print(f"(b) storing {events:,} events with ingest_actions…", file=sys.stderr)
    wall, cpu = time.perf_counter(), time.process_time()
    for n in range(events // BATCH):
        services.ingest_actions(
            passport=passports[n % len(passports)],
            events=batch(),
            heartbeat=None,
            remote_addr="127.0.0.1",
        )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    report["ingest_in_process"] = {
        "events": events,
        "seconds": round(wall, 1),
        "events_per_s": round(events / wall),
        "python_cpu_us_per_event": round(cpu / events * 1e6, 1),
    }
    started = time.perf_counter()
    head = transparency.sign_tree_head()
    assert head is not None and head.tree_size == events
    report["sth_from_0"] = {"tree_size": events, "seconds": round(time.perf_counter() - started, 2)}
    started = time.perf_counter()
    transparency.sign_tree_head(force=True)
    report["sth_unchanged"] = {"seconds": round(time.perf_counter() - started, 3)}
    report["proofs_small"] = proofs(events, rng)

    print("(d) export, offline verification…", file=sys.stderr)
    audit.create_checkpoints()
    export = workdir / "export.jsonl"
    started = time.perf_counter()
    with export.open("w", encoding="utf-8") as out:
        out.writelines(audit.export_jsonl())
    exported = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT hash FROM actions_actionevent ORDER BY leaf_index")
        (workdir / "leaves.txt").write_text("".join(row[0] + "\n" for row in cursor.fetchall()))
    (workdir / "jwks.json").write_text(json.dumps(signing.jwks()))
    (workdir / "head.json").write_text(json.dumps(head.document()))
    report["export"] = {
        "events": events,
        "seconds": round(exported, 1),
        "bytes": export.stat().st_size,
    }

    extra = leaves - events
    print(f"(c) adding {extra:,} leaves server-side…", file=sys.stderr)
    filler = AgentRow.objects.create(name="tree-filler", fleet="f0", owner=owner)
    passport = issue_passport(
        agent=filler, scope=PASSPORT_SCOPE, jurisdiction=["EU"], ttl_seconds=None, issued_by=owner
    ).passport
    started = time.perf_counter()
    step = 1_000_000
    for low in range(events, leaves, step):
        high = min(leaves, low + step)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO actions_actionevent (id, passport_id, agent_id, fleet, action, "
                "resource, jurisdiction, decision, reason, occurred_at, received_at, details, "
                "seq, prev_hash, hash, leaf_index) "
                "SELECT gen_random_uuid(), %s, %s, 'f0', (ARRAY['fs:read','net:connect',"
                "'tool:shell','data:read'])[1 + i %% 4], '/srv/data/shard-' || i, 'DE', "
                "CASE WHEN i %% 5 = 0 THEN 'deny' ELSE 'allow' END, '', now(), now(), "
                "'{}'::jsonb, i - %s + 1, "
                "encode(sha256(('e' || (i - 1))::bytea), 'hex'), "
                "encode(sha256(('e' || i)::bytea), 'hex'), i "
                "FROM generate_series(%s, %s) AS i",
                [passport.jti, filler.pk, events, low, high - 1],
            )
        print(f"    {high:,} leaves", file=sys.stderr)
    inserted = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE actions_logcounter SET value = %s WHERE name = %s", [leaves, "next_leaf"]
        )
    started = time.perf_counter()
    big = transparency.sign_tree_head()
    assert big is not None and big.tree_size == leaves, big
    report["large"] = {
        "leaves": leaves,
        "insert_seconds": round(inserted, 1),
        "insert_rows_per_s": round(extra / inserted),
        "extend_and_sign_seconds": round(time.perf_counter() - started, 1),
        "extended_by": extra,
    }
    report["proofs_large"] = proofs(leaves, rng)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_total_relation_size('actions_actionevent'), "
            "pg_total_relation_size('actions_merklenode'), "
            "(SELECT count(*) FROM actions_merklenode)"
        )
        events_bytes, nodes_bytes, nodes = cursor.fetchone()
    report["storage"] = {
        "event_table_bytes": events_bytes,
        "merkle_node_bytes": nodes_bytes,
        "merkle_nodes": nodes,
    }
    return report


def proofs(size: int, rng: random.Random) -> dict[str, Any]:
    """Time PROOFS inclusion proofs of random leaves at ``size``; check 50 with the SDK."""
    from actions import transparency
    from actions.models import ActionEvent
    from agent_passport.merkle import leaf_hash, unhex, verify_inclusion

    root = transparency.root(size)
    indexes = [rng.randrange(size) for _ in range(PROOFS)]
    times, failed = [], 0
    for n, index in enumerate(indexes):
        started = time.perf_counter()
        path = transparency.inclusion_proof(index, size)
        times.append((time.perf_counter() - started) * 1e3)
        if n < 50:
            event_hash = ActionEvent.objects.get(leaf_index=index).hash
            failed += not verify_inclusion(leaf_hash(event_hash), index, size, unhex(path), root)
    times.sort()
    return {
        "tree_size": size,
        "proofs": PROOFS,
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "max_ms": round(times[-1], 2),
        "checked_with_sdk": 50,
        "failed": failed,
    }


OFFLINE_TREE = """
import json, sys, time
from agent_passport.merkle import CompactTree, leaf_hash, verify_head
from agent_passport.tokens import keys_from_jwks
workdir = sys.argv[1]
started = time.perf_counter()
keys = keys_from_jwks(json.load(open(f"{workdir}/jwks.json")))
head = json.load(open(f"{workdir}/head.json"))
tree = CompactTree()
for line in open(f"{workdir}/leaves.txt"):
    tree.append(leaf_hash(line.strip()))
ok = tree.size == head["tree_size"] and tree.root().hex() == head["root"]
problem = verify_head(head, keys)
print(json.dumps({"leaves": tree.size, "root_matches": ok, "head_problem": problem,
                  "seconds": time.perf_counter() - started}))
"""


def offline(workdir: Path, events: int) -> dict[str, Any]:
    """The SDK alone (no Django): verify-audit over the export, then the tree over its leaves."""
    env = {**os.environ, "PYTHONPATH": str(BASE_DIR / "sdk" / "python")}
    command = [
        sys.executable,
        "-m",
        "agent_passport",
        "verify-audit",
        str(workdir / "export.jsonl"),
        "--jwks-file",
        str(workdir / "jwks.json"),
    ]
    started = time.perf_counter()
    cli = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    chains_s = time.perf_counter() - started
    tree = subprocess.run(
        [sys.executable, "-c", OFFLINE_TREE, str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    tree_report = (
        json.loads(tree.stdout.strip().splitlines()[-1])
        if tree.returncode == 0
        else {"error": tree.stderr[-2000:]}
    )
    tree_s = tree_report.get("seconds") or 0.0
    return {
        "events": events,
        "verify_audit": {
            "command": " ".join(command[1:]),
            "exit": cli.returncode,
            "output": cli.stdout.strip()[-300:] or cli.stderr.strip()[-300:],
            "seconds": round(chains_s, 1),
            "events_per_s": round(events / chains_s),
        },
        "tree": {
            **tree_report,
            "seconds": round(tree_s, 1),
            "leaves_per_s": round(events / tree_s) if tree_s else None,
        },
    }


def tree_parts(admin_url: str, env: dict[str, str], s: dict[str, Any], workdir: Path) -> dict:
    url = with_database(admin_url, TREE_DB)
    with psycopg.connect(admin_url, autocommit=True) as conn:  # a copy of the migrated one
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TREE_DB)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(TREE_DB), sql.Identifier(HTTP_DB)
            )
        )
    worker_env = {**env, "DATABASE_URL": url, "PYTHONPATH": str(BASE_DIR / "sdk" / "python")}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--tree-worker",
        "--events",
        str(s["events"]),
        "--leaves",
        str(s["leaves"]),
        "--workdir",
        str(workdir),
    ]
    done = subprocess.run(
        command, env=worker_env, cwd=BASE_DIR, stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tree worker failed ({done.returncode})")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["offline"] = offline(workdir, s["events"])
    return report


# --- report -------------------------------------------------------------------------------------


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nmachine: {m.get('cpu_count')} cores, {m.get('cpu_model', '?')}; PostgreSQL "
        f"{r['postgres_version']}; load average at start {r['load_average_start']}"
    )
    if r["ingestion"]:
        print_ingestion(r)
    if r["tree"]:
        print_tree(r["tree"])
    verdict = {True: "PASS", False: "FAIL", None: "not measured"}
    print(
        f"\ntargets: ingestion >= {TARGET_EVENTS_PER_S:,}/s with heads: "
        f"{verdict[r['pass']['ingestion']]}; proofs p99 <= {TARGET_PROOF_MS:g} ms: "
        f"{verdict[r['pass']['proofs']]}"
    )


def print_ingestion(r: dict[str, Any]) -> None:
    print(
        f"(a) ingestion over HTTP: gunicorn {r['settings']['config']}, {r['settings']['agents']}"
        " agents = client threads, one connection each, in the bench process; batches of "
        f"{BATCH:,}; window {r['settings']['window_s']:g} s"
    )
    names = ("client", "gunicorn", "postgres", "signer", "other")
    columns = [
        Column("phase", 34, left=True),
        Column("events/s", 10, ",.0f"),
        Column("p50 ms", 8, ".0f"),
        Column("p99 ms", 8, ".0f"),
        Column("gunicorn us/ev", 15, ".1f"),
        Column("pg us/ev", 9, ".1f"),
        Column("heads", 6),
        Column("busy before", 12, ".2f"),
        *[Column(n, 9, ".2f") for n in names],
    ]
    rows = [
        [
            p["label"],
            p["events_per_s"],
            p["latency_ms"]["p50"],
            p["latency_ms"]["p99"],
            p["cpu_us_per_event"].get("gunicorn"),
            p["cpu_us_per_event"].get("postgres"),
            (p["signer"] or {}).get("heads", "-"),
            p["busy_cores_before"],
            *[p["cores"].get(n) for n in names],
        ]
        for p in r["ingestion"]
    ]
    print(table(columns, rows, indent="  "))


def print_tree(t: dict[str, Any]) -> None:
    i = t["ingest_in_process"]
    print(
        f"\n(b) {i['events']:,} events stored by ingest_actions in-process: {i['seconds']} s "
        f"({i['events_per_s']:,}/s, {i['python_cpu_us_per_event']} us Python CPU per event)"
    )
    print(
        f"    STH over {t['sth_from_0']['tree_size']:,} events (tree extended from 0 + signed): "
        f"{t['sth_from_0']['seconds']} s; a head over an unchanged tree: "
        f"{t['sth_unchanged']['seconds'] * 1e3:.0f} ms"
    )
    large = t["large"]
    print(
        f"    {large['extended_by']:,} more leaves inserted server-side in "
        f"{large['insert_seconds']} s; tree extended to {large['leaves']:,} and signed in "
        f"{large['extend_and_sign_seconds']} s"
    )
    print("(c) inclusion proofs (1,000 random leaves each):")
    for key in ("proofs_small", "proofs_large"):
        p = t[key]
        print(
            f"    at {p['tree_size']:>12,} leaves: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, "
            f"max {p['max_ms']} ms; {p['checked_with_sdk']} checked with the SDK, "
            f"{p['failed']} failed"
        )
    o = t["offline"]
    print(
        f"(d) offline verification of the {o['events']:,}-event export "
        f"({t['export']['bytes'] / 1e6:.0f} MB, exported in {t['export']['seconds']} s):"
    )
    v = o["verify_audit"]
    print(
        f"    verify-audit (everything): {v['seconds']} s, {v['events_per_s']:,} "
        f"events/s, exit {v['exit']}: {v['output']}"
    )
    tr = o["tree"]
    print(
        f"    of which the tree alone (leaf hashes + head signature): {tr.get('seconds')} s, "
        f"{tr.get('leaves_per_s') or 0:,} leaves/s, root matches {tr.get('root_matches')}, "
        f"head problem {tr.get('head_problem')}"
    )


# --- main -----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--duration", type=float, help="window of each HTTP phase, s (15; quick 6)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="gunicorn config, e.g. sync:3")
    parser.add_argument(
        "--baseline", default=BASELINE, help="commit of the 'before' phase, or none"
    )
    parser.add_argument("--events", type=int, help="events of (b)-(d) (1,000,000; quick 100,000)")
    parser.add_argument("--leaves", type=int, help="leaves of (c) (10,000,000; quick 1,000,000)")
    parser.add_argument("--skip-http", action="store_true", help="only (b)-(d)")
    parser.add_argument("--skip-tree", action="store_true", help="only (a)")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--tree-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def bench(run: Run, args: argparse.Namespace) -> int:
    started = time.monotonic()
    tag = f"aps-bench-tlog-{secrets.token_hex(4)}"
    run.delete_keys_at_exit(run.redis_url, [f"{tag}:*", f"{tag}-cache:*"])
    s = {
        "agents": args.agents,
        "config": args.config,
        "baseline": args.baseline,
        "warmup_s": 2.0,
        "window_s": args.duration or (6.0 if args.quick else 15.0),
        "events": args.events or (100_000 if args.quick else 1_000_000),
        "leaves": args.leaves or (1_000_000 if args.quick else 10_000_000),
        "redis_prefix": tag,
    }
    admin_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    db = prepare_database(admin_url, HTTP_DB, True, run.workdir)
    if db.engine != "postgresql":
        raise RuntimeError("bench_transparency.py needs PostgreSQL (DATABASE_URL)")
    if not args.keep_db:
        run.at_exit(lambda: drop_quietly(admin_url))
    env = registry_env(
        database_url=db.url,
        redis_url=run.redis_url,
        prefix=tag,
        issuer=ISSUER,
        ACTIONS_RATE_LIMIT=HIGH_RATE,
        REDIS_NAMESPACE=tag,
    )
    token = setup_registry(env, operator="benchtlog")
    report: dict[str, Any] = {
        "machine": machine_basics(),
        "postgres_version": db.version,
        "load_average_start": os.getloadavg(),
        "settings": s,
    }
    # (b)-(d) first, on a copy of the freshly migrated database (the HTTP phases then follow).
    report["tree"] = None if args.skip_tree else tree_parts(admin_url, env, s, run.workdir)
    report["ingestion"] = [] if args.skip_http else ingestion(env, token, s, run.workdir)
    now = [p for p in report["ingestion"] if p["label"].startswith("now, heads")]
    tree = report["tree"]
    report["pass"] = {  # None: not measured in this run
        "ingestion": now[0]["events_per_s"] >= TARGET_EVENTS_PER_S if now else None,
        "proofs": all(
            tree[k]["p99_ms"] <= TARGET_PROOF_MS for k in ("proofs_small", "proofs_large")
        )
        if tree
        else None,
    }
    report["load_average_end"] = os.getloadavg()
    report["runtime_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    print(f"\nruntime {report['runtime_s']} s")
    write_json(report, args.output)
    return 0 if all(v is not False for v in report["pass"].values()) else 1


def drop_quietly(admin_url: str) -> None:
    for name in (HTTP_DB, TREE_DB):
        try:
            drop_database(admin_url, name)
        except psycopg.Error as exc:
            print(f"could not drop {name}: {exc}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    if args.tree_worker:
        events = args.events
        report = tree_worker(events, args.leaves, args.workdir)
        print(json.dumps(report))
        return 0
    return run_bench(partial(bench, args=args), name="aps-bench-transparency")


if __name__ == "__main__":
    sys.exit(main())
