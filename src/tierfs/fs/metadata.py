"""What is in the bucket, cached for `-metadata-ttl`: entries and directory listings.

A path is a file (an object with that key), a directory (a key prefix with objects under
it, its folder marker among them), or absent. Listings and answers are cached for the TTL;
changes made through this mount update the cache at once, so a writer sees its own writes.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from tierfs.cloud.base import CloudStore, ObjectMeta
from tierfs.errors import AccessDeniedError, CloudError, InvalidKeyError, ObjectNotFoundError
from tierfs.fs.nodes import join, split

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory."""

    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    version: str = ""
    is_link: bool = False  # a symbolic link: its target is the body of `object_key`


# A symbolic link is the object of its name with this suffix, its target the body: a
# listing shows it as such without asking for each object's metadata.
LINK_SUFFIX = ".tierfs-symlink"
# Links' objects whose link would be named "", "." or "..": no link can be.
NAMELESS_LINKS = frozenset(dots + LINK_SUFFIX for dots in ("", ".", ".."))
# Why an object is not shown where keys below its name make a folder (S3, Azure and GCS
# hold both; a filesystem shows one of them, the folder).
HIDDEN_BY_FOLDER = (
    "a folder of its name hides it (keys below it); the object stays in the bucket, "
    "untouched: rename one of them with another tool to see both"
)
# Why a link's object is not shown beside a file of the link's name (`d/f` and
# `d/f.tierfs-symlink`, put so by another tool or by two nodes at once).
HIDDEN_BY_FILE = (
    "a file of its name hides the link it holds; the object stays in the bucket, "
    "untouched: rename the file to see the link"
)


def file_entry(meta: ObjectMeta) -> Entry:
    """The entry of a listed object: a file, or a link (its key ends in LINK_SUFFIX)."""
    name = split(meta.key)[1]
    is_link = name.endswith(LINK_SUFFIX) and name != LINK_SUFFIX
    if is_link:
        name = name.removesuffix(LINK_SUFFIX)
    mtime_ns = int(meta.mtime.timestamp() * 1e9)
    return Entry(name, False, meta.size, mtime_ns, meta.version, is_link=is_link)


def names_no_link(key: str) -> bool:
    """Whether `key` is a link's object that no link can be named by: it would be "",
    "." or ".." (another tool put it there). Listed as such, `..tierfs-symlink` came out
    as a second `.`, and `.tierfs-symlink` as a file no lookup finds."""
    return split(key)[1] in NAMELESS_LINKS


def object_key(path: str, entry: Entry) -> str:
    """The key of the object behind the file or link `entry` at `path`."""
    return path + LINK_SUFFIX if entry.is_link else path


@dataclass
class _Listing:
    entries: dict[str, Entry]
    fetched: float
    hides_keys: bool = False  # the bucket holds keys here that no path can name
    _in_order: list[Entry] | None = field(default=None, init=False, repr=False)

    def in_order(self) -> list[Entry]:
        """The entries sorted by name, sorted once until they change (each read of the
        directory asks for them). The list is never changed after: a change makes a new
        one, so a read keeps the one it took (`Snapshot`)."""
        if self._in_order is None:
            self._in_order = [self.entries[name] for name in sorted(self.entries)]
        return self._in_order

    def put(self, name: str, entry: Entry | None) -> None:
        """Change (None: remove) the entry `name`."""
        if entry is None:
            self.entries.pop(name, None)
        else:
            self.entries[name] = entry
        self._in_order = None


# Cached answers before the expired ones are dropped (then again each time they double).
PRUNE_AT = 65_536
# How long a directory this mount removed is checked for when a listing has it: a store
# may list a prefix for a while after its last key is gone (SeaweedFS: ~2.5 min).
GHOST_WINDOW = 300.0
# An expired answer waits this long for the bucket's new one, then is served as it was
# while the bucket is asked on (its answer is cached when it comes): with the bucket
# unreachable, a cached file still opens and a listed directory still lists, instead of
# every lookup waiting out `-cloud-timeout` to fail with EIO.
STALE_AFTER = 5.0
# Once the bucket has not answered, expired answers are served at once for this long;
# then one lookup asks again (the others keep to what they know meanwhile).
RECHECK_AFTER = 10.0
# A warning that stale answers are served, at most this often.
STALE_WARNING_EVERY = 60.0


