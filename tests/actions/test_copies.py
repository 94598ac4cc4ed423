"""Copies of an agent: every heartbeat upserts the copy (agent, host, pid) that sent it, with the
supervisor's process tree when a supervisor sent it (CONTRACTS C1)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions.models import AgentCopy
from actions.services import prune_agent_copies, record_heartbeat
from tests.actions.test_ingest import bearer, passport_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/actions"
DIGEST = "ab" * 32


def supervisor(**overrides) -> dict:
    body = {"mechanism": "cgroup", "child_pid": 4243, "processes": 3, "state": "running"}
    body.update(overrides)
    return body


def stopped(**overrides) -> dict:
    body = {"epoch": 42, "cause": "revoked", "processes": 50, "sigkilled": 1, "at": 1767225600.25}
    body.update(overrides)
    return body


def heartbeat(**overrides) -> dict:
    body = {"epoch": 41, "digest": DIGEST, "host": "trainer-1", "pid": 4242, "dropped": 0}
    body.update(overrides)
    return body


@pytest.fixture
def issued(agent, operator):
    return passport_for(agent, operator)


@pytest.fixture
def agent_api(issued):
    return bearer(issued.token)


def post(client, beat, events=None):
    return client.post(URL, {"events": events or [], "heartbeat": beat}, format="json")


def test_heartbeat_records_one_copy_per_host_and_pid(agent_api, agent, issued):
    assert post(agent_api, heartbeat()).status_code == 200
    assert post(agent_api, heartbeat(epoch=43)).status_code == 200
    assert post(agent_api, heartbeat(pid=5000, supervisor=supervisor())).status_code == 200
    assert post(agent_api, heartbeat(host="trainer-2")).status_code == 200
    copies = {(c.host, c.pid): c for c in AgentCopy.objects.filter(agent=agent)}
    assert set(copies) == {("trainer-1", 4242), ("trainer-1", 5000), ("trainer-2", 4242)}
    in_process = copies["trainer-1", 4242]
    assert (in_process.last_seen_epoch, in_process.last_seen_digest) == (43, DIGEST)
    assert not in_process.supervised and in_process.state == ""
    assert in_process.passport_id == issued.passport.jti
    supervised = copies["trainer-1", 5000]
    assert supervised.supervised and supervised.mechanism == "cgroup"
    assert (supervised.child_pid, supervised.processes, supervised.state) == (4243, 3, "running")
    assert supervised.stopped_at is None


def test_supervisor_stop_is_recorded(agent_api, agent):
    post(agent_api, heartbeat(pid=5000, supervisor=supervisor()))
    beat = heartbeat(
        epoch=42, pid=5000, supervisor=supervisor(state="stopped", processes=0, stopped=stopped())
    )
    assert post(agent_api, beat).status_code == 200
    copy = AgentCopy.objects.get(agent=agent, pid=5000)
    assert (copy.state, copy.processes, copy.last_seen_epoch) == ("stopped", 0, 42)
    assert (copy.stopped_cause, copy.stopped_epoch) == ("revoked", 42)
    assert (copy.stopped_processes, copy.stopped_sigkilled) == (50, 1)
    assert copy.stopped_at.timestamp() == 1767225600.25


def test_heartbeat_without_host_or_pid_records_no_copy(agent_api, agent):
    post(agent_api, {"epoch": 3})
    post(agent_api, {"dropped": 2})
    assert not AgentCopy.objects.exists()
    agent.refresh_from_db()
    assert agent.last_seen_epoch == 3


def test_copy_without_host_is_known_by_its_address(agent_api, agent):
    agent_api.post(
        URL, {"events": [], "heartbeat": {"pid": 7}}, format="json", REMOTE_ADDR="10.9.8.7"
    )
    copy = AgentCopy.objects.get(agent=agent)
    assert (copy.host, copy.pid, copy.address) == ("10.9.8.7", 7, "10.9.8.7")


def test_out_of_order_heartbeats_do_not_move_a_copy_back(agent_api, agent):
    post(agent_api, heartbeat(epoch=9, digest="cd" * 32, pid=5000, supervisor=supervisor()))
    late = heartbeat(epoch=7, digest="ef" * 32, pid=5000, supervisor=supervisor())
    post(agent_api, late)
    post(agent_api, heartbeat(epoch=None, digest="", pid=5000, supervisor=supervisor()))
    copy = AgentCopy.objects.get(agent=agent, pid=5000)
    assert (copy.last_seen_epoch, copy.last_seen_digest) == (9, "cd" * 32)
    # Once stopped, a late "running" heartbeat does not bring the tree back to life, and a late
    # post without the stop does not erase it.
    final = supervisor(state="stopped", processes=0, stopped=stopped(epoch=10))
    post(agent_api, heartbeat(epoch=10, pid=5000, supervisor=final))
    post(agent_api, heartbeat(epoch=9, pid=5000, supervisor=supervisor(processes=5)))
    copy.refresh_from_db()
    assert (copy.state, copy.processes, copy.last_seen_epoch) == ("stopped", 0, 10)
    assert (copy.stopped_epoch, copy.stopped_processes) == (10, 50)
    # An earlier stop arriving late does not replace the later one.
    older = stopped(epoch=8, processes=2, at=1767225500.0)
    post(agent_api, heartbeat(pid=5000, supervisor=supervisor(state="stopped", stopped=older)))
    copy.refresh_from_db()
    assert (copy.stopped_epoch, copy.stopped_processes) == (10, 50)


def test_an_in_process_heartbeat_from_a_supervisors_pid_clears_the_tree(agent_api, agent):
    final = supervisor(state="stopped", processes=0, stopped=stopped())
    post(agent_api, heartbeat(pid=5000, supervisor=final))
    assert post(agent_api, heartbeat(pid=5000)).status_code == 200  # the pid was reused
    copy = AgentCopy.objects.get(agent=agent, pid=5000)
    assert not copy.supervised and copy.state == "" and copy.stopped_at is None
    assert post(agent_api, heartbeat(pid=5000, supervisor=final)).status_code == 200
    copy.refresh_from_db()
    assert copy.supervised and copy.state == "stopped" and copy.stopped_processes == 50


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite serialises all writers; nothing to race"
)
def test_concurrent_heartbeats_of_a_new_copy_make_one_row_with_the_highest_epoch(issued):
    start = threading.Barrier(6)

    def beat(epoch: int) -> None:
        try:
            start.wait()
            record_heartbeat(
                agent_id=issued.passport.agent_id,
                passport_id=issued.passport.jti,
                heartbeat={"epoch": epoch, "digest": f"{epoch:064x}", "host": "h", "pid": 1},
                remote_addr="10.0.0.5",
            )
        finally:
            connections.close_all()

    for round_ in range(5):
        epochs = [round_ * 10 + i for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(beat, epochs))
        copy = AgentCopy.objects.get()
        assert (copy.last_seen_epoch, copy.last_seen_digest) == (max(epochs), f"{max(epochs):064x}")


@pytest.mark.parametrize(
    ("beat", "path"),
    [
        (heartbeat(supervisor="cgroup"), ["supervisor"]),
        (heartbeat(supervisor=supervisor(mechanism="docker")), ["supervisor", "mechanism"]),
        (heartbeat(supervisor=supervisor(processes=-1)), ["supervisor", "processes"]),
        (heartbeat(supervisor=supervisor(processes="3")), ["supervisor", "processes"]),
        (heartbeat(supervisor=supervisor(processes=True)), ["supervisor", "processes"]),
        (heartbeat(supervisor=supervisor(child_pid=0)), ["supervisor", "child_pid"]),
        (heartbeat(supervisor=supervisor(state="zombie")), ["supervisor", "state"]),
        (heartbeat(supervisor=supervisor(extra=1)), ["supervisor", "extra"]),
        (heartbeat(supervisor=supervisor(state="stopped")), ["supervisor", "stopped"]),
        (heartbeat(supervisor=supervisor(stopped=[])), ["supervisor", "stopped"]),
        (
            heartbeat(supervisor=supervisor(stopped=stopped(cause="bored"))),
            ["supervisor", "stopped", "cause"],
        ),
        (
            heartbeat(supervisor=supervisor(stopped=stopped(epoch=None))),
            ["supervisor", "stopped", "epoch"],
        ),
        (
            heartbeat(supervisor=supervisor(stopped=stopped(cause="stale"))),
            ["supervisor", "stopped", "epoch"],
        ),
        (
            heartbeat(supervisor=supervisor(stopped=stopped(sigkilled=51))),
            ["supervisor", "stopped", "sigkilled"],
        ),
        (
            heartbeat(supervisor=supervisor(stopped=stopped(at="yesterday"))),
            ["supervisor", "stopped", "at"],
        ),
        (
            heartbeat(supervisor=supervisor(stopped=stopped(at=1e300))),
            ["supervisor", "stopped", "at"],
        ),
    ],
)
def test_bad_supervisor_field_is_a_400_naming_it(agent_api, beat, path):
    response = post(agent_api, beat)
    assert response.status_code == 400, response.content
    body = response.json()
    errors = body["errors"]["heartbeat"]
    for name in path:
        errors = errors[name]
    assert isinstance(errors, list) and errors
    assert "heartbeat.supervisor" in body["detail"]
    assert not AgentCopy.objects.exists()


def test_events_of_a_batch_are_judged_as_before_next_to_a_supervisor(agent_api):
    from tests.actions.test_ingest import event

    body = {"events": [event(), {"id": "nope"}], "heartbeat": heartbeat(supervisor=supervisor())}
    response = agent_api.post(URL, body, format="json")
    assert response.status_code == 200
    assert response.json()["accepted"] == 1 and set(response.json()["errors"]) == {"1"}


def test_copies_not_seen_for_the_retention_time_are_pruned(issued, settings):
    settings.AGENT_COPY_RETENTION_SECONDS = 3600
    now = timezone.now()
    for pid, age in ((1, 7200), (2, 60)):
        record_heartbeat(
            agent_id=issued.passport.agent_id,
            passport_id=issued.passport.jti,
            heartbeat={"host": "h", "pid": pid},
            remote_addr="",
            now=now - timedelta(seconds=age),
        )
    assert prune_agent_copies(now=now) == 1
    assert list(AgentCopy.objects.values_list("pid", flat=True)) == [2]


FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
JSON_SCALARS = st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=12)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return valid | JSON


STOPS = st.fixed_dictionaries(
    {
        "epoch": maybe(st.none() | st.integers(0, 2**64)),
        "cause": maybe(st.sampled_from(["revoked", "expired", "stale"])),
        "processes": maybe(st.integers(-1, 2**32)),
        "sigkilled": maybe(st.integers(-1, 100)),
        "at": maybe(FLOATS | st.integers(-(2**70), 2**70)),
    },
    optional={"extra": JSON},
)
SUPERVISORS = (
    st.fixed_dictionaries(
        {
            "mechanism": maybe(st.sampled_from(["cgroup", "subreaper"])),
            "processes": maybe(st.integers(-1, 2**32)),
            "state": maybe(st.sampled_from(["running", "paused", "stopped", "exited"])),
        },
        optional={"child_pid": maybe(st.none() | st.integers(-1, 2**32)), "stopped": maybe(STOPS)},
    )
    | JSON
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=SUPERVISORS)
def test_prop_any_supervisor_object_is_answered_200_or_a_400_naming_it(agent_api, body):
    response = post(agent_api, heartbeat(pid=77, supervisor=body, epoch=int(time.time())))
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        # Nested field errors, or the text check's message naming the dotted path (a NUL).
        errors = response.json()["errors"]
        ((name, error),) = errors.items()
        if isinstance(error, dict):
            assert (name, set(error)) == ("heartbeat", {"supervisor"})
        else:
            assert all(message.startswith("heartbeat.supervisor") for message in error)
    else:
        assert AgentCopy.objects.filter(pid=77, supervised=body is not None).exists()
