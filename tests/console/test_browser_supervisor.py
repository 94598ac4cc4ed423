"""The console with a real supervisor: an agent that does not use the SDK runs under
``agent-passport run --egress-proxy``; an operator kills it from the console's kill button, and
the revocation's acknowledgement view shows the supervised copy with its process tree stopped.

Chromium as in test_browser.py (the system's, never downloaded). A screenshot of the
acknowledgement view goes to ``$SCREENSHOT_DIR`` (default /tmp) as revocation-supervised.png.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import expect

from actions.models import ActionEvent
from agent_passport.supervisor import EXIT_KILLED
from killswitch import publisher
from killswitch.models import Revocation
from passports.models import Agent
from passports.roles import Role
from tests.console.test_browser import (  # noqa: F401 (fixtures)
    TIMEOUT_MS,
    _shared_connection,
    browser,
    nav,
    page,
    sign_in,
    user_with,
)
from tests.killswitch.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parents[2]
SDK = BASE_DIR / "sdk" / "python"
AGENT = BASE_DIR / "examples" / "uncooperative_agent.py"
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", "/tmp"))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def supervised(issue, live_server, settings, tmp_path, revocation_heartbeat):
    """``agent-passport run --egress-proxy -- examples/uncooperative_agent.py`` in a session of
    its own; yields (process, pids file, stderr file). Stopped (whole group) after the test."""
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    token = issue(scope=["fs:*:/workspace/**"], jurisdiction=["EU"])["token"]
    pids = tmp_path / "pids"
    pids.touch()
    stderr = tmp_path / "supervisor.log"
    argv = [
        sys.executable, "-m", "agent_passport", "run",
        "--registry", live_server.url, "--redis", settings.REDIS_URL, "--jurisdiction", "DE",
        "--egress-proxy", "--grace", "1",
        "--", sys.executable, str(AGENT), "--pids", str(pids),
    ]  # fmt: skip
    env = {
        **os.environ,
        "AGENT_PASSPORT_TOKEN": token,
        "PYTHONPATH": os.pathsep.join([str(SDK), os.environ.get("PYTHONPATH", "")]),
    }
    with open(stderr, "w") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    try:
        yield process, pids, stderr
    finally:
        if process.poll() is None:
            process.terminate()  # the supervisor stops its tree
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_a_kill_from_the_console_stops_the_supervised_tree_and_shows_it(
    page,  # noqa: F811
    user_with,  # noqa: F811
    agent,
    supervised,
):
    process, pids, stderr = supervised
    assert wait_until(lambda: "ready" in pids.read_text() or process.poll() is not None, 30)
    assert process.poll() is None, stderr.read_text()
    roles = dict(line.split() for line in pids.read_text().splitlines())
    assert wait_until(lambda: agent.copies.filter(supervised=True).exists(), 10)

    sign_in(page, user_with(Role.OPERATOR))
    nav(page, "Agents").click()
    page.get_by_role("link", name=agent.name).click()
    # What the agent tried without asking: its tunnel, denied by the supervisor's egress proxy.
    timeline = page.locator("[data-timeline]")
    expect(timeline.locator("tr.deny")).to_contain_text("net:connect:198.51.100.7:22")
    # Its copies: the supervised one, with its tree running.
    agent_copy = page.locator("tr.copy-row", has_text=f":{process.pid}")
    expect(agent_copy).to_contain_text("supervisor (")
    expect(agent_copy).to_contain_text(re.compile(r"process tree running: \d+ process"))

    page.get_by_role("link", name="Kill this agent").click()
    page.get_by_label("Reason (required)").fill("reverse tunnel and a miner")
    clicked_at = time.monotonic()
    page.get_by_role("button", name=f"Kill agent {agent.name}").click()

    # Every process of the tree is gone: the agent, its double-forked setsid miner, and the
    # helper that ignores SIGTERM (SIGKILLed after --grace 1).
    assert wait_until(lambda: not any(alive(int(pid)) for pid in roles.values()), 5)
    gone_after = time.monotonic() - clicked_at
    assert process.wait(10) == EXIT_KILLED, stderr.read_text()

    expect(page).to_have_url(re.compile(r"/revocations/\d+/$"))
    copy_row = page.locator("[data-acks] tr.copy-row")
    expect(copy_row).to_have_count(1)
    expect(copy_row).to_contain_text(f":{process.pid}")
    expect(copy_row).to_contain_text("supervisor (")
    expect(copy_row).to_contain_text(
        "process tree stopped: 3 processes, 1 after SIGKILL", timeout=TIMEOUT_MS
    )
    expect(copy_row).to_have_class(re.compile(r"\btree-stopped\b"))
    expect(page.locator('[data-field="processes_stopped"]')).to_have_text("3")
    revocation = Revocation.objects.get(target_value=str(agent.pk))
    expect(page.locator('[data-field="epoch"]')).to_have_text(str(revocation.epoch))
    expect(copy_row.locator("td").nth(2)).to_have_text(str(revocation.epoch))
    page.screenshot(path=str(SHOTS / "revocation-supervised.png"), full_page=True)
    print(f"\nconsole kill → last process of the tree gone {gone_after * 1000:.0f} ms")

    # The agent's page says the same of its copy.
    page.goto(f"/agents/{agent.pk}/")
    expect(agent_copy).to_contain_text("process tree stopped: 3 processes, 1 after SIGKILL")
    page.screenshot(path=str(SHOTS / "agent-supervised.png"), full_page=True)

    agent.refresh_from_db()
    assert agent.status == Agent.Status.KILLED and revocation.source == "console"
    (stop,) = ActionEvent.objects.filter(agent=agent, action="proc:kill")
    assert stop.details["processes"] == 3 and stop.details["epoch"] == revocation.epoch
