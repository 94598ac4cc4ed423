"""Revocations of long-expired passports leave the channel, so renewals do not grow snapshots."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agent_passport.protocol import SNAPSHOT_ENTRY_PREFIX
from killswitch import publisher, services
from killswitch.models import Revocation
from killswitch.selectors import applied_digest
from passports.models import Passport
from tests.killswitch.conftest import wait_until


def renew(operator_api, jti: str) -> dict:
    response = operator_api.post(f"/api/v1/passports/{jti}/renew", {}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def snapshot_revocation_ids() -> set[int]:
    """The revocation ids in the Redis snapshot agents load."""
    fields = publisher.redis_client().hkeys(publisher.revocation_channel().snapshot_key)
    prefix = SNAPSHOT_ENTRY_PREFIX
    return {int(f.removeprefix(prefix)) for f in fields if f.startswith(prefix)}


def expire(jti: str, *, ago: timedelta) -> None:
    expires_at = timezone.now() - ago
    window = timedelta(hours=1)
    Passport.objects.filter(jti=jti).update(
        issued_at=expires_at - window, not_before=expires_at - window, expires_at=expires_at
    )


@pytest.mark.django_db(transaction=True)
def test_renewals_leave_the_channel_once_the_old_passport_is_long_expired(
    issue, operator_api, settings, request
):
    first = issue()
    second = renew(operator_api, first["jti"])
    renew(operator_api, second["jti"])
    publisher.push_pending()
    revoked = {
        r.pk: r.target_value
        for r in Revocation.objects.filter(target_type=Revocation.TargetType.PASSPORT)
    }
    assert set(revoked.values()) == {first["jti"], second["jti"]}
    assert snapshot_revocation_ids() == set(revoked)
    # Started after the writes above: on SQLite's shared-cache test database the heartbeat's
    # first reconcile would otherwise race them for table locks.
    watcher = request.getfixturevalue("watcher_for")()
    assert wait_until(lambda: set(watcher.state.active) == set(revoked))

    retention = timedelta(seconds=settings.PASSPORT_REVOCATION_RETENTION_SECONDS)
    expire(first["jti"], ago=retention + timedelta(seconds=1))
    expire(second["jti"], ago=retention - timedelta(seconds=60))  # expired, but not long enough
    assert services.retire_expired_passport_revocations() == 1
    assert services.retire_expired_passport_revocations() == 0  # idempotent
    publisher.push_pending()

    kept = {pk for pk, jti in revoked.items() if jti == second["jti"]}
    assert snapshot_revocation_ids() == kept
    assert wait_until(lambda: set(watcher.state.active) == kept)
    # The agent's acknowledgement digest still matches the registry's after the retirement.
    assert watcher.state.digest == applied_digest(watcher.state.epoch)
    # The passport's own record still says it was stopped.
    introspected = operator_api.post(
        "/api/v1/passports/introspect", {"token": first["token"]}, format="json"
    ).json()
    assert introspected["active"] is False
    assert Passport.objects.get(jti=first["jti"]).revoked_at is not None


@pytest.mark.django_db
def test_the_agents_timeline_does_not_call_a_retired_passport_revocation_reinstated(
    issue, operator_api, agent
):
    from console.selectors import timeline_rows

    first = issue()
    renew(operator_api, first["jti"])
    expire(first["jti"], ago=timedelta(days=1))
    assert services.retire_expired_passport_revocations() == 1
    texts = [row["what"] for row in timeline_rows(agent)]
    retired = [t for t in texts if "retired from the channel" in t]
    assert len(retired) == 1
    assert "reinstated" not in retired[0]
