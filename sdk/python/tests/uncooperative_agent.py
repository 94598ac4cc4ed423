"""An agent that does not cooperate: it imports nothing of agent_passport and hides its children.

It starts a "miner" that double-forks and calls ``setsid`` (so it is neither the agent's child
nor in its session or process group), a child that moves to a process group of its own,
``--stubborn`` children (default 1) that ignore SIGTERM, and ``--extra`` plain children
(``--setsid-extra`` of them in new sessions). Every process appends ``<role> <pid>`` to
``--pids FILE``; the agent writes ``ready <pid>`` last. Then it sleeps until killed, or exits
with ``--exit CODE`` after ``--exit-after`` seconds (leaving its children behind).
"""

import argparse
import os
import signal
import sys
import time


def note(path: str, role: str) -> None:
    with open(path, "a") as pids:
        pids.write(f"{role} {os.getpid()}\n")


def child(path: str, role: str, setup) -> None:
    """Fork a child that runs ``setup`` and then sleeps forever; the parent returns."""
    if os.fork() == 0:
        try:
            setup()
            note(path, role)
            while True:
                time.sleep(0.05)
        finally:
            os._exit(0)


def double_forked_miner(path: str) -> None:
    if os.fork() == 0:  # the intermediate parent: new session, fork, exit
        os.setsid()
        if os.fork() == 0:
            note(path, "miner")
            total = 0
            while True:  # "mining": a little work, then a short nap (the machine is shared)
                total += sum(range(1000))
                time.sleep(0.01)
        os._exit(0)
    os.wait()  # the intermediate exits at once: the miner is orphaned


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pids", required=True)
    parser.add_argument("--stubborn", type=int, default=1, help="children ignoring SIGTERM")
    parser.add_argument("--extra", type=int, default=0)
    parser.add_argument("--setsid-extra", type=int, default=0)
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--exit-after", type=float, default=0.0)
    args = parser.parse_args()
    open(args.pids, "a").close()  # exists before any child writes to it

    double_forked_miner(args.pids)
    child(args.pids, "own-group", lambda: os.setpgid(0, 0))
    for _ in range(args.stubborn):
        child(args.pids, "stubborn", lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    for number in range(args.extra):
        setup = os.setsid if number < args.setsid_extra else (lambda: None)
        child(args.pids, "extra", setup)
    expected = 2 + args.stubborn + args.extra
    while True:  # ready once every child has written its line
        with open(args.pids) as pids:
            if len(pids.read().splitlines()) >= expected:
                break
        time.sleep(0.005)
    note(args.pids, "ready")
    if args.exit is not None:
        time.sleep(args.exit_after)
        return args.exit
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
