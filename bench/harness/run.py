"""One bench run: a work directory, the machine's Redis, and a cleanup that always runs.

``run_bench`` turns SIGTERM into Ctrl-C, and whatever ends the run (success, failure, an
exception, Ctrl-C) it stops every child process it started, deletes the run's Redis keys, runs
the bench's own cleanups and removes the work directory (kept, with its logs, if the run
failed or ``keep_logs`` is set).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import redis

from bench.harness.servers import delete_keys, stop_all_children
from registry.devserver import DEFAULT_REDIS_URL, ensure_redis


@dataclass
class Run:
    workdir: Path
    redis_url: str  # the machine's Redis (a redis-server started here if none answered)
    redis_process: Popen | None
    keys: list[tuple[str, list[str]]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def delete_keys_at_exit(self, url: str, patterns: list[str]) -> None:
        self.keys.append((url, patterns))

    def at_exit(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` at the end, after the child processes were stopped."""
        self.cleanups.append(cleanup)


def stop_on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop the bench like Ctrl-C does (its cleanup then runs)."""
    raise KeyboardInterrupt


def shield_cleanup() -> None:
    """Cleanup must finish even if Ctrl-C is pressed again or arrived during a normal stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def clean_redis_keys(targets: list[tuple[str, list[str]]]) -> None:
    """Delete the run's keys (``(redis url, patterns)`` pairs) and say how many went."""
    try:
        deleted = sum(delete_keys(url, patterns) for url, patterns in targets)
        print(f"cleaned up {deleted} Redis keys", file=sys.stderr)
    except redis.RedisError as exc:
        print(f"could not clean up Redis keys: {exc}", file=sys.stderr)


def _finish(run: Run, keep_workdir: bool) -> None:
    shield_cleanup()
    if leftovers := stop_all_children():
        print(f"stopped {leftovers} leftover child process(es)", file=sys.stderr)
    if run.keys:
        clean_redis_keys(run.keys)
    for cleanup in reversed(run.cleanups):
        cleanup()
    if run.redis_process is not None:
        run.redis_process.terminate()
    if keep_workdir:
        print(f"logs kept in {run.workdir}", file=sys.stderr)
    else:
        shutil.rmtree(run.workdir, ignore_errors=True)


def run_bench(body: Callable[[Run], int], *, name: str, keep_logs: bool = False) -> int:
    """Run ``body`` (its result is the exit code: 0 when every target was met) and clean up."""
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    redis_url, redis_process = ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    run = Run(Path(tempfile.mkdtemp(prefix=f"{name}-")), redis_url, redis_process)
    failed = True
    try:
        code = body(run)
        failed = code != 0
        return code
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up…", file=sys.stderr)
        return 130
    finally:
        _finish(run, keep_logs or failed)
