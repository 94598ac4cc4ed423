"""Disable kill rules whose pattern the rule grammar now refuses (wildcard limits, no '*'
between two '**'): such a pattern cannot be matched in bounded time, and evaluating it would fail
every ingestion. Each one is named on the migration's output so an operator can rewrite it."""

from django.db import migrations

from agent_passport.errors import RuleError
from agent_passport.rules import parse_rule


def disable_rules_beyond_limits(apps, schema_editor):
    KillRule = apps.get_model("killswitch", "KillRule")
    for rule in KillRule.objects.filter(enabled=True).exclude(pattern=""):
        try:
            parse_rule(rule.pattern)
        except RuleError as exc:
            rule.enabled = False
            rule.save(update_fields=["enabled"])
            print(f"\n  kill rule {rule.name!r} DISABLED: {exc}; rewrite its pattern, then enable it")


class Migration(migrations.Migration):
    dependencies = [("killswitch", "0002_kill_rules")]

    operations = [migrations.RunPython(disable_rules_beyond_limits, migrations.RunPython.noop)]
