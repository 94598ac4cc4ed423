"""Exception types raised by the SDK. Each message is meant to be read by a person."""


class RuleError(ValueError):
    """A scope rule or jurisdiction code is malformed. ``rule`` names the offending entry."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"invalid rule {rule!r}: {message}")


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


class PassportExpired(PassportError):
    reason = "expired"


class PassportNotYetValid(PassportError):
    reason = "not_yet_valid"
