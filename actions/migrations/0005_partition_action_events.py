"""PostgreSQL: the action log becomes a declaratively partitioned table, one partition per
calendar month (UTC) of ``received_at`` plus a DEFAULT partition, so old months can be archived
and dropped whole (``manage.py archive_audit``). SQLite stays one table (a no-op there).

A constraint of a partitioned table must contain the partition key, so in the database:
- the primary key is ``(id, received_at)`` (the Django model keeps ``id`` as its pk);
- each partition also has UNIQUE indexes of its own on ``id``, ``leaf_index`` and
  ``(agent_id, seq)``: ingestion looks ids up first under the agent's row lock and leaf indexes
  come from a locked counter, and these indexes still refuse a concurrent duplicate that lands in
  the same month.
Nothing references the events by foreign key. The append-only trigger (0002) is a row trigger
on the partitioned table, which PostgreSQL clones onto every partition, present and future.

``aps_event_partition(month)`` (created here, called by ``actions.partitions``) creates a month's
partition with its indexes; events already in the DEFAULT partition for that month move into it.
"""

import re

from django.db import migrations

TABLE = "actions_actionevent"
OLD = "actions_actionevent_unpartitioned"
MONTHS_AHEAD = 3  # partitions created ahead of the current month (actions.partitions keeps it so)

PARTITION_FUNCTION = """
CREATE OR REPLACE FUNCTION aps_event_partition(month timestamp) RETURNS text AS $$
DECLARE
    lo timestamp := date_trunc('month', month);
    hi timestamp := date_trunc('month', month) + interval '1 month';
    name text := 'actions_actionevent_p' || to_char(date_trunc('month', month), 'YYYY_MM');
    moved bigint;
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO moved FROM actions_actionevent_default
        WHERE received_at >= lo AT TIME ZONE 'UTC' AND received_at < hi AT TIME ZONE 'UTC';
    IF moved > 0 THEN
        ALTER TABLE actions_actionevent DETACH PARTITION actions_actionevent_default;
    END IF;
    EXECUTE format(
        'CREATE TABLE %%I PARTITION OF actions_actionevent FOR VALUES FROM (%%L) TO (%%L)',
        name, lo AT TIME ZONE 'UTC', hi AT TIME ZONE 'UTC');
    EXECUTE format('CREATE UNIQUE INDEX %%I ON %%I (id)', name || '_id', name);
    EXECUTE format('CREATE UNIQUE INDEX %%I ON %%I (leaf_index)', name || '_leaf', name);
    EXECUTE format('CREATE UNIQUE INDEX %%I ON %%I (agent_id, seq)', name || '_chain', name);
    IF moved > 0 THEN
        EXECUTE format(
            'INSERT INTO %%I SELECT * FROM actions_actionevent_default '
            'WHERE received_at >= %%L AND received_at < %%L',
            name, lo AT TIME ZONE 'UTC', hi AT TIME ZONE 'UTC');
        -- the append-only trigger lets this move through; the row is gone before commit
        INSERT INTO actions_audit_maintenance (reason) VALUES ('moving events to ' || name);
        DELETE FROM actions_actionevent_default
            WHERE received_at >= lo AT TIME ZONE 'UTC' AND received_at < hi AT TIME ZONE 'UTC';
        DELETE FROM actions_audit_maintenance WHERE reason = 'moving events to ' || name;
        ALTER TABLE actions_actionevent ATTACH PARTITION actions_actionevent_default DEFAULT;
    END IF;
    RETURN name;
END;
$$ LANGUAGE plpgsql;
"""


def _definitions(cursor, table: str) -> tuple[list[str], list[str]]:
    """The CHECK and FOREIGN KEY constraints (``ADD CONSTRAINT`` clauses) and the non-unique
    indexes (``CREATE INDEX`` statements) of ``table``, to recreate on its replacement."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('c', 'f') ORDER BY conname",
        [table],
    )
    constraints = [f'ADD CONSTRAINT "{name}" {definition}' for name, definition in cursor]
    cursor.execute(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = %s::regclass AND NOT i.indisunique ORDER BY 1",
        [table],
    )
    on_table = re.compile(rf" ON (ONLY )?(public\.)?{table} ")
    indexes = [on_table.sub(f" ON {TABLE} ", definition) for (definition,) in cursor]
    return constraints, indexes


def _replace(schema_editor, create: list[str], keys: list[str]) -> None:
    """Rename the events table aside, run ``create`` (the new table in its place), copy every
    row, drop the old table, then add ``keys``, the old table's other constraints and indexes
    and the append-only trigger."""
    run = schema_editor.execute
    with schema_editor.connection.cursor() as cursor:
        constraints, indexes = _definitions(cursor, TABLE)
        cursor.execute(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [TABLE],
        )
        (columns,) = cursor.fetchone()
    run(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
    for statement in create:
        run(statement)
    run(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {OLD}")  # noqa: S608
    run(f"DROP TABLE {OLD}")
    run(f"ALTER TABLE {TABLE} {', '.join([*keys, *constraints])}")
    for statement in indexes:
        run(statement)
    run(
        f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
        "FOR EACH ROW EXECUTE FUNCTION aps_refuse_change()"
    )


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    default = f"{TABLE}_default"
    _replace(
        schema_editor,
        [
            f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (received_at)",
            f"CREATE TABLE {default} PARTITION OF {TABLE} DEFAULT",
            f"CREATE UNIQUE INDEX {default}_id ON {default} (id)",
            f"CREATE UNIQUE INDEX {default}_leaf ON {default} (leaf_index)",
            f"CREATE UNIQUE INDEX {default}_chain ON {default} (agent_id, seq)",
            PARTITION_FUNCTION,
            # every month from the oldest event's to MONTHS_AHEAD after the current one
            "SELECT aps_event_partition(month) FROM generate_series("
            f"  date_trunc('month', coalesce((SELECT min(received_at) FROM {OLD}), now())"
            "    AT TIME ZONE 'UTC'),"
            f"  date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{MONTHS_AHEAD} months',"
            "  interval '1 month') AS month",
        ],
        keys=[f"ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id, received_at)"],
    )


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    _replace(
        schema_editor,
        [f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS)"],
        keys=[
            f"ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)",
            f"ADD CONSTRAINT {TABLE}_leaf_index_key UNIQUE (leaf_index)",
            "ADD CONSTRAINT one_event_per_chain_position UNIQUE (agent_id, seq)",
        ],
    )
    schema_editor.execute("DROP FUNCTION aps_event_partition(timestamp)")


class Migration(migrations.Migration):
    dependencies = [("actions", "0004_transparency_log")]
    operations = [migrations.RunPython(partition, unpartition)]
