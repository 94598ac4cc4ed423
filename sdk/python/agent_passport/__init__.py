"""Agent Passport SDK: offline passport verification and the scope/jurisdiction rule engine.

Plain Python (no Django). The registry service imports the rule engine and token checks from
here, so the server and every agent interpret a rule in exactly the same way.
"""

from agent_passport.errors import (
    PassportError,
    PassportExpired,
    PassportInvalid,
    PassportNotYetValid,
    RuleError,
)
from agent_passport.rules import Decision, Policy, decide

__all__ = [
    "Decision",
    "PassportError",
    "PassportExpired",
    "PassportInvalid",
    "PassportNotYetValid",
    "Policy",
    "RuleError",
    "decide",
]
