"""Offline verification of passport tokens (JWS compact, EdDSA over Ed25519).

Encoding and signature checks are PyJWT's; this module adds the policy: only EdDSA, our ``typ``,
a known ``kid``, no ``crit`` (RFC 7515 §4.1.11: we implement no extension, so a token that
requires one is refused) and no key-carrying headers (the key is chosen by ``kid`` alone), a
protocol version this SDK knows (``rev.v``), required claims of the right types, a size cap,
and errors that say what is wrong. Every way a
token can be malformed ends as :class:`PassportInvalid`; nothing else escapes.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm
from jwt.types import Options

from agent_passport.audit import b64url_decode
from agent_passport.errors import (
    PassportExpired,
    PassportInvalid,
    PassportNotYetValid,
    RuleError,
)
from agent_passport.protocol import (
    ALGORITHM,
    MAX_TOKEN_BYTES,
    TOKEN_TYPE,
    unsupported_protocol,
)
from agent_passport.rules import parse_jurisdiction, parse_scope

REQUIRED_CLAIMS = ("iss", "sub", "aud", "jti", "iat", "nbf", "exp", "scope", "jurisdiction")
REQUIRED_TEXT_CLAIMS = ("sub", "jti")
TIME_CLAIMS = ("iat", "nbf", "exp")
OPTIONAL_TEXT_CLAIMS = ("fleet", "agent_name")
KEY_CARRYING_HEADERS = ("jku", "jwk", "x5u", "x5c")
MAX_NUMERIC_DATE = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can hold

# PyJWT checks the signature and that the payload is a JSON object; the claims are checked here,
# against a clock the caller may fix (conformance vectors do).
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}

KeyLookup = Callable[[str], Ed25519PublicKey | None]

# How far an agent's clock may lag the registry's: a passport is usable this many seconds before
# its nbf/iat (the registry sets both to the issue time, so nothing is gained by it), never
# after its exp. The registry flags action events stamped further ahead of its own clock.
CLOCK_SKEW_LEEWAY = 300


def public_key_to_jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Parse a JWKS document into ``{kid: public key}``, skipping keys that are not Ed25519."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if "d" in jwk or not isinstance(jwk.get("kid"), str):
            continue  # never accept private material or unnamed keys as verification keys
        key = OKPAlgorithm.from_jwk(dict(jwk))
        if isinstance(key, Ed25519PublicKey):
            keys[jwk["kid"]] = key
    return keys


def _decode_header(segment: str) -> dict[str, Any]:
    try:
        header = json.loads(b64url_decode(segment))
    except (binascii.Error, ValueError, RecursionError) as exc:  # JSON and Unicode errors too
        raise PassportInvalid("the token header is not base64url JSON", "malformed") from exc
    if not isinstance(header, dict):
        raise PassportInvalid("the token header is not a JSON object", "malformed")
    return header


def read_header(token: str) -> dict[str, Any]:
    """Return the unverified header after the cheap structural checks."""
    if not isinstance(token, str) or not token:
        raise PassportInvalid("the token is empty or not a string", "malformed")
    if len(token) > MAX_TOKEN_BYTES:
        raise PassportInvalid(f"the token is larger than {MAX_TOKEN_BYTES} bytes", "too_large")
    if token.count(".") != 2:
        raise PassportInvalid("the token is not a JWS compact serialization", "malformed")
    header = _decode_header(token.split(".", 1)[0])
    if "crit" in header:
        raise PassportInvalid(
            "the token requires header extensions ('crit'); none are supported", "unsupported_crit"
        )
    if header.get("alg") != ALGORITHM:
        raise PassportInvalid(
            f"algorithm {header.get('alg')!r} is not accepted; passports are signed with EdDSA",
            "unsupported_algorithm",
        )
    if header.get("typ") != TOKEN_TYPE:
        raise PassportInvalid(
            f"token type {header.get('typ')!r} is not {TOKEN_TYPE!r}", "wrong_type"
        )
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise PassportInvalid("the token header names no signing key (kid)", "unknown_key")
    carried = [name for name in KEY_CARRYING_HEADERS if name in header]
    if carried:
        raise PassportInvalid(
            f"the token header carries key material ({', '.join(carried)}); "
            "keys are chosen by kid only",
            "malformed",
        )
    return header


def _check_protocol(claims: dict[str, Any]) -> None:
    """Refuse a passport written in a protocol version this SDK does not know (fail closed)."""
    rev = claims.get("rev")
    if not isinstance(rev, dict) or "v" not in rev:
        return  # issued before versions were written: version 1
    problem = unsupported_protocol(rev["v"])
    if problem:
        raise PassportInvalid(f"the passport's {problem}", "unsupported_protocol")


def _check_registered_claims(claims: dict[str, Any], issuer: str, audience: str) -> None:
    for name in REQUIRED_CLAIMS:
        if claims.get(name) is None:
            raise PassportInvalid(f"the passport lacks the {name!r} claim", "missing_claim")
    if claims["iss"] != issuer:
        raise PassportInvalid(f"the passport was not issued by {issuer!r}", "wrong_issuer")
    aud = claims["aud"]
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise PassportInvalid(
            f"the passport is not meant for audience {audience!r}", "wrong_audience"
        )


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    """``nbf``/``iat`` may be up to CLOCK_SKEW_LEEWAY (or ``leeway``) ahead of ``now``; ``exp``
    must be later than ``now - leeway``."""
    for name in TIME_CLAIMS:
        value = claims[name]
        if type(value) not in (int, float) or not 0 <= value <= MAX_NUMERIC_DATE:
            raise PassportInvalid(f"the {name!r} claim is not a time in seconds", "malformed")
    early = max(leeway, CLOCK_SKEW_LEEWAY)
    if claims["iat"] > now + early or claims["nbf"] > now + early:
        raise PassportNotYetValid(
            f"the passport is not valid yet (nbf/iat more than {CLOCK_SKEW_LEEWAY} s ahead of "
            "this machine's clock: check this machine's clock)"
        )
    if claims["exp"] <= now - leeway:
        raise PassportExpired("the passport has expired")


def _check_claim_types(claims: dict[str, Any]) -> None:
    """What the guard and the registry read from the claims must have the type they expect."""
    for name in REQUIRED_TEXT_CLAIMS + OPTIONAL_TEXT_CLAIMS:  # the required ones are present
        if not isinstance(claims.get(name, ""), str):
            raise PassportInvalid(f"the {name!r} claim is not a string", "malformed")
    rev = claims.get("rev", {})
    if not isinstance(rev, dict) or not all(
        isinstance(value, str) for name, value in rev.items() if name != "v"
    ):
        raise PassportInvalid("the 'rev' claim is not an object of strings", "malformed")
    for name in ("scope", "jurisdiction"):
        value = claims[name]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise PassportInvalid(f"the {name!r} claim is not a list of strings", "malformed")
    try:
        parse_scope(claims["scope"])
        parse_jurisdiction(claims["jurisdiction"])
    except RuleError as exc:
        raise PassportInvalid(f"the passport's rules are malformed ({exc})", "malformed") from exc


def verify_token(
    token: str,
    keys: KeyLookup | Mapping[str, Ed25519PublicKey],
    *,
    issuer: str,
    audience: str,
    leeway: float = 0,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify ``token`` and return its claims, or raise a :class:`PassportError` subclass.

    ``keys`` maps a kid to a public key (a dict or a lookup function returning ``None`` when
    unknown). Checked in this order (README, "The token"): the header, the signature, the
    protocol version, the required claims, issuer, audience, the times against ``now`` (default:
    this machine's clock), the types of the other claims. ``nbf``/``iat`` get CLOCK_SKEW_LEEWAY
    seconds; ``exp`` gets only ``leeway`` (0: a guard never runs on an expired passport; the
    registry takes reports an hour after expiry).
    """
    header = read_header(token)
    lookup = keys.get if isinstance(keys, Mapping) else keys
    public_key = lookup(header["kid"])
    if public_key is None:
        raise PassportInvalid(f"signing key {header['kid']!r} is not known", "unknown_key")
    try:
        claims = jwt.decode(token, public_key, algorithms=[ALGORITHM], options=_SIGNATURE_ONLY)
    except jwt.InvalidSignatureError as exc:
        raise PassportInvalid("the signature does not match the token", "bad_signature") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise PassportInvalid(f"the token is malformed ({exc})", "malformed") from exc
    _check_protocol(claims)
    _check_registered_claims(claims, issuer, audience)
    _check_times(claims, time.time() if now is None else now, leeway)
    _check_claim_types(claims)
    return claims
