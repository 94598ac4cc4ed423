"""The machine a bench runs on: how busy it is, what the processes under test cost, what it is.

Benches share a 2-core host with other work, so every report says how busy the rest of the
machine was; figures from a window in which it was busier than ``NOISY_CORES`` are marked.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent.parent
NOISY_CORES = 0.3  # busy cores outside the bench above which a window counts as disturbed


def busy_cores(seconds: float) -> float | None:
    """Machine-wide busy CPU (in cores) over ``seconds``, from /proc/stat: background noise."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    try:
        busy_a, total_a = sample()
        time.sleep(seconds)
        busy_b, total_b = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total_b - total_a
    return round((busy_b - busy_a) / total * (os.cpu_count() or 1), 2) if total else None


def wait_until_quiet(limit: float, threshold: float, sample_s: float = 1.0) -> float | None:
    """Busy cores outside the bench, sampled for ``sample_s`` s, waiting up to ``limit`` s for
    them to drop to ``threshold`` (other benchmarks or test runs share the machine); returns
    the last sample."""
    deadline = time.monotonic() + limit
    while True:
        load = busy_cores(sample_s)
        if load is None or load <= threshold or time.monotonic() >= deadline:
            return load
        print(f"waiting for the machine to be quiet ({load} busy cores)…", file=sys.stderr)


def process_cpu(pid: str) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores, steal included)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def pin_to_core(cpu: int) -> int | None:
    """Pin this process (and the threads it starts later) to ``cpu``; None if it cannot be."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def machine_basics() -> dict[str, Any]:
    """Time, CPU, Python, platform and git commit: the first entries of every report's
    ``machine`` section."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
    }


def _gunicorn_cpu(server_pid: int) -> dict[str, float]:
    cpu: dict[str, float] = {}
    try:
        children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
        for pid in [str(server_pid), *children]:
            cpu[pid] = process_cpu(pid)
    except OSError:
        pass
    return cpu


@dataclass
class CpuSnapshot:
    """CPU seconds used so far by this (client) process, gunicorn (master + workers), the bench
    database's PostgreSQL backends (with ``postgres_writers``, also the server's own WAL and
    checkpoint processes, which have no client address), redis-server (with ``redis``) and the
    whole machine."""

    at: float
    client: float
    groups: dict[str, dict[str, float]]
    machine: float | None

    @classmethod
    def take(
        cls,
        server_pid: int | None,
        database: str,
        *,
        postgres_writers: bool = False,
        redis: bool = False,
    ) -> CpuSnapshot:
        groups: dict[str, dict[str, float]] = {"gunicorn": {}, "postgres": {}}
        if redis:
            groups["redis"] = {}
        if server_pid is not None:
            groups["gunicorn"] = _gunicorn_cpu(server_pid)
        ours = f" {database} ".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes()
                if title.startswith(b"postgres: "):
                    if ours in title or (postgres_writers and b"(" not in title):
                        groups["postgres"][proc.name] = process_cpu(proc.name)
                elif redis and title.startswith(b"redis-server"):
                    groups["redis"][proc.name] = process_cpu(proc.name)
            except OSError:
                continue  # ended meanwhile
        return cls(time.monotonic(), time.process_time(), groups, machine_cpu_seconds())

    def cores_since(self, before: CpuSnapshot) -> dict[str, float | None]:
        """Cores each group used between ``before`` and this snapshot; ``other`` is the rest of
        the machine (None where a group had no process)."""
        elapsed = self.at - before.at
        if elapsed <= 0:
            return {}
        cores: dict[str, float | None] = {"client": (self.client - before.client) / elapsed}
        for name, now in self.groups.items():
            then = before.groups.get(name, {})
            used = sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())
            cores[name] = used / elapsed if now else None
        machine = None
        if self.machine is not None and before.machine is not None:
            machine = (self.machine - before.machine) / elapsed
            cores["other"] = max(0.0, machine - sum(v for v in cores.values() if v is not None))
        cores["machine"] = machine
        return {k: None if v is None else round(v, 2) for k, v in cores.items()}
