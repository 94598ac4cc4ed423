"""Tests for the plain-Python scope / jurisdiction rule engine (agent_passport.rules).

No database and no Django: everything here exercises pure functions and the Policy class.
"""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_passport.errors import RuleError
from agent_passport.rules import (
    _DECISION_CACHE_SIZE,
    MAX_REGIONS,
    MAX_RULE_LENGTH,
    MAX_RULE_WILDCARDS,
    MAX_RULES,
    MAX_SCOPE_WILDCARDS,
    MAX_SEARCHING_RULES,
    Decision,
    Policy,
    decide,
    parse_jurisdiction,
    parse_rule,
    parse_scope,
    split_action,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GRAMMAR_EXAMPLES = [
    "tool:shell:exec",
    "net:connect:api.github.com:443",
    "fs:write:/workspace/**",
    "gpu:use",
    "data:read:eu/customers/*",
    "!net:connect:*:22",
]


def policy(*scope: str, jurisdiction: tuple[str, ...] = ("GLOBAL",)) -> Policy:
    return Policy(list(scope), list(jurisdiction))


# --------------------------------------------------------------------------------------------
# Reference model, written independently of the implementation, used by the property tests.
# --------------------------------------------------------------------------------------------


def _tokens(pattern: str) -> tuple[str, ...]:
    """Split a glob into "**", "*" and single literal characters (left-to-right, greedy)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append("**")
            i += 2
        elif pattern[i] == "*":
            out.append("*")
            i += 1
        else:
            out.append(pattern[i])
            i += 1
    return tuple(out)


def glob_matches(pattern: str, text: str) -> bool:
    tokens = _tokens(pattern)

    @cache
    def match(t: int, s: int) -> bool:
        if t == len(tokens):
            return s == len(text)
        token = tokens[t]
        if token == "**":
            return any(match(t + 1, k) for k in range(s, len(text) + 1))
        if token == "*":
            k = s
            while True:
                if match(t + 1, k):
                    return True
                if k == len(text) or text[k] == "/":
                    return False
                k += 1
        return s < len(text) and text[s] == token and match(t + 1, s + 1)

    return match(0, 0)


def reference_allowed(scope: list[str], domain: str, action: str, resource: str) -> bool:
    """Deny wins; otherwise allowed iff some allow entry matches (GLOBAL jurisdiction)."""
    allowed = False
    for entry in scope:
        deny = entry.startswith("!")
        parts = entry.removeprefix("!").split(":", 2)
        if parts[0] not in ("*", domain) or parts[1] not in ("*", action):
            continue
        if len(parts) == 3 and not glob_matches(parts[2], resource):
            continue
        if deny:
            return False
        allowed = True
    return allowed


def test_reference_glob_model_sanity():
    # Guard against a broken oracle making the property tests vacuous.
    assert glob_matches("/a/**", "/a/b/c")
    assert not glob_matches("/a/*", "/a/b/c")
    assert glob_matches("*", "")
    assert not glob_matches("*", "a/b")
    assert glob_matches("a*c", "abbc")
    assert not glob_matches("a.c", "abc")


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True)

# Characters a rule may carry in its resource: no whitespace, no control characters.
rule_chars = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    blacklist_characters="*\x1c\x1d\x1e\x1f\x85",
)
literal_resources = st.text(rule_chars, min_size=1, max_size=30)

REGEX_META = ".^$+?()[]{}|\\-"
meta_resources = st.text(st.sampled_from(REGEX_META + "ab/:"), min_size=1, max_size=12)

path_segments = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=8
)

# A small universe so random scopes and random queries actually collide.
SMALL_DOMAINS = ["fs", "net", "tool"]
SMALL_ACTIONS = ["read", "write", "exec"]
SMALL_PATTERNS = ["*", "**", "a", "a/*", "a/**", "*/b", "a/b", "**/b", "a*", "*.txt", "a/*/c"]
SMALL_RESOURCES = ["", "a", "b", "a/b", "a/c", "a/b/c", "x/b", "a.txt", "ab", "a/x/c", "/a"]

small_rules = st.builds(
    lambda deny, dom, act, pat: (
        ("!" if deny else "") + f"{dom}:{act}" + (f":{pat}" if pat is not None else "")
    ),
    st.booleans(),
    st.sampled_from([*SMALL_DOMAINS, "*"]),
    st.sampled_from([*SMALL_ACTIONS, "*"]),
    st.none() | st.sampled_from(SMALL_PATTERNS),
)
small_scopes = st.lists(small_rules, max_size=8)
small_queries = st.tuples(
    st.sampled_from(SMALL_DOMAINS), st.sampled_from(SMALL_ACTIONS), st.sampled_from(SMALL_RESOURCES)
)


# --------------------------------------------------------------------------------------------
# parse_rule / parse_scope errors name the bad rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty rule"),
        ("tool", "expected domain:action[:resource]"),
        ("!", "expected domain:action[:resource]"),
        ("!tool", "expected domain:action[:resource]"),
        (":shell", "domain ''"),
        ("tool:", "action ''"),
        ("Tool:shell", "domain 'Tool'"),
        ("tool:Shell", "action 'Shell'"),
        ("to*l:shell", "wildcards inside a name are not supported"),
        ("tool:sh*", "wildcards inside a name are not supported"),
        ("**:shell", "domain '**'"),
        ("-tool:shell", "domain '-tool'"),
        ("!!tool:shell", "domain '!tool'"),
        ("tööl:shell", "domain 'tööl'"),
        ("tool:shell:", "empty resource"),
        ("!tool:shell:", "empty resource"),
        ("tool: shell", "whitespace"),
        ("tool:shell:a b", "whitespace"),
        ("tool:shell\n", "whitespace"),
        ("tool:shell\t", "whitespace"),
        ("tool:shell:\x00", "control characters"),
        ("tool:shell:\x7f", "control characters"),
        ("tool:shell:a\u00a0b", "whitespace"),
    ],
)
def test_parse_rule_error_names_rule(text, hint):
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    assert info.value.rule == text
    message = str(info.value)
    assert message.startswith(f"invalid rule {text!r}: ")
    assert hint in message
    assert isinstance(info.value, ValueError)


def test_parse_rule_too_long_is_truncated_in_error():
    text = "fs:read:" + "a" * (MAX_RULE_LENGTH - len("fs:read:") + 1)
    assert len(text) == MAX_RULE_LENGTH + 1
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    assert info.value.rule == text[:40] + "..."
    assert f"longer than {MAX_RULE_LENGTH} characters" in str(info.value)


def test_parse_rule_at_max_length_is_accepted():
    text = "fs:read:" + "a" * (MAX_RULE_LENGTH - len("fs:read:"))
    assert len(text) == MAX_RULE_LENGTH
    rule = parse_rule(text)
    assert rule.matches_resource("a" * (MAX_RULE_LENGTH - len("fs:read:")))


@pytest.mark.parametrize("value", [42, None, b"tool:shell", ["tool:shell"]])
def test_parse_rule_non_string(value):
    with pytest.raises(RuleError) as info:
        parse_rule(value)
    assert info.value.rule == repr(value)
    assert "must be a string" in str(info.value)


def test_parse_scope_error_names_the_bad_entry_not_its_neighbours():
    with pytest.raises(RuleError) as info:
        parse_scope(["tool:shell", "gpu:use", "net connect", "fs:read"])
    assert info.value.rule == "net connect"
    assert "'net connect'" in str(info.value)
    assert "tool:shell" not in str(info.value)


@pytest.mark.parametrize("scope", ["tool:shell", 42, None])
def test_parse_scope_rejects_non_list(scope):
    with pytest.raises(RuleError) as info:
        parse_scope(scope)
    assert info.value.rule == repr(scope)
    assert "list of rule strings" in str(info.value)


def test_parse_scope_limits_rule_count():
    assert len(parse_scope(["gpu:use"] * MAX_RULES)) == MAX_RULES
    with pytest.raises(RuleError) as info:
        parse_scope(["gpu:use"] * (MAX_RULES + 1))
    assert info.value.rule == f"{MAX_RULES + 1} rules"
    assert f"at most {MAX_RULES}" in str(info.value)


REALISTIC_RULES = [
    "fs:*:/workspace/**",
    "fs:read:/workspace/**/*.py",
    "net:connect:*.*.*.*:443",
    "data:read:eu/customers/*",
    "proc:exec:*miner*",
    "!fs:*:**/.ssh/**",
    "!net:connect:*.evil.example.com:*",
]


def test_realistic_rules_are_within_the_matching_bounds():
    assert [rule.text for rule in parse_scope(REALISTIC_RULES)] == REALISTIC_RULES


def test_parse_rule_limits_wildcards():
    at_bound = "fs:read:/w/**/" + "*-" * (MAX_RULE_WILDCARDS - 1)
    assert parse_rule(at_bound).resource.wildcards == MAX_RULE_WILDCARDS
    with pytest.raises(RuleError) as info:
        parse_rule(at_bound + "*")
    assert info.value.rule == at_bound + "*"
    assert f"more than {MAX_RULE_WILDCARDS} wildcards" in str(info.value)


@pytest.mark.parametrize("text", ["fs:read:**a*b**", "fs:read:**/b/*/c/**", "fs:read:/**/*/**/x"])
def test_parse_rule_refuses_a_star_between_two_double_stars(text):
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    assert info.value.rule == text
    assert "a '*' between two '**' is not supported" in str(info.value)


@pytest.mark.parametrize("text", ["fs:read:**a**b**", "fs:read:*/**/x/**/*.py", "fs:read:**a***"])
def test_literal_text_between_two_double_stars_is_accepted(text):
    assert parse_rule(text).resource is not None


def test_parse_scope_limits_wildcards_but_not_prefix_rules():
    at_bound = [f"fs:read:/d{i}/*" for i in range(MAX_SCOPE_WILDCARDS)]
    prefixes = [f"fs:read:/p{i}/**" for i in range(MAX_RULES - MAX_SCOPE_WILDCARDS - 1)]
    assert len(parse_scope(at_bound + prefixes)) == MAX_RULES - 1
    with pytest.raises(RuleError) as info:
        parse_scope([*at_bound, *prefixes, "fs:read:/over/*"])
    assert info.value.rule == "fs:read:/over/*"
    assert f"more than {MAX_SCOPE_WILDCARDS} wildcards" in str(info.value)


def test_parse_scope_limits_rules_that_search():
    at_bound = [f"proc:exec:*miner{i}*" for i in range(MAX_SEARCHING_RULES)]
    assert len(parse_scope([*at_bound, "fs:read:/a/*", "fs:read:**.py"])) == MAX_SEARCHING_RULES + 2
    with pytest.raises(RuleError) as info:
        parse_scope([*at_bound, "!fs:*:**/.ssh/**"])
    assert info.value.rule == "!fs:*:**/.ssh/**"
    assert f"more than {MAX_SEARCHING_RULES} rules with literal text" in str(info.value)


def test_parse_scope_accepts_any_iterable_and_keeps_order():
    rules = parse_scope(iter(["gpu:use", "!net:connect:*:22"]))
    assert [r.text for r in rules] == ["gpu:use", "!net:connect:*:22"]
    assert parse_scope([]) == ()


def test_policy_construction_reports_bad_rule():
    with pytest.raises(RuleError) as info:
        Policy(["tool:shell", "BAD:rule"], ["EU"])
    assert info.value.rule == "BAD:rule"


@pytest.mark.parametrize(
    ("regions", "rule", "hint"),
    [
        ([], "[]", "at least one region"),
        ("EU", "'EU'", "list of region codes"),
        (["EU", "XX"], "XX", "not a region"),
        (["ZZ-1"], "ZZ-1", "unknown country 'ZZ'"),
    ],
)
def test_parse_jurisdiction_errors(regions, rule, hint):
    with pytest.raises(RuleError) as info:
        parse_jurisdiction(regions)
    assert info.value.rule == rule
    assert str(info.value).startswith("invalid region ")
    assert hint in str(info.value)


def test_parse_jurisdiction_normalizes_and_deduplicates():
    assert parse_jurisdiction(["de", " DE ", "eu", "us-ca", "EU"]) == ("DE", "EU", "US-CA")


def test_parse_jurisdiction_limits_region_count():
    from agent_passport.regions import COUNTRIES

    codes = sorted(COUNTRIES)
    assert len(parse_jurisdiction(codes[:MAX_REGIONS])) == MAX_REGIONS
    with pytest.raises(RuleError) as info:
        parse_jurisdiction(codes[: MAX_REGIONS + 1])
    assert info.value.rule == f"{MAX_REGIONS + 1} regions"


# --------------------------------------------------------------------------------------------
# Grammar examples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", GRAMMAR_EXAMPLES)
def test_grammar_examples_parse(text):
    rule = parse_rule(text)
    assert rule.text == text
    assert rule.deny is text.startswith("!")


@pytest.mark.parametrize(
    ("text", "domain", "action", "matching", "not_matching"),
    [
        ("tool:shell:exec", "tool", "shell", ["exec"], ["exe", "execx", "", "exec/"]),
        (
            "net:connect:api.github.com:443",
            "net",
            "connect",
            ["api.github.com:443"],
            ["apixgithub.com:443", "api.github.com", "api.github.com:4433"],
        ),
        (
            "fs:write:/workspace/**",
            "fs",
            "write",
            ["/workspace/", "/workspace/a", "/workspace/a/b/c.txt"],
            ["/workspace", "/workspacex/a", "/etc/passwd", "workspace/a"],
        ),
        ("gpu:use", "gpu", "use", ["", "0", "any/thing:at all"], []),
        (
            "data:read:eu/customers/*",
            "data",
            "read",
            ["eu/customers/42", "eu/customers/", "eu/customers/a.b"],
            ["eu/customers/42/orders", "eu/customers", "us/customers/42"],
        ),
        (
            "!net:connect:*:22",
            "net",
            "connect",
            ["evil.example:22", ":22", "10.0.0.1:22"],
            ["evil.example:2222", "evil.example:443", "a/b:22"],
        ),
    ],
)
def test_grammar_examples_fields_and_matching(text, domain, action, matching, not_matching):
    rule = parse_rule(text)
    assert (rule.domain, rule.action) == (domain, action)
    for resource in matching:
        assert rule.matches_resource(resource), resource
    for resource in not_matching:
        assert not rule.matches_resource(resource), resource


def test_rule_without_resource_has_no_pattern():
    assert parse_rule("gpu:use").resource is None
    assert parse_rule("gpu:use:x").resource is not None


def test_resource_may_contain_colons_and_wildcard_names():
    rule = parse_rule("*:*:a:b:c")
    assert (rule.domain, rule.action) == ("*", "*")
    assert rule.matches_resource("a:b:c")
    assert not rule.matches_resource("a:b")


STANDARD = policy(*GRAMMAR_EXAMPLES, "net:connect")


@pytest.mark.parametrize(
    ("action", "resource", "allowed"),
    [
        ("tool:shell:exec", None, True),
        ("tool:shell", "exec", True),
        ("tool:shell:rm", None, False),
        ("tool:shell", None, False),
        ("tool:python:exec", None, False),
        ("net:connect:api.github.com:443", None, True),
        ("net:connect:example.org:443", None, True),  # plain net:connect covers it
        ("net:connect:example.org:22", None, False),  # ...but the deny wins
        ("net:connect", "api.github.com:22", False),
        ("net:connect", None, True),
        ("fs:write:/workspace/src/main.py", None, True),
        ("fs:write:/etc/passwd", None, False),
        ("fs:read:/workspace/src/main.py", None, False),
        ("gpu:use", None, True),
        ("gpu:use:cuda:0", None, True),
        ("gpu:reserve", None, False),
        ("data:read:eu/customers/42", None, True),
        ("data:read:eu/customers/42/secrets", None, False),
        ("data:write:eu/customers/42", None, False),
        ("proc:exec:ls", None, False),
    ],
)
def test_grammar_examples_decisions(action, resource, allowed):
    decision = STANDARD.decide(action, resource)
    assert isinstance(decision, Decision)
    assert decision.allowed is allowed
    assert bool(decision) is allowed


# --------------------------------------------------------------------------------------------
# Semantics: deny wins, deny by default, wildcards, empty resource
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    list(itertools.permutations(["net:connect", "!net:connect:*:22", "*:*"])),
)
def test_deny_wins_regardless_of_order(scope):
    p = policy(*scope)
    denied = p.decide("net:connect:host:22")
    assert not denied
    assert denied.rule == "!net:connect:*:22"
    assert "'!net:connect:*:22'" in denied.reason
    assert p.decide("net:connect:host:443").allowed


@pytest.mark.parametrize(
    "deny",
    ["!tool:shell", "!tool:*", "!*:shell", "!*:*", "!tool:shell:**", "!tool:shell:rm", "!*:*:*"],
)
def test_deny_through_any_wildcard_form_wins(deny):
    for scope in ([deny, "tool:shell:rm"], ["tool:shell:rm", deny]):
        decision = policy(*scope).decide("tool:shell:rm")
        assert not decision.allowed
        assert decision.rule == deny


def test_deny_only_scope_allows_nothing():
    p = policy("!net:connect:*:22")
    assert not p.decide("net:connect:host:443")
    assert "not in the passport's scope" in p.decide("net:connect:host:443").reason


def test_deny_by_default_with_empty_scope():
    p = policy()
    for action in ["tool:shell:exec", "gpu:use", "fs:read:/", "a:b"]:
        decision = p.decide(action)
        assert not decision.allowed
        assert decision.rule is None
        assert "not in the passport's scope" in decision.reason


def test_deny_by_default_for_unlisted_domain_and_action():
    p = policy("tool:shell", "fs:*")
    assert not p.decide("tool:python")
    assert not p.decide("net:shell")
    assert p.decide("fs:anything").allowed
    assert p.decide("tool:shell").allowed


def test_wildcard_domain_and_action():
    p = policy("*:exec")
    assert p.decide("proc:exec").allowed
    assert p.decide("tool:exec:ls").allowed
    assert not p.decide("proc:kill")
    q = policy("*:*")
    assert q.decide("anything:goes:at/all").allowed


def test_single_star_never_crosses_slash():
    p = policy("fs:read:/data/*")
    assert p.decide("fs:read:/data/a.csv").allowed
    assert p.decide("fs:read:/data/").allowed
    assert not p.decide("fs:read:/data/sub/a.csv")
    assert not p.decide("fs:read:/data")
    q = policy("fs:read:*")
    assert q.decide("fs:read:file").allowed
    assert not q.decide("fs:read:/file")
    assert not q.decide("fs:read:dir/file")


def test_double_star_crosses_slash():
    p = policy("fs:read:/data/**")
    assert p.decide("fs:read:/data/sub/dir/a.csv").allowed
    assert p.decide("fs:read:/data/").allowed
    assert not p.decide("fs:read:/data")
    assert not p.decide("fs:read:/database/x")
    q = policy("fs:read:**")
    assert q.decide("fs:read:/a/b/c").allowed
    r = policy("fs:read:/src/**/test_*.py")
    assert r.decide("fs:read:/src/pkg/sub/test_rules.py").allowed
    assert not r.decide("fs:read:/src/pkg/sub/test_rules.pyc")
    assert not r.decide("fs:read:/src/pkg/sub/test_/x.py")


def test_mixed_stars():
    rule = parse_rule("fs:read:***")  # "**" followed by "*": anything
    assert rule.matches_resource("a/b/c")
    rule = parse_rule("fs:read:a*b*c")
    assert rule.matches_resource("abc")
    assert rule.matches_resource("axxbyyc")
    assert not rule.matches_resource("ax/bc")


def test_rule_without_resource_covers_every_resource():
    p = policy("gpu:use")
    for resource in ["", "0", "cuda:0", "/a/b/c", "x" * 1000, "line\nbreak", "ü/ñ"]:
        assert p.decide("gpu:use", resource).allowed, resource
    assert p.decide("gpu:use").allowed


def test_action_without_resource_is_the_empty_resource():
    assert split_action("fs:write") == ("fs", "write", "")
    assert split_action("fs:write:") == ("fs", "write", "")
    assert split_action("fs:write", None) == ("fs", "write", "")
    for pattern in ("*", "**"):
        assert policy(f"fs:write:{pattern}").decide("fs:write").allowed
    assert not policy("fs:write:/workspace/**").decide("fs:write")
    assert not policy("fs:write:x").decide("fs:write")
    assert not policy("fs:write:?").decide("fs:write")
    # a deny with "*" also covers the empty resource
    assert not policy("fs:write", "!fs:write:*").decide("fs:write")


def test_resource_in_action_or_separate_is_equivalent():
    for action, resource in [
        ("net:connect", "api.github.com:443"),
        ("net:connect", "h:22"),
        ("fs:write", "/workspace/x"),
        ("data:read", "eu/customers/1/2"),
    ]:
        assert (
            STANDARD.decide(f"{action}:{resource}").allowed
            == STANDARD.decide(action, resource).allowed
        )


def test_split_action_keeps_colons_in_resource():
    assert split_action("net:connect:host:443") == ("net", "connect", "host:443")
    with pytest.raises(ValueError, match="resource given twice"):
        split_action("net:connect:host", "other")


@pytest.mark.parametrize(
    "action",
    [
        "",
        "tool",
        "tool:",
        ":shell",
        "::",
        "Tool:shell",
        "tool:SHELL",
        "*:shell",
        "tool:*",
        "tool:sh ell",
        " tool:shell",
        "-tool:shell",
        "tööl:shell",
        "tool\x00:shell",
        None,
        42,
    ],
)
def test_malformed_actions_are_denied_not_raised(action):
    p = policy("*:*", "tool:shell")
    decision = p.decide(action)
    assert decision.allowed is False
    assert decision.rule is None
    assert decision.reason
    assert decide(p, action).allowed is False
    assert decide({"scope": ["*:*"], "jurisdiction": ["GLOBAL"]}, action).allowed is False


def test_malformed_action_reason_is_readable():
    decision = policy("*:*").decide("Tool:shell")
    assert "malformed action 'Tool:shell'" in decision.reason
    decision = policy("*:*").decide("net:connect:h", "h")
    assert "resource given twice" in decision.reason


@pytest.mark.parametrize(("scope", "action"), [("tool:*", "tool:shell\n"), ("*:*", "tool\n:shell")])
def test_action_name_with_trailing_newline_is_malformed(scope, action):
    assert policy(scope).decide(action).allowed is False


@pytest.mark.parametrize(
    ("action", "resource"),
    [(b"tool:shell", None), (["tool:shell"], None), ("tool:shell", 5)],
)
def test_non_string_action_input_is_denied_not_raised(action, resource):
    assert policy("tool:shell:*").decide(action, resource).allowed is False


# --------------------------------------------------------------------------------------------
# Jurisdiction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passport_regions", "region", "allowed"),
    [
        (["GLOBAL"], None, True),
        (["EU"], None, False),
        (["DE"], None, False),
        (["EU", "US"], None, False),
        (["EU", "GLOBAL"], None, True),
        (["EU"], "DE", True),
        (["EU"], "de", True),
        (["EU"], " de ", True),
        (["EU"], "DE-BY", True),
        (["EU"], "US", False),
        (["EU"], "CH", False),
        (["EU"], "NO", False),
        (["EU"], "EEA", False),
        (["EEA"], "EU", True),
        (["EEA"], "NO", True),
        (["EEA"], "DE", True),
        (["EEA"], "CH", False),
        (["US"], "US-CA", True),
        (["US"], "us-ca", True),
        (["US-CA"], "US", False),
        (["US-CA"], "US-CA", True),
        (["US-CA"], "US-NY", False),
        (["US-CA", "DE"], "DE", True),
        (["GLOBAL"], "JP", True),
        (["GLOBAL"], "US-CA", True),
        (["GLOBAL"], "EU", True),
        (["GLOBAL"], "GLOBAL", True),
        (["EU"], "GLOBAL", False),
        (["DE"], "EU", False),
    ],
)
def test_jurisdiction(passport_regions, region, allowed):
    p = policy("gpu:use", jurisdiction=tuple(passport_regions))
    decision = p.decide("gpu:use", jurisdiction=region)
    assert decision.allowed is allowed
    if allowed:
        assert decision.rule == "gpu:use"
    else:
        assert decision.rule is None


@pytest.mark.parametrize(
    ("region", "hint"),
    [
        ("XX", "not a region"),
        ("", "not a region"),
        ("Europe", "not a region"),
        ("ZZ-CA", "unknown country 'ZZ'"),
        ("US-CALI", "not a region"),
    ],
)
def test_unknown_jurisdiction_is_denied_with_reason(region, hint):
    p = policy("gpu:use")
    decision = p.decide("gpu:use", jurisdiction=region)
    assert decision.allowed is False
    assert decision.reason.startswith(f"invalid region {region!r}: ")
    assert hint in decision.reason


def test_jurisdiction_reasons_are_readable():
    p = policy("gpu:use", jurisdiction=("EU", "US-CA"))
    no_region = p.decide("gpu:use")
    assert no_region.reason == (
        "gpu:use names no jurisdiction and the passport is limited to EU, US-CA"
    )
    outside = p.decide("gpu:use:0", jurisdiction="jp")
    assert outside.reason == ("gpu:use:0 in JP is outside the passport's jurisdiction (EU, US-CA)")
    inside = p.decide("gpu:use", jurisdiction="de")
    assert inside.reason == "allowed by rule 'gpu:use' in DE"


def test_scope_is_checked_before_jurisdiction():
    p = policy("gpu:use", "!gpu:use:1", jurisdiction=("EU",))
    assert "is denied by rule '!gpu:use:1'" in p.decide("gpu:use:1", jurisdiction="DE").reason
    assert "not in the passport's scope" in p.decide("tool:x", jurisdiction="XX").reason


# --------------------------------------------------------------------------------------------
# Reasons, decide() entry point, cache
# --------------------------------------------------------------------------------------------


def test_reasons_name_the_rule():
    p = policy("fs:write:/workspace/**", "!fs:write:/workspace/.git/**")
    denied = p.decide("fs:write:/workspace/.git/config")
    assert denied.reason == (
        "fs:write:/workspace/.git/config is denied by rule '!fs:write:/workspace/.git/**'"
    )
    assert denied.rule == "!fs:write:/workspace/.git/**"
    allowed = p.decide("fs:write", "/workspace/a.py")
    assert allowed.reason == "allowed by rule 'fs:write:/workspace/**'"
    assert allowed.rule == "fs:write:/workspace/**"
    missing = p.decide("fs:read:/workspace/a.py")
    assert missing.reason == "fs:read:/workspace/a.py is not in the passport's scope"
    assert p.decide("fs:read").reason == "fs:read is not in the passport's scope"


def test_decide_accepts_claims_mapping():
    claims = {"scope": ["tool:shell:*"], "jurisdiction": ["EU"]}
    assert decide(claims, "tool:shell:ls", jurisdiction="FR").allowed
    assert not decide(claims, "tool:shell:ls", jurisdiction="US").allowed
    assert not decide(claims, "tool:shell:ls").allowed
    assert not decide({"scope": ["tool:shell:*"], "jurisdiction": ["GLOBAL"]}, "tool:python")


def test_decide_with_claims_missing_jurisdiction_raises_rule_error():
    with pytest.raises(RuleError, match="at least one region"):
        decide({"scope": ["gpu:use"]}, "gpu:use")


def test_cached_decisions_match_uncached():
    scope = [*GRAMMAR_EXAMPLES, "fs:read:**", "!fs:read:/secret/*"]
    regions = ("EU", "US-CA")
    cached = policy(*scope, jurisdiction=regions)
    queries = [
        (f"{d}:{a}", r, j)
        for d, a in [("fs", "read"), ("fs", "write"), ("net", "connect"), ("gpu", "use")]
        for r in [None, "", "/secret/x", "/workspace/a", "h:22", "h:443", "/secret/a/b"]
        for j in [None, "DE", "US", "US-CA", "XX"]
    ]
    first = [cached.decide(*q) for q in queries]
    second = [cached.decide(*q) for q in reversed(queries)][::-1]
    fresh = [policy(*scope, jurisdiction=regions).decide(*q) for q in queries]
    assert first == second == fresh
    assert any(d.allowed for d in first)
    assert any(not d.allowed for d in first)


def test_cache_overflow_keeps_decisions_correct():
    p = policy("fs:read:/ok/*", "!fs:read:/ok/bad")
    for i in range(
        _DECISION_CACHE_SIZE + 800
    ):  # more than the cache holds, forcing at least one clear
        expected = i % 7 != 0
        path = f"/ok/{i}" if expected else f"/no/{i}"
        assert p.decide("fs:read", path).allowed is expected
    assert not p.decide("fs:read:/ok/bad")
    assert p.decide("fs:read:/ok/1").allowed
    assert len(p._cache) <= _DECISION_CACHE_SIZE


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(domain=names, action=names, literal=literal_resources, other=literal_resources)
def test_prop_literal_resource_allows_exactly_itself(domain, action, literal, other):
    p = policy(f"{domain}:{action}:{literal}")
    assert p.decide(f"{domain}:{action}", literal).allowed
    assert p.decide(f"{domain}:{action}:{literal}").allowed
    assert p.decide(f"{domain}:{action}", other).allowed is (other == literal)
    for variant in (literal + "x", literal[:-1], "x" + literal, literal + "/"):
        assert not p.decide(f"{domain}:{action}", variant).allowed


def _matching_denies(domain: str, action: str, resource: str) -> list[str]:
    return [
        f"!{domain}:{action}",
        f"!{domain}:{action}:{resource}",
        f"!{domain}:{action}:**",
        f"!{domain}:*",
        f"!*:{action}",
        "!*:*",
        "!*:*:**",
    ]


@PROPERTY
@given(
    domain=names,
    action=names,
    resource=literal_resources,
    extra=st.lists(small_rules.filter(lambda r: not r.startswith("!")), max_size=6),
    deny_index=st.integers(min_value=0, max_value=6),
    data=st.data(),
)
def test_prop_matching_deny_anywhere_turns_allow_into_deny(
    domain, action, resource, extra, deny_index, data
):
    allow = data.draw(
        st.sampled_from(
            [f"{domain}:{action}", f"{domain}:{action}:{resource}", f"{domain}:*", "*:*:**"]
        )
    )
    scope = [allow, *extra]
    data.draw(st.randoms()).shuffle(scope)
    assert policy(*scope).decide(f"{domain}:{action}", resource).allowed

    deny = _matching_denies(domain, action, resource)[deny_index]
    position = data.draw(st.integers(min_value=0, max_value=len(scope)))
    scope.insert(position, deny)
    decision = policy(*scope).decide(f"{domain}:{action}", resource)
    assert not decision.allowed
    assert decision.rule is not None
    assert decision.rule.startswith("!")
    assert parse_rule(decision.rule).matches_resource(resource)
    assert repr(decision.rule) in decision.reason


@PROPERTY
@given(
    scope=small_scopes, queries=st.lists(small_queries, min_size=1, max_size=10), rnd=st.randoms()
)
def test_prop_permutation_never_changes_decisions(scope, queries, rnd):
    shuffled = list(scope)
    rnd.shuffle(shuffled)
    a, b = policy(*scope), policy(*shuffled)
    for domain, action, resource in queries:
        da = a.decide(f"{domain}:{action}", resource)
        db = b.decide(f"{domain}:{action}", resource)
        assert da.allowed == db.allowed
        assert (da.rule is None) == (db.rule is None)


@PROPERTY
@given(scope=small_scopes, queries=st.lists(small_queries, min_size=1, max_size=10))
def test_prop_policy_agrees_with_reference_model(scope, queries):
    p = policy(*scope)
    for domain, action, resource in queries:
        decision = p.decide(f"{domain}:{action}", resource)
        assert decision.allowed == reference_allowed(scope, domain, action, resource), (
            scope,
            domain,
            action,
            resource,
        )
        if decision.rule is not None:
            # the rule named by the decision is in the scope and really matches the query
            assert decision.rule in scope
            named = parse_rule(decision.rule)
            assert named.deny is not decision.allowed
            assert named.matches_resource(resource)


@PROPERTY
@given(segments=st.lists(path_segments, max_size=6))
def test_prop_double_star_prefix_matches_every_path_below(segments):
    path = "/a/" + "/".join(segments)
    p = policy("fs:read:/a/**")
    assert p.decide("fs:read", path).allowed
    assert not p.decide("fs:read", "/b/" + "/".join(segments)).allowed
    assert not p.decide("fs:read", "/ab/" + "/".join(segments)).allowed
    assert not p.decide("fs:read", "a/" + "/".join(segments)).allowed


@PROPERTY
@given(resource=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_prop_single_star_matches_iff_no_slash(resource):
    p = policy("fs:read:*")
    assert p.decide("fs:read", resource).allowed is ("/" not in resource)
    assert parse_rule("fs:read:*").matches_resource(resource) is ("/" not in resource)


@PROPERTY
@given(before=path_segments, after=path_segments)
def test_prop_single_star_never_matches_across_slash(before, after):
    assert not policy("fs:read:*").decide("fs:read", f"{before}/{after}").allowed


@PROPERTY
@given(literal=meta_resources, other=meta_resources)
def test_prop_regex_metacharacters_are_literal(literal, other):
    rule = parse_rule(f"x:y:{literal}")
    assert rule.matches_resource(literal)
    assert rule.matches_resource(other) is (other == literal)
    assert policy(f"x:y:{literal}").decide("x:y", other).allowed is (other == literal)


@pytest.mark.parametrize(
    ("pattern", "not_matching"),
    [
        ("a.b", ["axb", "a\nb"]),
        ("a+", ["aa", "aaa"]),
        ("a?", ["", "a"]),
        ("(x)", ["x"]),
        ("[ab]", ["a", "b"]),
        ("a{2}", ["aa"]),
        ("^a$", ["a"]),
        ("a|b", ["a", "b"]),
        ("\\d", ["1", "d"]),
        (".*", ["anything", ""]),
    ],
)
def test_regex_metacharacters_are_literal_examples(pattern, not_matching):
    rule = parse_rule(f"x:y:{pattern}")
    assert rule.matches_resource(pattern)
    for resource in not_matching:
        assert not rule.matches_resource(resource), resource


action_text = st.one_of(
    st.text(),
    st.builds(lambda d, a, r: f"{d}:{a}:{r}", names, names, st.text()),
    st.builds(lambda d, a: f"{d}:{a}", names, names),
)


@PROPERTY
@given(
    action=action_text,
    resource=st.none() | st.text(),
    jurisdiction=st.none() | st.text() | st.sampled_from(["DE", "eu", "US-CA", "GLOBAL"]),
    regions=st.sampled_from([("GLOBAL",), ("EU",), ("US-CA", "DE")]),
)
def test_prop_decide_never_raises(action, resource, jurisdiction, regions):
    scope = ["*:*:**", "!*:*:*secret*", "fs:read:/a/*", "!net:*", "tool:shell"]
    p = policy(*scope, jurisdiction=regions)
    decision = p.decide(action, resource, jurisdiction)
    assert isinstance(decision, Decision)
    assert isinstance(decision.allowed, bool)
    assert isinstance(decision.reason, str)
    assert decision.reason
    again = decide({"scope": scope, "jurisdiction": list(regions)}, action, resource, jurisdiction)
    assert again == decision


@PROPERTY
@given(action=st.text(), resource=st.none() | st.text())
def test_prop_empty_scope_denies_everything(action, resource):
    assert not policy().decide(action, resource)


def test_permutation_exhaustive_small_example():
    scope = ["fs:*:**", "!fs:write:/etc/**", "fs:write:/etc/hosts", "*:read:*", "!*:*:.env"]
    queries = [
        ("fs:write", "/etc/hosts"),
        ("fs:write", "/tmp/x"),
        ("fs:read", ".env"),
        ("net:read", "x"),
        ("net:read", "a/b"),
    ]
    baseline = [policy(*scope).decide(*q).allowed for q in queries]
    assert baseline == [False, True, False, True, False]
    for perm in itertools.permutations(scope):
        assert [policy(*perm).decide(*q).allowed for q in queries] == baseline
