"""Runs every conformance vector (conformance/*.json) against the Python SDK, as another SDK
would: from the file format in conformance/README.md, not from the generator's code. Plus: the
generator reproduces the committed files byte for byte, so vectors cannot drift silently."""

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from agent_passport.audit import canonical, checkpoint_payload, verify_chain, verify_checkpoint
from agent_passport.errors import PassportError, RuleError
from agent_passport.merkle import (
    head_id,
    head_payload,
    leaf_hash,
    promise_payload,
    tree_root,
    verify_consistency,
    verify_head,
    verify_head_chain,
    verify_inclusion,
    verify_promise,
)
from agent_passport.regions import COUNTRIES, EEA, EFTA, EU, normalize_region, region_within
from agent_passport.revocations import (
    Follower,
    SnapshotUnavailable,
    follow_poll,
    load_snapshot,
    revocations_digest,
)
from agent_passport.rules import Policy, parse_jurisdiction, parse_rule, parse_scope
from agent_passport.tokens import keys_from_jwks, verify_token

CONFORMANCE = Path(__file__).resolve().parents[3] / "conformance"  # the repository's top
KINDS = ("rules", "decisions", "regions", "digest", "tokens", "revocations", "audit", "merkle")


def load(kind: str) -> dict[str, Any]:
    document = json.loads((CONFORMANCE / f"{kind}.json").read_text(encoding="utf-8"))
    assert document["kind"] == kind and document["format"] == 1
    return document


def cases(kind: str) -> list:
    vectors = load(kind)["vectors"]
    return [pytest.param(v, id=f"{kind}-{i}-{v.get('name', '')}") for i, v in enumerate(vectors)]


def error_kind(call) -> str | None:
    try:
        call()
    except RuleError as exc:
        return exc.kind
    return None


@pytest.mark.parametrize("vector", cases("rules"))
def test_rule_grammar(vector):
    parse = {"rule": parse_rule, "scope": parse_scope, "jurisdiction": parse_jurisdiction}
    value = vector["value"]
    assert error_kind(lambda: parse[vector["input"]](value)) == vector.get("error")
    if vector["valid"] and vector["input"] == "rule":
        rule = parse_rule(value)
        resource = rule.resource.text if rule.resource is not None else None
        parsed = {"deny": rule.deny, "domain": rule.domain, "action": rule.action}
        assert {**parsed, "resource": resource} == vector["parsed"]
    if vector["valid"] and vector["input"] == "jurisdiction":
        assert list(parse_jurisdiction(value)) == vector["normalized"]


@pytest.mark.parametrize("vector", cases("decisions"))
def test_decision(vector):
    policy = Policy(vector["scope"], vector["jurisdiction"])
    decision = policy.decide(vector["action"], vector["resource"], vector["region"])
    assert (decision.allowed, decision.rule) == (vector["allowed"], vector["rule"])


def test_region_tables():
    tables = load("regions")["tables"]
    assert tables == {
        "countries": sorted(COUNTRIES),
        "EU": sorted(EU),
        "EEA": sorted(EEA),
        "EFTA": sorted(EFTA),
    }


@pytest.mark.parametrize("vector", cases("regions"))
def test_region(vector):
    if vector["test"] == "within":
        assert region_within(vector["inner"], vector["outer"]) is vector["within"]
    elif "error" in vector:
        assert error_kind(lambda: normalize_region(vector["code"])) == vector["error"]
    else:
        assert normalize_region(vector["code"]) == vector["normalized"]


@pytest.mark.parametrize("vector", cases("digest"))
def test_revocations_digest(vector):
    assert revocations_digest(vector["ids"]) == vector["digest"]


TOKEN_KEYS = keys_from_jwks(load("tokens")["jwks"])


@pytest.mark.parametrize("vector", cases("tokens"))
def test_token_verification(vector):
    expect = vector["expect"]
    try:
        claims = verify_token(
            vector["token"],
            TOKEN_KEYS,
            issuer=vector["issuer"],
            audience=vector["audience"],
            leeway=vector["leeway"],
            now=vector["now"],
        )
    except PassportError as exc:
        assert not expect["valid"], f"refused ({exc.reason}: {exc})"
        assert (type(exc).__name__, exc.reason) == (expect["error"], expect["reason"])
        return
    assert expect["valid"], f"accepted; expected {expect['reason']}"
    assert claims == expect["claims"]


def test_the_jwks_offers_only_the_public_ed25519_key():
    assert set(TOKEN_KEYS) == {"conf-1"}


REVOCATIONS = load("revocations")


