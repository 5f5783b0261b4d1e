"""Random programs of file, folder and symbolic-link operations, handles opened in every
mode and held open across them, run on a mount and on a local folder side by side
(hypothesis's stateful testing): every call ends the same way on both (its bytes, or its
errno), the two trees (and, on one mount, their modes) match after each step, and at a
program's end the bucket and a second node's mount hold what the local folder does; a
fresh mount of the bucket at last holds all of it."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from random import Random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cloud_targets import networked_server_for
from mounts import Mount, node_stats
from relay import Relay, relay_in_front_of
from tierfs.errors import ObjectNotFoundError, VersionChangedError
from trees import bucket_tree, modes, tree

CHUNK = 64 * 2**10  # the mount's chunk size: small writes cross chunk edges
# names URLs must escape (a space, %, +, ?, #, &, =, non-ASCII) and one that looks escaped
ODD = "ü +%2F?#&=.x"
FILES = ["a", "b", "d/a", "d/b", "d/e/a", "e/a", f"e/{ODD}", f"{ODD}/a"]
FOLDERS = ["d", "e", "d/e", ODD]
offsets = st.sampled_from([0, 1, 4095, CHUNK - 3, CHUNK, CHUNK + 5000, 3 * CHUNK - 1])
# bytes of a length around the sizes that matter, from a seed (hypothesis's own draws are
# kept small)
payloads = st.builds(
    lambda seed, size: Random(seed).randbytes(size),
    st.integers(0, 2**32),
    st.sampled_from([0, 1, 100, 4096, CHUNK - 1, CHUNK + 7, 2 * CHUNK]),
)
# where links point: files and folders of the program, above it, and nowhere
link_targets = st.sampled_from(["a", "d", "d/a", "e/a", f"{ODD}/a", "../a", "nowhere", "/nowhere"])
# how a handle is opened: flags besides O_CREAT
open_modes = {
    "read": os.O_RDONLY,
    "write": os.O_WRONLY,
    "read-write": os.O_RDWR,
    "truncate": os.O_RDWR | os.O_TRUNC,
    "append": os.O_WRONLY | os.O_APPEND,
    "read-append": os.O_RDWR | os.O_APPEND,
    "exclusive": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
Outcome = tuple[str, Any]


def outcome(call: Callable[[], Any]) -> Outcome:
    """What a call ended with: its value, or its errno's name."""
    try:
        return "ok", call()
    except OSError as exc:
        return "error", errno.errorcode.get(exc.errno or 0, str(exc))


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


