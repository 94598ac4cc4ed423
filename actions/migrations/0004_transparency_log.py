"""The transparency log: a global leaf index on every event, stored subtrees, signed tree heads
and their witnesses. Existing events get leaf indexes in the order they were received; tree heads
and subtree nodes are append-only like the events (see 0002)."""

import django.db.models.deletion
from django.db import migrations, models

APPEND_ONLY = ("actions_signedtreehead", "actions_headwitness", "actions_archivedsegment")


def number_existing_events(apps, schema_editor):
    """Leaf indexes for events stored before this migration, in the order they were received."""
    ActionEvent = apps.get_model("actions", "ActionEvent")
    LogCounter = apps.get_model("actions", "LogCounter")
    run = schema_editor.execute
    ids = list(
        ActionEvent.objects.order_by("received_at", "agent_id", "seq").values_list("id", flat=True)
    )
    if ids:
        run("INSERT INTO actions_audit_maintenance (reason) VALUES ('numbering leaves')")
        for index, pk in enumerate(ids):
            ActionEvent.objects.filter(pk=pk).update(leaf_index=index)
        run("DELETE FROM actions_audit_maintenance WHERE reason = 'numbering leaves'")
    LogCounter.objects.create(name="next_leaf", value=len(ids))
    LogCounter.objects.create(name="tree_size", value=0)


def append_only(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    run = schema_editor.execute
    for table in APPEND_ONLY:
        if vendor == "postgresql":
            run(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION aps_refuse_change()"
            )
        else:
            for operation in ("UPDATE", "DELETE"):
                run(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    "WHEN NOT EXISTS (SELECT 1 FROM actions_audit_maintenance) BEGIN "
                    f"SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                )


def not_append_only(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for table in APPEND_ONLY:
        if vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")


class Migration(migrations.Migration):
    dependencies = [
        ("actions", "0003_agent_copies"),
    ]

    operations = [
        migrations.CreateModel(
            name="LogCounter",
            fields=[
                ("name", models.CharField(max_length=20, primary_key=True, serialize=False)),
                ("value", models.BigIntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name="SignedTreeHead",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tree_size", models.BigIntegerField(db_index=True)),
                ("root_hash", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField()),
                ("prev", models.CharField(max_length=64)),
                ("kid", models.CharField(max_length=64)),
                ("signature", models.CharField(max_length=128)),
            ],
            options={
                "ordering": ["-id"],
            },
        ),
        migrations.AddField(
            model_name="actionevent",
            name="leaf_index",
            field=models.BigIntegerField(null=True, unique=True),
        ),
        migrations.RunPython(number_existing_events, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="actionevent",
            name="leaf_index",
            field=models.BigIntegerField(unique=True),
        ),
        migrations.CreateModel(
            name="MerkleNode",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("level", models.PositiveSmallIntegerField()),
                ("index", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("level", "index"), name="one_merkle_node")
                ],
            },
        ),
        migrations.CreateModel(
            name="HeadWitness",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("sink", models.CharField(max_length=200)),
                ("delivered_at", models.DateTimeField()),
                ("error", models.CharField(blank=True, max_length=500)),
                (
                    "head",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="witnesses",
                        to="actions.signedtreehead",
                    ),
                ),
            ],
            options={
                "ordering": ["-delivered_at"],
                "indexes": [
                    models.Index(fields=["head", "sink"], name="actions_hea_head_id_366399_idx")
                ],
            },
        ),
        migrations.CreateModel(
            name="ArchivedSegment",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("start_leaf", models.BigIntegerField()),
                ("end_leaf", models.BigIntegerField(unique=True)),
                ("root_hash", models.CharField(help_text="root of the first end_leaf leaves", max_length=64)),
                ("archived_at", models.DateTimeField()),
                ("location", models.CharField(help_text="where the segment was written", max_length=500)),
                ("sha256", models.CharField(help_text="of the segment file", max_length=64)),
                ("head", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+", to="actions.signedtreehead")),
            ],
            options={"ordering": ["-end_leaf"]},
        ),
        migrations.RunPython(append_only, not_append_only),
    ]
