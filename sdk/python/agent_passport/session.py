"""An agent's passport enforced outside its own code: the verified passport (a Guard), its
revocation watcher and its action reporter, opened from command-line options.

The enforcement points that do not depend on the agent's cooperation — the supervisor
(``agent-passport run``), the egress proxy (``agent-passport proxy``) and the MCP gateway
(``agent-passport mcp-proxy``) — each open one AgentSession with the same options, so they
read the passport, follow the revocation channel and report to the action log the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.reporter import ActionReporter
from agent_passport.tokens import keys_from_jwks

# Exit codes shared by the enforcement points (``run``, ``proxy``, ``mcp-proxy``); 2 is a usage
# or input error everywhere, ``run`` otherwise passes on its command's own code.
EXIT_KILLED = 70  # stopped by a kill of the passport, its agent, its fleet or every agent
EXIT_REFUSED = 71  # not started: the passport is revoked, expired, not yet valid, or state stale
EXIT_STALE = 72  # stopped because the revocation state could not be confirmed current
EXIT_EXPIRED = 73  # stopped when the passport expired

TOKEN_ENV = "AGENT_PASSPORT_TOKEN"  # noqa: S105 (the variable's name, not a secret)
REGISTRY_ENV = "AGENT_PASSPORT_REGISTRY"
ISSUER_ENV = "AGENT_PASSPORT_ISSUER"
REDIS_ENV = "AGENT_PASSPORT_REDIS"
JURISDICTION_ENV = "AGENT_PASSPORT_JURISDICTION"


def set_on_signals(event: threading.Event, *signums: int) -> None:
    """Set ``event`` when one of ``signums`` arrives. The handler runs on the main thread between
    two bytecodes, possibly while that thread holds the Event's lock inside ``wait()`` or
    ``set()``; setting it there could deadlock, so a short-lived thread sets it instead."""
    for signum in signums:
        signal.signal(
            signum,
            lambda *_: threading.Thread(target=event.set, name="signal", daemon=True).start(),
        )


class CLIError(Exception):
    """A problem with a command's input; printed without a traceback, exit code 2."""


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """Options every enforcement point takes (read by ``open_session``)."""
    parser.add_argument(
        "--token-file",
        help=f"file holding the passport token (default: the {TOKEN_ENV} environment variable)",
    )
    parser.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV),
        help=f"registry base URL: its JWKS, its action log (default: ${REGISTRY_ENV})",
    )
    parser.add_argument(
        "--issuer",
        default=os.environ.get(ISSUER_ENV),
        help="expected issuer of the passport (default: --registry)",
    )
    parser.add_argument("--jwks-file", help="pinned JWKS document instead of fetching it")
    parser.add_argument(
        "--redis",
        default=os.environ.get(REDIS_ENV),
        help=f"Redis URL of the revocation channel (default: ${REDIS_ENV})",
    )
    parser.add_argument(
        "--jurisdiction",
        default=os.environ.get(JURISDICTION_ENV),
        help="region where the agent runs, e.g. DE (checked against the passport)",
    )
    parser.add_argument(
        "--max-staleness",
        type=float,
        default=2.0,
        help="seconds without a confirmed-current revocation state before checks refuse",
    )


def read_token(args: argparse.Namespace) -> str:
    """The passport token from ``--token-file`` or the environment; CLIError if neither."""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read token file {args.token_file}: {exc}") from exc
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CLIError(f"no passport: give --token-file FILE or set {TOKEN_ENV}")
    return token


def key_source(args: argparse.Namespace) -> JWKSClient | dict[str, Ed25519PublicKey]:
    """Pinned keys from ``--jwks-file``, else the registry's JWKS endpoint."""
    if getattr(args, "jwks_file", None):
        try:
            return keys_from_jwks(json.loads(Path(args.jwks_file).read_text()))
        except (OSError, ValueError, RecursionError) as exc:
            raise CLIError(f"cannot read JWKS file {args.jwks_file}: {exc}") from exc
    if args.registry:
        return JWKSClient(args.registry.rstrip("/") + "/.well-known/jwks.json")
    raise CLIError("give --registry URL (to fetch its JWKS) or --jwks-file FILE")


@dataclass
class AgentSession:
    """One passport's guard (with the watcher it started) and reporter; ``close()`` delivers
    what was recorded (or spills it to disk) and stops both."""

    token: str
    registry: str
    guard: Guard
    reporter: ActionReporter

    def close(self, flush_timeout: float = 5.0) -> None:
        self.reporter.flush(flush_timeout)
        self.reporter.close()
        self.guard.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_session(args: argparse.Namespace, *, ready_timeout: float = 5.0) -> AgentSession:
    """Verify the passport (PassportError if it is not valid) and start following revocations
    and reporting actions. The guard refuses until the revocation state is current."""
    if not args.registry:
        raise CLIError(f"give --registry URL (or set {REGISTRY_ENV})")
    if not args.redis:
        raise CLIError(f"give --redis URL of the revocation channel (or set {REDIS_ENV})")
    if not args.max_staleness > 0:
        raise CLIError("--max-staleness must be a positive number of seconds")
    token = read_token(args)
    registry = args.registry.rstrip("/")
    reporter = ActionReporter(f"{registry}/api/v1/actions", token)
    try:
        guard = Guard(
            token,
            keys=key_source(args),
            issuer=args.issuer or registry,
            redis_url=args.redis,
            jurisdiction=args.jurisdiction,
            reporter=reporter,
            max_staleness=args.max_staleness,
            ready_timeout=ready_timeout,
        )
    except BaseException:
        reporter.close()
        raise
    reporter.start()
    return AgentSession(token=token, registry=registry, guard=guard, reporter=reporter)
