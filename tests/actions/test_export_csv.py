"""The CSV export is opened in spreadsheets: cells an agent wrote never run as formulas."""

import csv
import io
import json
import time
import uuid

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

HOSTILE = ['=HYPERLINK("http://x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.fixture
def hostile_events(issue) -> list[dict]:
    agent_api = APIClient()
    agent_api.credentials(HTTP_AUTHORIZATION=f"Bearer {issue()['token']}")
    events = [
        {
            "id": str(uuid.uuid4()),
            "action": "fs:read",
            "resource": text,
            "decision": "deny",
            "reason": text,
            "at": time.time(),
        }
        for text in HOSTILE
    ]
    response = agent_api.post("/api/v1/actions", {"events": events}, format="json")
    assert response.json()["accepted"] == len(HOSTILE), response.content
    return events


def export(api, export_format: str) -> str:
    response = api.get(f"/api/v1/actions/export?format={export_format}")
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


def test_csv_cells_starting_with_a_formula_trigger_are_quoted(hostile_events, viewer_api):
    rows = list(csv.DictReader(io.StringIO(export(viewer_api, "csv"), newline="")))
    for column in ("resource", "reason"):
        assert sorted(row[column] for row in rows) == sorted("'" + text for text in HOSTILE)
    assert {row["action"] for row in rows} == {"fs:read"}  # harmless cells are unchanged


def test_jsonl_export_keeps_the_exact_text(hostile_events, viewer_api):
    lines = [json.loads(line) for line in export(viewer_api, "jsonl").splitlines()]
    assert sorted(e["reason"] for e in lines if "reason" in e) == sorted(HOSTILE)