@pytest.mark.parametrize("vector", cases("revocations"))
def test_revocation_stream(vector):
    follower = Follower()
    for number, step in enumerate(vector["steps"], 1):
        outcome = None
        try:
            if step["op"] == "load":
                last = step["last"]
                message = (last["id"], last["fields"]) if last else None
                follower = load_snapshot(step["snapshot"], message, follower.state.epoch)
            else:
                messages = [(m["id"], m["fields"]) for m in step["messages"]]
                poll = follow_poll(follower, step["snapshot"], messages, step["batch"])
                follower, outcome = poll.follower, poll.reload or None
        except SnapshotUnavailable as exc:
            outcome = exc.reason
        expect = step["expect"]
        assert outcome == expect["error" if step["op"] == "load" else "reload"], f"step {number}"
        state = follower.state
        stopped = [
            state.blocking(jti=s["jti"], agent=s["agent"], fleet=s["fleet"])
            for s in REVOCATIONS["stops"]
        ]
        assert {
            "epoch": state.epoch,
            "active": sorted(state.active),
            "digest": state.digest,
            "generation": follower.generation,
            "last_id": follower.last_id,
            "position": follower.position,
            "stopped_by": [entry.id if entry else None for entry in stopped],
        } == {k: v for k, v in expect.items() if k not in ("error", "reload")}, f"step {number}"


AUDIT = load("audit")


@pytest.mark.parametrize("vector", cases("audit"))
def test_audit(vector):
    if vector["test"] == "event":
        event = vector["event"]
        content = {k: v for k, v in event.items() if k != "hash"}
        text = canonical({"v": 1, **content})
        assert text.decode("utf-8") == vector["canonical"]
        assert hashlib.sha256(text).hexdigest() == event["hash"]
    elif vector["test"] == "checkpoint":
        checkpoint = vector["checkpoint"]
        assert checkpoint_payload(checkpoint).decode("utf-8") == vector["payload"]
        keys = keys_from_jwks(AUDIT["jwks"])
        assert (verify_checkpoint(checkpoint, keys) is None) is vector["valid"]
    else:
        count, head, problem = verify_chain(vector["agent"], vector["events"])
        assert (count, head, problem is None) == (vector["count"], vector["head"], vector["ok"])


MERKLE = load("merkle")


@pytest.mark.parametrize("vector", cases("merkle"))
def test_merkle(vector):
    test, keys = vector["test"], keys_from_jwks(MERKLE["jwks"])
    if test == "leaf":
        assert leaf_hash(vector["event_hash"]).hex() == vector["leaf"]
    elif test == "root":
        assert tree_root([bytes.fromhex(leaf) for leaf in vector["leaves"]]).hex() == vector["root"]
    elif test == "inclusion":
        path = [bytes.fromhex(p) for p in vector["path"]]
        leaf, root = bytes.fromhex(vector["leaf"]), bytes.fromhex(vector["root"])
        valid = verify_inclusion(leaf, vector["index"], vector["size"], path, root)
        assert valid is vector["valid"]
    elif test == "consistency":
        roots = bytes.fromhex(vector["first_root"]), bytes.fromhex(vector["second_root"])
        proof = [bytes.fromhex(p) for p in vector["proof"]]
        valid = verify_consistency(vector["first"], vector["second"], *roots, proof)
        assert valid is vector["valid"]
    elif test == "head":
        assert head_payload(vector["head"]).decode("utf-8") == vector["payload"]
        assert head_id(vector["head"]) == vector["id"]
        assert (verify_head(vector["head"], keys) is None) is vector["valid"]
    elif test == "head_chain":
        assert (verify_head_chain(vector["heads"]) is None) is vector["ok"]
    else:
        assert promise_payload(vector["promise"]).decode("utf-8") == vector["payload"]
        assert (verify_promise(vector["promise"], keys) is None) is vector["valid"]


def test_every_vector_file_is_run():
    assert sorted(path.stem for path in CONFORMANCE.glob("*.json")) == sorted(KINDS)


def test_the_generator_reproduces_the_committed_vectors():
    spec = importlib.util.spec_from_file_location("generate", CONFORMANCE / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    built = generate.build()
    assert sorted(built) == sorted(f"{kind}.json" for kind in KINDS)
    for name, text in built.items():
        assert text == (CONFORMANCE / name).read_text(encoding="utf-8"), (
            f"{name} differs from what conformance/generate.py writes: the implementation and "
            "the frozen vectors disagree (review, then regenerate only if the change is meant)"
        )
