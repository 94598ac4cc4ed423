"""The fast path of event validation never answers differently from the serializer."""

import math
import uuid

import pytest

from actions.api.serializers import ReportedActionSerializer, plainly_valid_event

PLAIN = {
    "id": str(uuid.uuid4()),
    "action": "fs:read",
    "resource": "/srv/data/x",
    "jurisdiction": "DE",
    "decision": "allow",
    "reason": "",
    "at": 1_790_000_000.25,
    "details": {"rule": "fs:*:/srv/**", "n": 3},
}
VARIANTS = [
    {},
    {"resource": None},
    {"resource": ""},
    {"resource": None, "action": "net:connect:1.2.3.4:22"},
    {"resource": None, "action": "Not An Action"},
    {"jurisdiction": None},
    {"details": {}},
    {"details": None},
    {"details": []},
    {"details": {"big": "x" * 5000}},
    {"details": {"nan": math.nan}},
    {"id": 5},
    {"id": "not-a-uuid"},
    {"id": "{" + str(uuid.uuid4()) + "}"},
    {"id": uuid.uuid4().hex},
    {"action": ""},
    {"action": " "},
    {"action": 3},
    {"action": "a" * 201},
    {"decision": "maybe"},
    {"decision": ["allow"]},
    {"decision": None},
    {"reason": None},
    {"reason": "r" * 501},
    {"resource": "r" * 5000},
    {"jurisdiction": "j" * 21},
    {"at": True},
    {"at": -1},
    {"at": 0},
    {"at": 10**20},
    {"at": "1790000000"},
    {"at": math.inf},
    {"extra": 1},
]
MISSING = ["resource", "jurisdiction", "reason", "details", "at", "id", "decision", "action"]


def cases() -> list[dict]:
    out = [{**PLAIN, **variant} for variant in VARIANTS]
    out += [{k: v for k, v in PLAIN.items() if k != name} for name in MISSING]
    return out


@pytest.mark.parametrize("raw", cases())
def test_fast_path_agrees_with_the_serializer(raw):
    serializer = ReportedActionSerializer(data=raw)
    valid = serializer.is_valid()
    fast = plainly_valid_event(raw)
    if fast is not None:  # the fast path only ever answers for valid events, identically
        assert valid and fast == dict(serializer.validated_data)


def test_plain_events_take_the_fast_path():
    for raw in cases()[:8]:
        if raw.get("details") is not None and raw.get("details") != []:
            assert plainly_valid_event(raw) is not None, raw
