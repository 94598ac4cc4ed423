"""The resource-pattern matcher agrees with a reference model and never backtracks."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_passport.errors import RuleError
from agent_passport.globs import Glob
from agent_passport.rules import (
    MAX_RESOURCE_LENGTH,
    MAX_RULE_WILDCARDS,
    MAX_SCOPE_WILDCARDS,
    MAX_SEARCHING_RULES,
    Policy,
    parse_scope,
)
from test_rules import glob_matches

PROPERTY = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def grammatical(pattern: str) -> bool:
    """The grammar refuses a ``*`` between two ``**`` (tested below); the rest is matched."""
    try:
        Glob.compile(pattern)
    except ValueError:
        return False
    return True


def within_bounds(scope: list[str]) -> bool:
    """Is ``scope`` within the scope's matching bounds (tested in test_rules)?"""
    try:
        parse_scope(scope)
    except RuleError:
        return False
    return True


# Few letters, so that patterns and texts collide often; "/" and "*" where they matter.
patterns = (
    st.text(st.sampled_from("ab/*"), max_size=12) | st.text(st.sampled_from("a/**"), max_size=16)
).filter(grammatical)
texts = st.text(st.sampled_from("ab/"), max_size=16) | st.text(st.sampled_from("a/"), max_size=24)
# Pieces longer than the 8 characters str.find is trusted with, so that re's search runs too.
long_pieces = st.text(st.sampled_from("aab"), min_size=6, max_size=14)
long_patterns = (
    st.lists(
        st.tuples(st.sampled_from(["*", "**", "/*", "*/", "/"]), long_pieces),
        min_size=1,
        max_size=4,
    )
    .map(lambda pairs: "".join(w + piece for w, piece in pairs))
    .filter(grammatical)
)
long_texts = st.lists(long_pieces | st.sampled_from(["/", "a", "b"]), max_size=12).map("".join)


@PROPERTY
@given(pattern=patterns, text=texts)
def test_prop_matcher_agrees_with_the_reference_model(pattern, text):
    assert Glob.compile(pattern).matches(text) is glob_matches(pattern, text)


@PROPERTY
@given(pattern=long_patterns, text=long_texts)
def test_prop_long_pieces_agree_with_the_reference_model(pattern, text):
    assert Glob.compile(pattern).matches(text) is glob_matches(pattern, text)


@PROPERTY
@given(pattern=patterns, text=texts, before=texts, after=texts)
def test_prop_a_match_found_inside_longer_text_is_anchored(pattern, text, before, after):
    """Matching is of the whole resource: surrounding text matters exactly as the model says."""
    resource = before + text + after
    assert Glob.compile(pattern).matches(resource) is glob_matches(pattern, resource)


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("/src/**/test_*.py", ["/src/a/b/test_x.py", "/src//test_.py"], ["/src/a/test_/x.py"]),
        ("**/b/c/**", ["/b/c/", "a/b/c/d", "/b/b/c/y"], ["/b/x/c/", "/b/c"]),
        ("**x***y**", ["xy", "x/y"], ["yx"]),
        ("a**b**c", ["abc", "a/b/c", "axbxc"], ["acb", "ab"]),
        ("***", ["", "a/b"], []),
        ("*.txt", ["a.txt", ".txt"], ["a/b.txt", "a.txt/"]),
    ],
)
def test_examples(pattern, matching, not_matching):
    glob = Glob.compile(pattern)
    assert all(glob.matches(text) for text in matching)
    assert not any(glob.matches(text) for text in not_matching)


def test_a_pattern_without_wildcards_is_a_literal():
    assert Glob.compile("a.b/c").literal == "a.b/c"
    assert Glob.compile("a*").literal is None


