"""Tier 3: the one contract every cloud provider implements.

The rest of tierfs talks to the cloud only through `CloudStore`. Keys are object names
(`dir/file.bin`), never starting with "/" and never empty. Providers raise only the
errors of `tierfs.errors`; `CloudStore` methods retry transient failures themselves
(see `tierfs.retry`), so callers see either a result or a permanent error, within the
store's deadline. All methods are safe to call concurrently.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from tierfs.chunks import Data
from tierfs.errors import (
    InvalidKeyError,
    KeyTooLongError,
    ObjectNotFoundError,
    UnsupportedUploadError,
    VersionChangedError,
)

log = logging.getLogger(__name__)

# Seconds between this node's clock and the store's, at most, when the uploads a crash
# left are told from others by when they began (`began_then`).
CLOCK_SLACK = 5.0
# Keys one listing request asks for: S3's, Azure's and GCS's most.
LIST_PAGE_SIZE = 1000
# Multipart uploads start above this size; parts are this big and go up in parallel.
# 4 parts of 8 MiB in flight: 32 MiB of buffers. With 8 (and 16 MiB x 8 before that) the
# client writing one 256 MiB file peaked at 184-208 MB, with 4 at 151-175, as fast
# (145-184 MiB/s to SeaweedFS here either way; rclone's default is 4 parts, s3fs's 5).
MULTIPART_THRESHOLD = 16 * 2**20
PART_SIZE = 8 * 2**20
PART_CONCURRENCY = 4
PART_BUFFERS = PART_SIZE * PART_CONCURRENCY  # larger parts go up fewer at a time
# Copies through the client at once (`copy_through`): each holds up to PART_CONCURRENCY
# parts, and a directory rename starts many copies together.
COPIES_THROUGH = 2
# The version `put` expects of a key that holds no object (its `expect`).
ABSENT = ""


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the store says of one object: `version` changes whenever its content does."""

    key: str
    size: int
    version: str
    mtime: datetime


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a listing: objects, and with a delimiter the sub-prefixes ("dir/")."""

    objects: list[ObjectMeta] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    # Keys and prefixes left out, as no path can name them (`CloudStore.named_only`).
    hidden: int = 0


# The most bytes of a key: S3's and GCS's limit (Azure's: 1024 characters).
KEY_BYTES = 1024
# No key holds an ASCII control character: obstore refuses them in a path.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Keys left out of listings that were logged (once each; forgotten past the bound).
_NOT_SHOWN_LOGGED: set[str] = set()
_NOT_SHOWN_LOGGED_MOST = 10_000
# Why a key is left out, as `CloudStore.not_shown` says by default.
UNNAMABLE = (
    "no file name can stand for that key (another tool put it there; rename it with one "
    "to see it here)"
)


def may_pass(status: int) -> bool:
    """Whether an HTTP answer of `status` is a failure worth another try: 408, 429, and
    5xx but 501 and 505 (TransientCloudError)."""
    return status in (408, 429) or (status >= 500 and status not in (501, 505))


def check_length(key: str) -> str:
    """Return `key` if it is within KEY_BYTES, else raise KeyTooLongError."""
    if len(key.encode()) > KEY_BYTES:
        raise KeyTooLongError(f"object key {key[:60]!r}...: over {KEY_BYTES} bytes")
    return key


def check_key(key: str) -> str:
    """Return `key` if every provider can store it, else raise InvalidKeyError
    (KeyTooLongError past KEY_BYTES)."""
    if not key or key.startswith("/"):
        raise InvalidKeyError(f"invalid object key {key!r}")
    check_length(key)
    if _CONTROL.search(key):
        raise InvalidKeyError(f"invalid object key {key!r}: a control character")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKeyError(f"invalid object key {key!r}: empty, '.' or '..' segment")
    return key


# No GCS object name may start with this (its naming rules: Let's Encrypt's challenges).
GCS_ACME_FOLDER = ".well-known/acme-challenge/"


class CloudStore(abc.ABC):
    """An async client of one bucket (or container, or directory)."""

    #: Human-readable "provider://bucket", used in messages and logs.
    url: str
    #: The longest name (one segment of a key) this store takes, in bytes: by default
    #: Linux's NAME_MAX, as the mount's names are the segments.
    name_max: int = 255

    #: Where no key may start, whatever is made there (GCS: GCS_ACME_FOLDER, which its
    #: emulator takes, so no test would see GCS refuse such an upload: EIO at close).
    reserved_prefixes: tuple[str, ...] = ()

    #: Told of each request tried again after a transient failure (the node counts them:
    #: a retried request is paid for twice, and a retried GET's bytes perhaps sent twice).
    on_retry: Callable[[], object] | None = None

    def check_key(self, key: str) -> str:
        """Return `key` if this store can hold it, else raise InvalidKeyError."""
        return self._not_reserved(check_key(key))

    def check_length(self, key: str) -> str:
        """Return `key` if its key in the bucket is within KEY_BYTES, else raise
        KeyTooLongError: a lookup's check, as no longer name can be a file here."""
        return check_length(key)

    def check_folder(self, path: str) -> str:
        """Return `path` if this store can hold a folder there, its marker `path/` (a byte
        more) too, else raise InvalidKeyError (KeyTooLongError for a marker past
        KEY_BYTES: SeaweedFS refused one, and S3 and GCS do)."""
        self._not_reserved(f"{self.check_key(path)}/")
        if len(path.encode()) + 1 > KEY_BYTES:
            raise KeyTooLongError(f"folder {path[:60]!r}...: a marker over {KEY_BYTES} bytes")
        return path

    def _not_reserved(self, key: str) -> str:
        """`key`, or InvalidKeyError where it starts with one of `reserved_prefixes`."""
        for prefix in self.reserved_prefixes:
            if key.startswith(prefix):
                raise InvalidKeyError(
                    f"invalid object key {key!r}: {self.url} takes none in {prefix}"
                )
        return key

    def named_only(self, page: ListPage) -> ListPage:
        """`page` less the keys that no path can name (`check_key`: "a//b", "/a", "a/../b",
        a control character), which another tool put in the bucket: a filesystem cannot
        show them, and one such key failed a whole listing. Each is logged once; it stays
        in the bucket, untouched."""
        objects = [meta for meta in page.objects if self.shows(meta.key)]
        prefixes = [prefix for prefix in page.prefixes if self.shows(prefix)]
        hidden = len(page.objects) - len(objects) + len(page.prefixes) - len(prefixes)
        return replace(page, objects=objects, prefixes=prefixes, hidden=page.hidden + hidden)

    def can_name(self, key: str) -> bool:
        """Whether a path can name `key` (a folder's `name/` as its `name`)."""
        try:
            self.check_key(key.removesuffix("/"))
        except (InvalidKeyError, UnicodeEncodeError):  # a local file's name not UTF-8
            return False
        return True

    def shows(self, key: str) -> bool:
        """`can_name`, and the first time a listed key cannot be named, a WARNING."""
        if self.can_name(key):
            return True
        self.not_shown(key)
        return False

    def not_shown(self, key: str, why: str = UNNAMABLE) -> None:
        """Log that a listed `key` is left out, for the reason `why`: a WARNING, the
        first time."""
        if key not in _NOT_SHOWN_LOGGED:
            if len(_NOT_SHOWN_LOGGED) >= _NOT_SHOWN_LOGGED_MOST:
                _NOT_SHOWN_LOGGED.clear()
            _NOT_SHOWN_LOGGED.add(key)
            log.warning("%s: %r is not shown: %s", self.url, key, why)

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectMeta:
        """Return the object's metadata; raise ObjectNotFoundError if it does not exist."""

    @abc.abstractmethod
    async def get_range(self, key: str, start: int, length: int, version: str) -> Data:
        """Return up to `length` bytes from `start` of the object at `version`.

        Fewer bytes come back only at the end of the object; a start at or past the end
        returns b"". Raises VersionChangedError when the object is no longer at `version`
        (never bytes of another version), ObjectNotFoundError when it is gone.
        """

    @abc.abstractmethod
    async def put(self, key: str, body: bytes | Path, expect: str | None = None) -> ObjectMeta:
        """Store `body` (bytes, or the content of a local file) under `key`, replacing it.

        A file is streamed: over MULTIPART_THRESHOLD it goes up in parts (in parallel
        where the provider allows: S3 and Azure; GCS resumable uploads are sequential),
        never held in memory whole. The object appears only once complete; on
        failure the old object, if any, is left as it was. Returns the new metadata.

        `expect`: put only over that version of the object (ABSENT: only where there is
        none), else raise VersionChangedError and change nothing. Where `checks_puts`,
        a put up to MULTIPART_THRESHOLD checks it in the same request; otherwise a HEAD
        just before the put does (`_check_expected`), and a put by another client in
        between is overwritten. A checked request sent again (its answer lost) and
        refused is no conflict if the object holds `body` (size and MD5): it was this
        put's first request, or the same bytes.
        """

    #: Whether `put` checks `expect` in its own request (for bodies that go up whole).
    checks_puts = False

    async def _check_expected(self, key: str, expect: str) -> None:
        """Raise VersionChangedError unless the object at `key` is at version `expect`."""
        try:
            version = (await self.head(key)).version
        except ObjectNotFoundError:
            version = ABSENT
        if version != expect:
            raise VersionChangedError(
                f"{self.url}/{key}: at version {version or '(none)'}, not {expect or '(none)'}"
            )

    #: Whether `put_stream` works (else it raises UnsupportedUploadError).
    streams_uploads = False

    async def put_stream(
        self, key: str, parts: AsyncIterator[bytes], size: int | None = None
    ) -> ObjectMeta:
        """Store the concatenation of `parts` under `key` as they come (a multipart upload
        that never holds more than a few parts): for files too large to stage on disk.
        `size`, when the caller knows it, lets parts grow where the store takes few of
        them; without it a stream that outgrows the store's most parts fails (CloudError).

        Not retried, since the parts are consumed: a failure raises CloudError and the
        caller has lost the stream. The object appears only once complete; an exception
        raised by `parts` gives the upload up (the store is told to drop the parts it
        has). Providers that cannot stream raise UnsupportedUploadError before reading any
        part.
        """
        raise UnsupportedUploadError(f"{self.url}: this provider cannot stream an upload")

    @abc.abstractmethod
    def list(
        self, prefix: str = "", delimiter: bool = True, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        """Yield the pages of a listing of keys under `prefix`, in key order per page.

        `prefix` is "" (the whole bucket) or ends with "/". With `delimiter`, keys in
        sub-"directories" are folded into `prefixes` (each ending in "/"). `page_size`:
        the most keys one request asks for, where the store's listing takes it (a caller
        that needs one key asks for one, not a thousand).
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abc.abstractmethod
    async def put_marker(self, prefix: str) -> None:
        """Write the folder marker of `prefix`: the empty object `prefix/` that the S3
        console, s3fs and gcsfuse make a folder with, so that an empty folder exists in the
        bucket (on the local provider, a directory). Listings show it as a prefix."""

    @abc.abstractmethod
    async def delete_marker(self, prefix: str) -> None:
        """Remove the folder marker of `prefix`; none there is not an error."""

    @abc.abstractmethod
    async def copy(
        self, source: str, destination: str, size: int | None = None, version: str | None = None
    ) -> str:
        """Copy `source` to `destination` server-side, replacing it; the copy's version.
        With `version`, only that version of `source` is copied: VersionChangedError if
        it has changed (another client wrote it). `size`, where the caller knows it, lets
        a store copy an object too large for its server-side copy through this client
        instead (`copy_through`)."""

    async def copy_through(self, source: str, destination: str, version: str | None = None) -> str:
        """Copy `source` to `destination` by reading it and writing it through this client,
        a part at a time, pinned to `version` or the one it has at the start
        (VersionChangedError if it changes meanwhile). For what the store will not copy
        server-side; at most COPIES_THROUGH at once; the copy's version."""
        async with self._copy_through_slots:
            return await self._copy_through(source, destination, version)

    @functools.cached_property
    def _copy_through_slots(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(COPIES_THROUGH)

    async def _copy_through(self, source: str, destination: str, version: str | None) -> str:
        meta = await self.head(source)
        if version is not None and meta.version != version:
            raise VersionChangedError(f"{self.url}/{source}: version {meta.version}, not {version}")

        async def parts() -> AsyncIterator[bytes]:
            for start in range(0, meta.size, PART_SIZE):
                length = min(PART_SIZE, meta.size - start)
                yield bytes(await self.get_range(source, start, length, meta.version))

        if meta.size <= MULTIPART_THRESHOLD:
            copied = await self.put(destination, b"".join([part async for part in parts()]))
        else:
            copied = await self.put_stream(destination, parts(), meta.size)
        return copied.version

    async def drop_uploads_begun(self, key: str, began: Sequence[float]) -> None:  # noqa: B027
        """Abort the multipart uploads of `key` still in progress that began at one of the
        moments `began` (this node's clock): a crash left them, their parts billed and
        unseen. Raises CloudUnavailableError if the store could not be reached (they may
        be left: try again later); any other failure is logged, not raised. Most stores
        keep nothing of an unfinished upload, or drop it themselves (Azure, after a week)."""

    async def close(self) -> None:  # noqa: B027 - most providers hold nothing to close
        """Release connections; the store is unusable afterwards."""

    async def has_keys_below(self, path: str, marker_too: bool = True) -> bool:
        """Whether the store has a key below `path` (a folder, "" the root): a key no path
        can name too, and the folder's own marker unless not `marker_too` (what the folder
        holds: counted, rmdir of a folder whose listing named an emptied prefix said
        ENOTEMPTY)."""
        marker = path + "/" if path else ""
        # The marker comes first in key order: two keys tell whether there is another.
        async for page in self.list(marker, delimiter=False, page_size=2):
            keys = (meta.key for meta in page.objects)
            if page.hidden or any(marker_too or key != marker for key in keys):
                return True  # a page may hold none and still be followed
        return False

    async def list_all(self, prefix: str = "", delimiter: bool = True) -> ListPage:
        """All pages of `list` in one page, sorted by key."""
        objects: list[ObjectMeta] = []
        prefixes: list[str] = []
        hidden = 0
        async for page in self.list(prefix, delimiter):
            objects.extend(page.objects)
            prefixes.extend(page.prefixes)
            hidden += page.hidden
        objects.sort(key=lambda meta: meta.key)
        return ListPage(objects, sorted(set(prefixes)), hidden)


def md5_of(body: bytes | Path) -> bytes:
    """The MD5 digest of `body` (bytes, or a local file read a part at a time); it blocks,
    so it is called off the event loop."""
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(body, bytes):
        digest.update(body)
        return digest.digest()
    with body.open("rb") as file:
        while part := file.read(PART_SIZE):
            digest.update(part)
    return digest.digest()


def split_markers(objects: Sequence[ObjectMeta]) -> tuple[list[ObjectMeta], list[str]]:
    """`objects`, a listing without delimiter, as its files and the folders whose markers
    (`name/`) it holds, named without the slash."""
    files = [meta for meta in objects if not meta.key.endswith("/")]
    markers = [meta.key.removesuffix("/") for meta in objects if meta.key.endswith("/")]
    return files, markers


def began_then(moment: float, began: Sequence[float], timeout: float) -> bool:
    """Whether an upload the store says began at `moment` (seconds since the epoch) may be
    one of those this node noted as begun at `began` (`drop_uploads_begun`): within
    CLOCK_SLACK before one of them, or two deadlines (`timeout`) and CLOCK_SLACK after it
    (the put's look at the uploads before it, then its tries, each begun within the
    deadline). Another client's upload of the key is told apart by beginning at another
    time."""
    reach = 2 * timeout + CLOCK_SLACK
    return any(when - CLOCK_SLACK <= moment <= when + reach for when in began)
