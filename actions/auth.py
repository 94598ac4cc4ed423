"""Agents authenticate to the action log with their own passport: ``Authorization: Bearer <token>``.

Used by ``POST /api/v1/actions`` and ``POST /api/v1/passports/self/renew`` (which refuses what
is not active itself). The token must verify (signature, kid, algorithm, issuer,
audience; expiry with an hour of leeway so spilled events can still be delivered) and name a
passport issued here to the token's subject. Revoked, superseded and expired-within-leeway
passports are accepted on purpose: what a killed agent did is audit evidence.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from agent_passport.errors import PassportError
from passports.models import Passport
from passports.services import verify_passport_token

_KEYWORD = b"bearer"
REPORTING_LEEWAY_SECONDS = 3600
AGENTS_ONLY_MESSAGE = (
    "Only an agent posts its actions (and renews its own passport), with its own passport: "
    "'Authorization: Bearer <passport token>'. Operator API tokens read the action log (GET) "
    "and renew passports (POST /api/v1/passports/{jti}/renew) with 'Token <key>'."
)


@dataclass(frozen=True, eq=False)
class PassportHolder:
    """``request.user`` for an agent that authenticated with its passport (not an operator)."""

    passport: Passport
    claims: dict[str, Any]

    is_authenticated = True
    is_anonymous = False
    is_active = True

    @property
    def pk(self) -> str:
        """Throttling key: one rate per agent, distinct from operator user ids."""
        return f"agent:{self.passport.agent_id}"

    def __str__(self) -> str:
        return f"agent {self.passport.agent_id} (passport {self.passport.jti})"


def _rejected(reason: str, detail: str) -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed({"detail": detail, "reason": reason})


class PassportBearerAuthentication(BaseAuthentication):
    """Authenticates an agent by its passport token; ``request.auth`` is the Passport."""

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if parts and parts[0].lower() == b"token":
            raise _rejected("operator_token", AGENTS_ONLY_MESSAGE)
        if not parts or parts[0].lower() != _KEYWORD:
            return None
        if len(parts) != 2:
            raise _rejected("malformed", "Authorization header must be 'Bearer <passport token>'.")
        if parts[1].startswith(b"aps_"):  # an operator token sent as Bearer
            raise _rejected("operator_token", AGENTS_ONLY_MESSAGE)
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise _rejected("malformed", "the token is not ASCII") from exc
        try:
            claims = verify_passport_token(token, leeway=REPORTING_LEEWAY_SECONDS)
            jti = uuid.UUID(str(claims["jti"]))
        except PassportError as exc:
            raise _rejected(exc.reason, str(exc)) from exc
        except ValueError as exc:
            raise _rejected("malformed", "the jti claim is not a UUID") from exc
        passport = Passport.objects.select_related("agent").filter(jti=jti).first()
        if passport is None:
            raise _rejected("unknown_passport", "no passport with this jti was issued here")
        if str(passport.agent_id) != claims["sub"]:
            raise _rejected("malformed", "the token subject does not match the passport's agent")
        return PassportHolder(passport=passport, claims=claims), passport

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="agent-passport"'


class IsPassportHolder(BasePermission):
    """Only an agent authenticated by its own passport (never an operator API token)."""

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, PassportHolder) and isinstance(request.auth, Passport)
