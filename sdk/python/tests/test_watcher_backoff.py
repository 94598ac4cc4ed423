"""After an outage, many watchers reconnect spread out in time (backoff with jitter), and one
good round trip resets the backoff. Measured on real watchers against a real redis-server that
is killed and started again; time is never mocked."""

from __future__ import annotations

import statistics
import time

from agent_passport.watcher import RevocationWatcher, WatcherState
from conftest import CHANNEL, wait_until

WATCHERS = 40
FIRST_STEP = 0.1
LONGEST_STEP = 1.0


def recovery_times(watchers: list[RevocationWatcher], since: float) -> list[float]:
    """Seconds after ``since`` at which each watcher was VALID again (polled every 2 ms)."""
    recovered: dict[int, float] = {}
    deadline = since + LONGEST_STEP + 5.0
    while len(recovered) < len(watchers) and time.monotonic() < deadline:
        for index, watcher in enumerate(watchers):
            if index not in recovered and watcher.status().state is WatcherState.VALID:
                recovered[index] = time.monotonic() - since
        time.sleep(0.002)
    assert len(recovered) == len(watchers), f"{len(watchers) - len(recovered)} never recovered"
    return sorted(recovered.values())


def spread(times: list[float]) -> float:
    """Interquartile range: how far apart the middle half of the reconnections are."""
    quartiles = statistics.quantiles(times, n=4)
    return quartiles[2] - quartiles[0]


def test_watchers_reconnect_spread_out_after_an_outage_and_fast_after_a_good_round_trip(
    redis_server, registry
):
    watchers = [
        RevocationWatcher(
            redis_server.url,
            channel=CHANNEL,
            retry_delay=FIRST_STEP,
            max_retry_delay=LONGEST_STEP,
        ).start()
        for _ in range(WATCHERS)
    ]
    try:
        assert wait_until(lambda: all(w.status().state is WatcherState.VALID for w in watchers))
        # A long outage: every watcher's backoff reaches the longest step (0.1+0.2+0.4+0.8 s).
        redis_server.kill()
        time.sleep(2.5)
        redis_server.start()
        after_long = recovery_times(watchers, time.monotonic())
        # In lock-step they would all come back within a few milliseconds of each other; with
        # jitter their next attempts fall anywhere in the upper half of the 1 s step.
        assert spread(after_long) >= 0.1, after_long
        assert after_long[-1] <= LONGEST_STEP + 1.0, after_long
        # A short outage right after a good round trip: the backoff starts again at the first
        # step, so they are back well before the longest step would have let them.
        redis_server.kill()
        time.sleep(0.05)
        redis_server.start()
        after_short = recovery_times(watchers, time.monotonic())
        assert statistics.median(after_short) < LONGEST_STEP / 2, after_short
    finally:
        for watcher in watchers:
            watcher.stop()
    print(
        f"\n{WATCHERS} watchers, steps {FIRST_STEP}..{LONGEST_STEP} s: after a 2.5 s outage "
        f"reconnected over {after_long[-1] - after_long[0]:.3f} s (IQR {spread(after_long):.3f} s,"
        f" first {after_long[0]:.3f} s, last {after_long[-1]:.3f} s); after a 0.05 s outage "
        f"median {statistics.median(after_short):.3f} s"
    )
