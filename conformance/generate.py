"""Writes the conformance vectors (conformance/*.json) from the Python SDK.

Run ``python conformance/generate.py`` from the repository root. The output is deterministic
(fixed keys, seeds and clocks; Ed25519 signatures are deterministic), so regenerating must
reproduce the committed files byte for byte: tests/sdk/test_conformance.py checks it. The file
format of each kind is described in conformance/README.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from a checkout

from agent_passport.errors import RuleError  # noqa: E402
from agent_passport.regions import COUNTRIES, EEA, EFTA, EU, normalize_region  # noqa: E402
from agent_passport.regions import region_within  # noqa: E402
from agent_passport.revocations import revocations_digest  # noqa: E402
from agent_passport.rules import Policy, parse_jurisdiction, parse_rule, parse_scope  # noqa: E402

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
        ["tool:shell:exec", "net:connect:api.example.com:443", "fs:write:/tmp/**", "!fs:write:/tmp/secret/**"],
        ["EU"],
        [
            ("tool:shell:exec", None, "DE"),
            ("tool:shell", "exec", "DE"),
            ("tool:shell:ls", None, "DE"),
            ("tool:shell", None, "DE"),
            ("net:connect:api.example.com:443", None, "FR"),
            ("net:connect:api.example.com:80", None, "FR"),
            ("fs:write:/tmp/a/b/c", None, "DE"),
            ("fs:write", "/tmp/x", "de"),
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
    "DE", "de", " de ", "US-CA", "us-ca", "GB-ENG", "FR-75", "EU", "eu", "EEA", "EFTA", "GLOBAL",
    "global", "XX", "ZZ-1", "D", "DEU", "US-", "US-ABCD", "US_CA", "", "ß", "DE\u00a0", "UK",
]
CONTAINMENT = [
    ("DE", "DE"), ("DE", "EU"), ("DE", "EEA"), ("DE", "EFTA"), ("DE", "GLOBAL"),
    ("DE-BY", "DE"), ("DE-BY", "EU"), ("DE-BY", "DE-BY"), ("DE-BY", "DE-BE"), ("DE", "DE-BY"),
    ("EU", "EEA"), ("EEA", "EU"), ("EU", "GLOBAL"), ("EFTA", "EEA"), ("NO", "EEA"),
    ("CH", "EEA"), ("CH", "EFTA"), ("NO", "EU"), ("GLOBAL", "EU"), ("GLOBAL", "GLOBAL"),
    ("US-CA", "US"), ("US", "US-CA"), ("US-CA", "GLOBAL"), ("GB", "EU"), ("EU", "DE"),
]


def regions_document() -> Document:
    vectors: list[Document] = []
    for code in REGION_CODES:
        try:
            vectors.append({"test": "normalize", "code": code, "normalized": normalize_region(code)})
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


BUILDERS: dict[str, Callable[[], Document]] = {
    "rules.json": rules_document,
    "decisions.json": decisions_document,
    "regions.json": regions_document,
    "digest.json": digest_document,
}


def render(document: Document) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


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
