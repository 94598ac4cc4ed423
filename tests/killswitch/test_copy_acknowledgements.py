"""Acknowledgements per copy: an in-process copy acknowledges a kill by applying its epoch; a
supervised copy only once it also reported its process tree stopped (CONTRACTS C1)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from actions.services import record_heartbeat
from agent_passport.revocations import revocations_digest
from killswitch import services
from killswitch.models import Revocation
from tests.actions.test_ingest import bearer, passport_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/actions"


@pytest.fixture
def issued(agent, operator):
    return passport_for(agent, operator)


@pytest.fixture
def agent_api(issued):
    return bearer(issued.token)


def kill(target_type: str, value: str) -> Revocation:
    return services.revoke(
        target=services.Target(target_type, value), reason="drill", actor=None, source="api"
    )


def beat(client, *, pid: int, epoch: int, digest: str, supervisor: dict | None = None) -> None:
    heartbeat = {"epoch": epoch, "digest": digest, "host": "trainer-1", "pid": pid}
    if supervisor is not None:
        heartbeat["supervisor"] = supervisor
    response = client.post(URL, {"events": [], "heartbeat": heartbeat}, format="json")
    assert response.status_code == 200, response.content


def tree(state: str = "running", processes: int = 3, stopped: dict | None = None) -> dict:
    return {"mechanism": "cgroup", "child_pid": 11, "processes": processes, "state": state,
            "stopped": stopped}  # fmt: skip


def stop(epoch: int | None, processes: int = 50, cause: str = "revoked") -> dict:
    return {"epoch": epoch, "cause": cause, "processes": processes, "sigkilled": 1,
            "at": time.time()}  # fmt: skip


def acks(viewer_api, revocation: Revocation) -> dict:
    response = viewer_api.get(f"/api/v1/killswitch/{revocation.pk}/acknowledgements")
    assert response.status_code == 200, response.content
    return response.json()


def by_pid(body: dict) -> dict[int, dict]:
    ((agent,),) = [body["agents"]]
    return {copy["pid"]: copy for copy in agent["copies"]}


def test_supervised_copy_acknowledges_only_once_its_tree_is_stopped(agent_api, agent, viewer_api):
    revocation = kill("agent", str(agent.pk))
    digest = revocations_digest([revocation.pk])
    beat(agent_api, pid=100, epoch=revocation.epoch, digest=digest)  # in-process: applied
    beat(agent_api, pid=200, epoch=revocation.epoch, digest=digest, supervisor=tree())
    body = acks(viewer_api, revocation)
    copies = by_pid(body)
    assert (copies[100]["state"], copies[100]["supervised"]) == ("acknowledged", False)
    assert copies[200]["state"] == "stopping" and copies[200]["stopped"] is None
    assert (copies[200]["tree_state"], copies[200]["processes"]) == ("running", 3)
    assert body["agents"][0]["state"] == "stopping"
    assert (body["acknowledged"], body["copies"], body["copies_acknowledged"]) == (0, 2, 1)

    stopped = tree("stopped", 0, stop(revocation.epoch))
    beat(agent_api, pid=200, epoch=revocation.epoch, digest=digest, supervisor=stopped)
    body = acks(viewer_api, revocation)
    copy = by_pid(body)[200]
    assert (copy["state"], copy["acknowledged"]) == ("acknowledged", True)
    assert (copy["stopped"]["processes"], copy["stopped"]["sigkilled"]) == (50, 1)
    assert copy["stopped"]["cause"] == "revoked" and copy["stopped"]["epoch"] == revocation.epoch
    assert body["agents"][0]["state"] == "acknowledged"
    assert (body["acknowledged"], body["copies_acknowledged"], body["processes_stopped"]) == (
        1,
        2,
        50,
    )


def test_a_tree_stopped_for_an_older_epoch_or_expiry_does_not_acknowledge(
    agent_api, agent, viewer_api
):
    first = kill("fleet", agent.fleet)
    services.lift(revocation=first, actor=None, reason="false alarm")
    second = kill("agent", str(agent.pk))
    digest = revocations_digest([second.pk])
    older = tree("stopped", 0, stop(first.epoch))
    beat(agent_api, pid=200, epoch=second.epoch, digest=digest, supervisor=older)
    expired = tree("stopped", 0, stop(None, cause="expired"))
    beat(agent_api, pid=300, epoch=second.epoch, digest=digest, supervisor=expired)
    copies = by_pid(acks(viewer_api, second))
    assert [copies[pid]["state"] for pid in (200, 300)] == ["stopping", "stopping"]
    assert copies[200]["stopped"] is None  # not this revocation's stop


def test_copy_waits_until_it_applies_the_epoch_and_mismatches_on_a_wrong_digest(
    agent_api, agent, viewer_api
):
    revocation = kill("agent", str(agent.pk))
    beat(agent_api, pid=100, epoch=revocation.epoch - 1, digest=revocations_digest([]))
    stopped = tree("stopped", 0, stop(revocation.epoch))
    beat(agent_api, pid=200, epoch=revocation.epoch, digest="00" * 32, supervisor=stopped)
    body = acks(viewer_api, revocation)
    copies = by_pid(body)
    assert (copies[100]["state"], copies[200]["state"]) == ("waiting", "mismatched")
    assert (body["agents"][0]["state"], body["mismatched"]) == ("mismatched", 1)


def test_stopped_copies_stay_listed_after_they_stop_reporting(issued, agent, viewer_api):
    revocation = kill("agent", str(agent.pk))
    digest = revocations_digest([revocation.pk])
    long_ago = timezone.now() - timedelta(minutes=10)
    stopped = {**stop(revocation.epoch), "at": long_ago}  # validated: a datetime
    for pid, supervisor in ((100, None), (200, tree("stopped", 0, stopped))):
        heartbeat = {"epoch": revocation.epoch, "digest": digest, "host": "h", "pid": pid}
        if supervisor:
            heartbeat["supervisor"] = supervisor
        record_heartbeat(
            agent_id=agent.pk,
            passport_id=issued.passport.jti,
            heartbeat=heartbeat,
            remote_addr="",
            now=long_ago,
        )
    body = acks(viewer_api, revocation)
    assert list(by_pid(body)) == [200]  # the in-process copy is gone, the stopped tree stays
    assert (body["running"], body["processes_stopped"]) == (1, 50)


def test_a_passport_revocation_lists_only_the_copies_of_that_passport(agent, operator, viewer_api):
    old, new = passport_for(agent, operator), passport_for(agent, operator)
    revocation = kill("passport", str(old.passport.jti))
    digest = revocations_digest([revocation.pk])
    beat(bearer(old.token), pid=100, epoch=revocation.epoch, digest=digest)
    beat(bearer(new.token), pid=200, epoch=revocation.epoch, digest=digest)
    assert list(by_pid(acks(viewer_api, revocation))) == [100]


def test_an_agent_whose_heartbeats_name_no_copy_is_judged_by_its_own(agent_api, agent, viewer_api):
    revocation = kill("agent", str(agent.pk))
    heartbeat = {"epoch": revocation.epoch, "digest": revocations_digest([revocation.pk])}
    agent_api.post(URL, {"events": [], "heartbeat": heartbeat}, format="json")
    body = acks(viewer_api, revocation)
    assert body["agents"][0]["state"] == "acknowledged" and body["agents"][0]["copies"] == []


def test_status_lists_the_copies(agent_api, agent, viewer_api):
    beat(agent_api, pid=100, epoch=3, digest="ab" * 32)
    beat(agent_api, pid=200, epoch=4, digest="ab" * 32, supervisor=tree("paused", 7))
    response = viewer_api.get(f"/api/v1/agents/{agent.pk}/status")
    assert response.status_code == 200
    copies = {copy["pid"]: copy for copy in response.json()["copies"]}
    assert copies[100] | {"last_seen_at": None} == {
        "host": "trainer-1",
        "pid": 100,
        "last_seen_at": None,
        "running": True,
        "epoch": 3,
        "supervised": False,
        "mechanism": "",
        "state": "",
        "processes": None,
        "stopped": None,
    }
    assert (copies[200]["state"], copies[200]["processes"], copies[200]["running"]) == (
        "paused",
        7,
        True,
    )
    final = tree("stopped", 0, stop(9, processes=4))
    beat(agent_api, pid=200, epoch=9, digest="ab" * 32, supervisor=final)
    copy = {
        c["pid"]: c for c in viewer_api.get(f"/api/v1/agents/{agent.pk}/status").json()["copies"]
    }[200]
    assert copy["running"] is False
    assert {k: copy["stopped"][k] for k in ("cause", "epoch", "processes", "sigkilled")} == {
        "cause": "revoked",
        "epoch": 9,
        "processes": 4,
        "sigkilled": 1,
    }


def test_console_acknowledgement_view_shows_which_copies_a_supervisor_stopped(
    agent_api, agent, viewer
):
    from django.test import Client

    revocation = kill("agent", str(agent.pk))
    digest = revocations_digest([revocation.pk])
    beat(agent_api, pid=100, epoch=revocation.epoch, digest=digest)
    stopped = tree("stopped", 0, stop(revocation.epoch, processes=50))
    beat(agent_api, pid=200, epoch=revocation.epoch, digest=digest, supervisor=stopped)
    beat(agent_api, pid=300, epoch=revocation.epoch, digest=digest, supervisor=tree())
    console = Client()
    console.force_login(viewer)
    page = console.get(f"/revocations/{revocation.pk}/").content.decode()
    assert "trainer-1:200" in page and "supervisor (cgroup)" in page
    assert "process tree stopped: 50 processes, 1 after SIGKILL" in page
    assert "process tree running: 3 processes" in page
    assert "in-process SDK (no process tree)" in page
    live = console.get(f"/revocations/{revocation.pk}/acks.json").json()
    copies = {copy["pid"]: copy for copy in live["agents"][0]["copies"]}
    assert copies[200]["tree"] == "process tree stopped: 50 processes, 1 after SIGKILL"
    assert copies[300]["state"] == "stopping" and live["processes_stopped"] == 50
    assert copies[200]["stopped"]["at"]["text"].endswith("UTC")


def test_console_agent_page_lists_its_copies(agent_api, agent, viewer):
    from django.test import Client

    beat(agent_api, pid=100, epoch=3, digest="ab" * 32)
    beat(agent_api, pid=200, epoch=3, digest="ab" * 32, supervisor=tree("paused", 7))
    console = Client()
    console.force_login(viewer)
    page = console.get(f"/agents/{agent.pk}/").content.decode()
    assert "trainer-1:100" in page and "in-process SDK (no process tree)" in page
    assert "trainer-1:200" in page and "process tree paused: 7 processes" in page
