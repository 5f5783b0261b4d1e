"""Owner selection: rendezvous (highest random weight) hashing of chunk ids over peers.

Every node ranks the live peers for a chunk the same way from the same membership, with
no coordinator call per read, and a peer joining or leaving moves only the chunks it
owned or comes to own (about 1/N of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import xxhash

T = TypeVar("T")


def score(peer_id: str, chunk_id: str) -> int:
    """The weight of `peer_id` for `chunk_id`: the highest owns the chunk."""
    return xxhash.xxh3_64_intdigest(f"{peer_id}\0{chunk_id}".encode())


def rank(chunk_id: str, peers: Iterable[T], peer_id: Callable[[T], str]) -> list[T]:
    """`peers` in rendezvous order for `chunk_id`: the owner first, then its successors."""
    return sorted(peers, key=lambda p: (score(peer_id(p), chunk_id), peer_id(p)), reverse=True)


def owner(chunk_id: str, peer_ids: Sequence[str]) -> str | None:
    """The id of the owner of `chunk_id` among `peer_ids` (None when there are none)."""
    return max(peer_ids, key=lambda p: (score(p, chunk_id), p), default=None)
