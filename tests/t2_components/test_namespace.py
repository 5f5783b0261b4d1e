"""The metadata cache on a real store (the local provider): bounded, and still right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import servers
from cloud_targets import settings_for, target_flags
from relay import relay_in_front_of
from tierfs.cloud.providers import open_store
from tierfs.fs.metadata import Entry, Namespace
from tierfs.settings import ClientSettings, load_settings

TTL = 0.2
pytestmark = pytest.mark.asyncio


async def test_expired_answers_are_dropped_so_a_long_walk_stays_bounded(tmp_path: Path) -> None:
    cloud = open_store(settings_for("local", None, tmp_path))
    try:
        await cloud.put("data/kept.bin", b"12345")
        names = Namespace(cloud, TTL, prune_at=100)
        for round_ in range(4):  # a walk over 4 x 90 paths, each round after the last expired
            for i in range(90):
                assert await names.stat(f"walk/{round_}/missing-{i}") is None
            assert len(names) < 200
            await asyncio.sleep(TTL)
        entry = await names.stat("data/kept.bin")
        assert entry is not None and entry.size == 5 and not entry.is_dir
        assert [e.name for e in await names.listdir("data")] == ["kept.bin"]
    finally:
        await cloud.close()


async def test_concurrent_stats_of_one_path_ask_the_store_once(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """32 lookups of a path at once (threads opening files in one directory each make
    the kernel look it up) cost one HEAD of each key it may be (a file's, a link's),
    counted at the server, and its answer is shared."""
    settings = settings_for("s3-seaweedfs", seaweedfs, tmp_path)
    cloud = open_store(settings)
    try:
        await cloud.put("data/kept.bin", b"12345")
        names = Namespace(cloud, TTL)
        before = await asyncio.to_thread(seaweedfs.settled_request_count, "GET", settings.s3_bucket)
        for path, is_dir in (("data/kept.bin", False), ("data", True)):
            entries = await asyncio.gather(*(names.stat(path) for _ in range(32)))
            assert all(e is not None and e.is_dir is is_dir for e in entries)
        after = await asyncio.to_thread(seaweedfs.settled_request_count, "GET", settings.s3_bucket)
        assert after - before == 4  # 2 HEADs per path (SeaweedFS does not count LISTs here)
    finally:
        await cloud.close()


async def test_a_cached_listing_follows_this_mounts_changes(tmp_path: Path) -> None:
    """A listing is sorted once and then served to every readdir page: the changes this
    mount makes (a new file, a removed one, a new empty directory) must show in it."""
    cloud = open_store(settings_for("local", None, tmp_path))
    try:
        for name in ("b.bin", "d.bin"):
            await cloud.put(f"dir/{name}", b"x")
        names = Namespace(cloud, 60.0)  # nothing expires during the test
        assert [e.name for e in await names.listdir("dir")] == ["b.bin", "d.bin"]
        names.note("dir/c.bin", Entry("c.bin", False, 3, 0, "v1"))
        names.note("dir/b.bin", None)
        names.made_dir("dir/a")
        assert [(e.name, e.is_dir) for e in await names.listdir("dir")] == [
            ("a", True),
            ("c.bin", False),
            ("d.bin", False),
        ]
        names.note("dir/a/e.bin", Entry("e.bin", False, 1, 0, "v2"))  # a: a prefix now
        assert [(e.name, e.is_dir) for e in await names.listdir("dir")] == [
            ("a", True),
            ("c.bin", False),
            ("d.bin", False),
        ]
    finally:
        await cloud.close()


async def test_every_page_of_a_listing_with_local_entries_continues_where_the_last_ended(
    tmp_path: Path,
) -> None:
    """Each readdir page asks for the entries from an index on. With files being written
    mixed among the bucket's files and folders, every start gives exactly the rest of the
    whole sorted listing: nothing repeated, nothing skipped."""
    cloud = open_store(settings_for("local", None, tmp_path))
    try:
        listed = [f"f{n:03d}.bin" for n in range(0, 300, 3)]
        for name in listed:
            await cloud.put(f"dir/{name}", b"x")
        names = Namespace(cloud, 60.0)
        made = ["a-first", "f050", "f150.d", "zz-last"]
        for folder in [*(f"dir/{name}" for name in made), "elsewhere/f001"]:
            await cloud.put_marker(folder)  # as mkdir does
            names.made_dir(folder)
        unsaved = [Entry(f"f{n:03d}.new", False, n, 0, "") for n in (1, 2, 200, 299)]
        unsaved.append(Entry("f003.bin", False, 9, 0, ""))  # the bucket's entry wins
        whole = sorted([*listed, *made, *(e.name for e in unsaved[:-1])])
        for start in range(len(whole) + 2):
            rest = (await names.snapshot("dir", unsaved)).entries_from(start)
            assert [e.name for e in rest] == whole[start:], start
        bucket_file = next(e for e in await names.listdir("dir", unsaved) if e.name == "f003.bin")
        assert bucket_file.size == 1 and bucket_file.version
        for name in ("c", "a", "b"):
            await cloud.put(f"plain/{name}", b"x")
        for start in range(5):  # no local entries: the bucket's alone
            taken = await names.snapshot("plain")
            assert [e.name for e in taken.entries_from(start)] == ["a", "b", "c"][start:]
    finally:
        await cloud.close()


async def test_a_snapshot_keeps_its_positions_while_the_directory_changes(
    tmp_path: Path,
) -> None:
    """A read of a directory pages through the entries as its first page took them: this
    mount's changes leave every position where it was (a page gave the entry at its
    position in the listing as it was then: each removal skipped a name); the removed are
    left out as they come, the others as the cached listing has them now."""
    cloud = open_store(settings_for("local", None, tmp_path))
    try:
        for name in ("a", "b", "c", "d"):
            await cloud.put(f"dir/{name}", b"x")
        names = Namespace(cloud, 60.0)
        taken = await names.snapshot("dir", [Entry("bb", False, 5, 0, "")])
        assert [e.name for e in taken.entries_from(0)] == ["a", "b", "bb", "c", "d"]
        names.note("dir/a", None)
        names.note("dir/b", None)
        names.note("dir/aa", Entry("aa", False, 1, 0, "v1"))
        names.note("dir/d", Entry("d", False, 7, 0, "v2"))
        assert [e.name for e in taken.entries_from(2)] == ["bb", "c", "d"]  # as taken
        now = list(
            names.as_now("dir", enumerate(taken.entries_from(1), 1), [Entry("bb", False, 6, 0, "")])
        )
        assert [(i, e.name, e.size) for i, e in now] == [(2, "bb", 6), (3, "c", 1), (4, "d", 7)]
        assert [e.name for e in await names.listdir("dir")] == ["aa", "c", "d"]  # a new read
    finally:
        await cloud.close()


async def test_forgetting_a_directory_forgets_all_below_it_and_nothing_beside_it(
    tmp_path: Path,
) -> None:
    """After an rmdir or a rename of a directory, every answer cached below it is asked
    again, however deep; a sibling whose name starts the same keeps its own."""
    cloud = open_store(settings_for("local", None, tmp_path))
    try:
        for key in ("t/a/x", "t/a/b/c/d/y", "t/ab/z", "t/a.txt"):
            await cloud.put(key, b"x")
        # prune_at 4: the answers are pruned (none expired) and the index rebuilt often
        names = Namespace(cloud, 60.0, prune_at=4)
        assert [e.name for e in await names.listdir("t")] == ["a", "a.txt", "ab"]
        assert [e.name for e in await names.listdir("t/a")] == ["b", "x"]
        assert [e.name for e in await names.listdir("t/ab")] == ["z"]
        assert await names.stat("t/a/b/c/d/y") is not None
        names.made_dir("t/a/new")  # made here, as far as the cache knows
        names.made_dir("t/ab/new")
        assert [e.name for e in await names.listdir("t/a")] == ["b", "new", "x"]
        for key in ("t/a/x", "t/a/b/c/d/y"):  # changed behind the cached answers
            await cloud.delete(key)
        await cloud.put("t/a/w", b"x")
        await cloud.put("t/ab/w", b"x")

        names.forget_subtree("t/a")

        assert await names.stat("t/a/b/c/d/y") is None
        assert [e.name for e in await names.listdir("t/a")] == ["w"]
        assert await names.stat("t/a/new") is None  # the bucket has no marker of it
        assert [e.name for e in await names.listdir("t/ab")] == ["new", "z"]  # still cached
        assert await names.stat("t/ab/new") is not None
    finally:
        await cloud.close()


async def test_an_answer_asked_for_before_a_change_here_does_not_undo_it(
    seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """The bucket's answer (a listing, a stat) asked for before this mount changed a name
    and received after it keeps the change: the answer is older. (A lookup served an
    expired answer after STALE_AFTER and left its fetch going; that answer, once in, put
    a renamed file back under its old name and hid the new one for the TTL.) A relay
    holds each answer until the change is made."""
    given, environ = target_flags("s3-seaweedfs", seaweedfs, tmp_path)
    relay, given["s3_endpoint"] = relay_in_front_of(given["s3_endpoint"])
    cloud = open_store(load_settings(ClientSettings, given, environ))
    bucket = given["s3_bucket"]
    try:
        for key in ("dir/a", "other/c"):
            await cloud.put(key, b"bytes")
        names = Namespace(cloud, ttl=60)
        renamed = Entry("b", False, 5, 0, "new-version")

        relay.hold(b"delimiter=%2F")
        listing = asyncio.ensure_future(names.listdir("dir"))
        await asyncio.to_thread(relay.wait_until_held)
        names.note("dir/a", None)  # renamed to dir/b here meanwhile
        names.note("dir/b", renamed)
        relay.release()
        assert list(await listing) == [renamed]
        assert list(await names.listdir("dir")) == [renamed]
        assert await names.stat("dir/a") is None

        relay.hold(f"HEAD /{bucket}/other/c ".encode())
        stat = asyncio.ensure_future(names.stat("other/c"))
        await asyncio.to_thread(relay.wait_until_held)
        names.note("other/c", None)  # unlinked here meanwhile
        relay.release()
        assert await stat is None
        assert await names.stat("other/c") is None
    finally:
        relay.release()
        await cloud.close()
        relay.stop()
