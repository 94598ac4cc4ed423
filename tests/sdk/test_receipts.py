"""An agent catches a log rewritten or truncated behind its back: the reporter keeps the receipts
of its posts (a real registry, pytest-django's live server), and check_log / ``agent-passport
audit-check`` later prove them against the live log. The tampering is what a database
administrator could do (the maintenance escape hatch), or a registry re-signing a rewritten tree
with its own key."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests

from actions import audit, transparency, witnesses
from actions.models import ActionEvent, HeadWitness, SignedTreeHead
from agent_passport.cli import main as cli
from agent_passport.receipts import MAX_HEADS, MAX_PROMISES, ReceiptStore, check_log
from agent_passport.reporter import ActionReporter
from passports import signing
from passports.services import issue_passport
from tests.actions.test_audit import maintenance

transactional = pytest.mark.django_db(transaction=True)  # the live server needs real commits
LATER = datetime.now(UTC) + timedelta(days=1)  # every promise is due by then


@pytest.fixture
def token(agent, operator) -> str:
    return issue_passport(
        agent=agent,
        scope=["fs:*:/workspace/**"],
        jurisdiction=["EU"],
        ttl_seconds=None,
        issued_by=operator,
    ).token


@pytest.fixture
def reporter(live_server, token, tmp_path):
    made = ActionReporter(
        f"{live_server.url}/api/v1/actions",
        token,
        spill_path=tmp_path / "spill.jsonl",
        flush_interval=0.05,
    ).start()
    yield made
    made.close(timeout=5)


def report(reporter: ActionReporter, count: int) -> None:
    now = time.time()
    for i in range(count):
        reporter.record(now, "fs:write", f"/workspace/f{i}", "DE", True, "ok")
    assert reporter.flush(timeout=10)


def check(live_server, token, reporter, **options):
    keys = signing.all_public_keys()
    return check_log(live_server.url, token, keys, reporter.receipts, now=LATER, **options)


def rewrite(leaf: int) -> None:
    """Edit one event and recompute its hash, as a DBA covering his tracks would."""
    event = ActionEvent.objects.get(leaf_index=leaf)
    event.decision = "deny"
    event.hash = audit.event_hash(audit.event_document(event))
    with maintenance(open_=True):
        ActionEvent.objects.filter(pk=event.pk).update(decision="deny", hash=event.hash)


@transactional
def test_an_honest_log_checks_out_and_settles_the_promises(live_server, token, reporter):
    report(reporter, 3)
    transparency.sign_tree_head()
    report(reporter, 5)  # its receipt carries the head of size 3
    transparency.sign_tree_head()
    assert [h["tree_size"] for h in reporter.receipts.heads()] == [3]
    assert len(reporter.receipts.promises()) == 2

    result = check(live_server, token, reporter)
    assert result.ok, result.problems
    assert (result.heads_checked, result.leaves_checked) == (1, 7)  # 3 + 4 sampled of 5
    assert result.latest["tree_size"] == 8
    assert reporter.receipts.promises() == []  # settled: the kept head of 8 now stands for them
    assert [h["tree_size"] for h in reporter.receipts.heads()] == [3, 8]


@transactional
def test_a_rewritten_and_re_signed_log_is_caught(live_server, token, reporter):
    report(reporter, 10)
    transparency.sign_tree_head()
    assert check(live_server, token, reporter).ok  # the agent keeps the head of 10
    rewrite(4)
    report(reporter, 10)
    transparency.sign_tree_head()  # the registry's own key signs the rewritten tree: valid
    result = check(live_server, token, reporter)
    assert not result.ok
    assert any(
        "log rewritten: the latest head (20 leaves) does not extend the head of 10 leaves" in p
        for p in result.problems
    ), result.problems


@transactional
def test_a_split_view_is_caught(live_server, token, reporter):
    """Another head for a size the agent saw: the registry re-signed a rewritten tree of the
    same size (as it might show a witness one head and the agent another)."""
    report(reporter, 10)
    transparency.sign_tree_head()
    assert check(live_server, token, reporter).ok  # the agent keeps the head of 10
    rewrite(7)
    transparency.sign_tree_head(force=True)
    result = check(live_server, token, reporter)
    assert len(result.problems) == 1, result.problems
    assert result.problems[0].startswith(
        "log rewritten: the latest head of 10 leaves has another root than the head of 10 leaves"
    )


@transactional
def test_a_truncated_log_is_caught(live_server, token, reporter):
    report(reporter, 10)
    transparency.sign_tree_head()
    report(reporter, 10)
    transparency.sign_tree_head()
    assert check(live_server, token, reporter).ok  # the agent keeps the head of 20
    with maintenance(open_=True):  # roll back to the head of 10, its witness records with it
        HeadWitness.objects.filter(head__tree_size=20).delete()
        SignedTreeHead.objects.filter(tree_size=20).delete()
        ActionEvent.objects.filter(leaf_index__gte=10).delete()
    result = check(live_server, token, reporter)
    assert len(result.problems) == 1, result.problems
    assert result.problems[0].startswith(
        "log truncated or rolled back: the registry's latest head covers 10 leaves, "
        "but it showed this agent the head of 20 leaves"
    )


@transactional
def test_a_promised_event_changed_before_any_head_is_caught(live_server, token, reporter):
    report(reporter, 3)  # no head yet: only the promise vouches for these leaves
    rewrite(1)
    transparency.sign_tree_head()  # signs the rewritten tree
    result = check(live_server, token, reporter)
    assert not result.ok
    assert "promised leaf 1 changed" in result.problems[0], result.problems


@transactional
def test_a_deleted_promised_event_is_caught(live_server, token, reporter):
    report(reporter, 3)
    with maintenance(open_=True):
        ActionEvent.objects.filter(leaf_index=2).delete()
    transparency.sign_tree_head()  # stops at the gap: 2 leaves
    result = check(live_server, token, reporter)
    assert result.problems == [
        "promise overdue: leaves 2..2 were to be covered by a signed head before "
        f"{reporter.receipts.promises()[0]['promise']['include_by']}; the latest head covers 2"
    ]


@transactional
def test_a_head_with_a_bad_signature_is_caught(live_server, token, reporter):
    report(reporter, 2)
    transparency.sign_tree_head()
    with maintenance(open_=True):
        SignedTreeHead.objects.update(root_hash="ab" * 32)
    result = check(live_server, token, reporter)
    assert result.problems == ["the latest head: tree head of size 2 has a bad signature"]


@transactional
def test_audit_check_command(live_server, token, reporter, tmp_path, capsys, settings):
    settings.AUDIT_CHECKPOINT_SECONDS = 0.01  # promises are due at once
    token_file = tmp_path / "token"
    token_file.write_text(token)
    report(reporter, 6)
    transparency.sign_tree_head()
    report(reporter, 2)
    transparency.sign_tree_head()
    reporter.close(timeout=5)  # keeps the receipts next to its spill file
    assert reporter.receipts_path.exists()
    restarted = ActionReporter(reporter.url, token, spill_path=reporter.spill_path)
    assert restarted.receipts.to_json() == reporter.receipts.to_json()  # loaded again
    restarted.close()
    command = [
        "audit-check",
        "--token-file",
        str(token_file),
        "--registry",
        live_server.url,
        "--receipts",
        str(reporter.receipts_path),
    ]
    time.sleep(0.05)  # past include_by
    assert cli(command) == 0
    out = capsys.readouterr().out
    assert out.startswith("log consistent: latest head 8 leaves; 1 kept head(s) consistent"), out

    proof = requests.get(
        f"{live_server.url}/api/v1/audit/consistency",
        params={"from": 6},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    (tmp_path / "consistency.json").write_bytes(proof.content)
    verify = ["verify-proof", "--registry", live_server.url, str(tmp_path / "consistency.json")]
    assert cli(verify) == 0  # the JWKS fetched from the registry
    assert "extends the signed head of 6 leaves" in capsys.readouterr().out

    rewrite(0)
    report_more = ActionReporter(
        f"{live_server.url}/api/v1/actions", token, spill_path=tmp_path / "other.jsonl"
    )
    report(report_more, 3)
    report_more.close()
    transparency.sign_tree_head()
    assert cli(command) == 1
    out = capsys.readouterr().out
    assert "LOG PROBLEM: log rewritten: the latest head (11 leaves) does not extend" in out

    token_file.with_name("junk.json").write_text("[1]")
    assert cli([*command[:-1], str(tmp_path / "junk.json")]) == 2
    assert "is not a receipts file" in capsys.readouterr().err
    token_file.with_name("junk.json").write_text("{not json")
    assert cli([*command[:-1], str(tmp_path / "junk.json")]) == 2
    assert "cannot read receipts file" in capsys.readouterr().err
    unreachable = [*command[:3], "--registry", "http://127.0.0.1:9", *command[5:]]
    assert cli([*unreachable, "--jwks-file", str(jwks_file(tmp_path))]) == 2
    assert "cannot reach the registry" in capsys.readouterr().err


@transactional
def test_audit_check_holds_the_registry_to_the_head_it_published_in_redis(
    live_server, token, reporter, tmp_path, capsys, settings
):
    """An agent with no receipts at all still catches a rollback: the registry's redis: witness
    put the newest head next to the revocation channel, where the agent reads it."""
    settings.AUDIT_WITNESSES = ["redis:"]
    report(reporter, 8)
    transparency.sign_tree_head()  # published to Redis once committed
    published = json.loads(redis.Redis.from_url(settings.REDIS_URL).get(witnesses.head_key()))
    assert published["tree_size"] == 8
    token_file = tmp_path / "token"
    token_file.write_text(token)
    command = ["audit-check", "--token-file", str(token_file), "--registry", live_server.url]
    command += ["--receipts", str(tmp_path / "none.json"), "--jwks-file", str(jwks_file(tmp_path))]
    with maintenance(open_=True):  # the DBA rolls the log back to 5 events and re-signs it
        HeadWitness.objects.all().delete()
        SignedTreeHead.objects.all().delete()
        ActionEvent.objects.filter(leaf_index__gte=5).delete()
    settings.AUDIT_WITNESSES = []  # ... and keeps the new head away from the witness
    transparency.sign_tree_head()
    (tmp_path / "none.json").unlink(missing_ok=True)
    assert cli(command) == 0  # the registry's own story is self-consistent
    (tmp_path / "none.json").unlink()
    assert cli([*command, "--redis", settings.REDIS_URL]) == 1
    out = capsys.readouterr().out
    assert "LOG PROBLEM: log truncated or rolled back: the registry's latest head covers 5" in out


def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(signing.jwks()))
    return path


def test_the_store_is_bounded():
    store = ReceiptStore()
    for size in range(100):
        head = {"tree_size": size, "root": f"{size:064x}"}
        promise = {"leaves": [[size, "00" * 32]], "include_by": "2026-12-02T00:00:00Z"}
        store.add({"head": head, "promise": promise}, [f"id-{size}-{i}" for i in range(50)])
    assert len(store.heads()) == MAX_HEADS and store.heads()[-1]["tree_size"] == 99
    assert len(store.promises()) == MAX_PROMISES
    assert all(len(entry["ids"]) == 4 for entry in store.promises())
    store.add({"head": "nonsense", "promise": {"leaves": "x"}}, [])
    store.add(None)
    assert len(store.heads()) == MAX_HEADS
