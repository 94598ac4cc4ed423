"""Writes the conformance vectors (conformance/*.json) from the Python SDK.

Run ``.venv/bin/python conformance/generate.py`` (the SDK installed). The output is
deterministic (fixed keys, seeds and clocks; Ed25519 signatures are deterministic), so
regenerating must reproduce the committed files byte for byte:
sdk/python/tests/test_conformance.py checks it. The file format of each kind is described in
conformance/README.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent_passport.audit import (  # noqa: E402
    EVENT_FIELDS,
    GENESIS,
    b64url,
    canonical,
    checkpoint_payload,
    event_hash,
    verify_chain,
    verify_checkpoint,
)
from agent_passport.errors import PassportError, RuleError  # noqa: E402
from agent_passport.merkle import (  # noqa: E402
    HashSource,
    head_id,
    head_payload,
    leaf_hash,
    plan_consistency,
    plan_inclusion,
    promise_payload,
    tree_root,
    verify_consistency,
    verify_head,
    verify_head_chain,
    verify_inclusion,
    verify_promise,
)
from agent_passport.protocol import TOKEN_TYPE, RevocationChannel  # noqa: E402
from agent_passport.regions import (  # noqa: E402
    COUNTRIES,
    EEA,
    EFTA,
    EU,
    normalize_region,
    region_within,
)
from agent_passport.revocations import (  # noqa: E402
    Follower,
    RevocationEntry,
    RevocationState,
    SnapshotUnavailable,
    follow_poll,
    load_snapshot,
    revocations_digest,
)
from agent_passport.rules import Policy, parse_jurisdiction, parse_rule, parse_scope  # noqa: E402
from agent_passport.tokens import keys_from_jwks, public_key_to_jwk, verify_token  # noqa: E402

FORMAT = 1
Document = dict[str, Any]


def _document(kind: str, description: str, vectors: list[Document], **extra: Any) -> Document:
    return {"kind": kind, "format": FORMAT, "description": description, **extra, "vectors": vectors}


def _error_kind(call: Callable[[], object]) -> str | None:
    """``None`` if ``call`` succeeds, else the RuleError kind (``rule`` or ``region``)."""
    try:
        call()
    except RuleError as exc:
        return exc.kind
    return None


# -- rule grammar -----------------------------------------------------------------------------
VALID_RULES = [
    "tool:shell:exec",
    "tool:shell",
    "!tool:shell",
    "net:connect:api.example.com:443",
    "fs:write:/tmp/**",
    "fs:read:/data/*/reports/*.csv",
    "*:*",
    "*:read",
    "fs:*:/srv/**",
    "!fs:write:/etc/**",
    "gpu:use:a100",
    "data.v2:read_all:x",
    "a-b.c_d:e:f",
    "fs:write:**",
    "fs:write:*",
    "fs:write:a***b",
    "fs:read:" + "x" * 500,
    "net:connect:[::1]:8080",
    "fs:read:ünïcödé/*",
    "fs:read:" + "😀" * 504,  # lengths count code points (not UTF-16 units)
    "tool:shell:a\ufeffb",  # U+FEFF is not whitespace (str.isspace)
]
INVALID_RULES = [
    "",
    "tool",
    "!tool",
    "Tool:shell",
    "tool:Shell",
    "to*l:shell",
    "tool:sh*",
    "-tool:shell",
    "_tool:shell",
    ":shell",
    "tool:",
    "tool::x",
    "tool:shell:",
    "!!tool:shell",
    "tool:shell:a b",
    "tool:shell:a\tb",
    "tool:shell:a\x00b",
    "tool:shell:a\x7fb",
    " tool:shell",
    "tool:shell\n",
    "fs:read:" + "x" * 505,
    "fs:read:" + "😀" * 505,
    "tool:shell:a\x85b",  # U+0085 (NEL) is whitespace (str.isspace)
    "tool:shell:a\u3000b",
    "tool:shell:a\u2028b",
    "**:read",
    "tool:**",
]


def _parsed(text: str) -> Document:
    rule = parse_rule(text)
    resource = rule.resource.text if rule.resource is not None else None
    return {"deny": rule.deny, "domain": rule.domain, "action": rule.action, "resource": resource}


def rules_document() -> Document:
    vectors: list[Document] = []
    for text in VALID_RULES:
        vectors.append({"input": "rule", "value": text, "valid": True, "parsed": _parsed(text)})
    for text in INVALID_RULES:
        kind = _error_kind(lambda text=text: parse_rule(text))
        vectors.append({"input": "rule", "value": text, "valid": False, "error": kind})
    scopes: list[object] = [
        [],
        ["tool:shell"] * 256,
        ["tool:shell"] * 257,
        "tool:shell",
        ["tool:shell", 7],
        ["tool:shell", None],
        7,
    ]
    for value in scopes:
        kind = _error_kind(lambda value=value: parse_scope(value))  # type: ignore[arg-type]
        vectors.append(_validity("scope", value, kind))
    jurisdictions: list[object] = [
        ["DE"],
        ["de", " fr "],
        ["US-CA", "EU", "GLOBAL"],
        ["DE", "de"],
        [],
        ["XX"],
        "DE",
        [7],
        [f"DE-{i}" for i in range(64)],
        [f"DE-{i}" for i in range(65)],
    ]
    for value in jurisdictions:
        kind = _error_kind(lambda value=value: parse_jurisdiction(value))  # type: ignore[arg-type]
        vector = _validity("jurisdiction", value, kind)
        if kind is None:
            vector["normalized"] = list(parse_jurisdiction(value))  # type: ignore[arg-type]
        vectors.append(vector)
    return _document(
        "rules",
        "Scope rule grammar: one rule, a whole scope, a jurisdiction list -> valid or the error.",
        vectors,
    )


def _validity(name: str, value: object, kind: str | None) -> Document:
    if kind is None:
        return {"input": name, "value": value, "valid": True}
    return {"input": name, "value": value, "valid": False, "error": kind}


# -- decisions --------------------------------------------------------------------------------
Check = tuple[str, str | None, str | None]
PASSPORTS: list[tuple[list[str], list[str], list[Check]]] = [
    (
        [
            "tool:shell:exec",
            "net:connect:api.example.com:443",
            "fs:write:/tmp/**",
            "!fs:write:/tmp/secret/**",
        ],
        ["EU"],
        [
            ("tool:shell:exec", None, "DE"),
            ("tool:shell", "exec", "DE"),
            ("tool:shell:ls", None, "DE"),
            ("tool:shell", None, "DE"),
            ("net:connect:api.example.com:443", None, "FR"),
            ("net:connect:api.example.com:80", None, "FR"),
            ("fs:write:/tmp/a/b/c", None, "DE"),
            ("fs:write", "/tmp/x", "de"),  # noqa: S108 (a resource, not a file we use)
            ("fs:write:/tmp/secret/key", None, "DE"),
            ("fs:write:/tmp", None, "DE"),
            ("fs:write:/tmp/", None, "DE"),
            ("tool:shell:exec", None, "US"),
            ("tool:shell:exec", None, "CH"),
            ("tool:shell:exec", None, "DE-BY"),
            ("tool:shell:exec", None, "EEA"),
            ("tool:shell:exec", None, "EU"),
            ("tool:shell:exec", None, None),
            ("tool:shell:exec", None, "XX"),
            ("tool:shell:exec", None, "ZZ-1"),
            ("Tool:shell:exec", None, "DE"),
            ("tool", None, "DE"),
            ("tool:shell:exec", "exec", "DE"),
            ("gpu:use", None, "DE"),
        ],
    ),
    (
        ["*:read", "!net:*", "fs:*:/home/*/notes/*.txt", "gpu:use"],
        ["GLOBAL"],
        [
            ("fs:read:/etc/passwd", None, None),
            ("db:read", None, "JP"),
            ("net:read", None, "JP"),
            ("net:connect:x", None, "JP"),
            ("fs:write:/home/ann/notes/a.txt", None, "US-CA"),
            ("fs:write:/home/ann/x/notes/a.txt", None, "US-CA"),
            ("fs:delete:/home/ann/notes/.txt", None, "BR"),
            ("fs:delete:/home/ann/notes/a.txt/b.txt", None, "BR"),
            ("gpu:use", None, None),
            ("gpu:use:a100", None, "GLOBAL"),
            ("gpu:use", "", "DE"),
        ],
    ),
    (
        ["fs:read:**", "!fs:read:**/.env", "fs:write:/srv/*/*.log", "tool:shell:a***b"],
        ["US-CA", "DE"],
        [
            ("fs:read:/srv/app/.env", None, "DE"),
            ("fs:read:.env", None, "DE"),
            ("fs:read:/srv/app/env", None, "DE"),
            ("fs:read", None, "DE"),
            ("fs:read:/x", None, "US-CA"),
            ("fs:read:/x", None, "US"),
            ("fs:read:/x", None, "US-NY"),
            ("fs:read:/x", None, "de-by"),
            ("fs:write:/srv/app/a.log", None, "DE"),
            ("fs:write:/srv/app/sub/a.log", None, "DE"),
            ("fs:write:/srv//a.log", None, "DE"),
            ("tool:shell:ab", None, "DE"),
            ("tool:shell:a/x/b", None, "DE"),
            ("fs:read:" + "a" * 1000, None, "DE"),
            ("fs:read:" + "a" * 1001, None, "DE"),
            ("fs:read:" + "😀" * 1000, None, "DE"),
            ("fs:read:" + "😀" * 1001, None, "DE"),
        ],
    ),
    (
        ["*:*", "!*:*:*secret*"],
        ["EEA", "EFTA"],
        [
            ("any:thing", None, "NO"),
            ("any:thing:public", None, "CH"),
            ("any:thing:top-secret-plan", None, "IS"),
            ("any:thing:a/secret/b", None, "IS"),
            ("any:thing:x", None, "US"),
            ("any:thing:x", None, "EU"),
        ],
    ),
]


def decisions_document() -> Document:
    vectors: list[Document] = []
    for scope, jurisdiction, checks in PASSPORTS:
        policy = Policy(scope, jurisdiction)
        for action, resource, region in checks:
            decision = policy.decide(action, resource, region)
            vectors.append(
                {
                    "scope": scope,
                    "jurisdiction": jurisdiction,
                    "action": action,
                    "resource": resource,
                    "region": region,
                    "allowed": decision.allowed,
                    "rule": decision.rule,
                }
            )
    return _document(
        "decisions",
        "Passport scope + jurisdiction, then an action, resource and region -> allowed or "
        "denied, and the deciding rule (null when no rule decided).",
        vectors,
    )


# -- regions ----------------------------------------------------------------------------------
REGION_CODES = [
    "DE",
    "de",
    " de ",
    "US-CA",
    "us-ca",
    "GB-ENG",
    "FR-75",
    "EU",
    "eu",
    "EEA",
    "EFTA",
    "GLOBAL",
    "global",
    "\tde\n",
    "DE\x1f",
    "\x0bFR\x0c",
    "XX",
    "ZZ-1",
    "D",
    "DEU",
    "US-",
    "US-ABCD",
    "US_CA",
    "",
    "ß",
    "DE\u00a0",
    "UK",
]
CONTAINMENT = [
    ("DE", "DE"),
    ("DE", "EU"),
    ("DE", "EEA"),
    ("DE", "EFTA"),
    ("DE", "GLOBAL"),
    ("DE-BY", "DE"),
    ("DE-BY", "EU"),
    ("DE-BY", "DE-BY"),
    ("DE-BY", "DE-BE"),
    ("DE", "DE-BY"),
    ("EU", "EEA"),
    ("EEA", "EU"),
    ("EU", "GLOBAL"),
    ("EFTA", "EEA"),
    ("NO", "EEA"),
    ("CH", "EEA"),
    ("CH", "EFTA"),
    ("NO", "EU"),
    ("GLOBAL", "EU"),
    ("GLOBAL", "GLOBAL"),
    ("US-CA", "US"),
    ("US", "US-CA"),
    ("US-CA", "GLOBAL"),
    ("GB", "EU"),
    ("EU", "DE"),
]


def regions_document() -> Document:
    vectors: list[Document] = []
    for code in REGION_CODES:
        try:
            vectors.append(
                {"test": "normalize", "code": code, "normalized": normalize_region(code)}
            )
        except RuleError as exc:
            vectors.append({"test": "normalize", "code": code, "error": exc.kind})
    for inner, outer in CONTAINMENT:
        within = region_within(inner, outer)
        vectors.append({"test": "within", "inner": inner, "outer": outer, "within": within})
    tables = {
        "countries": sorted(COUNTRIES),
        "EU": sorted(EU),
        "EEA": sorted(EEA),
        "EFTA": sorted(EFTA),
    }
    return _document(
        "regions",
        "Region codes: normalization (or the error) and containment of one region in another.",
        vectors,
        tables=tables,
    )


# -- revocations digest -----------------------------------------------------------------------
def digest_document() -> Document:
    id_sets = [[], [1], [3, 1, 2], [10, 9, 100], [2**53 - 1, 0], list(range(1, 21))]
    vectors = [{"ids": ids, "digest": revocations_digest(ids)} for ids in id_sets]
    return _document(
        "digest",
        "revocations_digest: SHA-256 hex of the active revocation ids, ascending, decimal, "
        "joined by ','.",
        vectors,
    )


# -- token verification -----------------------------------------------------------------------
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z, the fixed clock of every token vector
ISSUER = "https://registry.example"
AUDIENCE = "agent-passport"


def _private_key(name: str) -> Ed25519PrivateKey:
    """A fixed key: its 32-byte seed is SHA-256 of its name."""
    seed = hashlib.sha256(f"agent-passport conformance {name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


SIGNING_KEY = _private_key("key-1")
UNPUBLISHED_KEY = _private_key("key-2")
PRIVATE_JWK_KEY = _private_key("key-3")


def _jwks() -> Document:
    """conf-1 is usable; conf-3 carries private material ("d") and the RSA key is not Ed25519:
    a verifier must ignore both."""
    private_jwk = {
        **public_key_to_jwk("conf-3", PRIVATE_JWK_KEY.public_key()),
        "d": b64url(PRIVATE_JWK_KEY.private_bytes_raw()),
    }
    rsa = {"kty": "RSA", "kid": "conf-rsa", "alg": "RS256", "n": "sXch", "e": "AQAB"}
    return {"keys": [public_key_to_jwk("conf-1", SIGNING_KEY.public_key()), private_jwk, rsa]}


def _claims(**changes: Any) -> Document:
    """Good claims at NOW; a change to ``DROP`` removes the claim."""
    claims: Document = {
        "iss": ISSUER,
        "sub": "3f0c6a52-8a55-4d7e-9a31-0c6f1b2d4e5f",
        "aud": AUDIENCE,
        "jti": "9b1d2c3e-4f50-4a6b-8c7d-e8f9a0b1c2d3",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 3600,
        "scope": ["fs:read:/workspace/**", "!fs:read:/workspace/.env", "tool:python"],
        "jurisdiction": ["EU", "US-CA"],
        "fleet": "gpu-a",
        "agent_name": "summarizer",
        "rev": RevocationChannel().as_claim(),
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not DROP}


DROP = object()
HEADER: Document = {"alg": "EdDSA", "kid": "conf-1", "typ": TOKEN_TYPE}


def _segment(value: object) -> str:
    return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())


def _sign(header: object, payload: object, key: Ed25519PrivateKey = SIGNING_KEY) -> str:
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def _token_cases() -> list[tuple[str, str, float]]:
    """(name, token, leeway) for every case; the outcome is what verify_token says."""
    good = _sign(HEADER, _claims())
    head, body, signature = good.split(".")
    tampered_body = _segment(_claims(scope=["*:*"]))
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    rev = _claims()["rev"]
    cases: list[tuple[str, object, object]] = [
        ("good", HEADER, _claims()),
        ("good_without_protocol_version", HEADER, _claims(rev=_no_v(rev))),
        ("good_without_optional_claims", HEADER, _claims(fleet=DROP, agent_name=DROP, rev=DROP)),
        ("good_audience_in_a_list", HEADER, _claims(aud=["other", AUDIENCE])),
        ("good_times_as_fractions", HEADER, _claims(iat=NOW - 0.5, nbf=NOW - 0.5, exp=NOW + 0.5)),
        ("good_nbf_within_clock_skew", HEADER, _claims(iat=NOW + 300, nbf=NOW + 300)),
        ("good_unknown_header_member", {**HEADER, "cty": "x"}, _claims()),
        ("expired", HEADER, _claims(exp=NOW - 1)),
        ("expired_at_exactly_now", HEADER, _claims(exp=NOW)),
        ("not_yet_valid_nbf", HEADER, _claims(nbf=NOW + 301)),
        ("not_yet_valid_iat", HEADER, _claims(iat=NOW + 301)),
        ("alg_none", {**HEADER, "alg": "none"}, _claims()),
        ("alg_hs256", {**HEADER, "alg": "HS256"}, _claims()),
        ("alg_missing", {"kid": "conf-1", "typ": TOKEN_TYPE}, _claims()),
        ("typ_jwt", {**HEADER, "typ": "JWT"}, _claims()),
        ("typ_missing", {"alg": "EdDSA", "kid": "conf-1"}, _claims()),
        ("kid_unknown", {**HEADER, "kid": "conf-2"}, _claims()),
        ("kid_of_a_jwk_with_private_material", {**HEADER, "kid": "conf-3"}, _claims()),
        ("kid_of_a_non_ed25519_jwk", {**HEADER, "kid": "conf-rsa"}, _claims()),
        ("kid_not_a_string", {**HEADER, "kid": 1}, _claims()),
        ("kid_empty", {**HEADER, "kid": ""}, _claims()),
        ("kid_missing", {"alg": "EdDSA", "typ": TOKEN_TYPE}, _claims()),
        ("crit_header", {**HEADER, "crit": ["exp"]}, _claims()),
        ("crit_empty", {**HEADER, "crit": []}, _claims()),
        ("jku_header", {**HEADER, "jku": "https://evil.example/jwks.json"}, _claims()),
        (
            "jwk_header",
            {**HEADER, "jwk": public_key_to_jwk("x", SIGNING_KEY.public_key())},
            _claims(),
        ),
        ("x5u_header", {**HEADER, "x5u": "https://evil.example/cert"}, _claims()),
        ("x5c_header", {**HEADER, "x5c": ["AA"]}, _claims()),
        ("header_not_an_object", ["EdDSA"], _claims()),
        ("header_not_json", b"{alg: EdDSA}", _claims()),
        ("payload_not_an_object", HEADER, ["not", "claims"]),
        ("payload_not_json", HEADER, b"claims"),
        ("protocol_version_2", HEADER, _claims(rev={**rev, "v": 2})),
        ("protocol_version_0", HEADER, _claims(rev={**rev, "v": 0})),
        ("protocol_version_as_text", HEADER, _claims(rev={**rev, "v": "1"})),
        ("protocol_version_null", HEADER, _claims(rev={**rev, "v": None})),
        ("protocol_version_true", HEADER, _claims(rev={**rev, "v": True})),
        ("protocol_version_2_and_expired", HEADER, _claims(rev={**rev, "v": 2}, exp=NOW - 1)),
        ("missing_sub", HEADER, _claims(sub=DROP)),
        ("missing_exp", HEADER, _claims(exp=DROP)),
        ("missing_scope", HEADER, _claims(scope=DROP)),
        ("null_jti", HEADER, _claims(jti=None)),
        ("wrong_issuer", HEADER, _claims(iss="https://evil.example")),
        ("wrong_audience", HEADER, _claims(aud="someone-else")),
        ("audience_list_without_ours", HEADER, _claims(aud=["a", "b"])),
        ("audience_an_object", HEADER, _claims(aud={AUDIENCE: True})),
        ("missing_claim_before_wrong_issuer", HEADER, _claims(iss="x", jti=DROP)),
        ("wrong_issuer_before_expired", HEADER, _claims(iss="x", exp=NOW - 1)),
        ("expired_before_malformed_scope", HEADER, _claims(exp=NOW - 1, scope="*:*")),
        ("exp_as_text", HEADER, _claims(exp=str(NOW + 3600))),
        ("exp_after_year_9999", HEADER, _claims(exp=253402300800)),
        ("exp_huge_float", HEADER, _claims(exp=1e300)),
        ("nbf_negative", HEADER, _claims(nbf=-1)),
        ("iat_boolean", HEADER, _claims(iat=True)),
        ("sub_not_a_string", HEADER, _claims(sub=42)),
        ("jti_not_a_string", HEADER, _claims(jti=["x"])),
        ("fleet_not_a_string", HEADER, _claims(fleet=7)),
        ("agent_name_not_a_string", HEADER, _claims(agent_name=None)),
        ("scope_a_string", HEADER, _claims(scope="fs:read:*")),
        ("scope_with_a_bad_rule", HEADER, _claims(scope=["fs:read:*", "Not A Rule"])),
        ("scope_with_a_number", HEADER, _claims(scope=[1])),
        ("jurisdiction_unknown_region", HEADER, _claims(jurisdiction=["Mars"])),
        ("jurisdiction_empty", HEADER, _claims(jurisdiction=[])),
        ("rev_not_an_object", HEADER, _claims(rev="aps:revocations:stream")),
        ("rev_member_not_a_string", HEADER, _claims(rev={**rev, "stream": ["x"]})),
    ]
    tokens = [(name, _sign(header, payload), 0.0) for name, header, payload in cases]
    tokens += [
        ("expired_within_leeway", _sign(HEADER, _claims(exp=NOW - 10)), 30.0),
        ("expired_beyond_leeway", _sign(HEADER, _claims(exp=NOW - 31)), 30.0),
        ("signed_by_another_key_under_our_kid", _sign(HEADER, _claims(), UNPUBLISHED_KEY), 0.0),
        (
            "signed_by_the_private_material_key",
            _sign({**HEADER, "kid": "conf-3"}, _claims(), PRIVATE_JWK_KEY),
            0.0,
        ),
        ("tampered_payload", f"{head}.{tampered_body}.{signature}", 0.0),
        ("tampered_signature", f"{head}.{body}.{flipped}", 0.0),
        ("signature_truncated", f"{head}.{body}.{signature[:40]}", 0.0),
        ("signature_empty", f"{head}.{body}.", 0.0),
        ("two_segments", f"{head}.{body}", 0.0),
        ("four_segments", f"{good}.{signature}", 0.0),
        ("empty_token", "", 0.0),
        ("too_large", _sign(HEADER, _claims(agent_name="x" * 16384)), 0.0),
    ]
    return tokens


def _no_v(rev: Document) -> Document:
    return {name: value for name, value in rev.items() if name != "v"}


def _token_outcome(token: str, leeway: float, keys: dict[str, Ed25519PublicKey]) -> Document:
    try:
        claims = verify_token(token, keys, issuer=ISSUER, audience=AUDIENCE, leeway=leeway, now=NOW)
    except PassportError as exc:
        return {"valid": False, "error": type(exc).__name__, "reason": exc.reason}
    return {"valid": True, "claims": claims}


def tokens_document() -> Document:
    jwks = _jwks()
    keys = keys_from_jwks(jwks)
    vectors = [
        {
            "name": name,
            "token": token,
            "now": NOW,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "leeway": leeway,
            "expect": _token_outcome(token, leeway, keys),
        }
        for name, token, leeway in _token_cases()
    ]
    return _document(
        "tokens",
        "Passport token verification against the JWKS, at a fixed clock: the claims, or the "
        "error and its reason.",
        vectors,
        jwks=jwks,
    )


# -- revocation streams -----------------------------------------------------------------------
AGENT = "3f0c6a52-8a55-4d7e-9a31-0c6f1b2d4e5f"
JTI = "9b1d2c3e-4f50-4a6b-8c7d-e8f9a0b1c2d3"


def _revoke(entry_id: int, epoch: int, target_type: str, value: str) -> str:
    return RevocationEntry(
        id=entry_id,
        epoch=epoch,
        kind="revoke",
        target_type=target_type,
        target_value=value,
        reason=f"conformance {entry_id}",
        source="api",
        at="2027-01-15T08:00:00+00:00",
    ).to_json()


def _lift(entry_id: int, epoch: int) -> str:
    return RevocationEntry(id=entry_id, epoch=epoch, kind="lift").to_json()


def _message(stream_id: str, entry: str, prev: int | str) -> Document:
    return {"id": stream_id, "fields": {"entry": entry, "prev": str(prev)}}


def _snapshot(epoch: int | str, generation: str, *entries: str, v: str | None = "1") -> Document:
    snapshot: Document = {"_epoch": str(epoch), "_generation": generation}
    if v is not None:
        snapshot["_v"] = v
    for raw in entries:
        snapshot[f"r:{json.loads(raw)['id']}"] = raw
    return snapshot


def _header(epoch: int | str | None, generation: str | None, v: str | None = "1") -> Document:
    return {"_epoch": None if epoch is None else str(epoch), "_generation": generation, "_v": v}


def _load(snapshot: Document, last: Document | None = None) -> Document:
    return {"op": "load", "snapshot": snapshot, "last": last}


def _poll(header: Document, *messages: Document, batch: int = 1000) -> Document:
    return {"op": "poll", "snapshot": header, "messages": list(messages), "batch": batch}


R1 = _revoke(1, 2, "agent", AGENT)
R2 = _revoke(2, 3, "fleet", "gpu-a")
R3 = _revoke(3, 4, "passport", JTI)
STOPS = [
    {"jti": JTI, "agent": AGENT, "fleet": "gpu-a"},
    {"jti": "other-jti", "agent": AGENT, "fleet": None},
    {"jti": "other-jti", "agent": "other-agent", "fleet": "gpu-a"},
    {"jti": "other-jti", "agent": "other-agent", "fleet": "gpu-b"},
    {"jti": JTI, "agent": "other-agent", "fleet": None},
]
LOADED = _load(_snapshot(3, "g1", R1, R2), _message("1700-0", R2, 2))
STREAMS: list[tuple[str, list[Document]]] = [
    (
        "load_then_follow_revokes_and_lifts",
        [
            LOADED,
            _poll(_header(5, "g1"), _message("1701-0", R3, 3), _message("1702-0", _lift(2, 5), 4)),
        ],
    ),
    ("empty_poll_when_caught_up", [LOADED, _poll(_header(3, "g1"))]),
    ("gap_in_prev_chain", [LOADED, _poll(_header(5, "g1"), _message("1705-0", R3, 4))]),
    (
        "gap_after_good_entries_applies_none",
        [
            LOADED,
            _poll(_header(6, "g1"), _message("1701-0", R3, 3), _message("1702-0", _lift(1, 6), 5)),
        ],
    ),
    ("malformed_entry_not_json", [LOADED, _poll(_header(4, "g1"), _message("1701-0", "{oops", 3))]),
    (
        "malformed_entry_unknown_kind",
        [
            LOADED,
            _poll(
                _header(4, "g1"), _message("1701-0", '{"id": 3, "epoch": 4, "kind": "pause"}', 3)
            ),
        ],
    ),
    (
        "malformed_entry_id_not_integer",
        [
            LOADED,
            _poll(
                _header(4, "g1"), _message("1701-0", '{"id": "3", "epoch": 4, "kind": "lift"}', 3)
            ),
        ],
    ),
    (
        "malformed_entry_bad_target",
        [
            LOADED,
            _poll(
                _header(4, "g1"),
                _message(
                    "1701-0",
                    json.dumps(
                        {
                            "id": 3,
                            "epoch": 4,
                            "kind": "revoke",
                            "target": {"type": "x", "value": "y"},
                        }
                    ),
                    3,
                ),
            ),
        ],
    ),
    (
        "malformed_entry_epoch_boolean",
        [
            LOADED,
            _poll(
                _header(4, "g1"), _message("1701-0", '{"id": 2, "epoch": true, "kind": "lift"}', 3)
            ),
        ],
    ),
    (
        "malformed_entry_prev_not_integer",
        [LOADED, _poll(_header(4, "g1"), _message("1701-0", R3, "three"))],
    ),
    (
        "malformed_entry_without_prev",
        [LOADED, _poll(_header(4, "g1"), {"id": "1701-0", "fields": {"entry": R3}})],
    ),
    ("new_generation_after_applying", [LOADED, _poll(_header(4, "g2"), _message("1701-0", R3, 3))]),
    ("snapshot_behind_without_entries", [LOADED, _poll(_header(2, "g1"))]),
    (
        "snapshot_behind_with_entries_is_fine",
        [LOADED, _poll(_header(3, "g1"), _message("1701-0", R3, 3))],
    ),
    (
        "snapshot_ahead_after_a_short_read",
        [LOADED, _poll(_header(5, "g1"), _message("1701-0", R3, 3))],
    ),
    (
        "snapshot_ahead_after_a_full_read_is_a_backlog",
        [LOADED, _poll(_header(9, "g1"), _message("1701-0", R3, 3), batch=1)],
    ),
    ("older_snapshot_refused_on_load", [LOADED, _load(_snapshot(2, "g9", R1))]),
    ("missing_snapshot_on_load", [_load({})]),
    ("snapshot_without_epoch_on_load", [_load({"_generation": "g1", "r:1": R1})]),
    ("missing_snapshot_on_poll", [LOADED, _poll(_header(None, None, None))]),
    ("malformed_snapshot_entry_on_load", [_load(_snapshot(3, "g1", R1) | {"r:2": "garbage"})]),
    ("malformed_snapshot_epoch_on_load", [_load(_snapshot("three", "g1", R1))]),
    ("malformed_snapshot_epoch_on_poll", [LOADED, _poll(_header("-1", "g1"))]),
    ("unsupported_protocol_on_load", [_load(_snapshot(3, "g1", R1, v="2"))]),
    ("unsupported_protocol_text_on_load", [_load(_snapshot(3, "g1", R1, v="one"))]),
    ("unsupported_protocol_on_poll", [LOADED, _poll(_header(3, "g1", v="2"))]),
    (
        "snapshot_without_version_is_version_1",
        [_load(_snapshot(3, "g1", R1, R2, v=None)), _poll(_header(3, "g1", None))],
    ),
    (
        "out_of_order_push_is_ignored_per_revocation",
        [
            LOADED,
            _poll(
                _header(6, "g1"),
                _message("1701-0", _lift(1, 6), 3),
                _message("1702-0", _revoke(1, 2, "agent", AGENT), 6),
            ),
        ],
    ),
    (
        "kill_everything_then_lift",
        [
            _load(_snapshot(10, "g1")),
            _poll(_header(11, "g1"), _message("1-0", _revoke(7, 11, "all", "*"), 0)),
            _poll(_header(12, "g1"), _message("2-0", _lift(7, 12), 11)),
        ],
    ),
    (
        "most_specific_revocation_stops_first",
        [_load(_snapshot(4, "g1", _revoke(9, 1, "all", "*"), R1, R2, R3))],
    ),
    (
        "last_entry_without_integer_epoch_is_position_0",
        [
            _load(_snapshot(3, "g1", R1), _message("5-0", '{"id": 1}', 0)),
            _poll(_header(4, "g1"), _message("6-0", R3, 0)),
        ],
    ),
    (
        "reload_after_gap_recovers",
        [
            LOADED,
            _poll(_header(5, "g1"), _message("1705-0", R3, 4)),
            _load(_snapshot(5, "g2", R1, R2, R3), _message("1705-0", R3, 4)),
            _poll(_header(5, "g2")),
        ],
    ),
]


def _describe(follower: Follower) -> Document:
    state = follower.state
    return {
        "epoch": state.epoch,
        "active": sorted(state.active),
        "digest": state.digest,
        "generation": follower.generation,
        "last_id": follower.last_id,
        "position": follower.position,
        "stopped_by": [_stopped_by(state, stop) for stop in STOPS],
    }


def _run_step(follower: Follower, step: Document) -> tuple[Follower, str | None]:
    """Apply one step as the watcher would; returns the follower and the error/reload code."""
    try:
        if step["op"] == "load":
            last = step["last"]
            message = (last["id"], last["fields"]) if last else None
            return load_snapshot(step["snapshot"], message, follower.state.epoch), None
        messages = [(m["id"], m["fields"]) for m in step["messages"]]
        poll = follow_poll(follower, step["snapshot"], messages, step["batch"])
        return poll.follower, poll.reload or None
    except SnapshotUnavailable as exc:
        return follower, exc.reason


def revocations_document() -> Document:
    vectors = []
    for name, steps in STREAMS:
        follower = Follower()
        expected_steps = []
        for step in steps:
            follower, outcome = _run_step(follower, step)
            key = "error" if step["op"] == "load" else "reload"
            expected_steps.append({**step, "expect": {key: outcome, **_describe(follower)}})
        vectors.append({"name": name, "steps": expected_steps})
    return _document(
        "revocations",
        "Following the revocation channel: snapshot loads and stream polls -> the applied state, "
        "when to reload and why, and which passports are stopped.",
        vectors,
        stops=STOPS,
    )


def _stopped_by(state: RevocationState, stop: Document) -> int | None:
    entry = state.blocking(jti=stop["jti"], agent=stop["agent"], fleet=stop["fleet"])
    return entry.id if entry is not None else None


# -- audit log --------------------------------------------------------------------------------
def _event(seq: int, prev: str, **changes: Any) -> Document:
    event: Document = {
        "agent": AGENT,
        "seq": seq,
        "id": f"0190c3a0-0000-7000-8000-{seq:012d}",
        "passport": JTI,
        "fleet": "gpu-a",
        "action": "fs:read",
        "resource": f"/workspace/report-{seq}.csv",
        "jurisdiction": "DE",
        "decision": "allow",
        "reason": "allowed by rule 'fs:read:/workspace/**' in DE",
        "occurred_at": f"2027-01-15T08:00:0{seq % 10}.123456+00:00",
        "received_at": f"2027-01-15T08:00:0{seq % 10}.223456+00:00",
        "details": {},
        "prev": prev,
        **changes,
    }
    event["hash"] = event_hash(event)
    return event


def _chain(length: int) -> list[Document]:
    events, prev = [], GENESIS
    for seq in range(1, length + 1):
        event = _event(seq, prev)
        events.append(event)
        prev = event["hash"]
    return events


def _checkpoint(events: list[Document], *, key: Ed25519PrivateKey = SIGNING_KEY) -> Document:
    checkpoint: Document = {
        "agent": AGENT,
        "count": len(events),
        "head": events[-1]["hash"] if events else GENESIS,
        "at": "2027-01-15T09:00:00+00:00",
        "kid": "conf-1",
    }
    checkpoint["signature"] = b64url(key.sign(checkpoint_payload(checkpoint)))
    return checkpoint


EVENT_VARIANTS: list[tuple[str, Document]] = [
    ("plain", {}),
    ("first_event_nulls", {"passport": None, "fleet": None, "jurisdiction": None}),
    ("denied_with_unicode", {"decision": "deny", "reason": "refusé: «fs:write» außerhalb 🚫"}),
    (
        "details_nested_and_sorted",
        {"details": {"b": [1, 2, {"z": None, "a": True}], "a": {"y": "x", "x": 0.5}, "A": -3}},
    ),
    ("details_keys_in_code_point_order", {"details": {"\uffff": 1, "😀": 2, "a": 3, "é": 4}}),
    (
        "escapes",
        {"resource": 'quote " backslash \\ newline \n tab \t ctrl \x01\x1f del \x7f ls \u2028'},
    ),
    ("large_integers", {"details": {"n": -9007199254740991, "m": 9007199254740991}}),
]


def audit_document() -> Document:
    vectors: list[Document] = []
    for name, changes in EVENT_VARIANTS:
        event = _event(1, GENESIS, **changes)
        content = {"v": 1, **{k: event[k] for k in EVENT_FIELDS}}
        text = canonical(content).decode("utf-8")
        vectors.append({"test": "event", "name": name, "event": event, "canonical": text})
    keys = keys_from_jwks(_jwks())
    chain = _chain(3)
    signed = _checkpoint(chain)
    checkpoints: list[tuple[str, Document]] = [
        ("valid", signed),
        ("count_changed", {**signed, "count": 2}),
        ("unknown_kid", {**signed, "kid": "conf-2"}),
        ("signed_by_another_key", _checkpoint(chain, key=UNPUBLISHED_KEY)),
        ("signature_not_base64url", {**signed, "signature": "***"}),
    ]
    for name, checkpoint in checkpoints:
        payload = checkpoint_payload(checkpoint).decode("utf-8")
        valid = verify_checkpoint(checkpoint, keys) is None
        vectors.append(
            {
                "test": "checkpoint",
                "name": name,
                "checkpoint": checkpoint,
                "payload": payload,
                "valid": valid,
            }
        )
    edited = [chain[0], {**chain[1], "resource": "/etc/shadow"}, chain[2]]
    reordered = [chain[0], chain[2], chain[1]]
    inserted = [chain[0], _event(2, chain[0]["hash"], action="net:connect"), *chain[1:]]
    chains: list[tuple[str, list[Document]]] = [
        ("intact", chain),
        ("empty", []),
        ("edited", edited),
        ("deleted_middle", [chain[0], chain[2]]),
        ("deleted_first", chain[1:]),
        ("reordered", reordered),
        ("inserted", inserted),
        ("prev_rewritten", [chain[0], {**chain[1], "prev": GENESIS}, chain[2]]),
    ]
    for name, events in chains:
        count, head, problem = verify_chain(AGENT, events)
        vectors.append(
            {
                "test": "chain",
                "name": name,
                "agent": AGENT,
                "events": events,
                "count": count,
                "head": head,
                "ok": problem is None,
            }
        )
    return _document(
        "audit",
        "The action log's canonical encoding and event hashes, signed checkpoints, and hash "
        "chains (where the first bad event stops the walk).",
        vectors,
        jwks=_jwks(),
        genesis=GENESIS,
    )


# -- transparency log ---------------------------------------------------------------------------
MERKLE_LEAVES = [leaf_hash(hashlib.sha256(f"event {i}".encode()).hexdigest()) for i in range(21)]


def _proof(ranges: list[Any], leaves: list[bytes]) -> list[str]:
    def perfect(nodes: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return {(lv, i): tree_root(leaves[i << lv : (i + 1) << lv]) for lv, i in nodes}

    return [value.hex() for value in HashSource(perfect).roots(ranges)]


def _head(size: int, prev: str, *, key: Ed25519PrivateKey = SIGNING_KEY) -> Document:
    head: Document = {
        "tree_size": size,
        "root": tree_root(MERKLE_LEAVES[:size]).hex(),
        "at": f"2027-01-15T09:{size:02d}:00.000000Z",
        "prev": prev,
        "kid": "conf-1",
    }
    head["signature"] = b64url(key.sign(head_payload(head)))
    return head


def _inclusion_vectors() -> list[Document]:
    vectors: list[Document] = []
    flip = lambda text: ("f" if text[0] != "f" else "0") + text[1:]  # noqa: E731
    for index, size in ((0, 1), (0, 2), (1, 2), (2, 3), (4, 7), (6, 7), (0, 8), (5, 8), (12, 21)):
        leaf, root = MERKLE_LEAVES[index].hex(), tree_root(MERKLE_LEAVES[:size]).hex()
        path = _proof(plan_inclusion(index, size), MERKLE_LEAVES)
        base = {"leaf": leaf, "index": index, "size": size, "path": path, "root": root}
        cases = [("valid", base)]
        if path:
            cases += [
                ("path_hash_changed", {**base, "path": [flip(path[0]), *path[1:]]}),
                ("path_cut", {**base, "path": path[:-1]}),
                ("wrong_index", {**base, "index": (index + 1) % size}),
            ]
        cases += [
            ("extra_hash", {**base, "path": [*path, leaf]}),
            ("leaf_changed", {**base, "leaf": flip(leaf)}),
            ("index_beyond_size", {**base, "index": size}),
        ]
        for name, case in cases:
            valid = verify_inclusion(
                bytes.fromhex(case["leaf"]),
                case["index"],
                case["size"],
                [bytes.fromhex(p) for p in case["path"]],
                bytes.fromhex(case["root"]),
            )
            vectors.append(
                {"test": "inclusion", "name": f"{name}_{index}_of_{size}", **case, "valid": valid}
            )
    return vectors


def _consistency_vectors() -> list[Document]:
    vectors: list[Document] = []
    flip = lambda text: ("f" if text[0] != "f" else "0") + text[1:]  # noqa: E731
    for first, second in (
        (1, 1),
        (1, 2),
        (2, 3),
        (3, 7),
        (4, 7),
        (4, 8),
        (6, 8),
        (7, 21),
        (16, 21),
    ):
        base = {
            "first": first,
            "second": second,
            "first_root": tree_root(MERKLE_LEAVES[:first]).hex(),
            "second_root": tree_root(MERKLE_LEAVES[:second]).hex(),
            "proof": _proof(plan_consistency(first, second), MERKLE_LEAVES),
        }
        cases = [("valid", base)]
        if base["proof"]:
            cases += [
                (
                    "proof_hash_changed",
                    {**base, "proof": [flip(base["proof"][0]), *base["proof"][1:]]},
                ),
                ("proof_cut", {**base, "proof": base["proof"][:-1]}),
                ("empty_proof", {**base, "proof": []}),
            ]
        cases += [
            ("first_root_changed", {**base, "first_root": flip(base["first_root"])}),
            ("sizes_swapped", {**base, "first": second, "second": first}),
        ]
        for name, case in cases:
            valid = verify_consistency(
                case["first"],
                case["second"],
                bytes.fromhex(case["first_root"]),
                bytes.fromhex(case["second_root"]),
                [bytes.fromhex(p) for p in case["proof"]],
            )
            vectors.append(
                {
                    "test": "consistency",
                    "name": f"{name}_{first}_to_{second}",
                    **case,
                    "valid": valid,
                }
            )
    return vectors


def merkle_document() -> Document:
    vectors: list[Document] = []
    for i in (0, 1, 20):
        event_hash = hashlib.sha256(f"event {i}".encode()).hexdigest()
        vectors.append({"test": "leaf", "event_hash": event_hash, "leaf": MERKLE_LEAVES[i].hex()})
    for size in (0, 1, 2, 3, 4, 5, 7, 8, 13, 21):
        leaves = [leaf.hex() for leaf in MERKLE_LEAVES[:size]]
        vectors.append(
            {
                "test": "root",
                "name": f"size_{size}",
                "leaves": leaves,
                "root": tree_root(MERKLE_LEAVES[:size]).hex(),
            }
        )
    vectors += _inclusion_vectors()
    vectors += _consistency_vectors()
    keys = keys_from_jwks(_jwks())
    first = _head(3, GENESIS)
    second = _head(8, head_id(first))
    third = _head(21, head_id(second))
    heads: list[tuple[str, Document]] = [
        ("valid", second),
        ("size_changed", {**second, "tree_size": 9}),
        ("root_changed", {**second, "root": first["root"]}),
        ("unknown_kid", {**second, "kid": "conf-2"}),
        ("signed_by_another_key", _head(8, head_id(first), key=UNPUBLISHED_KEY)),
        ("signature_not_base64url", {**second, "signature": "***"}),
    ]
    for name, head in heads:
        vectors.append(
            {
                "test": "head",
                "name": name,
                "head": head,
                "payload": head_payload(head).decode("utf-8"),
                "id": head_id(head),
                "valid": verify_head(head, keys) is None,
            }
        )
    chains: list[tuple[str, list[Document]]] = [
        ("intact", [first, second, third]),
        ("first_head_deleted", [second, third]),
        ("middle_head_deleted", [first, third]),
        ("reordered", [first, third, second]),
        ("prev_rewritten", [first, {**second, "prev": GENESIS}, third]),
        ("shrinking", [first, second, _head(5, head_id(second))]),
    ]
    for name, chain in chains:
        vectors.append(
            {
                "test": "head_chain",
                "name": name,
                "heads": chain,
                "ok": verify_head_chain(chain) is None,
            }
        )
    promise: Document = {
        "leaves": [
            [0, hashlib.sha256(b"event 0").hexdigest()],
            [1, hashlib.sha256(b"event 1").hexdigest()],
        ],
        "include_by": "2027-01-15T09:02:00.000000Z",
        "kid": "conf-1",
    }
    promise["signature"] = b64url(SIGNING_KEY.sign(promise_payload(promise)))
    promises: list[tuple[str, Document]] = [
        ("valid", promise),
        (
            "leaf_index_changed",
            {**promise, "leaves": [[5, promise["leaves"][0][1]], promise["leaves"][1]]},
        ),
        ("include_by_changed", {**promise, "include_by": "2027-01-16T09:02:00.000000Z"}),
        ("unknown_kid", {**promise, "kid": "conf-2"}),
    ]
    for name, case in promises:
        vectors.append(
            {
                "test": "promise",
                "name": name,
                "promise": case,
                "payload": promise_payload(case).decode("utf-8"),
                "valid": verify_promise(case, keys) is None,
            }
        )
    return _document(
        "merkle",
        "The transparency log (RFC 9162): leaf hashes of events, roots, inclusion and "
        "consistency proofs, signed tree heads and their prev chain, receipts' inclusion promises.",
        vectors,
        jwks=_jwks(),
        genesis=GENESIS,
    )


BUILDERS: dict[str, Callable[[], Document]] = {
    "rules.json": rules_document,
    "decisions.json": decisions_document,
    "regions.json": regions_document,
    "digest.json": digest_document,
    "tokens.json": tokens_document,
    "revocations.json": revocations_document,
    "audit.json": audit_document,
    "merkle.json": merkle_document,
}


def render(document: Document) -> str:
    return json.dumps(document, indent=1) + "\n"  # ASCII: no editor can normalize a vector


def build() -> dict[str, str]:
    """Every vector file's name and exact text."""
    return {name: render(builder()) for name, builder in BUILDERS.items()}


def main() -> None:
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        count = len(json.loads(text)["vectors"])
        print(f"{name}: {count} vectors")


if __name__ == "__main__":
    main()
