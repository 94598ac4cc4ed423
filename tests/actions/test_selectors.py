"""The action-log pattern filter matches in the database exactly as the rule engine does."""

import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions.models import ActionEvent
from actions.selectors import action_events
from agent_passport.globs import Glob
from agent_passport.rules import MAX_RESOURCE_LENGTH, MAX_RULE_WILDCARDS
from tests.actions.test_ingest import bearer, passport_for

pytestmark = pytest.mark.django_db

RESOURCES = [
    "",
    "a",
    "b",
    "ab",
    "a/b",
    "/a/b/",
    "a.b",
    "a%b",
    "a_b",
    "a\\b",
    "a[b]",
    "(a)+",
    "ä/b",
    "a/a/a/b",
    "a\nb",
    "a" * MAX_RESOURCE_LENGTH,
    "a/" * (MAX_RESOURCE_LENGTH // 2),
]


def grammatical(pattern: str) -> bool:
    """Whether the resource grammar accepts ``pattern`` (no ``*`` between two ``**``)."""
    try:
        Glob.compile(pattern)
    except ValueError:
        return False
    return True


@pytest.fixture
def logged(agent, operator) -> list[str]:
    """One denied ``fs:read`` event per resource in RESOURCES."""
    client = bearer(passport_for(agent, operator).token)
    events = [
        {
            "id": str(uuid.uuid4()),
            "action": "fs:read",
            "resource": resource,
            "decision": "deny",
            "reason": "not in scope",
            "at": time.time(),
        }
        for resource in RESOURCES
    ]
    response = client.post("/api/v1/actions", {"events": events}, format="json")
    assert response.status_code == 200, response.content
    return RESOURCES


def filtered(pattern: str) -> list[str]:
    return sorted(action_events(action=f"fs:read:{pattern}").values_list("resource", flat=True))


def expected(pattern: str) -> list[str]:
    glob = Glob.compile(pattern)
    return sorted(resource for resource in RESOURCES if glob.matches(resource))


@pytest.mark.parametrize(
    "pattern",
    ["a", "*", "**", "a*", "*b", "a/**", "**/b", "a%b", "a_b", "a\\b", "a[b]", "(a)+", "ä/*"],
)
def test_filter_agrees_with_the_rule_engine(logged, pattern):
    assert filtered(pattern) == expected(pattern)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pattern=st.text(st.sampled_from("ab/*.%_\\[]"), min_size=1, max_size=10).filter(grammatical))
def test_prop_filter_agrees_with_the_rule_engine(logged, pattern):
    assert filtered(pattern) == expected(pattern)


# Before the fix, SQLite ran these through Python's backtracking ``re`` (REGEXP) and never
# finished; no timing here, only an answer.
WILD = MAX_RULE_WILDCARDS - 1


@pytest.mark.parametrize(
    "pattern", ["*a" * WILD + "*b", "**" + "a*" * WILD + "b", "**a/" * WILD + "**b"]
)
def test_pathological_filter_patterns_answer(logged, viewer_api, pattern):
    response = viewer_api.get("/api/v1/actions", {"action": f"fs:read:{pattern}"})
    assert response.status_code == 200
    assert response.json()["results"] == []
    assert ActionEvent.objects.count() == len(RESOURCES)


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        ("*a" * MAX_RULE_WILDCARDS + "*b", f"more than {MAX_RULE_WILDCARDS} wildcards"),
        ("**" + "a/*" * 3 + "**b", "a '*' between two '**' is not supported"),
    ],
)
def test_filter_patterns_beyond_the_matching_bounds_are_refused(logged, viewer_api, pattern, hint):
    response = viewer_api.get("/api/v1/actions", {"action": f"fs:read:{pattern}"})
    assert response.status_code == 400
    assert hint in response.json()["errors"]["action"][0]
