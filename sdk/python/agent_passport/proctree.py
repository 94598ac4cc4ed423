"""A command and every process it ever starts, owned as one tree that can be stopped whole.

A descendant that double-forks, calls ``setsid`` or changes its process group is still found:

- ``cgroup`` (preferred): the command runs in a cgroup v2 of its own, entered *before* the command
  starts (a ``/bin/sh`` stub writes its own pid to ``cgroup.procs``, then ``exec``s the command),
  so nothing it forks can be outside it. Stopping freezes the cgroup (``cgroup.freeze``: no fork
  can race the enumeration), sends SIGTERM to every member, thaws it, and after the grace period
  writes ``cgroup.kill``. The cgroup is removed by ``close()``.
- ``subreaper`` (fallback, or forced): the supervising process is a child subreaper
  (``prctl(PR_SET_CHILD_SUBREAPER)``), so orphans are re-parented to it instead of init, and the
  tree is every descendant of this process (one pass over /proc), except the children this process
  already had before ``start()`` (and their descendants). Stopping SIGSTOPs everything it finds,
  enumerates again until nothing new appears, then SIGTERMs and SIGCONTs; after the grace period
  the same with SIGKILL, repeated until none is left.

Waiting for the tree to exit polls pidfds (``pidfd_open``), not /proc; every RESCAN seconds the
tree is enumerated again, and a process forked meanwhile gets SIGTERM too.

The supervising process always becomes a subreaper (also with a cgroup), and reaps the zombies
of the tree's orphans. ``pause()``/``resume()`` freeze and thaw the tree (cgroup.freeze, or
SIGSTOP/SIGCONT to each process). Linux only. Not thread-safe: one thread drives the tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
CONTAINMENTS = ("auto", "cgroup", "subreaper")
_DEAD = ("Z", "X")  # states in /proc/<pid>/stat of a process that has exited
POLL = 0.005  # seconds between checks while waiting for a cgroup to freeze or thaw
RESCAN = 0.05  # while waiting for the tree to exit, look for processes forked meanwhile
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
    # mountinfo: "id parent dev ROOT MOUNTPOINT ... - cgroup2 ..."; ROOT is the part of the
    # hierarchy mounted there (not "/" inside a container with a cgroup namespace of its own).
    mount = next((line.split()[3:5] for line in mounts if " - cgroup2 " in line), None)
    path = next((line[3:] for line in own if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    root, mountpoint = mount
    if not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None  # our cgroup is not below what is mounted
    base = Path(mountpoint) / path[len(root.rstrip("/")) :].lstrip("/")
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
        me = os.getpid()
        self._foreign = {pid for pid, (ppid, _) in _process_table().items() if ppid == me}
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
        me, skip = os.getpid(), {*self._foreign, self.pid}
        for pid, (ppid, state) in _process_table().items():
            if ppid == me and state == "Z" and pid not in skip:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

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
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _state) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        pending = [pid for pid in children.get(os.getpid(), []) if pid not in self._foreign]
        while pending:
            pid = pending.pop()
            pending.extend(children.get(pid, []))
            if table[pid][1] not in _DEAD:
                found.add(pid)
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
            stopped = self._stop_all()
            _await_stopped(stopped)
            frozen = len(stopped)
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
        Returns once the tree is empty (zombies left to ``reap()``/``close()``)."""
        seen = self._halt()  # frozen: none can fork or exit between enumeration and signal
        _signal_all(seen, signal.SIGTERM)
        self._unhalt(seen)
        exits = _Exits(seen)
        try:
            alive = self._wait(seen, exits, time.monotonic() + grace)
            sigkilled = 0
            if alive:
                seen |= alive
                sigkilled = self._kill_rest(alive, exits)
        finally:
            exits.close()
        at = time.time()
        self.paused = False
        return StopResult(processes=len(seen), sigkilled=sigkilled, at=at)

    def _halt(self) -> set[int]:
        if self.cgroup is None:
            return self._stop_all()
        self._freeze(True)
        return self._cgroup_pids()

    def _unhalt(self, pids: set[int]) -> None:
        if self.cgroup is None:
            _signal_all(pids, signal.SIGCONT)
        else:
            self._freeze(False)

    def _wait(self, seen: set[int], exits: _Exits, deadline: float) -> set[int]:
        """Wait until the tree is empty or ``deadline``; returns who is left. A process forked
        meanwhile is found by enumerating again (every RESCAN) and gets SIGTERM too."""
        while True:
            exits.wait(max(0.0, min(RESCAN, deadline - time.monotonic())))
            alive = self.pids()
            if not alive:
                return alive
            if new := alive - seen:
                _signal_all(new, signal.SIGTERM)
                seen |= new
                exits.add(new)
            if time.monotonic() >= deadline:
                return alive

    def _kill_rest(self, alive: set[int], exits: _Exits) -> int:
        """SIGKILL what is left (cgroup.kill, which also catches forks; or SIGSTOP everything
        found, SIGKILL it, again until nothing is found); returns how many were killed."""
        if self.cgroup is not None:
            (self.cgroup / "cgroup.kill").write_text("1")
            while remaining := self._cgroup_pids():
                alive |= remaining
                exits.add(remaining)
                exits.wait(RESCAN)
            return len(alive)
        killed: set[int] = set()
        while found := self._stop_all():
            _signal_all(found, signal.SIGKILL)
            killed |= found
            exits.add(found)
            exits.wait(RESCAN)
        return len(killed)


class _Exits:
    """pidfds of processes we wait for: readable once a process has exited, so waiting for
    many costs one poll() instead of rereading /proc."""

    def __init__(self, pids: Iterable[int]) -> None:
        self._poller = select.poll()
        self._fds: dict[int, int] = {}
        self.add(pids)

    def add(self, pids: Iterable[int]) -> None:
        known = set(self._fds.values())
        for pid in pids:
            if pid in known:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            self._fds[fd] = pid
            self._poller.register(fd, select.POLLIN)

    def wait(self, timeout: float) -> None:
        """Until every process waited for has exited, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._fds:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for fd, _event in self._poller.poll(left * 1000):
                self._poller.unregister(fd)
                os.close(fd)
                del self._fds[fd]

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


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


def _process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state letter) of every process, from one read of each
    /proc/<pid>/stat (psutil's children() + status() read them twice and cost ~3x as much)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:  # exited meanwhile
            continue
        fields = data[data.rindex(b")") + 2 :].split(b" ", 2)  # after "pid (comm) "
        table[int(name)] = (int(fields[1]), fields[0].decode())
    return table


def _await_stopped(pids: Iterable[int], timeout: float = 1.0) -> None:
    """SIGSTOP takes effect asynchronously: wait until every process is stopped (or gone), as
    ``_freeze`` waits for the cgroup, so a paused tree is paused when ``pause()`` returns."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if _state(pid) not in (None, "T", "t", *_DEAD)}
        if pending:
            time.sleep(POLL)
    if pending:
        logger.warning("processes %s did not stop within %.1f s", sorted(pending), timeout)


def _state(pid: int) -> str | None:
    """The state letter of a process (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split(b" ", 1)[0].decode()


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
