"""The console in a real browser (Chromium through Playwright) against a live server.

Sign-in, issuing a passport, killing a real SDK agent running in a subprocess (measuring how
fast it refuses and how fast the console shows the acknowledgement), the global kill switch,
roles, CSRF, form errors and keyboard use. Screenshots of the main pages go to docs/screenshots/.

Chromium is not downloaded by Playwright: the tests use the system's (``/usr/bin/chromium``, or
``$CHROMIUM``). Without it they skip with the install hint, except where ``REQUIRE_BROWSER=1``
(``.ci/run`` sets it): there a missing or broken Chromium fails them.
"""

import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright

from actions import transparency
from agent_passport.revocations import revocations_digest
from killswitch import publisher
from killswitch import services as killswitch
from killswitch.models import KillRule, Revocation
from passports import services as passport_services
from passports.models import Agent, Passport
from passports.roles import Role
from tests.conftest import make_user
from tests.console.conftest import browser_unavailable

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parents[2]
SCREENSHOTS = BASE_DIR / "docs" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 850}
PASSWORD = "browser-test-Secret-42"
TIMEOUT_MS = 5000
KILL_BUDGET = 1.0  # seconds from the confirmation click to refusal / acknowledgement

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        browser_unavailable(
            f"Chromium is required for the browser tests but {CHROMIUM} does not exist. "
            "Install it (Debian/Ubuntu: apt-get install chromium) or set CHROMIUM to its path."
        )
    # Playwright's sync API keeps an asyncio loop running in this thread; Django refuses ORM
    # calls next to a running loop unless told that this is deliberate (the ORM is not used
    # from the loop itself: the tests call it between browser steps).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        playwright = sync_playwright().start()
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
        except PlaywrightError as exc:
            playwright.stop()
            browser_unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
        try:
            yield browser
        finally:
            browser.close()
            playwright.stop()


@pytest.fixture(autouse=True)
def _shared_connection(live_server_connection):
    """One database connection for the test and the live server on SQLite (see conftest)."""


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()  # stops the live pages' polling before the database is flushed


@pytest.fixture
def user_with(django_user_model):
    """A user with a known password and a name of its own (sign-in throttling is per name)."""

    def _make(role: Role):
        user = make_user(django_user_model, f"{role.value}-{uuid.uuid4().hex[:6]}", role)
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
        return user

    return _make


def kill_agent(actor, agent: Agent) -> Revocation:
    target = killswitch.parse_target({"agent": str(agent.pk)})
    return killswitch.revoke(target=target, reason="test", actor=actor, source="console")


