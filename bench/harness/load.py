"""A closed-loop load generator: one thread per client, each sending its next request as soon
as the previous one was answered (like an agent or a worker that waits for its answer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from bench.harness.machine import CpuSnapshot

MAX_ERROR_SAMPLES = 5

# A client: called with its sequence number (client i sends i, i + n, i + 2n, … of n clients);
# returns what the bench wants to keep of the answer, or raises BadAnswer.
Client = Callable[[int], Any]


class BadAnswer(Exception):
    """A wrong answer: ``kind`` is what is counted (``HTTP 500``, ``inactive``), the message
    is kept as a sample."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class Call:
    client: int
    began: float  # time.monotonic()
    ended: float
    result: Any = None
    error: str | None = None  # BadAnswer.kind, or the transport error's type

    @property
    def latency_s(self) -> float:
        return self.ended - self.began


@dataclass
class Load:
    """Every call of a closed-loop run, its measurement window and the CPU used inside it."""

    calls: list[Call]
    started: float  # when the clients were released
    window: tuple[float, float]  # [warm-up end, warm-up end + duration]
    finished: float  # when the last client had its last answer
    cores: dict[str, float | None] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    def ok_in_window(self) -> list[Call]:
        start, end = self.window
        return [c for c in self.calls if c.error is None and start <= c.ended < end]


def _one_call(client: Client, index: int, sequence: int) -> tuple[Call, str | None]:
    call = Call(index, time.monotonic(), 0.0)
    sample = None
    try:
        call.result = client(sequence)
    except BadAnswer as exc:
        call.error, sample = exc.kind, str(exc)
    except (requests.RequestException, ValueError) as exc:
        call.error, sample = type(exc).__name__, f"{type(exc).__name__}: {exc}"
    call.ended = time.monotonic()
    return call, sample


def closed_loop(
    clients: Sequence[Client],
    *,
    duration: float,
    warmup: float = 0.0,
    cpu: Callable[[], CpuSnapshot] | None = None,
    pause_after_error: float = 0.0,
) -> Load:
    """Release every client at once; each calls back to back until the window
    [start + ``warmup``, + ``duration``] ends. ``cpu`` is sampled at the window's edges."""
    calls: list[Call] = []
    samples: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients) + 1)
    stop = threading.Event()
    edges = [0.0, 0.0]

    def loop(index: int, client: Client) -> None:
        sequence = index
        barrier.wait()
        while not stop.is_set() and time.monotonic() < edges[1]:
            call, sample = _one_call(client, index, sequence)
            sequence += len(clients)
            with lock:
                calls.append(call)
                if sample is not None and len(samples) < MAX_ERROR_SAMPLES:
                    samples.append(sample[:300])
            if call.error is not None:
                time.sleep(pause_after_error)  # do not spin on a broken server

    threads = [
        threading.Thread(target=loop, args=(i, c), name=f"client-{i}", daemon=True)
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    edges[:] = [started + warmup, started + warmup + duration]
    try:
        barrier.wait()
        cores = _cores_in_window(edges, cpu)
        for thread in threads:
            thread.join(timeout=120)
    finally:
        stop.set()
    return Load(calls, started, (edges[0], edges[1]), time.monotonic(), cores, samples)


def _cores_in_window(
    edges: list[float], cpu: Callable[[], CpuSnapshot] | None
) -> dict[str, float | None]:
    time.sleep(max(0.0, edges[0] - time.monotonic()))
    before = cpu() if cpu is not None else None
    time.sleep(max(0.0, edges[1] - time.monotonic()))
    return cpu().cores_since(before) if cpu is not None and before is not None else {}
