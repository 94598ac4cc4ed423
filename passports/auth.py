"""API token authentication: ``Authorization: Token <key>``, stored as a SHA-256 digest."""

import hashlib
import secrets

from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from passports.models import ApiToken

_KEYWORD = b"token"
_PASSPORT_KEYWORD = b"bearer"
WRONG_SCHEME = (
    "Operator API tokens are sent as 'Authorization: Token <key>'. 'Bearer' carries an agent's "
    "passport and is accepted only by POST /api/v1/actions."
)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_token(*, user: User) -> str:
    """Create a token for ``user`` and return the key; it cannot be recovered later."""
    key = "aps_" + secrets.token_urlsafe(32)
    ApiToken.objects.create(digest=_digest(key), prefix=key[4:12], user=user)
    return key


class ApiTokenAuthentication(BaseAuthentication):
    """Looks a token up by the digest of the presented key.

    The lookup compares digests of a 256-bit random key, so timing reveals nothing useful about
    any stored key; no plaintext key is ever stored.
    """

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if parts and parts[0].lower() == _PASSPORT_KEYWORD:
            raise exceptions.AuthenticationFailed(WRONG_SCHEME)
        if not parts or parts[0].lower() != _KEYWORD:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Token <key>'.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token.") from exc
        token = ApiToken.objects.select_related("user").filter(digest=_digest(key)).first()
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid token.")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(digest=token.digest).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return "Token"