# The backtracking regex took seconds on the first two (issue 8) and would take hours on the
# rest; the matcher answers at once. No timing here: before the fix these tests never finished.
WILD = MAX_RULE_WILDCARDS - 1
PATHOLOGICAL = [
    ("fs:read:*a*a*a*a*b", "a" * 200),
    ("net:connect:*.*.*.*:22", "." * 300),
    ("fs:read:" + "*a" * WILD + "*b", "a" * MAX_RESOURCE_LENGTH),
    ("fs:read:**" + "a*" * WILD + "b", "a" * MAX_RESOURCE_LENGTH),
    ("fs:read:" + "**a/" * WILD + "**b", "a/" * (MAX_RESOURCE_LENGTH // 2)),
]


@pytest.mark.parametrize(("rule", "resource"), PATHOLOGICAL)
def test_pathological_patterns_are_decided(rule, resource):
    domain, action, pattern = rule.split(":", 2)
    decision = Policy([rule], ["GLOBAL"]).decide(f"{domain}:{action}", resource)
    assert decision.allowed is glob_matches(pattern, resource) is False


LONG_PIECE = "a" * 490 + "ba"  # str.find compares it ~250,000 times against 1000 "a"s


@pytest.mark.parametrize(
    ("pattern", "piece"),
    [("**{}**", LONG_PIECE), ("**{}*", LONG_PIECE[::-1]), ("*{}*", LONG_PIECE)],
)
def test_a_long_piece_is_searched_in_the_worst_resource(pattern, piece):
    glob = Glob.compile(pattern.format(piece))
    assert not glob.matches("a" * MAX_RESOURCE_LENGTH)
    assert glob.matches("a" * 100 + piece + "a" * 100)


def test_a_scope_at_the_matching_bounds_is_decided():
    searching = [f"*:*:*a{i}x*" for i in range(MAX_SEARCHING_RULES)]
    rest = MAX_SCOPE_WILDCARDS - 2 * MAX_SEARCHING_RULES
    scope = searching + [f"*:*:*a{i}" for i in range(rest)] + ["fs:*:/workspace/**"] * 200
    decision = Policy(scope, ["GLOBAL"]).decide("fs:read", "a" * MAX_RESOURCE_LENGTH)
    assert not decision.allowed


def test_a_resource_over_the_limit_is_denied_with_the_reason():
    policy = Policy(["fs:read:**"], ["GLOBAL"])
    assert policy.decide("fs:read", "a" * MAX_RESOURCE_LENGTH).allowed
    decision = policy.decide("fs:read", "a" * (MAX_RESOURCE_LENGTH + 1))
    assert not decision.allowed
    assert decision.reason == f"the resource is longer than {MAX_RESOURCE_LENGTH} characters"


@PROPERTY
@given(
    rules=st.lists(
        st.tuples(st.booleans(), patterns.filter(bool) | st.sampled_from(["a**", "**", "a/b"])),
        max_size=8,
    ).filter(lambda rules: within_bounds([f"fs:read:{pattern}" for _, pattern in rules])),
    text=texts,
)
def test_prop_policy_names_the_first_matching_rule_in_scope_order(rules, text):
    """Literal and ``prefix**`` rules are looked up, not looped over: the order still holds."""
    scope = [("!" if deny else "") + f"fs:read:{pattern}" for deny, pattern in rules]
    matching = [rule for rule in scope if glob_matches(rule.split(":", 2)[2], text)]
    denies = [rule for rule in matching if rule.startswith("!")]
    expected_rule = denies[0] if denies else (matching[0] if matching else None)
    decision = Policy(scope, ["GLOBAL"]).decide("fs:read", text)
    assert decision.rule == expected_rule
    assert decision.allowed is (expected_rule is not None and not denies)


@pytest.mark.parametrize("matching", [0, 1, 100, 127, 128, 200, 251])
def test_the_first_of_many_prefix_rules_in_scope_order_is_named(matching):
    """The first matching ``prefix**`` rule is found by halving the prefixes."""
    scope = [f"fs:read:/d/{i}/**" for i in range(252)] + ["fs:read:/d/**", "fs:read:/**"]
    policy = Policy(scope, ["GLOBAL"])
    assert policy.decide("fs:read", f"/d/{matching}/x").rule == f"fs:read:/d/{matching}/**"
    assert policy.decide("fs:read", "/d/x").rule == "fs:read:/d/**"
    assert policy.decide("fs:read", "/e").rule == "fs:read:/**"
    assert Policy(scope[::-1], ["GLOBAL"]).decide("fs:read", f"/d/{matching}/x").rule == (
        "fs:read:/**"
    )
