"""Owner selection by rendezvous hashing: the same everywhere, balanced, and stable."""

from __future__ import annotations

from collections import Counter

from tierfs.chunks import ObjectRef, chunk_ref
from tierfs.peer.ring import owner, rank

PEERS = [f"node-{i}" for i in range(5)]
CHUNKS = [
    chunk_ref(ObjectRef("data/set.bin", "v1", 4000 * 2**20), i, 2**20).id for i in range(4000)
]


def test_every_node_picks_the_same_owner_whatever_order_it_lists_peers_in() -> None:
    for chunk_id in CHUNKS[:200]:
        assert owner(chunk_id, PEERS) == owner(chunk_id, list(reversed(PEERS)))
        assert rank(chunk_id, PEERS, str) == rank(chunk_id, sorted(PEERS, reverse=True), str)
        assert rank(chunk_id, PEERS, str)[0] == owner(chunk_id, PEERS)


def test_chunks_spread_evenly_over_the_peers() -> None:
    load = Counter(owner(chunk_id, PEERS) for chunk_id in CHUNKS)
    assert set(load) == set(PEERS)
    fair = len(CHUNKS) / len(PEERS)
    assert all(0.85 * fair < n < 1.15 * fair for n in load.values()), load


def test_a_peer_leaving_moves_only_its_own_chunks_to_their_next_in_rank() -> None:
    gone = "node-2"
    rest = [p for p in PEERS if p != gone]
    for chunk_id in CHUNKS:
        before = rank(chunk_id, PEERS, str)
        after = owner(chunk_id, rest)
        if before[0] != gone:
            assert after == before[0]  # untouched
        else:
            assert after == before[1]  # the successor every node agrees on


def test_a_peer_joining_takes_about_its_share_and_nothing_else_moves() -> None:
    joined = [*PEERS, "node-new"]
    moved = [c for c in CHUNKS if owner(c, joined) != owner(c, PEERS)]
    assert all(owner(c, joined) == "node-new" for c in moved)
    assert abs(len(moved) - len(CHUNKS) / len(joined)) < 0.15 * len(CHUNKS) / len(joined)


def test_no_peers_no_owner() -> None:
    assert owner(CHUNKS[0], []) is None
    assert rank(CHUNKS[0], [], str) == []
