"""Renewal stops the old passport for offline guards too (after an optional grace period)."""

import json
from datetime import datetime, timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from agent_passport.errors import PassportRevoked
from agent_passport.guard import Guard
from killswitch import publisher
from passports import services
from passports.models import Passport
from registry.celery import app
from tests.killswitch.conftest import wait_until

SCOPE = ["fs:*:/workspace/**"]


@pytest.fixture
def guard_for(pinned_keys, settings, watcher_for):
    watcher = None

    def _guard(token: str) -> Guard:
        nonlocal watcher
        watcher = watcher or watcher_for()
        return Guard(
            token,
            keys=pinned_keys,
            issuer=settings.PASSPORT_ISSUER,
            audience=settings.PASSPORT_AUDIENCE,
            watcher=watcher,
            jurisdiction="DE",
        )

    return _guard


def queued_stops(jti: str) -> list[dict]:
    """The delayed stops of this passport waiting in the (real) Celery queue: their headers."""
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    queue = app.conf.broker_transport_options["global_keyprefix"] + "celery"
    headers = [json.loads(raw)["headers"] for raw in client.lrange(queue, 0, -1)]
    return [
        h
        for h in headers
        if h["task"] == "passports.tasks.stop_superseded_passport" and jti in h["argsrepr"]
    ]


def refuses(guard: Guard) -> bool:
    try:
        guard.check("fs:read", resource="/workspace/data.csv")
    except PassportRevoked as exc:
        return "superseded by renewal" in str(exc)
    return False


def renew(operator_api, jti: str, **body) -> dict:
    response = operator_api.post(f"/api/v1/passports/{jti}/renew", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.django_db(transaction=True)
def test_a_renewed_away_token_is_refused_by_guards_at_once(issue, operator_api, guard_for):
    publisher.reconcile()
    old = issue(scope=SCOPE)
    old_guard = guard_for(old["token"])
    assert old_guard.check("fs:read", resource="/workspace/data.csv").allowed
    new = renew(operator_api, old["jti"])
    assert wait_until(lambda: refuses(old_guard), timeout=1.0)
    assert guard_for(new["token"]).check("fs:read", resource="/workspace/data.csv").allowed
    introspected = operator_api.post(
        "/api/v1/passports/introspect", {"token": old["token"]}, format="json"
    ).json()
    assert introspected["reason"] == "superseded"
    assert Passport.objects.get(jti=old["jti"]).status == "superseded"
    revoke = operator_api.post(
        f"/api/v1/passports/{old['jti']}/revoke", {"reason": "leaked"}, format="json"
    )
    assert revoke.status_code == 409


@pytest.mark.django_db(transaction=True)  # no worker runs: the test plays the worker's part
def test_a_grace_period_keeps_the_old_token_until_the_delayed_stop(issue, operator_api, guard_for):
    old = issue(scope=SCOPE)
    publisher.reconcile()
    old_guard = guard_for(old["token"])
    before = timezone.now()
    renew(operator_api, old["jti"], grace_seconds=30)
    (stop,) = queued_stops(old["jti"])  # the delayed stop, handed to Celery after commit
    eta = datetime.fromisoformat(stop["eta"])
    assert before + timedelta(seconds=29) <= eta <= timezone.now() + timedelta(seconds=31)
    publisher.push_pending()
    assert not wait_until(lambda: refuses(old_guard), timeout=0.3), "stopped during its grace"
    assert services.stop_overdue_superseded_passports() == 0  # not overdue yet

    # what the worker runs at +30 s
    assert services.stop_superseded_passport_later(old["jti"]) is True
    publisher.push_pending()
    assert wait_until(lambda: refuses(old_guard), timeout=1.0)
    assert services.stop_superseded_passport_later(old["jti"]) is False  # idempotent


@pytest.mark.django_db
def test_the_periodic_sweep_stops_superseded_passports_whose_delayed_stop_was_lost(
    issue, operator_api, settings
):
    old = issue(scope=SCOPE)
    renew(operator_api, old["jti"], grace_seconds=10)
    later = timezone.now() + timedelta(seconds=settings.PASSPORT_RENEW_MAX_GRACE_SECONDS + 1)
    assert services.stop_overdue_superseded_passports(now=later) == 1
    assert services.stop_overdue_superseded_passports(now=later) == 0
    passport = Passport.objects.get(jti=old["jti"])
    assert passport.status == "superseded" and passport.revoked_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize("grace", [-1, 301, "soon"])
def test_grace_seconds_out_of_range_is_a_400_naming_it(issue, operator_api, grace):
    old = issue(scope=SCOPE)
    response = operator_api.post(
        f"/api/v1/passports/{old['jti']}/renew", {"grace_seconds": grace}, format="json"
    )
    assert response.status_code == 400
    assert "grace_seconds" in response.json()["errors"]
    assert Passport.objects.get(jti=old["jti"]).status == "active"
