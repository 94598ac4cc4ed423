"""A command and every process it ever starts, owned as one tree that can be stopped whole.

A descendant that double-forks, calls ``setsid`` or changes its process group is still found:

- ``cgroup`` (preferred): the command runs in a cgroup v2 of its own, entered *before* the command
  starts (a ``/bin/sh`` stub writes its own pid to ``cgroup.procs``, then ``exec``s the command),
  so nothing it forks can be outside it. Stopping freezes the cgroup (``cgroup.freeze``: no fork
  can race the enumeration), sends SIGTERM to every member, thaws it, and after the grace period
  writes ``cgroup.kill``. The cgroup is removed by ``close()``.
- ``subreaper`` (fallback, or forced): the supervising process is a child subreaper
  (``prctl(PR_SET_CHILD_SUBREAPER)``), so orphans are re-parented to it instead of init, and the
  tree is every descendant of this process found by psutil, except the children this process
  already had before ``start()`` (and their descendants). Stopping SIGSTOPs everything it finds,
  enumerates again until nothing new appears, then SIGTERMs and SIGCONTs; after the grace period
  the same with SIGKILL, repeated until none is left.

The supervising process always becomes a subreaper (also with a cgroup), and reaps the zombies
of the tree's orphans. ``pause()``/``resume()`` freeze and thaw the tree (cgroup.freeze, or
SIGSTOP/SIGCONT to each process). Linux only. Not thread-safe: one thread drives the tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
CONTAINMENTS = ("auto", "cgroup", "subreaper")
_ZOMBIE: str = psutil.STATUS_ZOMBIE
POLL = 0.005  # seconds between checks while waiting for the tree to die or freeze
# Runs as the command's pid: joins the cgroup, then becomes the command. $1 is the cgroup.
_ENTER_CGROUP = 'echo $$ > "$1/cgroup.procs" || exit 126; shift; exec "$@"'


class ContainmentError(RuntimeError):
    """The requested containment is not available here (e.g. no writable cgroup v2)."""


@dataclass(frozen=True)
class StopResult:
    """``processes`` stopped (every process seen in the tree during the stop), ``sigkilled``:
    how many of them were still alive after the grace period; ``at``: unix time when the last
    one was gone."""

    processes: int
    sigkilled: int
    at: float


def become_subreaper() -> None:
    """Make this process the reaper of its descendants' orphans (Linux ≥ 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