def sign_in(page: Page, user, password: str = PASSWORD) -> None:
    page.goto("/login/")
    page.get_by_label("User name").fill(user.username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who")).to_contain_text(user.username)


def nav(page: Page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def screenshot(page: Page, name: str, **options) -> None:
    """Refresh docs/screenshots/ only when asked (SCREENSHOTS=1), so test runs leave git clean;
    otherwise still render the shot, which fails loudly if the page cannot be drawn."""
    if os.environ.get("SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), **options)
    else:
        assert page.screenshot(**options)


def lines_of(page: Page, selector: str) -> list[int]:
    """How many lines the text of each matching element takes on screen."""
    return page.eval_on_selector_all(
        selector,
        """cells => cells.map(cell => {
            const range = document.createRange();
            range.selectNodeContents(cell);
            return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
        })""",
    )


def described_by(page: Page, selector: str) -> list[str]:
    """The texts an element's aria-describedby points at; fails on a dangling reference."""
    ids = (page.locator(selector).get_attribute("aria-describedby") or "").split()
    texts = []
    for element_id in ids:
        target = page.locator(f"#{element_id}")
        assert target.count() == 1, f"aria-describedby of {selector} names missing #{element_id}"
        texts.append(target.inner_text())
    return texts


# --- 1. sign-in ---------------------------------------------------------------------------------


def test_sign_in_with_the_form_and_a_wrong_password_shows_an_error(page, user_with):
    operator = user_with(Role.OPERATOR)
    page.goto("/agents/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/agents/$"))
    page.get_by_label("User name").fill(operator.username)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")
    expect(page.get_by_label("User name")).to_have_value(operator.username)
    expect(page.locator(".who")).to_have_count(0)

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/agents/$"))
    expect(page.locator(".who")).to_contain_text(f"{operator.username} · operator")

    page.get_by_role("button", name="Sign out").click()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/"))


# --- 2. issuing a passport ----------------------------------------------------------------------


def test_issue_a_passport_and_copy_the_token_shown_once(page, user_with, agent, live_server):
    sign_in(page, user_with(Role.OPERATOR))
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    nav(page, "Issue passport").click()
    page.get_by_label("Agent").select_option(value=str(agent.pk))
    page.get_by_label("Scope").fill("fs:*:/workspace/**\ntool:python:*\n!net:connect:*:22")
    page.get_by_label("Jurisdiction").fill("EU, US-CA")
    page.get_by_label("Allow self-renewal").check()
    page.get_by_role("button", name="Issue passport").click()

    expect(page.get_by_role("heading", name="Passport issued")).to_be_visible()
    valid_until = re.compile(r"valid until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\.")
    expect(page.get_by_text(valid_until)).to_be_visible()
    expect(page.get_by_text("This token is shown once")).to_be_visible()
    token = page.locator("#token").inner_text().strip()
    assert token.count(".") == 2  # a JWS compact token
    passport = Passport.objects.get()
    assert passport.agent_id == agent.pk and passport.jurisdiction == ["EU", "US-CA"]
    assert passport.scope == ["fs:*:/workspace/**", "tool:python:*", "!net:connect:*:22"]
    assert passport.agent_may_renew
    expect(page.locator(".chip.deny")).to_have_text("!net:connect:*:22")

    copy = page.locator("button[data-copy=token]")
    expect(copy).to_have_text("Copy token")
    copy.click()
    expect(copy).to_have_text(re.compile("Copied|Selected"))
    if copy.inner_text() == "Copied":
        assert page.evaluate("navigator.clipboard.readText()") == token
    else:  # no clipboard access: the token is selected for Ctrl+C instead
        assert page.evaluate("window.getSelection().toString().trim()") == token

    # Once: the registry keeps no copy to show again.
    page.get_by_role("link", name=agent.name).click()
    expect(page.get_by_role("heading", name=agent.name)).to_be_visible()
    assert token not in page.content()


# --- 3. killing a real SDK agent ------------------------------------------------------------------

# A small agent on the SDK: works through its passport (one out-of-scope attempt, then writes
# every 0.25 s), reports every decision and its heartbeat to the registry, and prints the wall
# time at which its guard first refuses. Then it stays up, idle (its reporter keeps sending
# heartbeats), until the test closes its stdin.
AGENT_SCRIPT = r"""
import os, sys, time
from agent_passport.errors import PassportRevoked, ScopeDenied
from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.reporter import ActionReporter

def say(line):  # one write per line: the watcher thread prints too
    os.write(1, (line + "\n").encode())

registry, token = os.environ["REGISTRY"], os.environ["AGENT_PASSPORT_TOKEN"]
reporter = ActionReporter(registry + "/api/v1/actions", token, spill_path=os.environ["SPILL"])
guard = Guard(token, keys=JWKSClient(registry + "/.well-known/jwks.json"), issuer=registry,
              redis_url=os.environ["REDIS_URL"], jurisdiction="DE", reporter=reporter)
reporter.start()
guard.on_kill(lambda entry: say(f"KILLED {time.time():.6f} epoch={entry.epoch}"))
try:
    guard.check("net:connect", "203.0.113.9:22")
except ScopeDenied as exc:
    say(f"DENIED {exc}")
say("READY")
step = 0
while True:
    step += 1
    try:
        guard.check("fs:write", f"/workspace/checkpoint-{step}.pt")
    except PassportRevoked as exc:
        say(f"REFUSED {time.time():.6f} {exc}")
        break
    guard.wait_for_kill(timeout=0.25)  # wakes at once on a kill
sys.stdin.read()  # idle until told to stop
delivered = reporter.flush(timeout=5)
say(f"FLUSHED {time.time():.6f} delivered={delivered}")
reporter.close()
guard.close()
"""


class AgentProcess:
    """The SDK agent in a subprocess; its output lines are read by a thread into a queue."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", AGENT_SCRIPT],
            cwd=BASE_DIR,
            env={**os.environ, "PYTHONPATH": str(BASE_DIR), **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"the agent never printed {prefix!r}:\n{''.join(self.output)}")
            if prefix in line:
                return line[line.index(prefix) :]

    def finish(self) -> tuple[str, int]:
        """Close stdin: the agent flushes its reporter and exits. Its last line and exit code."""
        self.process.stdin.close()
        return self.wait_for("FLUSHED"), self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self.process.stdin.close()


@pytest.fixture
def sdk_agent(live_server, settings, issue, tmp_path, revocation_heartbeat):
    settings.PASSPORT_ISSUER = live_server.url  # the agent verifies and reports against it
    publisher.reconcile()  # a deployed service has written the snapshot before agents start
    token = issue(scope=["fs:*:/workspace/**", "!net:connect:*:22"], jurisdiction=["EU"])["token"]
    process = AgentProcess(
        {
            "AGENT_PASSPORT_TOKEN": token,
            "REGISTRY": live_server.url,
            "REDIS_URL": settings.REDIS_URL,
            "SPILL": str(tmp_path / "spill.jsonl"),
        }
    )
    yield process
    process.stop()


def test_killing_a_running_sdk_agent_from_its_page(page, user_with, agent, sdk_agent):
    sdk_agent.wait_for("DENIED")
    sdk_agent.wait_for("READY")
    sign_in(page, user_with(Role.OPERATOR))
    nav(page, "Agents").click()
    page.get_by_role("link", name=agent.name).click()
    # The agent reports: its heartbeat (with the epoch it applied) and its decisions go live.
    expect(page.locator('[data-field="last_seen_epoch"]')).to_have_text(re.compile(r"^\d+$"))
    timeline = page.locator("[data-timeline]")
    expect(timeline.locator("tr.deny")).to_contain_text("net:connect:203.0.113.9:22")
    expect(timeline.locator("tr.allow").first).to_contain_text("fs:write:/workspace/checkpoint-")

    page.get_by_role("link", name="Kill this agent").click()
    expect(page.get_by_role("heading", name=f"Stop agent {agent.name}?")).to_be_visible()
    page.get_by_label("Reason (required)").fill("opened a reverse SSH tunnel")
    confirm = page.get_by_role("button", name=f"Kill agent {agent.name}")
    clicked_at = time.time()
    confirm.click()

    # (a) The guard in the subprocess refuses its next action.
    refusal = sdk_agent.wait_for("REFUSED", timeout=5)
    to_refusal = float(refusal.split()[1]) - clicked_at
    assert "opened a reverse SSH tunnel" in refusal

    # (b) The revocation page shows the epoch and the agent as acknowledged. The agent
    # acknowledges with a heartbeat carrying the epoch it applied; its guard makes the reporter
    # send one as soon as the revocation state changes (ActionReporter.heartbeat_now), rather
    # than with the next idle heartbeat (every 2 s). The page polls every 0.5 s.
    expect(page).to_have_url(re.compile(r"/revocations/\d+/$"))
    expect(page.get_by_role("heading", name=f"agent {agent.name}")).to_be_visible()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-acks] .badge')]
                 .some(b => b.textContent.trim() === 'acknowledged')""",
        timeout=TIMEOUT_MS,
    )
    to_acknowledgement = time.time() - clicked_at
    revocation = Revocation.objects.get()
    expect(page.locator('[data-field="epoch"]')).to_have_text(str(revocation.epoch))
    row = page.locator("[data-acks] tr", has_text=agent.name)
    expect(row.locator("td").nth(2)).to_have_text(str(revocation.epoch))
    expect(page.locator('[data-field="acknowledged"]')).to_have_text("1")
    print(
        f"\nkill → refusal {to_refusal * 1000:.0f} ms, "
        f"kill → acknowledgement shown {to_acknowledgement * 1000:.0f} ms"
    )
    assert to_refusal < KILL_BUDGET, f"the agent refused {to_refusal:.2f} s after the click"
    assert to_acknowledgement < KILL_BUDGET, (
        f"the acknowledgement appeared {to_acknowledgement:.2f} s after the click"
    )
    screenshot(page, "revocation-acks.png")

    agent.refresh_from_db()
    assert agent.status == Agent.Status.KILLED and revocation.source == "console"
    assert revocation.actor.username.startswith("operator-")

    # The agent's page: allowed writes, the denied SSH attempt, the kill and the refusal.
    page.goto(f"/agents/{agent.pk}/")
    expect(page.locator('[data-field="status"]')).to_have_text("killed")
    expect(timeline.locator("tr.kill")).to_contain_text(
        f"agent {agent.name} stopped: opened a reverse SSH tunnel"
    )
    expect(timeline.locator("tr.deny", has_text="refused")).to_have_count(1)
    expect(page.get_by_role("link", name="Kill this agent")).to_have_count(0)
    expect(page.get_by_role("button", name="Reinstate")).to_be_visible()
    screenshot(page, "agent.png", full_page=True)
    flushed, exit_code = sdk_agent.finish()
    assert "delivered=True" in flushed and exit_code == 0, "".join(sdk_agent.output)

    nav(page, "Dashboard").click()
    expect(page.locator('[data-field="agents.killed"]')).to_have_text("1")
    revoked = page.locator("[data-revocations] tr.kill")
    expect(revoked).to_contain_text(f"agent {agent.name}")
    expect(revoked).to_contain_text("opened a reverse SSH tunnel")
    screenshot(page, "dashboard.png")

    nav(page, "Action log").click()
    page.get_by_label("Agent (name or id)").fill(agent.name[:5].upper())
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr.deny").first).to_be_visible()
    page.get_by_role("link", name="Verify now").click()
    expect(page.locator("#audit-status")).to_have_text("NOT VERIFIED")  # no signed head yet
    expect(page.locator("#audit-status").locator("..")).to_contain_text("not yet covered")
    transparency.sign_tree_head()
    page.get_by_role("link", name="Verify now").click()
    expect(page.locator("#audit-status")).to_have_text("intact")
    # Actions and paths keep to one line; the reason column wraps instead.
    actions = lines_of(page, "tbody td:nth-child(3)")
    assert len(actions) >= 3 and set(actions) == {1}, actions
    screenshot(page, "action-log.png")


# --- 4. the global kill switch ------------------------------------------------------------------


def test_global_kill_needs_a_reason_and_the_typed_word(page, user_with, agent, operator):
    other = Agent.objects.create(name="scraper-7", fleet="web", owner=operator)
    sign_in(page, user_with(Role.OPERATOR))
    page.get_by_role("link", name="Kill switch: stop ALL agents").click()
    expect(page.get_by_role("heading", name="Stop every agent?")).to_be_visible()
    expect(page.get_by_text("(2 registered)")).to_be_visible()
    word = page.locator("label[for=id_confirm] strong").inner_text()
    assert word == "KILL"
    kill_all = page.get_by_role("button", name="Kill every agent")

    # Neither a reason nor the word: both errors, each next to (and described by) its field.
    kill_all.click()
    expect(page.locator("#id_reason_error")).to_contain_text("required")
    expect(page.locator("#id_confirm_error")).to_have_text(f"Type {word} to stop every agent.")
    assert described_by(page, "#id_reason") == [page.locator("#id_reason_error").inner_text()]
    expect(page.locator("#id_confirm")).to_have_attribute("aria-invalid", "true")

    # Filling a field clears its error at once; the other field's error stays.
    page.get_by_label("Reason (required)").fill("fleet-wide credential leak")
    expect(page.locator("#id_reason_error")).to_have_count(0)
    expect(page.locator("#id_reason")).not_to_have_attribute("aria-invalid", "true")
    assert described_by(page, "#id_reason") == []
    expect(page.locator("#id_confirm_error")).to_be_visible()

    # The reason is kept; a wrong word is still refused.
    page.get_by_label(f"Type {word} to confirm").fill("kill")
    kill_all.click()
    expect(page.locator("#id_confirm_error")).to_have_text(f"Type {word} to stop every agent.")
    expect(page.locator("#id_reason_error")).to_have_count(0)
    assert described_by(page, "#id_reason") == []
    expect(page.locator("#id_reason")).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Reason (required)")).to_have_value("fleet-wide credential leak")
    assert not Revocation.objects.exists()

    # A fresh confirmation page, filled in properly.
    page.goto("/kill/?all=1")
    page.get_by_label("Reason (required)").fill("fleet-wide credential leak")
    page.get_by_label(f"Type {word} to confirm").fill(word)
    screenshot(page, "kill-confirm.png")
    kill_all.click()
    expect(page.get_by_role("heading", name=re.compile(r"#\d+: all agents"))).to_be_visible()
    revocation = Revocation.objects.get()
    assert revocation.target_type == "all" and revocation.reason == "fleet-wide credential leak"
    for stopped in (agent, other):
        assert not passport_services.agent_run_status(stopped).allowed
    nav(page, "Dashboard").click()
    expect(page.locator("[data-revocations] tr.kill")).to_contain_text("all agents")
    # Nothing may run: no agent and no passport counts as active, and every page says why.
    expect(page.locator('[data-field="agents.active"]')).to_have_text("0")
    expect(page.locator('[data-field="agents.stopped"]')).to_have_text("2")
    expect(page.locator('[data-field="passports_active"]')).to_have_text("0")
    banner = page.locator("#kill-banner")
    expect(banner).to_contain_text("All agents are stopped")
    expect(banner).to_contain_text("fleet-wide credential leak")
    screenshot(page, "dashboard-global-kill.png")
    nav(page, "Agents").click()
    banner.get_by_role("link", name=f"revocation #{revocation.pk}").click()
    expect(page.get_by_role("button", name="Lift and reinstate")).to_be_visible()


def test_the_dashboard_shows_and_clears_the_banner_live(page, user_with, agent):
    operator = user_with(Role.OPERATOR)
    sign_in(page, operator)
    banner = page.locator("#kill-banner")
    expect(page.locator('[data-field="agents.active"]')).to_have_text("1")
    expect(banner).to_have_count(0)
    revocation = killswitch.revoke(
        target=killswitch.parse_target({"all": True}),
        reason="from another console",
        actor=operator,
        source="api",
    )
    expect(banner).to_contain_text("All agents are stopped")  # without reloading the page
    expect(banner).to_contain_text("from another console")
    expect(page.locator('[data-field="agents.active"]')).to_have_text("0")
    killswitch.lift(revocation=revocation, actor=operator)
    expect(banner).to_have_count(0)
    expect(page.locator('[data-field="agents.active"]')).to_have_text("1")


# --- 5. roles -------------------------------------------------------------------------------------


def test_a_viewer_sees_no_kill_buttons_and_gets_403_on_the_kill_page(page, user_with, agent):
    sign_in(page, user_with(Role.VIEWER))
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Kill switch"))).to_have_count(0)
    expect(page.get_by_role("link", name="Issue passport")).to_have_count(0)
    nav(page, "Agents").click()
    page.get_by_role("link", name=agent.name).click()
    expect(page.get_by_role("heading", name=agent.name)).to_be_visible()
    for name in ("Kill this agent", "Suspend", "Issue passport"):
        expect(page.get_by_role("link", name=name)).to_have_count(0)

    response = page.goto(f"/kill/?agent={agent.pk}")
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.locator("form textarea")).to_have_count(0)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE and not Revocation.objects.exists()


