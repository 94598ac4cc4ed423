"""ProcessTree against real processes: an agent that hides its children is still stopped whole."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent_passport.proctree import ProcessTree, cgroup2_root

AGENT = Path(__file__).with_name("uncooperative_agent.py")
MECHANISMS = [
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(cgroup2_root() is None, reason="no writable cgroup v2 here"),
    ),
    "subreaper",
]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def read_pids(path: Path) -> dict[str, int]:
    """role → pid, once the agent wrote ``ready`` (``extra`` roles are numbered)."""
    assert wait_for(lambda: path.exists() and "ready" in path.read_text()), "agent not ready"
    roles: dict[str, int] = {}
    for line in path.read_text().splitlines():
        role, pid = line.split()
        if role == "extra":
            role = f"extra-{sum(name.startswith('extra') for name in roles)}"
        roles[role] = int(pid)
    return roles


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(params=MECHANISMS)
def start_tree(request, tmp_path) -> Iterator:
    trees: list[ProcessTree] = []

    def _start(*options: str) -> tuple[ProcessTree, dict[str, int]]:
        pids = tmp_path / f"pids-{len(trees)}"
        tree = ProcessTree(
            [sys.executable, str(AGENT), "--pids", str(pids), *options],
            containment=request.param,
        )
        trees.append(tree)
        tree.start()
        return tree, read_pids(pids)

    yield _start
    for tree in trees:
        tree.stop(grace=0)
        tree.close()


def test_the_tree_includes_the_double_forked_setsid_miner(start_tree):
    tree, roles = start_tree()
    assert psutil.Process(roles["miner"]).ppid() != roles["ready"]  # not the agent's child
    assert os.getsid(roles["miner"]) != os.getsid(roles["ready"])  # nor in its session
    assert os.getpgid(roles["own-group"]) != os.getpgid(roles["ready"])
    assert set(roles.values()) <= tree.pids()
    assert tree.count() == 4


def test_stop_sigterms_everyone_and_sigkills_only_the_stubborn_after_grace(start_tree):
    tree, roles = start_tree()
    results = []
    stopper = threading.Thread(target=lambda: results.append(tree.stop(grace=1.0)))
    stopper.start()
    others = [pid for role, pid in roles.items() if role != "stubborn"]
    assert wait_for(lambda: not any(alive(pid) for pid in others), timeout=0.8)
    assert alive(roles["stubborn"])  # it ignores SIGTERM and the grace period is not over
    stopper.join(10)
    assert not alive(roles["stubborn"])
    result = results[0]
    assert (result.processes, result.sigkilled) == (4, 1)
    assert tree.count() == 0


def test_a_tree_that_obeys_sigterm_needs_no_sigkill(start_tree):
    tree, roles = start_tree()
    psutil.Process(roles["stubborn"]).kill()
    assert wait_for(lambda: not alive(roles["stubborn"]))
    result = tree.stop(grace=5.0)
    assert (result.processes, result.sigkilled) == (3, 0)
    assert not any(alive(pid) for pid in roles.values())


def test_pause_freezes_every_process_and_resume_thaws_them(start_tree):
    tree, roles = start_tree()
    assert tree.pause() == 4
    frozen = psutil.STATUS_STOPPED if tree.mechanism == "subreaper" else None
    if frozen:
        states = {psutil.Process(pid).status() for pid in roles.values()}
        assert states == {frozen}
    else:
        assert "frozen 1" in (tree.cgroup / "cgroup.events").read_text()  # type: ignore[operator]
    miner = psutil.Process(roles["miner"])
    before = miner.cpu_times().user + miner.cpu_times().system
    time.sleep(0.3)
    assert miner.cpu_times().user + miner.cpu_times().system == before  # it does not run
    tree.resume()
    assert wait_for(lambda: psutil.Process(roles["miner"]).status() != psutil.STATUS_STOPPED)
    assert all(alive(pid) for pid in roles.values())


def test_a_paused_tree_can_be_stopped(start_tree):
    tree, roles = start_tree()
    tree.pause()
    result = tree.stop(grace=0.5)
    assert result.processes == 4
    assert not any(alive(pid) for pid in roles.values())


def test_exit_code_is_the_commands_and_its_leftovers_are_still_owned(start_tree):
    tree, roles = start_tree("--exit", "3")
    assert wait_for(lambda: tree.poll() is not None)
    assert tree.poll() == 3
    assert tree.count() == 3  # miner, own-group and stubborn outlive the agent
    assert tree.stop(grace=0.2).processes == 3
    assert not any(alive(pid) for pid in roles.values())


def test_the_cgroup_is_removed_on_close(tmp_path):
    if cgroup2_root() is None:
        pytest.skip("no writable cgroup v2 here")
    tree = ProcessTree([sys.executable, "-c", "pass"], containment="cgroup")
    tree.start()
    assert wait_for(lambda: tree.poll() is not None)
    tree.stop(grace=0)
    tree.close()
    assert tree.cgroup is not None and not tree.cgroup.exists()
