"""Inputs more than one bench uses."""

from __future__ import annotations


def policy_rules() -> list[str]:
    """50 realistic rules spread over domains, with wildcards and a few denies."""
    rules = [f"fs:read:/srv/data/team{i}/**" for i in range(12)]
    rules += [f"fs:write:/srv/out/team{i}/*" for i in range(8)]
    rules += [f"net:connect:svc{i}.internal.example.com:443" for i in range(10)]
    rules += [f"tool:{name}:*" for name in ("shell", "browser", "python", "sql", "git")]
    rules += [f"data:read:tenant{i}/*" for i in range(6)]
    rules += [
        "!fs:read:/srv/data/**/secrets/**",
        "!fs:write:/srv/out/*/private*",
        "!net:connect:*.evil.example.com:*",
        "!data:read:tenant0/vip-*",
        "gpu:use",
        "proc:exec:/usr/bin/*",
        "*:read:/public/**",
        "!*:*:/etc/**",
        "tool:*:sandbox",
    ]
    assert len(rules) == 50, len(rules)
    return rules