@dataclass
class Namespace:
    """Cached answers about paths in the bucket. Expired answers are dropped once there
    are `prune_at` of them, so walking millions of paths does not keep them all (with an
    `indefinite` TTL nothing expires: every answer is kept)."""

    cloud: CloudStore
    ttl: float
    prune_at: int = PRUNE_AT
    stale_after: float = STALE_AFTER
    _stats: dict[str, tuple[Entry | None, float]] = field(default_factory=dict)
    _listings: dict[str, _Listing] = field(default_factory=dict)
    # Fetches under way, shared by everyone who asks meanwhile (16 threads opening files
    # in one directory each had the kernel look the directory up again every second).
    _listing_now: dict[str, asyncio.Future[_Listing]] = field(default_factory=dict)
    _stat_now: dict[str, asyncio.Future[Entry | None]] = field(default_factory=dict)
    # Directories this mount removed (rmdir, moved away), by when, oldest first
    # (`removed_dir`).
    _removed: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # The paths above (stats, listings, directories made here) by parent, each parent in
    # its own parent's set up to the root: what is cached below a directory is found
    # without walking every answer (`rm -rf` of a tree forgets each directory's).
    _children: dict[str, set[str]] = field(default_factory=dict)
    _unanswered_at: float = -math.inf  # when the bucket last left a refresh unanswered
    _warned_stale_at: float = -STALE_WARNING_EVERY

    def _fresh(self, fetched: float) -> bool:
        return time.monotonic() - fetched < self.ttl

    async def stat(
        self, path: str, known: Callable[[], Entry | None] = lambda: None
    ) -> Entry | None:
        """The entry at `path`, or None if there is none; cached for the TTL. Never asked
        for before, it is `known()` (what this mount knows of it, if anything) if the
        bucket does not answer (`_or_stale`)."""
        parent, name = split(path)
        listing = self._listings.get(parent)
        if listing is not None:
            # A directory listed before is listed again, once for all the lookups that
            # wait on it: one LIST instead of a HEAD and a LIST per name (`ls -l`, `cp -r`).
            if not self._fresh(listing.fetched):
                listing = await self._or_stale(partial(self._list, parent), listing, parent)
            return listing.entries.get(name)
        cached = self._stats.get(path)
        if cached is not None and self._fresh(cached[1]):
            return cached[0]
        fetch = partial(_shared, self._stat_now, path, self._stat_remote)
        stale = known() if cached is None else cached[0]
        return await (fetch() if stale is None else self._or_stale(fetch, stale, path))

    async def _or_stale(self, fetch: Callable[[], Awaitable[T]], stale: T, path: str) -> T:
        """`fetch()`, the bucket's new answer about `path`, or `stale`, the expired one, if
        the bucket has not answered within `stale_after` (STALE_AFTER; the fetch goes on,
        shared, and its answer replaces the stale one when it comes) or could not be
        reached; then, for RECHECK_AFTER, without asking. Refused access is no outage:
        it is raised."""
        now = time.monotonic()
        if now - self._unanswered_at < RECHECK_AFTER:
            return stale
        if self._unanswered_at > -math.inf:
            self._unanswered_at = now  # this lookup asks; the others keep to what they know
        try:
            answer = await asyncio.wait_for(fetch(), self.stale_after)
        except AccessDeniedError:
            raise
        except (TimeoutError, CloudError) as exc:
            now = self._unanswered_at = time.monotonic()
            if now - self._warned_stale_at >= STALE_WARNING_EVERY:
                self._warned_stale_at = now
                reason = (
                    f"no answer within {self.stale_after:g}s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                log.warning(
                    "%s: %s; serving what this mount knew of %r and of others, asking "
                    "again every %gs",
                    self.cloud.url,
                    reason,
                    path,
                    RECHECK_AFTER,
                )
            return stale
        self._unanswered_at = -math.inf
        return answer

    async def _stat_remote(self, path: str) -> Entry | None:
        started = time.monotonic()
        # Every request at once: the object, the link, and the listing below.
        heads = [asyncio.ensure_future(self._head(key)) for key in (path, path + LINK_SUFFIX)]
        try:
            is_dir = await self.cloud.has_keys_below(path)
            file, link = [await head for head in heads]
        except BaseException:
            for head in heads:
                head.cancel()
            raise
        # A prefix with objects wins over an object of the same name (S3 allows both), and
        # a file over a link.
        if is_dir:
            entry: Entry | None = Entry(split(path)[1], True)
            for shadowed in (file, link):
                if shadowed is not None:
                    self.cloud.not_shown(shadowed.key, HIDDEN_BY_FOLDER)
        else:
            if file is not None and link is not None:
                self.cloud.not_shown(link.key, HIDDEN_BY_FILE)
            meta = file or link
            entry = file_entry(meta) if meta is not None else None
        known = self._stats.get(path)
        if known is not None and known[1] > started:  # changed here meanwhile: that stays
            return known[0]
        self._remember(path, entry, started)
        return entry

    async def _head(self, key: str) -> ObjectMeta | None:
        try:
            return await self.cloud.head(key)
        except (ObjectNotFoundError, InvalidKeyError):  # a link's key may be one too long
            return None

    def __len__(self) -> int:
        """Cached answers: paths and listings."""
        return len(self._stats) + len(self._listings)

    def _remember(self, path: str, entry: Entry | None, fetched: float) -> None:
        self._stats[path] = (entry, fetched)
        self._index(path)
        self._prune_if_grown()

    def _index(self, path: str) -> None:
        """Put `path` under its parent in `_children`, and the parent under its own, up to
        the first one that is there already."""
        while path:
            parent = split(path)[0]
            children = self._children.setdefault(parent, set())
            if path in children:
                return
            children.add(path)
            path = parent

    def _subtree(self, path: str) -> list[str]:
        """`path` and every indexed path below it."""
        found = [path]
        for at in found:  # the list grows as it is walked
            found.extend(self._children.get(at, ()))
        return found

    def _prune_if_grown(self) -> None:
        """Drop the expired answers (they would be fetched again anyway) once there are
        `prune_at`; the next round waits until what is left has doubled."""
        if len(self) < self.prune_at:
            return
        self._stats = {p: v for p, v in self._stats.items() if self._fresh(v[1])}
        self._listings = {p: v for p, v in self._listings.items() if self._fresh(v.fetched)}
        self._children = {}
        for path in itertools.chain(self._stats, self._listings):
            self._index(path)
        self.prune_at = max(self.prune_at, 2 * len(self))

    async def listdir(
        self,
        path: str,
        unsaved: Iterable[Entry] = (),
        known: Callable[[], list[Entry]] = list,
    ) -> Iterator[Entry]:
        """The entries of directory `path` sorted by name (`snapshot`)."""
        return (await self.snapshot(path, unsaved, known)).entries_from(0)

    async def snapshot(
        self,
        path: str,
        unsaved: Iterable[Entry] = (),
        known: Callable[[], list[Entry]] = list,
    ) -> Snapshot:
        """The entries of directory `path` as they are now, cached for the TTL: the
        bucket's, the directories made here, and `unsaved` (files of this mount the bucket
        does not have yet), each unless the bucket lists it. Costs no copy of a cached
        listing. Never listed before, it is what this mount knows of it (`_known_listing`)
        if the bucket does not answer (`_or_stale`), and `known()` gives entries."""
        listing = self._listings.get(path)
        if listing is None:
            ours = known()
            fetch = partial(self._list, path)
            stale = self._known_listing(path, ours) if ours else None
            listing = await (fetch() if stale is None else self._or_stale(fetch, stale, path))
        elif not self._fresh(listing.fetched):
            listing = await self._or_stale(partial(self._list, path), listing, path)
        local = {entry.name: entry for entry in unsaved if entry.name not in listing.entries}
        return Snapshot(listing.in_order(), [local[name] for name in sorted(local)])

    def as_now(
        self, path: str, taken: Iterable[tuple[int, Entry]], unsaved: Iterable[Entry] = ()
    ) -> Iterator[tuple[int, Entry]]:
        """`taken`, entries of directory `path` from a `Snapshot` (with their positions),
        as the cached listing (or `unsaved`) has them now: each at its latest size and
        version, and left out once removed. No fetch: an entry costs a dict lookup. Without
        a cached listing, as taken."""
        listing = self._listings.get(path)
        if listing is None:
            yield from taken
            return
        now = listing.entries
        local = {entry.name: entry for entry in unsaved}
        for index, entry in taken:
            current = now.get(entry.name) or local.get(entry.name)
            if current is not None:
                yield index, current

    def _known_listing(self, path: str, local: list[Entry]) -> _Listing:
        """A listing of directory `path` made of what this mount knows, not kept: the
        answers it has of the names in it, and `local`'s entries, which win."""
        entries: dict[str, Entry] = {}
        for child in self._children.get(path, ()):
            answer = self._stats.get(child)
            if answer is not None and answer[0] is not None:
                entries[split(child)[1]] = answer[0]
        entries.update((entry.name, entry) for entry in local)
        return _Listing(entries, -math.inf)

    def hides_keys(self, path: str) -> bool:
        """Whether the cached listing of `path` left out keys that no path can name."""
        listing = self._listings.get(path)
        return listing is not None and listing.hides_keys

    async def _list(self, path: str) -> _Listing:
        """A fresh listing of `path`, shared by everyone who asks while it is fetched."""
        return await _shared(self._listing_now, path, self._list_remote)

    async def _list_remote(self, path: str) -> _Listing:
        started = time.monotonic()
        page = await self.cloud.list_all(path + "/" if path else "", delimiter=True)
        entries: dict[str, Entry] = {}
        hidden = page.hidden
        for meta in page.objects:
            entry = file_entry(meta)
            if not self._shows(entry.name, meta.key):
                hidden += 1
                continue
            # A "dir/" marker (the S3 console's folders; SeaweedFS lists an emptied folder
            # so) comes back as the directory's own key: not an entry of it.
            if meta.key == path or not entry.name:
                continue
            other = entries.get(entry.name)
            if other is not None:  # a file and a link of one name: the file wins
                link = entry if entry.is_link else other
                self.cloud.not_shown(object_key(join(path, entry.name), link), HIDDEN_BY_FILE)
                if entry.is_link:
                    continue
            entries[entry.name] = entry
        listed = [(split(prefix.rstrip("/"))[1], prefix) for prefix in page.prefixes]
        names = [name for name, prefix in listed if self._shows(name, prefix)]
        hidden += len(listed) - len(names)
        removed = [name for name in names if join(path, name) in self._removed]
        answers = await asyncio.gather(*(self._is_ghost(join(path, name)) for name in removed))
        ghosts = {name for name, ghost in zip(removed, answers, strict=True) if ghost}
        for name in names:
            if name not in ghosts:
                shadowed = entries.get(name)
                if shadowed is not None:
                    key = object_key(join(path, name), shadowed)
                    self.cloud.not_shown(key, HIDDEN_BY_FOLDER)
                entries[name] = Entry(name, True)
        listing = _Listing(entries, started, hidden > 0)
        # What this mount changed here while the bucket was listed stays: the listing may
        # be older (a file renamed over meanwhile listed at its old version, or not at all).
        for child in self._children.get(path, ()):
            known = self._stats.get(child)
            if known is not None and known[1] > started:
                listing.put(split(child)[1], known[0])
        self._listings[path] = listing
        self._index(path)
        self._prune_if_grown()
        return listing

    def _shows(self, name: str, key: str) -> bool:
        """Whether a lookup can take `name`, which a listing gave for `key`: within the
        store's `name_max` (255 bytes: what Linux and FUSE take), and not a link's object
        that no link can be named by (`names_no_link`). Else the key is logged, once
        (`CloudStore.not_shown`). S3 holds longer names, which were listed and then failed
        every lookup (ENAMETOOLONG: `rm -rf` of their folder stopped at them)."""
        if len(name.encode()) <= self.cloud.name_max and not names_no_link(key):
            return True
        self.cloud.not_shown(key)
        return False

    def note(self, path: str, entry: Entry | None) -> None:
        """This mount changed `path`: remember the new state (None: removed)."""
        self._remember(path, entry, time.monotonic())
        parent, name = split(path)
        listing = self._listings.get(parent)
        if listing is not None:
            listing.put(name, entry)
        if entry is not None and (entry.is_dir or entry.version):
            self._ensure_parents(parent)  # not for a file the bucket does not have yet

    def _ensure_parents(self, path: str) -> None:
        """Parents of a new entry exist in the bucket now (as prefixes of its key)."""
        while path:
            parent, name = split(path)
            listing = self._listings.get(parent)
            if listing is not None and name not in listing.entries:
                listing.put(name, Entry(name, True))
            self._remember(path, Entry(name, True), time.monotonic())
            path = parent

    async def _is_ghost(self, path: str) -> bool:
        """Whether a listed prefix is a directory this mount removed lately and the bucket
        has no key below now: the store lists it still, and it would come back (`rm -rf d;
        mkdir d` said EEXIST)."""
        removed = self._removed.get(path)
        recent = removed is not None and time.monotonic() - removed < GHOST_WINDOW
        if recent and not await self.cloud.has_keys_below(path):
            return True
        self._removed.pop(path, None)
        return False

    def removed_dir(self, path: str) -> None:
        """This mount removed directory `path` (rmdir, or moved it away): forget every
        answer at or below it, and keep listings from bringing it back (`_is_ghost`)."""
        self.forget_subtree(path)
        now = time.monotonic()
        self._removed[path] = now
        self._removed.move_to_end(path)  # in time order: the expired ones come first
        while now - next(iter(self._removed.values())) >= GHOST_WINDOW:
            self._removed.popitem(last=False)

    def made_dir(self, path: str) -> None:
        """This mount made directory `path` (its marker is in the bucket): known as any
        answer is, for the TTL; then the bucket says, as it does to every node."""
        self._removed.pop(path, None)  # made again: no ghost
        self.note(path, Entry(split(path)[1], True))

    def forget_subtree(self, path: str) -> None:
        """Drop every cached answer at or below `path` (after a rename or rmdir; the
        caller notes what is at `path` now)."""
        for at in self._subtree(path):
            self._stats.pop(at, None)
            self._listings.pop(at, None)
            self._children.pop(at, None)
        self._children.get(split(path)[0], set()).discard(path)

    def forget(self, path: str) -> None:
        """What the bucket has at `path` is not what this mount thought (it changed there,
        or an upload to it failed): ask again, for it and for its directory's listing."""
        self._stats.pop(path, None)
        self._listings.pop(split(path)[0], None)


