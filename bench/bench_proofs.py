"""Benchmark: the transparency log's read API and an agent's check of its receipts.

Against a dedicated PostgreSQL database ``aps_bench_proofs`` (created fresh, dropped at the
end): N events (default 100,000) are ingested with ``ingest_actions`` in batches of 1,000, a
head is signed every 10,000 leaves; then, through the real HTTP stack (the registry's WSGI app
served on loopback by a threaded wsgiref server; ``requests`` keep-alive client):

1. ``GET /api/v1/actions/{id}/proof`` for 500 random events: p50 / p99 latency (target ≤ 10 ms
   for the proof itself: the server-side share is reported too, timed around the selector);
2. ``GET /api/v1/audit/consistency?from=N`` for 200 random N: p50 / p99;
3. ``check_log`` with a full receipt store (16 heads, 64 due promises, 4 sampled event ids,
   i.e. 16 consistency + 256 inclusion proofs, all verified offline): wall time.

    .venv/bin/python bench/bench_proofs.py [--events 100000] [--keep-db]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
import requests

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE = "aps_bench_proofs"
ADMIN_URL = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    os.environ["DATABASE_URL"] = ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry.settings")
    os.environ["THROTTLE_USER"] = "1000000/minute"
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    try:
        return run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def run(args: argparse.Namespace) -> int:
    from django.contrib.auth import get_user_model
    from django.core.handlers.wsgi import WSGIHandler

    from actions import selectors, services, transparency
    from agent_passport.receipts import ReceiptStore, check_log
    from passports import signing
    from passports.models import Agent
    from passports.roles import Role, assign_role
    from passports.services import issue_passport

    user = get_user_model().objects.create_user(username="bench", password=None)
    assign_role(user, Role.OPERATOR)
    agent = Agent.objects.create(name="bench", fleet="bench", owner=user)
    issued = issue_passport(
        agent=agent, scope=["fs:*"], jurisdiction=["EU"], ttl_seconds=None, issued_by=user
    )
    passport = issued.passport
    store = ReceiptStore()
    ids: list[str] = []
    now = datetime.now(UTC)
    started = time.perf_counter()
    for batch in range(args.events // 1000):
        events = [
            {
                "id": uuid.uuid4(),
                "action": "fs:write",
                "resource": f"/workspace/{batch}/{i}",
                "jurisdiction": "DE",
                "decision": "allow",
                "reason": "ok",
                "occurred_at": now,
                "details": {},
            }
            for i in range(1000)
        ]
        result = services.ingest_actions(
            passport=passport, events=events, heartbeat=None, remote_addr=""
        )
        batch_ids = [str(e["id"]) for e in events]
        ids += batch_ids
        store.add(result.receipt, batch_ids)
        if (batch + 1) % 10 == 0:
            transparency.sign_tree_head()
    ingest = time.perf_counter() - started
    started = time.perf_counter()
    transparency.sign_tree_head(force=True)
    sign = time.perf_counter() - started
    print(
        f"{len(ids):,} events ingested in {ingest:.1f} s; last head signed in {sign * 1e3:.0f} ms"
    )

    server = make_server("127.0.0.1", 0, WSGIHandler(), server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {issued.token}"

    def timed(url: str) -> float:
        begin = time.perf_counter()
        response = http.get(base + url, timeout=30)
        assert response.status_code == 200, response.text
        return (time.perf_counter() - begin) * 1e3

    size = transparency.latest_head().tree_size
    inclusion = [timed(f"/api/v1/actions/{random.choice(ids)}/proof") for _ in range(500)]
    selector = []
    for _ in range(500):
        begin = time.perf_counter()
        selectors.event_proof(random.choice(ids), tree_size=None)
        selector.append((time.perf_counter() - begin) * 1e3)
    consistency = [
        timed(f"/api/v1/audit/consistency?from={random.randint(1, size)}") for _ in range(200)
    ]
    print(
        f"inclusion proof at {size:,} leaves, over HTTP: p50 {statistics.median(inclusion):.1f} ms"
        f", p99 {percentile(inclusion, 0.99):.1f} ms (server-side selector: p50 "
        f"{statistics.median(selector):.1f} ms, p99 {percentile(selector, 0.99):.1f} ms)"
    )
    print(
        f"consistency proof, over HTTP: p50 {statistics.median(consistency):.1f} ms, "
        f"p99 {percentile(consistency, 0.99):.1f} ms"
    )
    begin = time.perf_counter()
    report = check_log(
        base, issued.token, signing.all_public_keys(), store, now=now + timedelta(days=1)
    )
    took = time.perf_counter() - begin
    assert report.ok, report.problems
    print(f"check_log, full store: {took:.2f} s ({report.summary()})")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