class MountAgainstLocalFolder(RuleBasedStateMachine):
    """One program: its own folder in the mount and in the local model, and handles open
    on both (a local and a mount descriptor each) across the other calls."""

    mount: Mount
    observer: Mount  # another node's mount of the bucket
    local_root: Path
    programs = itertools.count()
    handles = Bundle("handles")
    slowness = 1  # the programs run are MODEL_EXAMPLES / slowness
    flags: dict[str, str] = {}  # of both nodes' clients
    holds_handles = True
    keeps_modes = True  # the mount shows the modes set through it (see docs/SEMANTICS.md)
    # Set when the test's timeout fires (`alarm_ends_programs`): hypothesis takes its
    # exception for a failing program and shrinks it, running programs on with no timeout
    # left; once set, each fails at once, so that the test ends within seconds.
    timed_out = False

    def __init__(self) -> None:
        if self.timed_out:
            raise AssertionError("the test's time is up (pytest-timeout): no more programs")
        super().__init__()
        name = f"program-{next(self.programs)}"
        self.roots = (self.local_root / name, self.mount.path / name)
        for root in self.roots:
            root.mkdir()
        self.open: set[tuple[int, int]] = set()

    def teardown(self) -> None:
        """Every handle closed: the bucket holds what the local folder does."""
        self.close_every_handle()
        if self.timed_out:
            return  # the program failed for it: the mount may not answer
        local = tree(self.roots[0])
        assert bucket_tree(self.mount, self.roots[1].name) == local
        observed = tree(self.observer.path / self.roots[1].name)
        assert observed == local, f"the other node's log:\n{self.observer.log_tail()}"

    def close_every_handle(self) -> None:
        for pair in self.open:
            for fd in pair:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.open.clear()

    def both(self, call: Callable[..., Any], *paths: str) -> None:
        """`call` on the local folder, then on the mount: the same outcome."""
        local, mounted = (outcome(partial(call, *(root / p for p in paths))) for root in self.roots)
        assert mounted == local, f"{call.__name__}{paths}: mount {mounted}, local {local}"

    @initialize()
    def make_the_folders(self) -> None:
        """Most programs start with every folder there, so that writes find them."""
        for folder in FOLDERS:
            self.both(os.mkdir, folder)

    @rule(path=st.sampled_from(FILES), offset=offsets, data=payloads)
    def write(self, path: str, offset: int, data: bytes) -> None:
        self.both(lambda p: write_at(p, offset, data), path)

    @rule(path=st.sampled_from(FILES), data=payloads)
    def append(self, path: str, data: bytes) -> None:
        self.both(lambda p: append(p, data), path)

    @rule(path=st.sampled_from(FILES), size=offsets)
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda p: os.truncate(p, size), path)

    @rule(path=st.sampled_from(FILES + FOLDERS))
    def unlink(self, path: str) -> None:
        self.both(os.unlink, path)

    @rule(folder=st.sampled_from(FOLDERS))
    def mkdir(self, folder: str) -> None:
        self.both(os.mkdir, folder)

    @rule(folder=st.sampled_from(FOLDERS + FILES))
    def rmdir(self, folder: str) -> None:
        self.both(os.rmdir, folder)

    @rule(source=st.sampled_from(FILES + FOLDERS), destination=st.sampled_from(FILES + FOLDERS))
    def rename(self, source: str, destination: str) -> None:
        self.both(os.rename, source, destination)

    @rule(path=st.sampled_from(FILES + FOLDERS), pointing_to=link_targets)
    def symlink(self, path: str, pointing_to: str) -> None:
        self.both(lambda p: os.symlink(pointing_to, p), path)

    @rule(path=st.sampled_from(FILES + FOLDERS))
    def readlink(self, path: str) -> None:
        self.both(os.readlink, path)

    @rule(path=st.sampled_from(FILES + FOLDERS), mode=st.sampled_from([0o600, 0o640, 0o700, 0o444]))
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda p: os.chmod(p, mode), path)

    @precondition(lambda self: self.holds_handles)
    @rule(
        target=handles,
        path=st.sampled_from(FILES),
        mode=st.sampled_from(sorted(open_modes)),
        create=st.booleans(),
    )
    def open_handle(
        self, path: str, mode: str, create: bool
    ) -> tuple[int, int] | MultipleResults[Any]:
        flags = open_modes[mode] | (os.O_CREAT if create else 0)
        local, mounted = (
            outcome(partial(os.open, root / path, flags, 0o644)) for root in self.roots
        )
        assert mounted[0] == local[0], f"open {path}: mount {mounted}, local {local}"
        if local[0] == "error":
            assert mounted == local, f"open {path}: mount {mounted}, local {local}"
            return multiple()
        pair = (local[1], mounted[1])
        self.open.add(pair)
        return pair

    @rule(handle=handles, offset=offsets, data=payloads)
    def write_through_handle(self, handle: tuple[int, int], offset: int, data: bytes) -> None:
        self.on_handle(handle, lambda fd: os.pwrite(fd, data, offset))

    @rule(handle=handles, data=payloads)
    def write_at_the_handles_offset(self, handle: tuple[int, int], data: bytes) -> None:
        self.on_handle(handle, lambda fd: os.write(fd, data))

    @rule(handle=handles, offset=offsets)
    def seek(self, handle: tuple[int, int], offset: int) -> None:
        self.on_handle(handle, lambda fd: os.lseek(fd, offset, os.SEEK_SET))

    @rule(handle=handles, size=offsets)
    def truncate_through_handle(self, handle: tuple[int, int], size: int) -> None:
        self.on_handle(handle, lambda fd: os.ftruncate(fd, size))

    @rule(handle=handles, offset=offsets, size=st.sampled_from([1, 4096, CHUNK + 1, 4 * CHUNK]))
    def read_through_handle(self, handle: tuple[int, int], offset: int, size: int) -> None:
        self.on_handle(handle, lambda fd: os.pread(fd, size, offset))

    @rule(handle=handles, mode=st.sampled_from([0o600, 0o444]))
    def chmod_through_handle(self, handle: tuple[int, int], mode: int) -> None:
        self.on_handle(handle, lambda fd: os.fchmod(fd, mode))

    @rule(handle=handles)
    def fsync_handle(self, handle: tuple[int, int]) -> None:
        self.on_handle(handle, os.fsync)

    @rule(handle=consumes(handles))
    def close_handle(self, handle: tuple[int, int]) -> None:
        self.on_handle(handle, os.close)
        self.open.discard(handle)

    def on_handle(self, handle: tuple[int, int], call: Callable[[int], Any]) -> None:
        if handle not in self.open:  # closed in another branch of the program
            return
        local, mounted = (outcome(partial(call, fd)) for fd in handle)
        assert mounted == local, f"on a handle: mount {mounted}, local {local}"

    @invariant()
    def every_folder_lists_and_every_file_reads_the_same(self) -> None:
        local, mounted = (tree(root) for root in self.roots)
        assert mounted == local
        if self.keeps_modes:
            local_modes, mounted_modes = (modes(root) for root in self.roots)
            assert mounted_modes == local_modes


