"""The resource-pattern matcher agrees with a reference model and never backtracks."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_passport.globs import Glob
from agent_passport.rules import MAX_RESOURCE_LENGTH, MAX_RULE_LENGTH, MAX_RULES, Policy
from test_rules import glob_matches

PROPERTY = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Few letters, so that patterns and texts collide often; "/" and "*" where they matter.
patterns = st.text(st.sampled_from("ab/*"), max_size=12) | st.text(
    st.sampled_from("a/**"), max_size=16
)
texts = st.text(st.sampled_from("ab/"), max_size=16) | st.text(st.sampled_from("a/"), max_size=24)


@PROPERTY
@given(pattern=patterns, text=texts)
def test_prop_matcher_agrees_with_the_reference_model(pattern, text):
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
        ("**/b/*/c/**", ["/b/x/c/", "a/b/x/c/d", "/b/b/x/c/y"], ["/b/x/y/c/", "/b/c/"]),
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
PATHOLOGICAL = [
    ("fs:read:*a*a*a*a*b", "a" * 200),
    ("net:connect:*.*.*.*:22", "." * 300),
    ("fs:read:" + "*a" * 30 + "*b", "a" * MAX_RESOURCE_LENGTH),
    ("fs:read:**" + "a*" * 30 + "b", "a" * MAX_RESOURCE_LENGTH),
    ("fs:read:" + "**a/" * 20 + "**b", "a/" * (MAX_RESOURCE_LENGTH // 2)),
    ("fs:read:**" + "/a*" * 20 + "**/b", "/a" * (MAX_RESOURCE_LENGTH // 2)),
]


@pytest.mark.parametrize(("rule", "resource"), PATHOLOGICAL)
def test_pathological_patterns_are_decided(rule, resource):
    domain, action, pattern = rule.split(":", 2)
    decision = Policy([rule], ["GLOBAL"]).decide(f"{domain}:{action}", resource)
    assert decision.allowed is glob_matches(pattern, resource) is False


def test_many_long_candidate_rules_are_decided():
    scope = [f"*:*:{'*a' * ((MAX_RULE_LENGTH - 5) // 2)}{i % 10}" for i in range(MAX_RULES)]
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
    ),
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
