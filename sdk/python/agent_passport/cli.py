"""Command line: ``python -m agent_passport verify|check|watch|verify-audit|verify-segment|proxy``.

Also ``verify-proof`` (a saved inclusion or consistency proof, offline) and ``audit-check`` (the
agent's kept receipts against the live log).

Exit codes: 0 allowed/valid, 1 denied/refused, 2 usage or input error; ``proxy``: 0 when
stopped by SIGINT/SIGTERM, 70 stopped by a kill of its passport, 71 not started (revoked
already), 73 stopped at the passport's expiry (the codes of ``run``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tqdm import tqdm

from agent_passport import proofs
from agent_passport.egress import add_proxy_options, cmd_proxy
from agent_passport.errors import GuardError, PassportError
from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.logcheck import read_heads, verify_export
from agent_passport.protocol import RevocationChannel
from agent_passport.receipts import (
    ReceiptStore,
    RegistryError,
    check_log,
    default_receipts_path,
    published_head,
)
from agent_passport.reporter import default_spill_path
from agent_passport.revocations import RevocationState
from agent_passport.rules import decide
from agent_passport.segment import SegmentError, read_records, verify_segment
from agent_passport.session import (
    REDIS_ENV,
    REGISTRY_ENV,
    TOKEN_ENV,
    CLIError,
    add_agent_options,
    key_source,
    read_token,
)
from agent_passport.supervisor import add_run_options, cmd_run
from agent_passport.tokens import verify_token
from agent_passport.watcher import RevocationWatcher, WatcherStatus


def _read_token(value: str) -> str:
    if value == "-":
        return sys.stdin.read().strip()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text().strip()
        except OSError as exc:
            raise CLIError(f"cannot read token file {value[1:]}: {exc.strerror}") from exc
    return value.strip()


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    """Where the registry's public keys come from (read by ``_keys``)."""
    parser.add_argument(
        "--registry",
        default=os.environ.get("AGENT_PASSPORT_REGISTRY"),
        help="registry base URL (JWKS is fetched from it)",
    )
    parser.add_argument("--jwks-file", help="pinned JWKS document instead of fetching it")


def _add_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", help="the passport token, '-' for stdin, or @FILE")
    _add_key_options(parser)
    parser.add_argument(
        "--issuer",
        default=os.environ.get("AGENT_PASSPORT_ISSUER"),
        help="expected issuer (default: --registry)",
    )
    parser.add_argument("--audience", default="agent-passport")


def _issuer(args: argparse.Namespace) -> str:
    issuer: str | None = args.issuer or args.registry
    if not issuer:
        raise CLIError("give --issuer (or --registry)")
    return issuer


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    return verify_token(
        _read_token(args.token), key_source(args), issuer=_issuer(args), audience=args.audience
    )


