"""A tier-1 directory belongs to one store: the bucket (and folder) its chunks and pending
uploads are of. Pointed at another, it must neither serve that bucket's chunks for this
one nor send its pending uploads to the wrong bucket. And it belongs to one client at a
time: a second would take the first's uploads under way for a crash's leftovers."""

from __future__ import annotations

import logging
from pathlib import Path

from tierfs.cache.index import INDEX_FILE
from tierfs.directory_lock import lock_directory
from tierfs.errors import ConfigError

log = logging.getLogger(__name__)

OWNER_FILE = "store"  # the URL of the store the directory caches
LOCK_FILE = "client.pid"  # locked (flock) by the client using the directory; holds its pid


def lock(root: Path) -> int:
    """Take `root` for this client alone (a second would upload the files the first is
    writing, half written, as what a crash left, and remove their staging files)."""
    return lock_directory(root, LOCK_FILE, "tierfs client", "-nvme")


def claim(root: Path, store_url: str, pending_uploads: int) -> None:
    """Make `root` the cache directory of `store_url`. One that cached another store
    forgets its chunks (their index goes; the cache then removes their files as orphans),
    unless it holds uploads to that store not yet sent: ConfigError, and nothing changes."""
    owner = root / OWNER_FILE
    previous = owner.read_text().strip() if owner.exists() else store_url
    if previous != store_url:
        if pending_uploads:
            raise ConfigError(
                f"{root} holds {pending_uploads} upload(s) not yet in {previous}: mount that "
                "with it once to send them, or give another -nvme"
            )
        log.warning("%s cached %s: its chunks are dropped for %s", root, previous, store_url)
        for name in (INDEX_FILE, INDEX_FILE + "-wal", INDEX_FILE + "-shm"):
            (root / name).unlink(missing_ok=True)
    if previous != store_url or not owner.exists():
        temporary = owner.with_suffix(".tmp")
        temporary.write_text(store_url + "\n")
        temporary.replace(owner)
