"""Without Chromium the browser tests skip with the install hint, but fail where required (CI)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
ONE_BROWSER_TEST = (
    "tests/console/test_browser.py::test_sign_in_with_the_form_and_a_wrong_password_shows_an_error"
)


@pytest.mark.parametrize(("required", "outcome"), [("", "1 skipped"), ("1", "1 error")])
def test_a_missing_chromium_skips_with_the_hint_unless_required(tmp_path, required, outcome):
    env = {
        **os.environ,
        "CHROMIUM": str(tmp_path / "no-chromium"),
        "REQUIRE_BROWSER": required,
        # its own database: a nested run on ours would drop the outer run's test database
        "DATABASE_URL": f"sqlite:///{tmp_path / 'nested.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", ONE_BROWSER_TEST, "-rs", "-p", "no:cacheprovider"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in result.stdout, result.stdout
    assert "apt-get install chromium" in result.stdout
