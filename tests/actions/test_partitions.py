"""PostgreSQL: the action log is partitioned by month of received_at (migration 0005)."""

import types
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from actions import partitions, services
from actions.models import ActionEvent
from tests.actions.test_audit import post_events

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite keeps one unpartitioned events table"
    ),
]


def month_start(moment: datetime, shift: int = 0) -> datetime:
    index = moment.year * 12 + moment.month - 1 + shift
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def post_at(monkeypatch, token: str, when: datetime, count: int) -> list[str]:
    """Events received at ``when`` (the registry's clock stands there for the post)."""
    monkeypatch.setattr(services, "timezone", types.SimpleNamespace(now=lambda: when))
    try:
        return post_events(token, [("fs:read", "allow")] * count)
    finally:
        monkeypatch.setattr(services, "timezone", timezone)


def where(ids: list[str]) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text, count(*) FROM actions_actionevent "
            "WHERE id = ANY(%s::uuid[]) GROUP BY 1",
            [ids],
        )
        return dict(cursor.fetchall())


def name(moment: datetime) -> str:
    return f"actions_actionevent_p{moment:%Y_%m}"


def test_partitions_exist_ahead_and_are_created_on_demand():
    now = timezone.now()
    names = [p.name for p in partitions.partitions()]
    assert names[-1] == "actions_actionevent_default"
    for shift in range(partitions.MONTHS_AHEAD + 1):
        assert name(month_start(now, shift)) in names
    later = month_start(now, 7)
    created = partitions.ensure_partitions(now=later)
    assert created == [name(month_start(later, shift)) for shift in range(4)]
    assert partitions.ensure_partitions(now=later) == []  # idempotent
    found = {p.name: p for p in partitions.partitions()}
    assert found[name(later)].start == later
    assert found[name(later)].end == month_start(later, 1)


def test_events_land_in_the_partition_of_their_month(issue, monkeypatch):
    token = issue()["token"]
    now = timezone.now()
    two_months_ago = month_start(now, -2) + timedelta(days=3)
    partitions.ensure_partitions(since=two_months_ago)
    old = post_at(monkeypatch, token, two_months_ago, 3)
    recent = post_events(token, [("fs:read", "allow")] * 2)
    assert where(old) == {name(two_months_ago): 3}
    assert where(recent) == {name(now): 2}
    # one table for Django: the agent's chain continues across partitions
    seqs = ActionEvent.objects.filter(id__in=old + recent).order_by("seq")
    assert [event.seq for event in seqs] == [1, 2, 3, 4, 5]


def test_every_partition_is_append_only(issue, monkeypatch):
    token = issue()["token"]
    last_month = month_start(timezone.now(), -1) + timedelta(hours=5)
    partitions.ensure_partitions(since=last_month)
    ids = post_at(monkeypatch, token, last_month, 1) + post_events(token, [("fs:read", "deny")])
    assert len(where(ids)) == 2
    for event_id in ids:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            ActionEvent.objects.filter(id=event_id).update(action="fs:write")
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            ActionEvent.objects.filter(id=event_id).delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        ActionEvent.objects.all().delete()
    assert ActionEvent.objects.filter(id__in=ids, action="fs:read").count() == 2


def test_events_in_the_default_partition_move_to_their_month(issue, monkeypatch):
    token = issue()["token"]
    far = month_start(timezone.now(), 9) + timedelta(days=1)
    ids = post_at(monkeypatch, token, far, 2)
    assert where(ids) == {"actions_actionevent_default": 2}
    before = list(ActionEvent.objects.filter(id__in=ids).values_list("leaf_index", "hash"))
    assert name(far) in partitions.ensure_partitions(now=far)
    assert where(ids) == {name(far): 2}
    assert list(ActionEvent.objects.filter(id__in=ids).values_list("leaf_index", "hash")) == before
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        ActionEvent.objects.filter(id=ids[0]).delete()  # the default partition is still guarded
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM actions_audit_maintenance")
        assert cursor.fetchone()[0] == 0  # the move closed the escape hatch again


def test_a_duplicate_id_or_leaf_in_a_partition_is_refused(issue):
    token = issue()["token"]
    (event_id,) = post_events(token, [("fs:read", "allow")])
    event = ActionEvent.objects.get(id=event_id)
    twin = ActionEvent(
        **{
            field.attname: getattr(event, field.attname)
            for field in ActionEvent._meta.concrete_fields
        }
    )
    twin.received_at = event.received_at + timedelta(microseconds=1)  # same month
    twin.seq, twin.leaf_index = event.seq + 100, event.leaf_index + 100
    with pytest.raises(IntegrityError), transaction.atomic():
        ActionEvent.objects.bulk_create([twin])  # the same id
    twin.id, twin.leaf_index = uuid.uuid4(), event.leaf_index
    with pytest.raises(IntegrityError), transaction.atomic():
        ActionEvent.objects.bulk_create([twin])  # the same leaf
    twin.leaf_index, twin.seq = event.leaf_index + 100, event.seq
    with pytest.raises(IntegrityError), transaction.atomic():
        ActionEvent.objects.bulk_create([twin])  # the same place in the agent's chain
