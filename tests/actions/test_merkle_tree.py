"""The stored Merkle tree: leaf indexes at ingestion, stored subtrees, signed heads and proofs
agree with an in-memory tree over the same events (and with pymerkle, an independent RFC 9162
implementation), across the 256-leaf blocks the registry stores."""

import time
import uuid

import pymerkle
import pytest

from actions import transparency
from actions.models import ActionEvent, MerkleNode
from agent_passport.merkle import (
    GENESIS,
    head_id,
    leaf_hash,
    tree_root,
    verify_consistency,
    verify_head,
    verify_inclusion,
)
from passports import signing
from tests.actions.test_audit import post_events

pytestmark = pytest.mark.django_db


def leaves() -> list[bytes]:
    hashes = ActionEvent.objects.order_by("leaf_index").values_list("hash", flat=True)
    return [leaf_hash(value) for value in hashes]


def log(token: str, count: int) -> None:
    for start in range(0, count, 200):
        post_events(token, [("fs:read", "allow")] * min(200, count - start))


def test_leaf_indexes_are_dense_and_heads_sign_the_tree(issue):
    token = issue()["token"]
    log(token, 5)
    assert transparency.latest_head() is None
    first = transparency.sign_tree_head()
    assert first is not None and first.tree_size == 5 and first.prev == GENESIS
    assert transparency.sign_tree_head() is None  # nothing new: no head
    log(token, 700)  # crosses two 256-leaf blocks
    second = transparency.sign_tree_head()
    assert second is not None and second.tree_size == 705
    indexes = list(ActionEvent.objects.order_by("leaf_index").values_list("leaf_index", flat=True))
    assert indexes == list(range(705))
    assert second.root_hash == tree_root(leaves()).hex()
    assert MerkleNode.objects.filter(level=8).count() == 2
    assert MerkleNode.objects.filter(level=9).count() == 1

    keys = signing.all_public_keys()
    for head in (first, second):
        assert verify_head(head.document(), keys) is None
    assert second.prev == head_id(first.document())


def test_roots_match_an_independent_implementation(issue):
    token = issue()["token"]
    log(token, 300)
    head = transparency.sign_tree_head()
    reference = pymerkle.InmemoryTree(algorithm="sha256")
    for value in ActionEvent.objects.order_by("leaf_index").values_list("hash", flat=True):
        reference.append_entry(bytes.fromhex(value))
    assert head.root_hash == reference.get_root().hex()


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 511, 513])
def test_inclusion_and_consistency_proofs_verify(issue, size):
    token = issue()["token"]
    log(token, 520)
    everything = leaves()
    transparency.sign_tree_head()  # stores the subtrees the proofs read
    root = tree_root(everything[:size])
    for index in {0, size // 2, size - 1}:
        path = [bytes.fromhex(h) for h in transparency.inclusion_proof(index, size)]
        assert verify_inclusion(everything[index], index, size, path, root)
        assert not verify_inclusion(everything[index], index, size, path, bytes(32))
    for first in {1, size // 2 or 1, size}:
        proof = [bytes.fromhex(h) for h in transparency.consistency_proof(first, 520)]
        assert verify_consistency(
            first, 520, tree_root(everything[:first]), tree_root(everything), proof
        )


def test_a_missing_event_is_named_not_papered_over(issue):
    from tests.actions.test_audit import maintenance

    token = issue()["token"]
    log(token, 10)
    with maintenance(open_=True):
        ActionEvent.objects.filter(leaf_index=4).delete()
    with pytest.raises(transparency.TreeDamaged, match="leaf 4 is missing"):
        transparency.inclusion_proof(3, 10)
    head = transparency.sign_tree_head()  # the builder stops at the gap
    assert head is not None and head.tree_size == 4


def test_receipts_carry_leaves_and_a_signed_promise(issue):
    token = issue()["token"]
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    body = {
        "events": [
            {"id": i, "action": "fs:read", "decision": "allow", "at": time.time()} for i in ids
        ]
    }
    receipt = client.post("/api/v1/actions", body, format="json").json()["receipt"]
    assert receipt["head"] is None
    stored = ActionEvent.objects.order_by("leaf_index")
    assert receipt["promise"]["leaves"] == [[e.leaf_index, e.hash] for e in stored]
    from agent_passport.merkle import verify_promise

    assert verify_promise(receipt["promise"], signing.all_public_keys()) is None
    forged = {**receipt["promise"], "leaves": [[0, "0" * 64]]}
    assert (
        verify_promise(forged, signing.all_public_keys()) == "inclusion promise has a bad signature"
    )
