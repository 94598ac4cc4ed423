"""``agent-passport run`` against the live registry, a real Redis and real processes: an agent
that imports nothing of ours and hides its children is still stopped whole by a kill."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from actions.models import ActionEvent
from agent_passport.proctree import cgroup2_root
from agent_passport.supervisor import EXIT_EXPIRED, EXIT_KILLED, EXIT_REFUSED, EXIT_STALE
from killswitch import publisher
from killswitch.models import Revocation
from registry.devserver import free_port
from tests.killswitch.conftest import wait_until
from tests.passports.test_tokens import sign_with_active_key

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parents[2]
SDK = BASE_DIR / "sdk" / "python"
AGENT = SDK / "tests" / "uncooperative_agent.py"
SCOPE = ["fs:*:/workspace/**", "!net:connect:*:22"]
MECHANISMS = [
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(cgroup2_root() is None, reason="no writable cgroup v2 here"),
    ),
    "subreaper",
]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Run:
    """One ``agent-passport run`` process (its own session), stopped after the test. Its stderr
    is read as it comes (a full pipe would block the supervisor), for the failure messages."""

    def __init__(self, process: subprocess.Popen, pids: Path, read_stderr: bool = True) -> None:
        self.process = process
        self.pids_file = pids
        self._stderr: list[str] = []
        self._reader: threading.Thread | None = None
        if read_stderr:
            self._reader = threading.Thread(target=self._read_stderr, daemon=True)
            self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def roles(self, timeout: float = 10.0) -> dict[str, int]:
        assert wait_until(
            lambda: "ready" in self.pids_file.read_text() or self.process.poll() is not None,
            timeout,
        ), f"the agent did not get ready\n{self.dump()}"
        assert self.process.poll() is None, self.stderr()
        return dict(
            (role, int(pid))
            for role, pid in (line.split() for line in self.pids_file.read_text().splitlines())
        )

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the supervisor did not exit within {timeout:g} s\n{self.dump()}"
            ) from None

    def stderr(self) -> str:
        """What the supervisor wrote to stderr so far (all of it once it has exited)."""
        if self._reader is not None and self.process.poll() is not None:
            self._reader.join(5)
        return "".join(self._stderr)

    def dump(self) -> str:
        """For a failure message: SIGABRT a supervisor still running (PYTHONFAULTHANDLER: the
        stack of each of its threads goes to stderr), then its whole stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
            self._kill_leftovers()  # so that the stderr pipe ends
        return f"supervisor's stderr:\n{self.stderr()}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the supervisor stops its tree
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._kill_leftovers()  # they hold the stderr pipe too: its reader ends once they are gone
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stderr is not None and not self.process.stderr.closed:
            if self._reader is None or not self._reader.is_alive():  # else: close() would block
                self.process.stderr.close()

    def _kill_leftovers(self) -> None:
        """A failed test must not leave the tree behind (its supervisor may be gone): kill every
        process the agent wrote down that is still one of the agent's."""
        for line in self.pids_file.read_text().splitlines():
            try:
                process = psutil.Process(int(line.split()[1]))
                if str(AGENT) in process.cmdline():
                    process.kill()
            except (IndexError, ValueError, psutil.Error):
                continue


@pytest.fixture
def passport(issue, live_server, settings):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()  # a deployed service has written the snapshot before agents start
    return issue(scope=SCOPE, jurisdiction=["EU"])