def cgroup2_root() -> Path | None:
    """This process's own cgroup in the cgroup v2 hierarchy, if one is mounted and writable."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mount = next((line.split()[4] for line in mounts if " - cgroup2 " in line), None)
    path = next((line[3:] for line in own if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    base = Path(mount) / path.lstrip("/")
    return base if (base / "cgroup.procs").exists() and os.access(base, os.W_OK) else None


class ProcessTree:
    """Starts ``argv`` in its own session and owns every process it starts.

    ``containment``: ``auto`` (a cgroup if one can be created, else subreaper), ``cgroup``
    (ContainmentError if impossible) or ``subreaper``. ``mechanism`` says which is used.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        containment: str = "auto",
    ) -> None:
        if not argv:
            raise ValueError("no command to run")
        if containment not in CONTAINMENTS:
            raise ValueError(f"containment must be one of {', '.join(CONTAINMENTS)}")
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cgroup: Path | None = None
        if containment != "subreaper":
            self.cgroup = _make_cgroup()
            if self.cgroup is None and containment == "cgroup":
                raise ContainmentError("no writable cgroup v2 with cgroup.kill on this machine")
        self.mechanism = "cgroup" if self.cgroup is not None else "subreaper"
        self.popen: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._foreign: set[int] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> int:
        """Start the command; returns its pid. OSError if it cannot be started."""
        become_subreaper()
        self._foreign = {child.pid for child in psutil.Process().children()}
        argv = self.argv
        if self.cgroup is not None:
            argv = ["/bin/sh", "-c", _ENTER_CGROUP, "sh", str(self.cgroup), *argv]
        self.popen = subprocess.Popen(argv, env=self.env, start_new_session=True)
        return self.popen.pid

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def poll(self) -> int | None:
        """The command's exit status once it ended (negative: killed by that signal), else None."""
        return self.popen.poll() if self.popen is not None else None

    def reap(self) -> None:
        """Collect the zombies of the tree's orphans (re-parented to us as the subreaper); call
        it on SIGCHLD. The command itself is left to Popen, which keeps its exit status."""
        own = self.popen.pid if self.popen is not None else None
        for child in psutil.Process().children():
            if child.pid in self._foreign or child.pid == own:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == _ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)

    def close(self) -> None:
        """Remove the cgroup (the tree must be gone: call ``stop()`` first)."""
        self.reap()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()

    # -- membership -----------------------------------------------------------------------------
    def pids(self) -> set[int]:
        """Live (non-zombie) processes of the tree right now."""
        if self.popen is None:
            return set()
        if self.cgroup is not None:
            return self._cgroup_pids()
        foreign = set(self._foreign)
        for pid in self._foreign:
            with contextlib.suppress(psutil.Error):
                foreign |= {p.pid for p in _descendants(psutil.Process(pid))}
        found = set()
        for process in _descendants(psutil.Process()):
            if process.pid not in foreign:
                with contextlib.suppress(psutil.Error):
                    if process.status() != _ZOMBIE:
                        found.add(process.pid)
        return found

    def count(self) -> int:
        return len(self.pids())

    def _cgroup_pids(self) -> set[int]:
        assert self.cgroup is not None
        try:
            text = (self.cgroup / "cgroup.procs").read_text()
        except FileNotFoundError:
            return set()
        return {int(line) for line in text.split()}

    # -- pause / resume -------------------------------------------------------------------------
    def pause(self) -> int:
        """Freeze every process of the tree; returns how many."""
        if self.cgroup is not None:
            self._freeze(True)
            frozen = len(self._cgroup_pids())
        else:
            frozen = len(self._stop_all())
        self.paused = True
        return frozen

    def resume(self) -> None:
        """Thaw the tree frozen by ``pause()``."""
        if self.cgroup is not None:
            self._freeze(False)
        else:
            _signal_all(self.pids(), signal.SIGCONT)
        self.paused = False

    def _freeze(self, frozen: bool, timeout: float = 1.0) -> None:
        assert self.cgroup is not None
        (self.cgroup / "cgroup.freeze").write_text("1" if frozen else "0")
        deadline = time.monotonic() + timeout
        want = f"frozen {int(frozen)}"
        while time.monotonic() < deadline:
            if want in (self.cgroup / "cgroup.events").read_text().splitlines():
                return
            time.sleep(POLL)
        logger.warning("cgroup %s did not %s within %.1f s", self.cgroup, want, timeout)

    def _stop_all(self) -> set[int]:
        """SIGSTOP every process of the tree, enumerating again until nothing new appears
        (a process may fork between one enumeration and its SIGSTOP)."""
        stopped: set[int] = set()
        while True:
            new = self.pids() - stopped
            if not new:
                return stopped
            _signal_all(new, signal.SIGSTOP)
            stopped |= new

    # -- stop -----------------------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the tree (e.g. a SIGINT the supervisor got)."""
        _signal_all(self.pids(), signum)

    def stop(self, grace: float) -> StopResult:
        """SIGTERM every process of the tree; SIGKILL whatever is left after ``grace`` seconds.
        Returns once the tree is empty."""
        stop = self._stop_cgroup if self.cgroup is not None else self._stop_subreaper
        processes, sigkilled = stop(grace)
        self.paused = False
        self.reap()
        return StopResult(processes=len(processes), sigkilled=sigkilled, at=time.time())

    def _stop_cgroup(self, grace: float) -> tuple[set[int], int]:
        assert self.cgroup is not None
        self._freeze(True)  # no fork races the enumeration
        seen = self._cgroup_pids()
        _signal_all(seen, signal.SIGTERM)
        self._freeze(False)
        deadline = time.monotonic() + grace
        while (alive := self._cgroup_pids()) and time.monotonic() < deadline:
            _signal_all(alive - seen, signal.SIGTERM)  # forked meanwhile
            seen |= alive
            self.reap()
            time.sleep(POLL)
        if not alive:
            return seen, 0
        seen |= alive
        (self.cgroup / "cgroup.kill").write_text("1")
        while self._cgroup_pids():
            self.reap()
            time.sleep(POLL)
        return seen, len(alive)

    def _stop_subreaper(self, grace: float) -> tuple[set[int], int]:
        seen = self._stop_all()
        _signal_all(seen, signal.SIGTERM)
        _signal_all(seen, signal.SIGCONT)
        deadline = time.monotonic() + grace
        while (alive := self.pids()) and time.monotonic() < deadline:
            new = alive - seen
            _signal_all(new, signal.SIGTERM)  # forked meanwhile
            _signal_all(new, signal.SIGCONT)
            seen |= alive
            self.reap()
            time.sleep(POLL)
        if not alive:
            return seen, 0
        killed: set[int] = set()
        while alive := self._stop_all():  # frozen, so none can fork while we kill the rest
            _signal_all(alive, signal.SIGKILL)
            killed |= alive
            self._wait_gone(alive)
        return seen | killed, len(killed)

    def _wait_gone(self, pids: Iterable[int]) -> None:
        waiting = set(pids)
        while waiting:
            self.reap()
            waiting = {pid for pid in waiting if _alive(pid)}
            if waiting:
                time.sleep(POLL)


def _make_cgroup() -> Path | None:
    base = cgroup2_root()
    if base is None:
        return None
    path = base / f"agent-passport-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        logger.info("cannot create a cgroup under %s (%s); tracking processes instead", base, exc)
        return None
    if not (path / "cgroup.kill").exists() or not (path / "cgroup.freeze").exists():
        path.rmdir()
        return None
    return path


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = process.children(recursive=True)
    except psutil.Error:
        return []
    return children


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return status != _ZOMBIE