def cmd_verify(args: argparse.Namespace) -> int:
    claims = _verify(args)
    print(json.dumps(claims, indent=2, sort_keys=True))
    remaining = claims["exp"] - time.time()
    print(
        f"valid: passport {claims['jti']} for agent {claims['sub']}, expires in {remaining:.0f} s",
        file=sys.stderr,
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.redis:
        guard = Guard(
            _read_token(args.token),
            keys=key_source(args),
            issuer=_issuer(args),
            audience=args.audience,
            redis_url=args.redis,
            jurisdiction=args.jurisdiction,
        )
        try:
            decision = guard.check(args.action, args.resource)
        except GuardError as exc:
            print(f"refused: {exc}")
            return 1
        finally:
            guard.close()
    else:
        decision = decide(_verify(args), args.action, args.resource, args.jurisdiction)
        if not decision.allowed:
            print(f"denied: {decision.reason}")
            return 1
        print("(scope only: give --redis URL to check revocations too)", file=sys.stderr)
    print(f"allowed: {decision.reason}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Print the active revocations whenever they change, and the watcher's status whenever
    it changes (checked every ``--status-interval`` seconds)."""
    if not args.status_interval > 0:
        raise CLIError("--status-interval must be a positive number of seconds")
    watcher = RevocationWatcher(args.redis, channel=RevocationChannel(args.prefix))

    def show(state: RevocationState) -> None:
        print(f"epoch {state.epoch}: {len(state.active)} active revocation(s)", flush=True)
        for entry in sorted(state.active.values(), key=lambda e: e.epoch):
            print(f"  - {entry.describe()}", flush=True)

    watcher.add_listener(show)
    with watcher:
        if not watcher.wait_until_ready(args.timeout):
            print(
                f"no revocation snapshot at {args.redis} (prefix {args.prefix!r}) yet; waiting…",
                file=sys.stderr,
            )
        else:
            show(watcher.state)
        shown: tuple[object, ...] = ()
        try:
            while True:
                status = watcher.status()
                if (status.state, status.last_error) != shown:
                    print(_describe_status(status), flush=True)
                    shown = (status.state, status.last_error)
                time.sleep(args.status_interval)
        except KeyboardInterrupt:
            return 0


def _describe_status(status: WatcherStatus) -> str:
    """``status: valid (confirmed current 0.1 s ago)``, or the state and why."""
    if status.last_error is None:
        return f"status: {status.state.value} (confirmed current {status.staleness_s:.1f} s ago)"
    return f"status: {status.state.value}: {status.last_error}"


def cmd_verify_audit(args: argparse.Namespace) -> int:
    """Exit 0: intact and every event covered by a signed head; 1: tampered, or NOT VERIFIED
    (no head covers the events, or some are not yet covered); 2: unreadable input."""
    keys = _keys(args)
    try:
        witness = read_witness(args.witness) if args.witness else []
        with tqdm(
            desc="verifying", unit=" events", file=sys.stderr, disable=not sys.stderr.isatty()
        ) as bar:
            report = verify_export(args.export, keys, witness=witness, progress=bar)
    except ValueError as exc:  # ExportError, or a witness file that is not heads
        raise CLIError(str(exc)) from exc
    summary = report.counts()
    if report.problems:
        for problem in report.problems:
            print(f"TAMPERED: {problem}")
        return 1
    if report.events and not report.heads:
        print(f"NOT VERIFIED: no signed tree head in the export covers its events ({summary})")
        return 1
    if report.unsigned_events:
        print(
            f"NOT VERIFIED: {report.unsigned_events} event(s) not yet covered by a signed head "
            f"({summary})"
        )
        return 1
    print(f"intact: {summary}")
    return 0


def read_witness(path: str) -> list[dict[str, Any]]:
    """A witness's heads file (one head document per line)."""
    try:
        with open(path, encoding="utf-8") as lines:
            return read_heads(lines, path)
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path} is not UTF-8 text ({exc.reason})") from exc


def _keys(args: argparse.Namespace) -> dict[str, Ed25519PublicKey]:
    """The registry's public keys from --jwks-file or its JWKS endpoint (CLIError if neither)."""
    keys = key_source(args)
    if isinstance(keys, JWKSClient):
        try:
            keys.refresh()
        except (requests.RequestException, ValueError) as exc:
            raise CLIError(f"cannot fetch the registry's JWKS: {exc}") from exc
        return dict(keys.keys)
    return keys


def cmd_verify_segment(args: argparse.Namespace) -> int:
    keys = _keys(args)
    try:
        with open(args.segment, encoding="utf-8") as lines:
            report = verify_segment(
                read_records(lines, args.segment), keys, progress=sys.stderr.isatty()
            )
    except OSError as exc:
        raise CLIError(f"cannot read {args.segment}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CLIError(f"{args.segment} is not UTF-8 text ({exc.reason})") from exc
    except SegmentError as exc:
        print(f"NOT VERIFIED: {exc}")
        return 1
    if report.ok:
        print(f"intact: {report.summary()}")
        return 0
    for problem in report.problems:
        print(f"TAMPERED: {problem}")
    return 1


def cmd_verify_proof(args: argparse.Namespace) -> int:
    """Verify a saved answer of ``GET /api/v1/actions/{id}/proof`` or of
    ``GET /api/v1/audit/consistency`` offline, with nothing but the registry's JWKS."""
    try:
        document = json.loads(Path(args.proof).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CLIError(f"cannot read {args.proof}: {exc.strerror}") from exc
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CLIError(f"{args.proof} is not a JSON document ({exc})") from exc
    keys = _keys(args)
    try:
        outcome = proofs.verify_proof_document(document, keys)
    except proofs.UnusableProof as exc:
        raise CLIError(f"{args.proof}: {exc}") from exc
    if outcome.problem is not None:
        print(f"FAILED: {outcome.problem}")
        return 1
    print(f"verified: {outcome.summary}")
    return 0


def cmd_audit_check(args: argparse.Namespace) -> int:
    """check_log for this agent's own passport: every kept receipt against the live log."""
    if not args.registry:
        raise CLIError(f"give --registry URL (or set {REGISTRY_ENV})")
    token = read_token(args)
    path = (
        Path(args.receipts) if args.receipts else default_receipts_path(default_spill_path(token))
    )
    try:
        store = ReceiptStore.load(path)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    keys = _keys(args)
    try:
        if args.redis and (head := published_head(args.redis, token, keys)) is not None:
            store.add_head(head)  # a copy the registry cannot take back from this agent
        report = check_log(args.registry, token, keys, store)
    except RegistryError as exc:
        raise CLIError(str(exc)) from exc
    try:
        store.save(path)
    except OSError as exc:
        raise CLIError(f"cannot keep the receipts in {path}: {exc.strerror}") from exc
    if not report.ok:
        for problem in report.problems:
            print(f"LOG PROBLEM: {problem}")
        return 1
    print(f"log consistent: {report.summary()}")
    return 0


def cmd_mcp_proxy(args: argparse.Namespace) -> int:
    """The MCP gateway needs the optional ``mcp`` package: imported only when it is used."""
    try:
        from agent_passport import mcp_gateway
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise CLIError(
            "the MCP gateway needs the mcp package: pip install 'agent-passport[mcp]'"
        ) from exc
    return mcp_gateway.cmd_mcp_proxy(args)


def _add_mcp_proxy(commands: Any) -> None:
    mcp = commands.add_parser(
        "mcp-proxy",
        help="MCP gateway: relay an MCP server over stdio, every tool call checked",
        description="Launch SERVER_COMMAND as an MCP server (stdio) and relay the MCP client on "
        "this process's stdin/stdout to it: tools/call checked as tool:<server-name>:<tool>, "
        "tools/list filtered, a kill closes the session. Exit codes: 0 the client ended the "
        "session, 1 the passport was revoked or is not valid, 2 bad input, 3 the server ended it.",
    )
    add_agent_options(mcp)
    mcp.add_argument(
        "--server-name",
        required=True,
        help="the server's name in rules: calls are checked as tool:<server-name>:<tool>",
    )
    mcp.add_argument(
        "--call-timeout",
        type=float,
        help="seconds the server may take to answer a request (default 60)",
    )
    mcp.add_argument(
        "--max-message-bytes",
        type=int,
        help="largest JSON-RPC message relayed either way (default 8 MiB)",
    )
    mcp.add_argument(
        "--max-in-flight",
        type=int,
        help="requests that may wait for the server at once (default 64)",
    )
    mcp.add_argument(
        "--grace",
        type=float,
        help="seconds between closing the server's stdin, SIGTERM and SIGKILL (default 2)",
    )
    mcp.add_argument(
        "server_command",
        nargs=argparse.REMAINDER,
        metavar="-- SERVER_COMMAND [ARGS...]",
        help="the MCP server to launch (stdio transport)",
    )
    mcp.set_defaults(handler=cmd_mcp_proxy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-passport", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser("verify", help="verify a passport offline and print its claims")
    _add_token_options(verify)
    verify.set_defaults(handler=cmd_verify)

    check = commands.add_parser("check", help="would this action be allowed?")
    _add_token_options(check)
    check.add_argument("action", help="domain:action[:resource], e.g. net:connect:1.2.3.4:22")
    check.add_argument("--resource")
    check.add_argument("--jurisdiction", help="region where the action happens, e.g. DE")
    check.add_argument("--redis", help="also check live revocations through this Redis")
    check.set_defaults(handler=cmd_check)

    watch = commands.add_parser("watch", help="follow revocations live")
    watch.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    watch.add_argument(
        "--prefix",
        required=True,
        help="Redis key prefix of the channel: the registry's REVOCATION_REDIS_PREFIX "
        "(its REDIS_NAMESPACE unless set; also in every passport's rev claim)",
    )
    watch.add_argument("--timeout", type=float, default=5.0)
    watch.add_argument(
        "--status-interval",
        type=float,
        default=1.0,
        help="seconds between status checks; a changed status is printed",
    )
    watch.set_defaults(handler=cmd_watch)

    verify_audit = commands.add_parser(
        "verify-audit", help="verify an action-log export (JSONL) offline with the JWKS"
    )
    verify_audit.add_argument("export", help="file from GET /api/v1/actions/export")
    verify_audit.add_argument(
        "--witness", help="a witness's heads file (one head per line) to check the export against"
    )
    _add_key_options(verify_audit)
    verify_audit.set_defaults(handler=cmd_verify_audit)

    verify_segment = commands.add_parser(
        "verify-segment", help="verify an archived action-log segment offline with the JWKS"
    )
    verify_segment.add_argument("segment", help="file written by manage.py archive_audit")
    _add_key_options(verify_segment)
    verify_segment.add_argument("--jwks", dest="jwks_file", help="the same as --jwks-file")
    verify_segment.set_defaults(handler=cmd_verify_segment)

    verify_proof = commands.add_parser(
        "verify-proof",
        help="verify a saved inclusion or consistency proof (JSON) offline with the JWKS",
        description="FILE: the answer of GET /api/v1/actions/{id}/proof or of "
        "GET /api/v1/audit/consistency?from=N&to=M. Exit codes: 0 verified, 1 the proof "
        "fails (what failed is named), 2 unusable input.",
    )
    verify_proof.add_argument("proof", metavar="FILE", help="the saved JSON answer")
    verify_proof.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV),
        help="registry base URL (its JWKS is fetched)",
    )
    verify_proof.add_argument(
        "--jwks-file", "--jwks", dest="jwks_file", help="pinned JWKS document instead"
    )
    verify_proof.set_defaults(handler=cmd_verify_proof)

    audit_check = commands.add_parser(
        "audit-check",
        help="check the live log against this agent's kept receipts (truncation, rewrite, "
        "missing or changed events, overdue promises)",
        description="Exit codes: 0 consistent, 1 a problem with the log (each named), "
        "2 usage error or the registry unreachable.",
    )
    audit_check.add_argument(
        "--token-file",
        help=f"file holding the passport token (default: the {TOKEN_ENV} environment variable)",
    )
    audit_check.add_argument(
        "--registry", default=os.environ.get(REGISTRY_ENV), help="registry base URL"
    )
    audit_check.add_argument("--jwks-file", help="pinned JWKS document instead of fetching it")
    audit_check.add_argument(
        "--receipts",
        help="the kept receipts (default: next to the reporter's spill file for this passport)",
    )
    audit_check.add_argument(
        "--redis",
        default=os.environ.get(REDIS_ENV),
        help="also check the newest head the registry published in this Redis (its redis: "
        f"witness, next to the revocation channel; default: the {REDIS_ENV} environment variable)",
    )
    audit_check.set_defaults(handler=cmd_audit_check)

    run = commands.add_parser(
        "run",
        help="run a command under the passport: its whole process tree is stopped on a kill",
        description="Exit codes: the command's own; 2 usage; 70 killed by the registry; "
        "71 refused to start; 72 revocation state stale; 73 passport expired; 128+N signal N.",
    )
    add_run_options(run)
    run.set_defaults(handler=cmd_run)

    proxy = commands.add_parser(
        "proxy", help="egress proxy: every connection checked as net:connect:HOST:PORT"
    )
    add_agent_options(proxy)
    add_proxy_options(proxy)
    proxy.set_defaults(handler=cmd_proxy)

    _add_mcp_proxy(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except PassportError as exc:
        print(f"invalid passport ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"error: Redis unreachable: {exc}", file=sys.stderr)
        return 2