@pytest.fixture
def run(live_server, settings, tmp_path, revocation_heartbeat):
    started: list[Run] = []

    def _run(
        token: str, *options: str, command: list[str] | None = None, read_stderr: bool = True
    ) -> Run:
        pids = tmp_path / f"pids-{len(started)}"
        pids.touch()
        argv = [
            sys.executable, "-m", "agent_passport", "run",
            "--registry", live_server.url,
            "--redis", settings.REDIS_URL,
            "--jurisdiction", "DE",
            *options,
            "--", *(command or [sys.executable, str(AGENT), "--pids", str(pids)]),
        ]  # fmt: skip
        env = {
            **os.environ,
            "AGENT_PASSPORT_TOKEN": token,
            "PYTHONPATH": os.pathsep.join([str(SDK), os.environ.get("PYTHONPATH", "")]),
            "PYTHONFAULTHANDLER": "1",  # Run.dump(): SIGABRT prints every thread's stack
        }
        process = subprocess.Popen(
            argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(Run(process, pids, read_stderr))
        return started[-1]

    yield _run
    for each in started:
        each.close()


def kill_agent(operator_api, agent) -> Revocation:
    response = operator_api.post(
        "/api/v1/killswitch",
        {"target": {"agent": str(agent.id)}, "reason": "cryptominer"},
        format="json",
    )
    assert response.status_code == 201, response.content
    return Revocation.objects.get(pk=response.json()["id"])


def events(agent, action: str) -> list[ActionEvent]:
    return list(ActionEvent.objects.filter(agent=agent, action=action).order_by("seq"))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_kill_from_the_api_stops_the_whole_uncooperative_tree(
    passport, run, operator_api, agent, mechanism
):
    supervised = run(passport["token"], "--grace", "1", "--containment", mechanism)
    roles = supervised.roles()
    assert wait_until(lambda: events(agent, "proc:start"), timeout=5)
    start = events(agent, "proc:start")[0]
    assert start.details["mechanism"] == mechanism and start.decision == "allow"

    requested = time.monotonic()  # the supervisor cannot SIGTERM before this
    revocation = kill_agent(operator_api, agent)
    others = [pid for role, pid in roles.items() if role != "stubborn"]
    assert wait_until(lambda: not any(alive(pid) for pid in others), 1.0), supervised.dump()
    assert alive(roles["stubborn"])  # it ignores SIGTERM: only SIGKILL, after the grace period
    assert wait_until(lambda: not alive(roles["stubborn"]), 3.0), supervised.dump()
    assert time.monotonic() - requested >= 1.0  # SIGKILL came no earlier than --grace 1

    assert supervised.wait() == EXIT_KILLED
    stderr = supervised.stderr()
    assert f"process tree owned by {mechanism}" in stderr
    assert "4 processes (1 needed SIGKILL after 1 s)" in stderr
    # The acknowledgement reached the registry: the epoch applied and the stop, with details.
    agent.refresh_from_db()
    assert agent.last_seen_epoch is not None and agent.last_seen_epoch >= revocation.epoch
    (stop,) = events(agent, "proc:kill")
    assert stop.decision == "deny" and "cryptominer" in stop.reason
    assert stop.details == {
        "cause": "revoked",
        "processes": 4,
        "sigkilled": 1,
        "epoch": revocation.epoch,
    }
    assert events(agent, "proc:exit")[0].details == {"code": EXIT_KILLED}


SIGCHLD_STORM = """
import os, signal, sys, time
pid, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    os.kill(pid, signal.SIGCHLD)
"""


def test_a_storm_of_sigchld_does_not_hang_the_supervisor(passport, run, operator_api, agent):
    """SIGCHLD comes whenever a process of the tree stops, continues or exits (many at once when
    a subreaper SIGSTOPs, SIGCONTs or kills the tree). Its handler once called
    ``threading.Event.set()``, whose lock the main thread may hold at that very moment (inside
    ``Event.wait()``, or inside the handler itself when the next SIGCHLD comes): the supervisor
    then waited for itself forever, deaf to a kill."""
    supervised = run(passport["token"], "--grace", "0.2", "--containment", "subreaper")
    roles = supervised.roles()
    storm = [
        subprocess.Popen([sys.executable, "-c", SIGCHLD_STORM, str(supervised.process.pid), "2"])
        for _ in range(3)  # from several processes: one of them runs beside the supervisor
    ]
    for sender in storm:
        sender.wait(10)
    assert supervised.process.poll() is None, supervised.stderr()
    kill_agent(operator_api, agent)
    assert supervised.wait() == EXIT_KILLED, supervised.stderr()
    assert not any(alive(pid) for pid in roles.values())


def test_a_revoked_passport_refuses_to_start(passport, run, operator_api, agent):
    kill_agent(operator_api, agent)
    supervised = run(passport["token"])
    assert supervised.wait() == EXIT_REFUSED
    stderr = supervised.stderr()
    assert "refusing to start: passport" in stderr and "is revoked" in stderr
    assert supervised.pids_file.read_text() == ""  # the command never ran


def test_an_expired_or_not_yet_valid_passport_refuses_to_start(passport, run):
    now = int(time.time())
    claims = {**passport["claims"], "jti": str(uuid.uuid4())}
    expired = sign_with_active_key({**claims, "iat": now - 60, "nbf": now - 60, "exp": now - 5})
    early = sign_with_active_key(
        {**claims, "iat": now + 3600, "nbf": now + 3600, "exp": now + 7200}
    )
    for token, reason in ((expired, "expired"), (early, "not_yet_valid")):
        supervised = run(token)
        assert supervised.wait() == EXIT_REFUSED
        assert f"the passport is not valid ({reason})" in supervised.stderr()
        assert supervised.pids_file.read_text() == ""


def test_an_unreachable_revocation_channel_refuses_to_start(passport, run, live_server):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    supervised = run(passport["token"], "--redis", closed, "--max-staleness", "0.5")
    assert supervised.wait() == EXIT_REFUSED
    assert "refusing to start: the revocation state is not current" in supervised.stderr()
    assert supervised.pids_file.read_text() == ""


def test_the_tree_is_stopped_at_passport_expiry(issue, live_server, settings, run, agent):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    short = issue(scope=SCOPE, jurisdiction=["EU"], ttl_seconds=5)
    supervised = run(short["token"], "--grace", "0.2")
    roles = supervised.roles()
    assert supervised.wait(timeout=15) == EXIT_EXPIRED
    assert "expires in" in supervised.stderr()
    assert not any(alive(pid) for pid in roles.values())
    (stop,) = events(agent, "proc:kill")
    assert stop.details["cause"] == "expired" and stop.details["processes"] == 4


def test_exit_codes_pass_through(passport, run, agent):
    assert run(passport["token"], command=[sys.executable, "-c", "exit(7)"]).wait() == 7
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert run(passport["token"], command=[sys.executable, "-c", suicide]).wait() == 128 + 9
    assert wait_until(lambda: len(events(agent, "proc:exit")) == 2, timeout=5)
    assert [e.details["code"] for e in events(agent, "proc:exit")] == [7, 137]


def test_a_missing_command_is_127(passport, run):
    supervised = run(passport["token"], "--containment", "subreaper", command=["no-such-agent"])
    assert supervised.wait() == 127
    assert "cannot execute no-such-agent" in supervised.stderr()


def test_sigterm_to_the_supervisor_is_forwarded_and_the_tree_stopped(passport, run):
    supervised = run(passport["token"], "--grace", "0.5")
    roles = supervised.roles()
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.wait() == 128 + signal.SIGTERM
    assert not any(alive(pid) for pid in roles.values())
    assert "got SIGTERM: forwarding it" in supervised.stderr()


@pytest.fixture
def private_redis_passport(private_redis, issue, live_server, settings):
    """A passport whose revocation channel lives on a redis-server of this test's own."""
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    return issue(scope=SCOPE, jurisdiction=["EU"])


def test_stale_state_stops_the_tree(private_redis, private_redis_passport, run):
    supervised = run(private_redis_passport["token"], "--max-staleness", "1", "--grace", "0.2")
    roles = supervised.roles()
    private_redis.stop()
    assert supervised.wait(timeout=10) == EXIT_STALE
    assert "revocation state not current" in supervised.stderr()
    assert not any(alive(pid) for pid in roles.values())


def test_stale_state_with_continue_keeps_running_and_says_so(
    private_redis, private_redis_passport, run
):
    supervised = run(
        private_redis_passport["token"], "--max-staleness", "0.5", "--on-stale", "continue"
    )
    roles = supervised.roles()
    private_redis.stop()
    time.sleep(3)  # well past --max-staleness
    assert supervised.process.poll() is None
    assert all(alive(pid) and not frozen(pid, "subreaper") for pid in roles.values())
    supervised.process.send_signal(signal.SIGINT)
    assert supervised.wait() == 128 + signal.SIGINT
    assert "the command KEEPS RUNNING UNCHECKED" in supervised.stderr()


def frozen(pid: int, mechanism: str) -> bool:
    if mechanism == "subreaper":
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    cgroup = Path("/proc", str(pid), "cgroup").read_text().split("0::", 1)[1].split()[0]
    events = (cgroup2_root() / cgroup.lstrip("/") / "cgroup.events").read_text()  # type: ignore[operator]
    return "frozen 1" in events.splitlines()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_stale_state_pauses_the_tree_until_redis_is_back_then_a_kill_stops_it(
    private_redis, private_redis_passport, run, operator_api, agent, mechanism
):
    supervised = run(
        private_redis_passport["token"],
        "--max-staleness", "1", "--on-stale", "pause", "--grace", "0.2",
        "--containment", mechanism,
    )  # fmt: skip
    roles = supervised.roles()
    private_redis.stop()
    paused = wait_until(lambda: all(frozen(pid, mechanism) for pid in roles.values()), timeout=8)
    assert paused, supervised.dump()
    assert supervised.process.poll() is None  # paused, not stopped
    private_redis.start()
    publisher.reconcile()
    resumed = wait_until(lambda: not any(frozen(pid, mechanism) for pid in roles.values()), 8)
    assert resumed, supervised.dump()
    assert all(alive(pid) for pid in roles.values())
    kill_agent(operator_api, agent)
    assert supervised.wait() == EXIT_KILLED
    assert not any(alive(pid) for pid in roles.values())
    stderr = supervised.stderr()
    assert "process tree paused (4 processes)" in stderr and "process tree resumed" in stderr


def test_a_kill_while_paused_stops_the_tree_when_redis_is_back(
    private_redis, private_redis_passport, run, operator_api, agent
):
    supervised = run(private_redis_passport["token"], "--max-staleness", "1", "--on-stale", "pause")
    roles = supervised.roles()
    mechanism = "cgroup" if cgroup2_root() is not None else "subreaper"
    private_redis.stop()
    assert wait_until(lambda: all(frozen(pid, mechanism) for pid in roles.values()), timeout=8)
    kill_agent(operator_api, agent)  # committed; Redis gets it when it is back
    private_redis.start()
    publisher.reconcile()
    assert supervised.wait() == EXIT_KILLED
    assert not any(alive(pid) for pid in roles.values())
    assert "process tree resumed" not in supervised.stderr()  # stopped, never thawed first


def test_renew_refused_by_the_registry_still_stops_at_expiry(issue, live_server, settings, run):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    short = issue(scope=SCOPE, jurisdiction=["EU"], ttl_seconds=5)  # agent_may_renew: off
    supervised = run(short["token"], "--renew", "--grace", "0.2")
    roles = supervised.roles()
    assert supervised.wait(timeout=15) == EXIT_EXPIRED
    stderr = supervised.stderr()
    assert "not renewed" in stderr or "renewal failed" in stderr, stderr
    assert not any(alive(pid) for pid in roles.values())


def test_renew_swaps_in_the_new_passport_and_the_tree_outlives_the_old_one(
    operator_api, agent, live_server, settings, run
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    body = {
        "agent": str(agent.id),
        "scope": SCOPE,
        "jurisdiction": ["EU"],
        "ttl_seconds": 6,
        "agent_may_renew": True,
    }
    response = operator_api.post("/api/v1/passports", body, format="json")
    if response.status_code == 400 and "agent_may_renew" in str(response.content):
        pytest.skip("the registry has no self-renewal yet (CONTRACTS C3, branch server)")
    assert response.status_code == 201, response.content
    old = response.json()
    supervised = run(old["token"], "--renew", "--grace", "0.2")
    roles = supervised.roles()
    environ = Path(f"/proc/{roles['ready']}/environ").read_bytes().split(b"\0")
    token_file = Path(
        next(v for v in environ if v.startswith(b"AGENT_PASSPORT_TOKEN_FILE="))
        .split(b"=", 1)[1]
        .decode()
    )
    assert wait_until(lambda: token_file.read_text().strip() != old["token"], timeout=8)
    time.sleep(max(0.0, old["claims"]["exp"] + 1 - time.time()))  # past the old expiry
    assert supervised.process.poll() is None and all(alive(pid) for pid in roles.values())
    kill_agent(operator_api, agent)
    assert supervised.wait() == EXIT_KILLED
    assert "passport renewed: now" in supervised.stderr()


def test_a_supervisor_whose_stderr_reader_is_gone_still_stops_the_tree(
    passport, run, operator_api, agent
):
    supervised = run(passport["token"], "--grace", "0.2", read_stderr=False)
    roles = supervised.roles()
    supervised.process.stderr.close()  # type: ignore[union-attr]  # e.g. its log collector died
    kill_agent(operator_api, agent)
    assert supervised.wait() == EXIT_KILLED
    assert not any(alive(pid) for pid in roles.values())
