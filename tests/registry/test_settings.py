"""Settings refuse combinations that are unsafe in production, at start, in one sentence."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_SECRETS = {"SECRET_KEY": "s" * 50, "KEY_ENCRYPTION_KEY": "k" * 50}


def manage_check(**env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **PRODUCTION_SECRETS, **env}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_with_debug_is_refused_at_start():
    result = manage_check(PRODUCTION="true", DEBUG="true")
    assert result.returncode != 0
    assert "DEBUG=true is refused when PRODUCTION=true" in result.stderr


@pytest.mark.parametrize(("production", "debug"), [("true", "false"), ("false", "true")])
def test_either_flag_alone_starts(production, debug):
    result = manage_check(PRODUCTION=production, DEBUG=debug)
    assert result.returncode == 0, result.stderr
