"""The console's tree head panel and "verify this event" page without a browser: who may see
them, unknown events, a head a witness refused, and an event the tree lost (deleted leaf)."""

import uuid

import pytest
from django.test import Client

from actions import transparency
from actions.models import ActionEvent
from passports.roles import Role
from tests.actions.test_audit import maintenance, post_events
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_browser(django_user_model) -> Client:
    client = Client()
    client.force_login(make_user(django_user_model, "vera-viewer", Role.VIEWER))
    return client


@pytest.fixture
def events(issue, settings, django_capture_on_commit_callbacks) -> list[str]:
    settings.AUDIT_WITNESSES = ["http://127.0.0.1:9/closed-port"]
    ids = post_events(issue()["token"], [("fs:read:/workspace/x", "allow")] * 4)
    with django_capture_on_commit_callbacks(execute=True):
        transparency.sign_tree_head()
    return ids


def html(client: Client, url: str) -> str:
    """The page with its whitespace runs collapsed (templates break lines anywhere)."""
    return " ".join(client.get(url).content.decode().split())


def test_a_viewer_sees_the_head_and_that_no_witness_took_it(viewer_browser, events):
    page = html(viewer_browser, "/actions/")
    assert '<span class="mono">4</span> events, signed' in page
    assert "not witnessed" in page
    assert 'refused by <span class="mono">http://127.0.0.1:9/closed-port</span>' in page
    assert f'href="/actions/{events[0]}/verify"' in page

    check = html(viewer_browser, f"/actions/{events[0]}/verify")
    assert 'id="verify-status">verified<' in check
    assert "Not witnessed" in check


def test_the_verify_page_needs_a_sign_in_and_a_known_event(client, viewer_browser, events):
    answer = client.get(f"/actions/{events[0]}/verify")
    assert answer.status_code == 302 and answer["Location"].startswith("/login/")
    assert viewer_browser.get(f"/actions/{uuid.uuid4()}/verify").status_code == 404
    assert viewer_browser.get("/actions/not-a-uuid/verify").status_code == 404
    assert viewer_browser.post(f"/actions/{events[0]}/verify").status_code == 405


def test_an_empty_log_has_no_head_yet(viewer_browser):
    assert "none yet: no event is covered by a signed head" in html(viewer_browser, "/actions/")


def test_a_deleted_neighbour_makes_the_proof_fail_with_the_tree_damage_named(
    viewer_browser, events
):
    with maintenance(open_=True):
        ActionEvent.objects.filter(pk=events[1]).delete()
    check = html(viewer_browser, f"/actions/{events[0]}/verify")
    assert 'id="verify-status">NOT VERIFIED<' in check
    assert "proof fails against the head: leaf 1 is missing (its event was deleted)" in check
