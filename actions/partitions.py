"""The action log's monthly partitions on PostgreSQL (created by migration 0005).

Events land in the partition of their ``received_at`` month (UTC); a DEFAULT partition takes
anything outside the created months, so ingestion never fails for a missing partition.
:func:`ensure_partitions` keeps ``MONTHS_AHEAD`` months ready: the Celery beat task
``actions.tasks.ensure_partitions`` runs it daily (creating a partition locks the table briefly,
so it stays out of the ingestion path), and ``archive_audit`` runs it too. Were it not run for
months, the events in DEFAULT move into their month's partition when that is created.
SQLite keeps one unpartitioned table: every function here is a no-op there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection
from django.utils import timezone

from actions.models import ActionEvent

MONTHS_AHEAD = 3
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None for the DEFAULT partition
    end: datetime | None


def partitioned() -> bool:
    """Whether the events table is partitioned (PostgreSQL after migration 0005)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
            [ActionEvent._meta.db_table],
        )
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _month(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def ensure_partitions(
    *, since: datetime | None = None, now: datetime | None = None, ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the missing partitions from ``since``'s month (default: the current one) through
    ``ahead`` months after the current one. Returns the names created."""
    if not partitioned():
        return []
    current = _month(now or timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name FROM (SELECT aps_event_partition(month) AS name FROM generate_series("
            "%s::timestamp, %s::timestamp + make_interval(months => %s), interval '1 month')"
            " AS month) AS created WHERE name IS NOT NULL",
            [min(_month(since), current) if since else current, current, ahead],
        )
        return [name for (name,) in cursor.fetchall()]


def partitions() -> list[Partition]:
    """The monthly partitions in time order, then the DEFAULT one."""
    if not partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [ActionEvent._meta.db_table],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUNDS.search(bound)
        if match is None:
            found.append(Partition(name, None, None))
            continue
        start, end = (datetime.fromisoformat(value).astimezone(UTC) for value in match.groups())
        found.append(Partition(name, start, end))
    return sorted(
        found, key=lambda p: (p.start is None, p.start or datetime.min.replace(tzinfo=UTC))
    )


def holds_leaves_from(partition: Partition, leaf: int) -> bool:
    with connection.cursor() as cursor:
        table = connection.ops.quote_name(partition.name)
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE leaf_index >= %s)", [leaf])  # noqa: S608
        return bool(cursor.fetchone()[0])


def drop(partition: Partition) -> None:
    """Detach and drop a monthly partition with its events (archived first by the caller)."""
    parent = connection.ops.quote_name(ActionEvent._meta.db_table)
    table = connection.ops.quote_name(partition.name)
    with connection.cursor() as cursor:
        # deferred foreign-key checks of rows inserted in this transaction run now: PostgreSQL
        # drops no table with trigger events pending
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {table}")
        cursor.execute(f"DROP TABLE {table}")