class CrashingMount(MountAgainstLocalFolder):
    """The same programs, where the client may also be killed (SIGKILL) between two calls
    and started again on its cache dir: every write a call returned from is then in the
    bucket, open or not (the journal), and the handles of the dead mount are gone."""

    slowness = 4  # a restart takes a second or two: a quarter as many programs
    keeps_modes = False  # they live on the mount that set them, and it is restarted

    @rule()
    def crash_and_restart(self) -> None:
        self.mount.kill()
        for local_fd, mount_fd in self.open:
            os.close(local_fd)
            with contextlib.suppress(OSError):
                os.close(mount_fd)  # of the dead mount
        self.open.clear()
        self.mount.start()


class SmallTier1(MountAgainstLocalFolder):
    """The same programs on a tier 1 of 4 chunks, which evicts all the time."""

    flags = {"nvme_size": str(4 * CHUNK)}


class TwoNodes(MountAgainstLocalFolder):
    """The calls of a program go to one node, then to another (each mounts the bucket
    with a metadata TTL of 0: it sees the other's changes at its next call). No handle is
    held across calls: close-to-open is what nodes promise each other."""

    flags = {"metadata_ttl": "0"}
    holds_handles = False
    keeps_modes = False  # each node shows the modes set through it
    slowness = 8  # every lookup asks the bucket: an eighth as many programs

    @rule()
    def switch_node(self) -> None:
        mounted = self.roots[1]
        nodes = [self.mount.path, self.observer.path]
        other = nodes[1 - nodes.index(mounted.parent)]
        self.roots = (self.roots[0], other / mounted.name)


class PartitionedMount(MountAgainstLocalFolder):
    """The same programs, where the mount may also lose the bucket (a partition: it alone)
    while a handle writes and closes: the close fails (EIO) or not, the bytes are kept,
    and the program goes on with the file waiting for its upload, healed at once or once
    the release's own try has failed too (the retry loop's then, amid the next calls).
    The mount shows the bytes all along; at the program's end the bucket has them. And a
    change of names tried while partitioned either ends as on the local folder or fails
    with EIO and changes nothing (nothing of it reached the bucket)."""

    relay: Relay
    slowness = 8  # a failing close waits out the cloud deadline: an eighth as many programs

    @rule(path=st.sampled_from(FILES), offset=offsets, data=payloads, heal_at_once=st.booleans())
    def write_and_close_while_partitioned(
        self, path: str, offset: int, data: bytes, heal_at_once: bool
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT
        local, mounted = (
            outcome(partial(os.open, root / path, flags, 0o644)) for root in self.roots
        )
        assert mounted[0] == local[0], f"open {path}: mount {mounted}, local {local}"
        if local[0] == "error":
            assert mounted == local, f"open {path}: mount {mounted}, local {local}"
            return
        os.pwrite(local[1], data, offset)
        os.close(local[1])
        assert outcome(lambda: os.pwrite(mounted[1], data, offset)) == ("ok", len(data))
        failed_releases = self.mount.log.read_text(errors="replace").count("release: ")
        self.relay.cut()
        try:
            closed = outcome(lambda: os.close(mounted[1]))
            if closed == ("error", "EIO") and not heal_at_once:
                self.mount.wait_for_log("release: ", failed_releases + 1)
        finally:
            self.relay.restore()
        assert closed in {("ok", None), ("error", "EIO")}, f"close {path}: {closed}"

    @rule(
        change=st.sampled_from(["mkdir", "rmdir", "unlink", "rename", "symlink"]),
        path=st.sampled_from(FILES + FOLDERS),
        other=st.sampled_from(FILES + FOLDERS),
    )
    def change_names_while_partitioned(self, change: str, path: str, other: str) -> None:
        calls: dict[str, Callable[[Path, Path], Any]] = {
            "mkdir": lambda p, _: os.mkdir(p),
            "rmdir": lambda p, _: os.rmdir(p),
            "unlink": lambda p, _: os.unlink(p),
            "rename": os.rename,
            "symlink": lambda p, _: os.symlink(other, p),
        }
        call = calls[change]
        self.relay.cut()
        try:
            mounted = outcome(lambda: call(self.roots[1] / path, self.roots[1] / other))
        finally:
            self.relay.restore()
        if mounted != ("error", "EIO"):
            local = outcome(lambda: call(self.roots[0] / path, self.roots[0] / other))
            assert mounted == local, f"{change} {path} {other}: mount {mounted}, local {local}"

    def teardown(self) -> None:
        """Once every failed close has been retried (within a minute)."""
        self.close_every_handle()
        local = tree(self.roots[0])
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(VersionChangedError, ObjectNotFoundError):  # a retry's put
                if bucket_tree(self.mount, self.roots[1].name) == local:
                    break
            assert time.monotonic() < deadline, f"not uploaded:\n{self.mount.log_tail()}"
            time.sleep(0.5)
        super().teardown()


@contextlib.contextmanager
def alarm_ends_programs(machine: type[MountAgainstLocalFolder]) -> Iterator[None]:
    """While the programs run, pytest-timeout's alarm (its signal method) also tells the
    machine its time is up."""
    alarm = signal.getsignal(signal.SIGALRM)
    if not callable(alarm):  # no timeout, or another method
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        machine.timed_out = True
        alarm(signum, frame)

    signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, alarm)