# --- 6. CSRF --------------------------------------------------------------------------------------


def test_a_form_posted_without_its_csrf_token_is_refused(page, user_with, agent):
    sign_in(page, user_with(Role.OPERATOR))
    page.goto(f"/kill/?agent={agent.pk}")
    page.get_by_label("Reason (required)").fill("forged")
    page.locator("[name=csrfmiddlewaretoken]").evaluate_all("inputs => inputs.map(i => i.remove())")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name=f"Kill agent {agent.name}").click()
    assert navigation.value.status == 403
    expect(page.get_by_text("CSRF check failed")).to_be_visible()

    # A script's POST with the session cookie but without the token fares no better.
    status = page.evaluate(
        """async ([agent]) => (await fetch('/kill/', {method: 'POST',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'agent=' + agent + '&reason=forged'})).status""",
        [str(agent.pk)],
    )
    assert status == 403
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE and not Revocation.objects.exists()


# --- 7. form errors -------------------------------------------------------------------------------


def test_a_bad_scope_rule_is_shown_under_the_scope_field(page, user_with, agent):
    sign_in(page, user_with(Role.OPERATOR))
    page.goto(f"/passports/new?agent={agent.pk}")
    expect(page.get_by_label("Agent")).to_have_value(str(agent.pk))
    page.get_by_label("Scope").fill("fs:write:/workspace/**\nnet connect everything")
    page.get_by_label("Jurisdiction").fill("EU")
    page.get_by_role("button", name="Issue passport").click()

    error = page.locator("#id_scope_error")
    expect(error).to_contain_text("invalid rule 'net connect everything'")
    # Next to its field: right after the scope help, before the jurisdiction label ...
    follows = "(a, b) => !!(a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING)"
    assert page.evaluate(
        f"""() => {{ const follows = {follows};
            const q = s => document.querySelector(s);
            return follows(q('#id_scope'), q('#id_scope_error'))
                && follows(q('#id_scope_error'), q('label[for=id_jurisdiction]')); }}"""
    )
    # ... and announced with it: aria-invalid and aria-describedby (help text and error).
    scope = page.get_by_label("Scope")
    expect(scope).to_have_attribute("aria-invalid", "true")
    texts = described_by(page, "#id_scope")
    assert any("invalid rule" in text for text in texts), texts
    assert any("One rule per line" in text for text in texts), texts
    expect(page.get_by_label("Jurisdiction")).not_to_have_attribute("aria-invalid", "true")
    expect(scope).to_have_value("fs:write:/workspace/**\nnet connect everything")  # kept
    assert not Passport.objects.exists()
    screenshot(page, "issue-passport-error.png")


