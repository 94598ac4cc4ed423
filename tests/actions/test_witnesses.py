"""Witnesses: every signed tree head is published, after commit, to an append-only file, a
webhook (a real HTTP server on loopback) and Redis (the test's own key prefix); a failing sink
is recorded and does not stop the others, and gets the heads it missed once it is back. On
demand: ``manage.py sign_tree_head`` and ``POST /api/v1/audit/heads``."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from actions import tasks, transparency, witnesses
from actions.models import HeadWitness
from agent_passport.merkle import verify_head
from passports import signing
from tests.actions.test_audit import post_events

pytestmark = pytest.mark.django_db


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POSTed JSON body; answers ``status``
    after ``delay`` seconds."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 204
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                if receiver.status < 300:
                    receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"nope\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/heads?secret=s3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def heads_file(tmp_path):
    return tmp_path / "witness" / "heads.jsonl"


@pytest.fixture
def sinks(settings, receiver, heads_file):
    settings.AUDIT_WITNESSES = [f"file://{heads_file}", receiver.url, "redis:"]
    return settings.AUDIT_WITNESSES


@pytest.fixture
def token(issue):
    return issue()["token"]


def sign(capture) -> transparency.SignedTreeHead:
    """Sign a head and run what waits for the commit (the publication)."""
    with capture(execute=True):
        head = transparency.sign_tree_head()
    assert head is not None
    return head


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_head_reaches_the_file_the_webhook_and_redis(
    sinks, receiver, heads_file, token, settings, django_capture_on_commit_callbacks
):
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    subscriber = client.pubsub()
    subscriber.subscribe(witnesses.heads_channel())
    assert subscriber.get_message(timeout=1)["type"] == "subscribe"

    post_events(token, [("fs:read", "allow")] * 3)
    with django_capture_on_commit_callbacks() as pending:
        head = transparency.sign_tree_head()
    assert not heads_file.exists() and not receiver.bodies  # nothing before the commit
    for callback in pending:
        callback()

    document = head.document()
    assert verify_head(document, signing.all_public_keys()) is None
    assert lines(heads_file) == [document]
    assert receiver.bodies == [document]
    assert json.loads(client.get(witnesses.head_key())) == document
    assert witnesses.head_key() == f"{settings.REVOCATION_REDIS_PREFIX}:audit:head"
    message = subscriber.get_message(timeout=1)
    assert message["channel"] == f"{settings.REVOCATION_REDIS_PREFIX}:audit:heads"
    assert json.loads(message["data"]) == document
    subscriber.close()

    rows = HeadWitness.objects.filter(head=head).order_by("sink")
    port = receiver.server.server_port
    assert [(row.sink, row.error) for row in rows] == sorted(
        [
            (f"file://{heads_file}", ""),
            (f"http://127.0.0.1:{port}/heads", ""),  # no query: it may carry a secret
            (f"redis:{witnesses.head_key()}", ""),
        ]
    )
    assert len(witnesses.witnessed_by(head)) == 3

    post_events(token, [("fs:read", "allow")])
    second = sign(django_capture_on_commit_callbacks)
    assert [line["tree_size"] for line in lines(heads_file)] == [3, 4]
    assert [body["tree_size"] for body in receiver.bodies] == [3, 4]
    assert json.loads(client.get(witnesses.head_key()))["tree_size"] == second.tree_size


def test_a_failing_sink_is_recorded_and_catches_up_later_without_stopping_the_others(
    settings, receiver, heads_file, tmp_path, token, django_capture_on_commit_callbacks
):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the witness wants a directory")
    settings.AUDIT_WITNESSES = [
        f"file://{blocked}/heads.jsonl",
        receiver.url,
        "http://127.0.0.1:9/closed-port",
        f"file://{heads_file}",
    ]
    receiver.status = 503
    post_events(token, [("fs:read", "allow")] * 2)
    first = sign(django_capture_on_commit_callbacks)

    errors = dict(HeadWitness.objects.filter(head=first).values_list("sink", "error"))
    assert errors[f"file://{blocked}/heads.jsonl"].startswith(("FileExistsError", "NotADirectory"))
    assert errors[receiver.url.split("?")[0]] == "DeliveryFailed: HTTP 503: nope"
    assert errors["http://127.0.0.1:9/closed-port"].startswith("ConnectionError")
    assert errors[f"file://{heads_file}"] == ""  # after three failures, the last sink got it
    assert witnesses.witnessed_by(first) == [f"file://{heads_file}"]
    assert witnesses.refused_by(first)["http://127.0.0.1:9/closed-port"].startswith("Connection")

    receiver.status = 200  # back: the next publication delivers the missed head first
    post_events(token, [("fs:read", "allow")])
    second = sign(django_capture_on_commit_callbacks)
    assert [body["tree_size"] for body in receiver.bodies] == [first.tree_size, second.tree_size]
    assert [line["tree_size"] for line in lines(heads_file)] == [2, 3]
    assert receiver.url.split("?")[0] in witnesses.witnessed_by(first)
    assert receiver.url.split("?")[0] not in witnesses.refused_by(first)


def test_a_slow_webhook_is_given_up_on_after_the_timeout(
    settings, receiver, heads_file, token, django_capture_on_commit_callbacks
):
    settings.AUDIT_WITNESSES = [receiver.url, f"file://{heads_file}"]
    receiver.delay = 4.0
    post_events(token, [("fs:read", "allow")])
    started = time.monotonic()
    head = sign(django_capture_on_commit_callbacks)
    assert time.monotonic() - started < witnesses.TIMEOUT_SECONDS + 1.5
    error = HeadWitness.objects.get(head=head, sink=receiver.url.split("?")[0]).error
    assert error.startswith(("ReadTimeout", "ConnectionError")) and "timed out" in error
    assert lines(heads_file)[0]["tree_size"] == 1


def test_redis_never_goes_back_to_an_older_head(
    settings, token, django_capture_on_commit_callbacks
):
    settings.AUDIT_WITNESSES = ["redis:"]
    post_events(token, [("fs:read", "allow")])
    older = sign(django_capture_on_commit_callbacks)
    post_events(token, [("fs:read", "allow")])
    newer = sign(django_capture_on_commit_callbacks)
    witnesses.RedisSink("redis:").deliver(older.document())  # a late racer
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert json.loads(client.get(witnesses.head_key()))["tree_size"] == newer.tree_size


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.org/heads", "has no sink; known: file, http, https, redis"),
        ("file://elsewhere/heads.jsonl", "is not file:///absolute/path"),
    ],
)
def test_a_sink_url_that_cannot_work_is_refused(settings, url, message):
    settings.AUDIT_WITNESSES = [url]
    with pytest.raises(ImproperlyConfigured, match=message):
        witnesses.configured()


def test_the_beat_task_signs_and_publishes(
    settings, heads_file, token, django_capture_on_commit_callbacks
):
    settings.AUDIT_WITNESSES = [f"file://{heads_file}"]
    post_events(token, [("fs:read", "allow")] * 2)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.sign_tree_head() == 2
    assert tasks.sign_tree_head() is None
    assert [line["tree_size"] for line in lines(heads_file)] == [2]


def test_manage_sign_tree_head_prints_the_head(
    settings, heads_file, token, capsys, django_capture_on_commit_callbacks
):
    settings.AUDIT_WITNESSES = [f"file://{heads_file}", "http://127.0.0.1:9/closed-port"]
    with pytest.raises(CommandError, match="the action log is empty"):
        call_command("sign_tree_head")
    post_events(token, [("fs:read", "allow")] * 2)
    with django_capture_on_commit_callbacks(execute=True):
        call_command("sign_tree_head")
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed == lines(heads_file)[0] and printed["tree_size"] == 2
    call_command("sign_tree_head")
    out, err = capsys.readouterr()
    assert json.loads(out) == printed
    assert "unchanged: the log still has 2 event(s)" in err
    assert f"witnessed by file://{heads_file}" in err
    assert "NOT witnessed by http://127.0.0.1:9/closed-port: ConnectionError" in err


def test_post_audit_heads_signs_on_demand_for_operators(
    settings,
    heads_file,
    operator,
    operator_api,
    viewer_api,
    token,
    django_capture_on_commit_callbacks,
):
    settings.AUDIT_WITNESSES = [f"file://{heads_file}"]
    empty = operator_api.post("/api/v1/audit/heads")
    assert empty.status_code == 409
    assert empty.json()["errors"] == {"log": ["the action log is empty: no tree head to sign yet"]}
    post_events(token, [("fs:read", "allow")] * 3)

    with django_capture_on_commit_callbacks(execute=True):
        created = operator_api.post("/api/v1/audit/heads")
    assert created.status_code == 201
    assert created.json()["tree_size"] == 3 and lines(heads_file) == [created.json()]
    again = operator_api.post("/api/v1/audit/heads")
    assert again.status_code == 200 and again.json() == created.json()

    assert viewer_api.post("/api/v1/audit/heads").status_code == 403
    assert APIClient().post("/api/v1/audit/heads").status_code in (401, 403)
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(operator)
    refused = session.post("/api/v1/audit/heads")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