@pytest.mark.parametrize(
    ("provider", "machine"),
    [
        *(
            pytest.param(provider, MountAgainstLocalFolder, id=provider)
            for provider in ["s3-seaweedfs", "s3-moto", "azure", "gcp-native", "local"]
        ),
        pytest.param("s3-moto", SmallTier1, id="s3-moto-tier1-of-4-chunks"),
        pytest.param("s3-moto", CrashingMount, id="s3-moto-crashing"),
        pytest.param("local", CrashingMount, id="local-crashing"),
        pytest.param("local", TwoNodes, id="local-two-nodes"),
        pytest.param("azure", TwoNodes, id="azure-two-nodes"),
        pytest.param("gcp-native", TwoNodes, id="gcp-native-two-nodes"),
        *(
            pytest.param(
                provider,
                PartitionedMount,
                id=f"{provider}-partitioned",
                marks=pytest.mark.warnings_expected,
            )
            for provider in ["s3-seaweedfs", "azure"]
        ),
    ],
)
def test_random_programs_end_the_same_on_the_mount_and_on_a_local_folder(
    request: pytest.FixtureRequest,
    mount_factory: Callable[..., Mount],
    tmp_path: Path,
    provider: str,
    machine: type[MountAgainstLocalFolder],
) -> None:
    """Each program checked at its end on the bucket and through a second mount of it
    (another node, its own cache), and all of them at last through a fresh mount, but on
    SeaweedFS: its cleaner of emptied folders deletes, 20-40 s after they were written,
    some objects written under or at the name of a folder emptied just before
    (docs/SEMANTICS.md), which the programs do all the time. On every store; then on a
    tier 1 that evicts, with crashes, on two nodes taking turns, and on a mount that alone
    loses the bucket at times (a relay between them, cut). MODEL_EXAMPLES (40) programs
    each, a quarter as many with crashes, an eighth on two nodes (moto is too slow for
    that: each lookup asks it) and with partitions: more for a longer hunt."""

    def another_mount() -> Mount:
        flags = machine.flags | mount.bucket_flags()
        return mount_factory(provider, chunk_size=str(CHUNK), **flags)

    flags = dict(machine.flags)
    if machine is PartitionedMount:
        endpoint = networked_server_for(request, provider).endpoint
        machine.relay, relayed = relay_in_front_of(endpoint)
        request.addfinalizer(machine.relay.stop)
        flags |= {f"{provider.split('-')[0]}_endpoint": relayed, "cloud_timeout": "3"}
    mount = mount_factory(provider, chunk_size=str(CHUNK), **flags)
    machine.mount, machine.observer = mount, another_mount()
    machine.local_root = tmp_path / "local"
    machine.local_root.mkdir()
    machine.timed_out = False
    try:
        with alarm_ends_programs(machine):
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=int(os.environ.get("MODEL_EXAMPLES", "40")) // machine.slowness,
                    stateful_step_count=40,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                ),
            )
    except BaseException as exc:
        if machine.timed_out:  # what hypothesis reports is its aftermath
            raise AssertionError("the programs took longer than the test's timeout") from exc
        raise
    if machine is SmallTier1:
        assert node_stats(mount)["evictions"] > 0
    mount.stop()
    machine.observer.stop()
    if provider != "s3-seaweedfs":
        assert tree(another_mount().path) == tree(machine.local_root)