# --- 8. keyboard ----------------------------------------------------------------------------------


def tab_to(page: Page, predicate: str, limit: int = 40) -> None:
    """Press Tab until ``predicate(document.activeElement)`` holds."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(e => {predicate})(document.activeElement)"):
            return
    pytest.fail(f"Tab never reached an element with {predicate}")


def test_the_kill_confirmation_works_with_the_keyboard_only(page, user_with, agent):
    sign_in(page, user_with(Role.OPERATOR))
    page.goto(f"/agents/{agent.pk}/")
    tab_to(page, "e.textContent.trim() === 'Kill this agent'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=f"Stop agent {agent.name}?")).to_be_visible()

    tab_to(page, "e.id === 'id_reason'")
    page.keyboard.type("crypto miner found by keyboard")
    tab_to(page, "e.type === 'submit' && e.textContent.startsWith('Kill agent')", limit=3)
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused button shows no focus outline"
    page.keyboard.press("Enter")

    heading = re.compile(rf"Revocation #\d+: agent {agent.name}")
    expect(page.get_by_role("heading", name=heading)).to_be_visible()
    link = page.get_by_role("link", name=agent.name)
    expect(link).to_have_attribute("href", f"/agents/{agent.pk}/")
    revocation = Revocation.objects.get()
    assert revocation.reason == "crypto miner found by keyboard"
    agent.refresh_from_db()
    assert agent.status == Agent.Status.KILLED


# --- 9. Content-Security-Policy ---------------------------------------------------------------


def watch_for_trouble(page: Page) -> list[str]:
    """Collects policy violations, script errors, console errors and failed subresources."""
    problems: list[str] = []
    page.add_init_script(
        """document.addEventListener("securitypolicyviolation", e =>
             console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`));"""
    )

    def logged(message) -> None:  # a page's own status (the 404 page) is not a problem
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    page.on("console", logged)
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def failed(response) -> None:
        if response.status >= 400 and response.request.resource_type != "document":
            problems.append(f"{response.status} {response.url}")

    page.on("response", failed)
    return problems


def test_no_page_breaks_its_content_security_policy(page, user_with, agent, issue):
    problems = watch_for_trouble(page)
    page.goto("/login/")
    expect(page.get_by_label("User name")).to_be_focused()
    admin = user_with(Role.ADMIN)
    sign_in(page, admin)
    issue()
    killed = Agent.objects.create(name="scraper-7", fleet="web", owner=admin)
    revocation = kill_agent(admin, killed)
    KillRule.objects.create(
        name="miners", kind="deny_pattern", pattern="proc:exec:*miner*", created_by=admin
    )
    live = {
        "/": "[data-live]",
        f"/agents/{agent.pk}/": "[data-live]",
        f"/revocations/{revocation.pk}/": "[data-live]",
    }
    for url in [
        *live,
        "/agents/",
        "/passports/new",
        "/actions/?verify=1",
        "/rules/",
        "/keys/",
        f"/kill/?agent={agent.pk}",
        "/kill/?fleet=gpu-a",
        "/kill/?all=1",
        "/no-such-page/",
    ]:
        response = page.goto(url)
        assert "script-src 'self'" in response.headers.get("content-security-policy", ""), url
        expect(page.locator("main")).to_be_visible()
        if url in live:  # its script ran and updated the page from the server
            expect(page.locator(live[url])).to_have_attribute("data-updated", re.compile(r"\d"))
        assert problems == [], (url, problems)

    # Forms with errors (whose script clears them on input) and the token shown once.
    page.goto("/kill/?all=1")
    page.get_by_role("button", name="Kill every agent").click()
    expect(page.locator("#id_reason_error")).to_be_visible()
    page.goto(f"/passports/new?agent={agent.pk}")
    page.get_by_label("Scope").fill("fs:read:/workspace/**")
    page.get_by_label("Jurisdiction").fill("EU")
    page.get_by_role("button", name="Issue passport").click()
    page.locator("button[data-copy=token]").click()
    expect(page.locator("button[data-copy=token]")).not_to_have_text("Copy token")
    assert problems == [], problems

    # The API docs: Swagger UI starts from its script file and draws the operations.
    response = page.goto("/api/docs/")
    assert "script-src 'self'" in response.headers.get("content-security-policy", "")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert problems == [], problems


# --- 5. supervised copies -----------------------------------------------------------------------


def post_heartbeat(registry: str, token: str, heartbeat: dict) -> None:
    """What a supervisor's reporter sends: a real HTTP POST with the agent's passport."""
    response = requests.post(
        f"{registry}/api/v1/actions",
        json={"events": [], "heartbeat": heartbeat},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text


def test_the_acknowledgement_view_shows_the_copies_a_supervisor_stopped(
    page, user_with, agent, issue, live_server
):
    operator = user_with(Role.OPERATOR)
    token = issue()["token"]
    revocation = kill_agent(operator, agent)
    digest = revocations_digest([revocation.pk])
    applied = {"epoch": revocation.epoch, "digest": digest, "host": "trainer-1"}
    post_heartbeat(live_server.url, token, {**applied, "pid": 4100})  # an in-process SDK copy
    tree = {"mechanism": "cgroup", "child_pid": 4243, "processes": 3, "state": "running"}
    post_heartbeat(live_server.url, token, {**applied, "pid": 4242, "supervisor": tree})
    sign_in(page, operator)
    page.goto(f"/revocations/{revocation.pk}/")
    supervised = page.locator("[data-acks] tr.copy-row", has_text="trainer-1:4242")
    expect(supervised).to_contain_text("process tree running: 3 processes")
    expect(supervised.locator(".badge")).to_have_text("stopping")
    expect(page.locator('[data-field="acknowledged"]')).to_have_text("0")

    # The supervisor stops the tree and says so in its next heartbeat; the page (polling every
    # 0.5 s) shows it without a reload.
    stopped = {"epoch": revocation.epoch, "cause": "revoked", "processes": 50, "sigkilled": 1,
               "at": time.time()}  # fmt: skip
    final = {**tree, "processes": 0, "state": "stopped", "stopped": stopped}
    post_heartbeat(live_server.url, token, {**applied, "pid": 4242, "supervisor": final})
    expect(supervised).to_contain_text("process tree stopped: 50 processes, 1 after SIGKILL")
    expect(supervised).to_contain_text("supervisor (cgroup)")
    expect(supervised.locator(".badge")).to_have_text("acknowledged")
    in_process = page.locator("[data-acks] tr.copy-row", has_text="trainer-1:4100")
    expect(in_process).to_contain_text("in-process SDK (no process tree)")
    expect(in_process.locator(".badge")).to_have_text("acknowledged")
    expect(page.locator('[data-field="acknowledged"]')).to_have_text("1")
    expect(page.locator('[data-field="processes_stopped"]')).to_have_text("50")
    page.screenshot(path="/tmp/acks-supervised-copies.png", full_page=True)
    screenshot(page, "revocation-acks-supervised.png", full_page=True)
