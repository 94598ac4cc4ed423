"""The database itself refuses UPDATE and DELETE on the action log and its checkpoints.

An escape hatch exists for a database administrator only: while a row is present in
``actions_audit_maintenance`` the triggers let changes through (and verify_audit will name every
event that changed). The test suite opens it on SQLite, whose flush uses DELETE.
"""

from django.db import migrations

TABLES = ("actions_actionevent", "actions_auditcheckpoint")

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION aps_refuse_change() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM actions_audit_maintenance) THEN
        RETURN COALESCE(NEW, OLD);
    END IF;
    RAISE EXCEPTION '%% is append-only: %% refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    run = schema_editor.execute
    run("CREATE TABLE actions_audit_maintenance (reason VARCHAR(200) NOT NULL)")
    if vendor == "postgresql":
        run(POSTGRES_FUNCTION)
        for table in TABLES:
            run(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION aps_refuse_change()"
            )
    elif vendor == "sqlite":
        for table in TABLES:
            for operation in ("UPDATE", "DELETE"):
                run(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    "WHEN NOT EXISTS (SELECT 1 FROM actions_audit_maintenance) BEGIN "
                    f"SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                )
    else:
        raise NotImplementedError(f"append-only triggers are not written for {vendor}")


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    run = schema_editor.execute
    for table in TABLES:
        if vendor == "postgresql":
            run(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            run(f"DROP TRIGGER IF EXISTS {table}_no_update")
            run(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    if vendor == "postgresql":
        run("DROP FUNCTION IF EXISTS aps_refuse_change()")
    run("DROP TABLE actions_audit_maintenance")


class Migration(migrations.Migration):
    dependencies = [("actions", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
