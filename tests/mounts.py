"""`tierfs client` as a real process with a real FUSE mount, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import servers
from tierfs.cloud.base import CloudStore
from tierfs.cloud.providers import open_store
from tierfs.errors import ObjectNotFoundError
from tierfs.settings import ClientSettings, CoordinatorSettings, load_settings

# The `tmpfs` fixture: mounts a tmpfs of a size ("64m") on a folder and returns it.
T = TypeVar("T")
TmpfsMount = Callable[[Path, str], Path]

MOUNT_TIMEOUT = 30.0

# Where a client looks for its coordinator unless told: `make run`'s demo (or any other
# service) listens there, and a test's client joined whatever answered.
DEFAULT_COORDINATOR_PORT: int = CoordinatorSettings.model_fields["port"].default
_UNSERVED: list[socket.socket] = []  # held open while this process runs


def no_coordinator() -> str:
    """A coordinator address that nothing serves while this process runs: a port of
    127.0.0.1 it holds bound and never listens on, so a client's every request to it is
    refused (a port merely free a moment ago could be taken by another test's server)."""
    if not _UNSERVED:
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.bind(("127.0.0.1", 0))
        _UNSERVED.append(held)
    return f"127.0.0.1:{_UNSERVED[0].getsockname()[1]}"


def flag_value(args: tuple[str, ...], name: str) -> str | None:
    """The value given to flag `name` in ARGS (`-name V`, `--name V`, `-name=V`), or None."""
    for at, arg in enumerate(args):
        if arg in (f"-{name}", f"--{name}"):
            return args[at + 1] if at + 1 < len(args) else ""
        if arg.startswith((f"-{name}=", f"--{name}=")):
            return arg.partition("=")[2]
    return None


def client_command(*args: str) -> list[str]:
    """`tierfs client ARGS` for a test: in no cluster and with a peer port of its own
    unless ARGS say otherwise. Fails on a coordinator at port 8080, the default's, so that
    no test depends on what runs there."""
    coordinator = flag_value(args, "coordinator")
    if coordinator is None:
        args += ("-coordinator", no_coordinator())
    else:
        refuse_the_default_coordinator("client", coordinator)
    if flag_value(args, "port") is None:
        args += ("-port", str(servers.free_ports(1)[0]))
    return [sys.executable, "-m", "tierfs.cli", "client", *args]


def status_command(*args: str) -> list[str]:
    """`tierfs status ARGS` for a test, which must name its coordinator: the default,
    localhost:8080, is `make run`'s, and a test must not show (or depend on) that cluster."""
    refuse_the_default_coordinator("status", flag_value(args, "coordinator"))
    return [sys.executable, "-m", "tierfs.cli", "status", *args]


def status(*args: str) -> subprocess.CompletedProcess[str]:
    """`tierfs status ARGS` as a user runs it (`status_command`)."""
    command = status_command(*args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def refuse_the_default_coordinator(command: str, coordinator: str | None) -> None:
    """RuntimeError if a test's `tierfs COMMAND` would reach a coordinator at port 8080 (the
    default's): given none (None), or one at that port (host:port or a URL)."""
    url = urllib.parse.urlsplit(
        coordinator if coordinator and "://" in coordinator else f"http://{coordinator}"
    )
    if coordinator is None or url.port == DEFAULT_COORDINATOR_PORT:
        raise RuntimeError(
            f"a test's `tierfs {command}` with -coordinator {coordinator or 'localhost:8080'}: "
            "that is where `make run`'s coordinator listens; give it the test's own "
            "(coordinators.start_coordinator) or mounts.no_coordinator()"
        )


def is_mounted(path: Path) -> bool:
    """A mount (live or stale) is at `path`."""
    target = os.path.realpath(path)
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def unmount_if_mounted(path: Path) -> bool:
    """Unmount (lazily) what is at `path`, live or stale; whether there was a mount."""
    if not is_mounted(path):
        return False
    subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)
    return True


def is_serving(path: Path) -> bool:
    """A live filesystem answers at `path` (a stale mount fails statfs with ENOTCONN; not
    stat, which for a second after a crash the kernel may answer from its cache)."""
    try:
        os.statvfs(path)
    except OSError:
        return False
    return is_mounted(path)


def wait_until_serving(path: Path, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until a filesystem answers at `path`; False if `proc` exits first or
    MOUNT_TIMEOUT passes."""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_serving(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' before it exists)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


# The flags, one per provider, that name the bucket a client mounts.
BUCKET_FLAGS = ("s3_bucket", "gcp_bucket", "azure_container", "local_root")


@dataclass
class Mount:
    """A running client: its mount point, cache dir, process and log."""

    path: Path
    nvme: Path
    flags: dict[str, str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The peer API on loopback only, on a port of its own, and in no cluster, unless
        # the caller chose.
        self.flags = {"listen": "127.0.0.1", "coordinator": no_coordinator()} | self.flags
        if "port" not in self.flags:
            self.flags["port"] = str(servers.free_ports(1)[0])

    def command(self) -> list[str]:
        args = ["-mount", str(self.path), "-nvme", str(self.nvme), "-log-level", "info"]
        for name, value in self.flags.items():
            args += [f"-{name.replace('_', '-')}", value]
        return client_command(*args)

    def start(self) -> Mount:
        """Start the client and wait until the mount is there (or fail with its log)."""
        command = self.command()
        if not is_mounted(self.path):  # else stale: the client cleans it up itself
            self.path.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=servers.clean_env(**self.env),
                start_new_session=True,
            )
        if not wait_until_serving(self.path, self.proc):
            self.kill()
            raise RuntimeError(f"tierfs did not mount {self.path}:\n{self.log_tail()}")
        return self

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def wait_for_log(self, text: str, times: int = 1, timeout: float = 30.0) -> None:
        """Until the client's log holds `text` `times` times; fails past `timeout`."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(text) < times:
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log_tail()}"
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (dirty files upload, then unmount) and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            self._unmount()
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self._unmount()
        return code

    def bucket_flags(self) -> dict[str, str]:
        """The flags that name this mount's bucket: given to another mount, it mounts the
        same one (another node)."""
        return {key: self.flags[key] for key in BUCKET_FLAGS if key in self.flags}

    def kill(self) -> None:
        """SIGKILL the client, as a crash would; the mount is left stale."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def _unmount(self) -> None:
        unmount_if_mounted(self.path)


def warm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tierfs warm ARGS` as a user runs it, with `env` besides the test's (clean) one."""
    command = [sys.executable, "-m", "tierfs.cli", "warm", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=servers.clean_env(**env),
    )


def node_address(mount: Mount) -> str:
    """The address `tierfs warm -node` takes for `mount`'s client."""
    return f"127.0.0.1:{mount.flags['port']}"


def cloud_of(mount: Mount) -> CloudStore:
    """A CloudStore on the bucket behind `mount`, to check what really reached the cloud."""
    return open_store(load_settings(ClientSettings, mount.flags, mount.env))


def node_stats(mount: Mount) -> Any:
    """The node's counters (`GET /api/cache/stats` of its peer API)."""
    url = f"http://127.0.0.1:{mount.flags['port']}/api/cache/stats"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def held_chunks(mount: Mount) -> list[Any]:
    """The chunks in the node's tier 1 (`GET /api/cache` of its peer API), up to 1000."""
    url = f"http://127.0.0.1:{mount.flags['port']}/api/cache?limit=1000"
    with urllib.request.urlopen(url, timeout=10) as answer:
        chunks: list[Any] = json.loads(answer.read())["chunks"]
        return chunks


def on_cloud(mount: Mount, call: Callable[[CloudStore], Awaitable[T]]) -> T:
    """`call` on a CloudStore of the bucket behind `mount`, closed after."""

    async def run() -> T:
        cloud = cloud_of(mount)
        try:
            return await call(cloud)
        finally:
            await cloud.close()

    return asyncio.run(run())


def cloud_bytes(mount: Mount, key: str) -> bytes | None:
    """The object's bytes as the cloud has them, or None if it has no such object."""

    async def fetch(cloud: CloudStore) -> bytes | None:
        try:
            meta = await cloud.head(key)
        except ObjectNotFoundError:
            return None
        return bytes(await cloud.get_range(key, 0, meta.size, meta.version))

    return on_cloud(mount, fetch)


def cloud_put(mount: Mount, key: str, data: bytes) -> None:
    """Write an object behind the mount's back, as another tool would."""
    on_cloud(mount, lambda cloud: cloud.put(key, data))


def cloud_mkdir(mount: Mount, prefix: str) -> None:
    """Make the folder `prefix` in the bucket (its marker) behind the mount's back."""
    on_cloud(mount, lambda cloud: cloud.put_marker(prefix))


def cloud_delete(mount: Mount, key: str) -> None:
    """Remove an object behind the mount's back, as another tool would."""
    on_cloud(mount, lambda cloud: cloud.delete(key))


def bucket_keys(mount: Mount) -> list[str]:
    """Every key in the bucket behind `mount`, folder markers included."""

    async def keys(cloud: CloudStore) -> list[str]:
        return [meta.key for meta in (await cloud.list_all(delimiter=False)).objects]

    return on_cloud(mount, keys)


def close_errno(fd: int) -> int:
    """The errno of closing `fd`, 0 if it closed."""
    try:
        os.close(fd)
    except OSError as exc:
        return exc.errno or 0
    return 0


def refused(action: Callable[[], object]) -> int:
    """The errno `action` fails with (it must fail)."""
    try:
        action()
    except OSError as exc:
        assert exc.errno is not None
        return exc.errno
    raise AssertionError(f"{action} did not fail")
