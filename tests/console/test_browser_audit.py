"""The action log page in a real browser: the newest signed tree head and which witnesses took
it; "verify this event" checks the event's inclusion proof, and after a database administrator
edits the event (the maintenance escape hatch) the check names what changed.

Chromium as in test_browser.py (the system's, never downloaded). Screenshots go to the test's
tmp directory (``$SCREENSHOT_DIR`` if set).
"""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from actions import audit, transparency
from actions.models import ActionEvent
from agent_passport.audit import event_hash
from passports.roles import Role
from tests.actions.test_audit import maintenance, post_events
from tests.console.test_browser import (  # noqa: F401 (fixtures)
    _shared_connection,
    browser,
    page,
    sign_in,
    user_with,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def edit(event: ActionEvent, *, reason: str, rehash: bool) -> None:
    """What a DBA could do: change an event's content, and if ``rehash`` its hash as well."""
    with maintenance(open_=True):
        ActionEvent.objects.filter(pk=event.pk).update(reason=reason)
        if rehash:
            edited = ActionEvent.objects.get(pk=event.pk)
            new_hash = event_hash(audit.event_document(edited))
            ActionEvent.objects.filter(pk=event.pk).update(hash=new_hash)


def test_an_operator_verifies_an_event_then_sees_what_a_dba_changed(
    page,  # noqa: F811
    user_with,  # noqa: F811
    issue,
    settings,
    tmp_path,
    shots,
):
    heads_file = tmp_path / "heads.jsonl"
    settings.AUDIT_WITNESSES = [f"file://{heads_file}", "redis:"]
    token = issue()["token"]
    ids = post_events(
        token,
        [("fs:write:/workspace/a", "allow"), ("net:connect:203.0.113.9:22", "deny")]
        + [("fs:read:/workspace/b", "allow")] * 3,
    )
    head = transparency.sign_tree_head()  # committed: published to both witnesses
    assert head is not None and head.tree_size == 5
    assert heads_file.read_text().count("\n") == 1

    sign_in(page, user_with(Role.OPERATOR))
    page.goto("/actions/")
    panel = page.get_by_label("Newest signed tree head")
    expect(panel).to_contain_text("5 events, signed")
    expect(panel).to_contain_text(head.root_hash[:16])
    expect(panel).to_contain_text("witnessed by")
    expect(panel).to_contain_text(f"file://{heads_file}")
    expect(panel).to_contain_text(f"redis:{settings.REVOCATION_REDIS_PREFIX}:audit:head")
    page.screenshot(path=str(shots / "action-log-head.png"), full_page=True)

    target = ActionEvent.objects.get(pk=ids[1])
    page.get_by_role(
        "link", name=f"Verify this event (net:connect:203.0.113.9:22, #{target.seq})"
    ).click()
    expect(page).to_have_url(re.compile(rf"/actions/{target.pk}/verify$"))
    expect(page.locator("#verify-status")).to_have_text("verified")
    expect(page.locator("#verify-verdict")).to_contain_text(
        f"verified: leaf {target.leaf_index} of the signed head of size 5"
    )
    assert page.locator("#verify-status").evaluate("e => getComputedStyle(e).color") == (
        "rgb(20, 108, 46)"  # --ok: green
    )
    page.screenshot(path=str(shots / "verify-ok.png"), full_page=True)

    edit(target, reason="nothing to see here", rehash=False)
    page.reload()
    expect(page.locator("#verify-status")).to_have_text("NOT VERIFIED")
    expect(page.locator("#verify-verdict")).to_contain_text("content edited")
    expect(page.locator("#verify-verdict")).to_contain_text("(hash mismatch)")
    expect(page.locator("[data-check=proof]")).to_contain_text("proof fails against the head")
    page.screenshot(path=str(shots / "verify-content-edited.png"), full_page=True)

    edit(target, reason="nothing to see here either", rehash=True)  # a cleverer DBA
    page.reload()
    expect(page.locator("#verify-status")).to_have_text("NOT VERIFIED")
    expect(page.locator("[data-check=content]")).to_contain_text("as logged")
    expect(page.locator("#verify-verdict")).to_contain_text(
        f"proof fails against the head: leaf {target.leaf_index} with this content is not in "
        "the tree of size 5"
    )
    page.screenshot(path=str(shots / "verify-rehashed.png"), full_page=True)

    newer = post_events(token, [("tool:python:run", "allow")])[0]
    page.goto(f"/actions/{newer}/verify")
    expect(page.locator("#verify-verdict")).to_contain_text(
        "not yet covered by a signed head: the event is leaf 5, the newest head covers 5 event(s)"
    )
