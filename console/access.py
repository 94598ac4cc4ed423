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

MAX_FAILED_SIGN_INS = 5  # per user name, from one address
MAX_FAILED_SIGN_INS_PER_ADDRESS = 20  # whatever the names tried
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
    """Locks a user name from one client address after repeated failures, and an address that
    fails with many names, for 15 minutes.

    The name is counted as Django authenticates it (NFKC-normalised by ``UsernameField``, so
    full-width ``alice`` is ``alice``) and without regard to case, so no spelling of a name gets
    another five tries.
    """

    def _counters(self) -> list[tuple[str, int]]:
        username = self.fields["username"].to_python(self.data.get("username")) or ""
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        per_address = f"console-sign-in-failures:{address}"
        return [
            (f"{per_address}:{username.lower()[:150]}", MAX_FAILED_SIGN_INS),
            (per_address, MAX_FAILED_SIGN_INS_PER_ADDRESS),
        ]

    def clean(self):
        counters = self._counters()
        try:
            failures = cache.get_many([key for key, _ in counters])
        except Exception:  # the cache is Redis; an outage must not lock operators out
            failures = {}
        if any(failures.get(key, 0) >= limit for key, limit in counters):
            raise ValidationError(
                "Too many failed sign-ins; try again in 15 minutes.", code="throttled"
            )
        try:
            return super().clean()
        except ValidationError:
            try:
                for key, _ in counters:
                    cache.add(key, 0, LOCKOUT_SECONDS)
                    cache.incr(key)
            except Exception:
                logger.warning("sign-in throttling unavailable (cache down)")
            raise
