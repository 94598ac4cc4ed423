"""Offline token verification: every malformed token is a PassportInvalid with a reason."""

import base64
import json
import math
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_passport.errors import (
    PassportError,
    PassportExpired,
    PassportInvalid,
    PassportNotYetValid,
)
from agent_passport.protocol import PROTOCOL_VERSION, TOKEN_TYPE
from agent_passport.rules import Policy
from agent_passport.tokens import verify_token

KEY = Ed25519PrivateKey.generate()
KEYS = {"k1": KEY.public_key()}
HEADER = {"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": "k1"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {
        "iss": "https://registry.example",
        "sub": "agent-1",
        "aud": "agent-passport",
        "jti": "00000000-0000-0000-0000-000000000001",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "scope": ["fs:read:/workspace/**"],
        "jurisdiction": ["EU"],
        "fleet": "gpu",
        "rev": {"transport": "redis-stream", "stream": "aps:revocations:stream"},
    }
    return {**base, **overrides}


def signed(header: object, payload: object) -> str:
    """A compact JWS whose signature is valid for whatever header and payload JSON it carries."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(KEY.sign(signing_input.encode()))}"


def verify(token: str) -> dict:
    return verify_token(token, KEYS, issuer="https://registry.example", audience="agent-passport")


def test_a_well_formed_token_verifies():
    assert verify(signed(HEADER, claims()))["sub"] == "agent-1"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({**HEADER, "kid": 5}, "unknown_key"),
        ({**HEADER, "kid": ["k1"]}, "unknown_key"),
        ({**HEADER, "crit": ["exp"]}, "unsupported_crit"),
        ({**HEADER, "crit": ["b64"], "b64": False}, "unsupported_crit"),
        ({**HEADER, "crit": []}, "unsupported_crit"),
        ({**HEADER, "jku": "https://evil.example/jwks"}, "malformed"),
        ({**HEADER, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}, "malformed"),
        ({**HEADER, "x5u": "https://evil.example/cert"}, "malformed"),
        ({**HEADER, "x5c": ["AA"]}, "malformed"),
        ([1, 2], "malformed"),
        ("header", "malformed"),
    ],
)
def test_hostile_headers_are_invalid(header, reason):
    with pytest.raises(PassportInvalid) as raised:
        verify(signed(header, claims()))
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": 10**400},
        {"exp": 1e300},
        {"exp": "soon"},
        {"nbf": -1},
        {"iat": True},
        {"rev": 5},
        {"rev": {"stream": ["x"]}},
        {"fleet": 7},
        {"scope": "fs:read:*"},
        {"scope": ["not a rule"]},
        {"jurisdiction": ["Mars"]},
        {"jurisdiction": [1]},
    ],
)
def test_claims_of_the_wrong_type_are_invalid(overrides):
    with pytest.raises(PassportInvalid) as raised:
        verify(signed(HEADER, claims(**overrides)))
    assert raised.value.reason == "malformed"


@pytest.mark.parametrize("payload", [[1], "text", 5, None])
def test_a_payload_that_is_not_an_object_is_invalid(payload):
    with pytest.raises(PassportInvalid):
        verify(signed(HEADER, payload))


@pytest.mark.parametrize(
    "token",
    [
        "é.é.é",
        "a.b.c.d",
        "!!.!!.!!",
        f"{b64(b'[' * 5000)}.e30.AA",
        f"{b64(json.dumps(HEADER).encode())}.{b64(b'[' * 5000)}.AA",
        f"{b64(b'{}')}..",
    ],
)
def test_undecodable_segments_are_invalid(token):
    with pytest.raises(PassportInvalid):
        verify(token)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
header_names = st.sampled_from(["alg", "typ", "kid", "crit", "jku", "jwk", "x5u", "x5c", "b64"])
claim_names = st.sampled_from([*claims(), "agent_name", "x"])


def mutated(base: dict, names, replace_all) -> st.SearchStrategy:
    """The base object with some members replaced, added or removed, or any JSON instead."""
    changes = st.dictionaries(names, json_values | st.just(None), max_size=4)
    dropped = st.sets(names, max_size=3)
    edited = st.builds(
        lambda change, drop: {k: v for k, v in {**base, **change}.items() if k not in drop},
        changes,
        dropped,
    )
    return st.one_of(edited, replace_all)


def check_usable_or_refused(token: str) -> None:
    """Either PassportError, or claims the guard can use as they are."""
    try:
        result = verify(token)
    except PassportError as exc:
        assert exc.reason and str(exc)
        return
    Policy.from_claims(result)
    assert all(math.isfinite(float(result[name])) for name in ("iat", "nbf", "exp"))


@FUZZ
@given(
    header=mutated(HEADER, header_names, json_values),
    payload=mutated(claims(), claim_names, json_values),
)
def test_prop_any_signed_header_and_payload_is_verified_or_refused(header, payload):
    check_usable_or_refused(signed(header, payload))


@FUZZ
@given(
    segments=st.lists(
        st.text(max_size=30) | st.binary(max_size=30).map(b64), min_size=1, max_size=5
    )
)
def test_prop_arbitrary_segments_are_refused(segments):
    check_usable_or_refused(".".join(segments))


@FUZZ
@given(position=st.integers(min_value=0), replacement=st.characters())
def test_prop_a_corrupted_character_is_refused(position, replacement):
    token = signed(HEADER, claims())
    position %= len(token)
    corrupted = token[:position] + replacement + token[position + 1 :]
    if corrupted != token:
        with pytest.raises(PassportError):
            verify(corrupted)


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0, None, [1]])
def test_a_protocol_version_this_sdk_does_not_know_is_refused(version):
    rev = {"v": version, "transport": "redis-stream", "stream": "aps:revocations:stream"}
    with pytest.raises(PassportInvalid) as raised:
        verify(signed(HEADER, claims(rev=rev)))
    assert raised.value.reason == "unsupported_protocol"
    assert f"protocol version {version!r} is not supported (this SDK knows 1)" in str(raised.value)


def test_the_current_protocol_version_and_a_passport_without_one_verify():
    current = {**claims()["rev"], "v": PROTOCOL_VERSION}
    assert verify(signed(HEADER, claims(rev=current)))["rev"]["v"] == 1
    assert "v" not in verify(signed(HEADER, claims()))["rev"]  # issued before versions existed


def test_the_protocol_version_is_checked_before_the_other_claims():
    rev = {"v": 2, "stream": "aps:revocations:stream"}
    token = signed(HEADER, claims(rev=rev, exp=1, scope="no longer a list", iss="elsewhere"))
    with pytest.raises(PassportInvalid) as raised:
        verify(token)
    assert raised.value.reason == "unsupported_protocol"


def test_times_are_checked_against_the_clock_given():
    token = signed(HEADER, claims(iat=1000, nbf=1000, exp=2000))
    verify_at = lambda now: verify_token(  # noqa: E731
        token, KEYS, issuer="https://registry.example", audience="agent-passport", now=now
    )
    assert verify_at(1999.5)["exp"] == 2000
    assert verify_at(700)["nbf"] == 1000  # CLOCK_SKEW_LEEWAY early
    with pytest.raises(PassportExpired):
        verify_at(2000)
    with pytest.raises(PassportNotYetValid):
        verify_at(699)
