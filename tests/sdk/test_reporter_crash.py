"""``kill -9`` of an agent while the registry is down: what it recorded is on disk."""

import pytest

from tests.sdk.outage_agent import kill_during_outage
from tests.sdk.test_reporter import closed_port_url

# What README promises: a crash during an outage loses at most the last few milliseconds of
# events. The reporter writes every SPILL_INTERVAL (5 ms); typically 2-10 ms are lost
# (bench/bench_reporter_crash.py). The bound leaves room for the writer thread being scheduled
# late on a shared 2-core machine (77 ms seen once with both cores busy with other jobs).
# lost_ms is the measured time from the recording of the first lost event to the kill (not the
# lost count divided by the nominal rate, which counted an agent's catch-up burst after it was
# descheduled as the time the burst stood for: 124 ms once at load average 7).
LOSS_BOUND_MS = 100
RATE = 20_000  # events/s: a busy agent (every guard.check is one event)


@pytest.mark.parametrize("attempt", range(3))
def test_kill_9_during_an_outage_loses_at_most_the_last_milliseconds(attempt, tmp_path):
    outcome = kill_during_outage(closed_port_url(), tmp_path, rate=RATE)
    assert outcome.contiguous, "every event before the last one on disk is on disk"
    assert outcome.recorded > RATE * 0.4, "the agent ran for at least half a second"
    assert outcome.lost_ms <= LOSS_BOUND_MS, (
        f"lost {outcome.lost} of {outcome.recorded} events ({outcome.lost_ms:.1f} ms)"
    )
