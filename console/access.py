"""Who may see and do what in the console, and sign-in throttling."""

import logging
from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse

from passports.roles import Role, has_role, role_of

logger = logging.getLogger(__name__)

MAX_FAILED_SIGN_INS = 5
LOCKOUT_SECONDS = 15 * 60


def requires(minimum: Role) -> Callable:
    """Sign-in required, then the role: a viewer's forged POST to an operator view gets 403."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not has_role(request.user, minimum):
                raise PermissionDenied(f"the {minimum.value} role is required")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def role_context(request: HttpRequest) -> dict:
    """Template context: what the signed-in user may do (buttons are hidden otherwise)."""
    role = role_of(getattr(request, "user", None))
    return {
        "role": role,
        "can_operate": has_role(request.user, Role.OPERATOR) if role else False,
        "can_admin": has_role(request.user, Role.ADMIN) if role else False,
    }


class ThrottledAuthenticationForm(AuthenticationForm):
    """Locks a user name (per client address) after repeated failures, for 15 minutes."""

    def _key(self) -> str:
        username = (self.data.get("username") or "").strip().lower()[:150]
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        return f"console-sign-in-failures:{address}:{username}"

    def clean(self):
        try:
            failures = cache.get(self._key(), 0)
        except Exception:  # the cache is Redis; an outage must not lock operators out
            failures = 0
        if failures >= MAX_FAILED_SIGN_INS:
            raise ValidationError(
                "Too many failed sign-ins for this user; try again in 15 minutes.",
                code="throttled",
            )
        try:
            return super().clean()
        except ValidationError:
            try:
                cache.add(self._key(), 0, LOCKOUT_SECONDS)
                cache.incr(self._key())
            except Exception:
                logger.warning("sign-in throttling unavailable (cache down)")
            raise