def _name(entry: Entry) -> str:
    return entry.name


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A directory's entries as one read of it took them, never changed after: the
    positions its readdir pages give the kernel stay where they were whatever the
    directory does meanwhile (they were positions in the cached listing, which this
    mount's changes edit: `rm -rf` of 3000 files, removing what each page gave, never saw
    1442 of them)."""

    listed: list[Entry]  # the cached listing's `in_order()`: shared, never copied
    local: list[Entry]  # sorted; none named in `listed`

    def entries_from(self, start: int) -> Iterator[Entry]:
        """The `start`-th entry on, without walking the ones before it."""
        return _merged_from(self.listed, self.local, start)


def _merged_from(listed: list[Entry], local: list[Entry], start: int) -> Iterator[Entry]:
    """The `start`-th entry on of two lists sorted by name (no name in both), merged,
    without walking or copying the entries before it."""
    local_before = 0  # of the local entries, those that come before the `start`-th
    for index, entry in enumerate(local):
        if bisect.bisect_left(listed, entry.name, key=_name) + index >= start:
            break
        local_before += 1
    rest = (listed[n] for n in range(start - local_before, len(listed)))
    return heapq.merge(rest, local[local_before:], key=_name) if local else rest


async def _shared(
    under_way: dict[str, asyncio.Future[T]], path: str, fetch: Callable[[str], Awaitable[T]]
) -> T:
    """`fetch(path)`, or the one already under way in `under_way` (a caller cancelled does
    not cancel it for the others)."""
    task = under_way.get(path)
    if task is None:
        task = under_way[path] = asyncio.ensure_future(fetch(path))
        task.add_done_callback(lambda _: under_way.pop(path, None))
    return await asyncio.shield(task)
