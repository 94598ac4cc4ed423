"""Exception types raised by the SDK. Each message is meant to be read by a person."""


class RuleError(ValueError):
    """A scope rule is malformed. ``rule`` names the offending entry."""

    kind = "rule"

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"invalid {self.kind} {rule!r}: {message}")


class RegionError(RuleError):
    """A jurisdiction (a list of regions) or one region code in it is malformed or unknown."""

    kind = "region"


class GuardError(PermissionError):
    """Base class for every reason the guard refuses an action."""


class PassportError(Exception):
    """Base class for every reason a passport token cannot be used.

    ``reason`` is a short machine-readable code (``expired``, ``bad_signature``, ...).
    """

    reason = "invalid"

    def __init__(self, message: str, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(message)


class PassportInvalid(PassportError):
    """The token is malformed, badly signed, signed by an unknown key or meant for someone else."""


class PassportExpired(PassportError, GuardError):
    reason = "expired"


class PassportNotYetValid(PassportError, GuardError):
    reason = "not_yet_valid"


class ScopeDenied(GuardError):
    """The action is outside the passport's scope or jurisdiction."""


class PassportRevoked(GuardError):
    """The passport, its agent, its fleet or every agent has been revoked (the kill switch)."""


class RevocationStateStale(GuardError):
    """The guard cannot tell whether the passport is revoked, so it fails closed."""
