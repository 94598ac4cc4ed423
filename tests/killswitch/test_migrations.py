"""Data migrations of the kill switch, run for real against the test database."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("killswitch", "0002_kill_rules")]
AFTER = [("killswitch", "0003_disable_rules_beyond_grammar_limits")]


@pytest.mark.django_db(transaction=True)
def test_kill_rules_beyond_the_grammar_limits_are_disabled_and_named(admin_user, capsys):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("killswitch", "KillRule")
    beyond = old.objects.create(
        name="too-wild",
        kind="deny_pattern",
        pattern="proc:exec:**/a/*/b/**",
        created_by_id=admin_user.pk,
    )
    fine = old.objects.create(
        name="miners", kind="deny_pattern", pattern="proc:exec:*miner*", created_by_id=admin_user.pk
    )
    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("killswitch", "KillRule")
    assert new.objects.get(pk=beyond.pk).enabled is False
    assert new.objects.get(pk=fine.pk).enabled is True
    assert "kill rule 'too-wild' DISABLED" in capsys.readouterr().out
