"""Mount options users of other bucket mounts reach for: read-only, other users let in, one
folder of the bucket, the AWS tools' credentials and the bucket's region, a public bucket
without any, a mount point with files in it; and what stops a client at start."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import servers
from mounts import (
    Mount,
    bucket_keys,
    cloud_bytes,
    cloud_mkdir,
    cloud_put,
    is_mounted,
    refused,
)
from tierfs.cloud.aws_credentials import NOT_FOUND

NOBODY = 65534


def refused_at_start(mount: Mount) -> list[str]:
    """The lines a client of `mount` that refuses to start says on stderr (it must exit 1
    within 30 s: one that mounts instead fails the test, once stopped as a user would)."""
    mount.path.mkdir(parents=True, exist_ok=True)
    args = mount.command() + ["-log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, *args[1:]],
        stderr=subprocess.PIPE,
        text=True,
        env=servers.clean_env(**mount.env),
    )
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the client mounted:\n{stderr}")
    assert proc.returncode == 1, stderr
    assert not is_mounted(mount.path)
    return stderr.strip().splitlines()


def mount_options(mount: Mount) -> set[str]:
    target = os.path.realpath(mount.path)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == target:
                return set(fields[3].split(","))
    raise AssertionError(f"{target} is not mounted")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "new.txt").write_bytes(b"x"),
        lambda r: (r / "data/a.txt").write_bytes(b"x"),
        lambda r: open(r / "data/a.txt", "ab").close(),
        lambda r: os.truncate(r / "data/a.txt", 0),
        lambda r: os.unlink(r / "data/a.txt"),
        lambda r: os.rename(r / "data/a.txt", r / "data/b.txt"),
        lambda r: os.mkdir(r / "dir"),
        lambda r: os.rmdir(r / "data/empty"),
        lambda r: os.chmod(r / "data/a.txt", 0o600),
        lambda r: os.utime(r / "data/a.txt", (0, 0)),
        lambda r: os.symlink("a.txt", r / "data/link"),
    ],
)
def test_a_read_only_mount_reads_and_refuses_every_change(
    mount_factory: Callable[..., Mount], change: Callable[[Path], object]
) -> None:
    mount = mount_factory("local", start=False)
    cloud_put(mount, "data/a.txt", b"hello\n")
    cloud_mkdir(mount, "data/empty")
    mount.flags["read_only"] = "true"
    mount.start()
    assert "ro" in mount_options(mount)
    with pytest.raises(OSError) as refused:
        change(mount.path)
    assert refused.value.errno == errno.EROFS
    assert (mount.path / "data/a.txt").read_bytes() == b"hello\n"
    assert sorted(os.listdir(mount.path / "data")) == ["a.txt", "empty"]
    assert cloud_bytes(mount, "data/a.txt") == b"hello\n"
    assert cloud_bytes(mount, "new.txt") is None


def as_nobody(mount: Mount, tool: str, name: str) -> subprocess.CompletedProcess[str]:
    """Run `tool` on the mount's file `name` as user nobody. The path goes through the
    mount's root opened here (/proc/self/fd/N): the test's folders above the mount point
    are closed to other users."""
    root = os.open(mount.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run(
            [tool, f"/proc/self/fd/{root}/{name}"],
            pass_fds=[root],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.close(root)


@pytest.mark.parametrize("allow_other", [False, True])
def test_other_users_come_in_with_allow_other_and_the_mode_bits_hold(
    mount_factory: Callable[..., Mount], allow_other: bool
) -> None:
    mount = mount_factory("local", allow_other=str(allow_other).lower())
    (mount.path / "a.txt").write_bytes(b"hello\n")
    assert ("allow_other" in mount_options(mount)) == allow_other
    read = as_nobody(mount, "cat", "a.txt")
    write = as_nobody(mount, "touch", "theirs.txt")
    if allow_other:
        assert read.returncode == 0 and read.stdout == "hello\n"
    else:
        assert read.returncode != 0 and "Permission denied" in read.stderr
    # The root folder is the mounting user's, 0755: nobody may read, not write.
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert sorted(os.listdir(mount.path)) == ["a.txt"]


def test_a_key_that_would_pass_1024_bytes_under_the_prefix_is_refused_as_too_long(
    mount_factory: Callable[..., Mount],
) -> None:
    """In a mount of a bucket's folder (`-prefix`), a key is the prefix's and the path's:
    a file whose key (`pre/path`), or a folder whose marker (`pre/path/`), would pass 1024
    bytes is ENAMETOOLONG where it is made or renamed to, or looked up, as without a
    prefix. Before 2026-12-06 the mkdir was EIO (SeaweedFS refused the marker), then
    EINVAL, as the file's create was, where a mount without a prefix said ENAMETOOLONG;
    before 2026-12-07 the lookup (`stat`) was ENOENT."""
    mount = mount_factory("s3-seaweedfs", prefix="pre")
    deep = Path(*["s" * 200] * 4)  # "pre/" and this, with its "/": 808 bytes of key
    os.makedirs(mount.path / deep)
    room = 1024 - len(f"pre/{deep}/")
    (mount.path / deep / ("f" * room)).write_bytes(b"fits")  # a key of 1024 bytes
    os.mkdir(mount.path / deep / ("d" * (room - 1)))  # a marker of 1024 bytes
    too_long = [
        lambda: os.stat(mount.path / deep / ("g" * (room + 1))),
        lambda: (mount.path / deep / ("g" * (room + 1))).read_bytes(),
        lambda: (mount.path / deep / ("g" * (room + 1))).write_bytes(b"x"),
        lambda: os.mkdir(mount.path / deep / ("e" * room)),
        lambda: os.rename(mount.path / deep / ("d" * (room - 1)), mount.path / deep / ("e" * room)),
        lambda: os.rename(mount.path / deep / ("f" * room), mount.path / deep / ("g" * (room + 1))),
    ]
    assert [refused(action) for action in too_long] == [errno.ENAMETOOLONG] * 6
    assert sorted(os.listdir(mount.path / deep)) == ["d" * (room - 1), "f" * room]
    # Its folder listed now: the lookup is answered from the listing, refused alike.
    assert refused(lambda: os.lstat(mount.path / deep / ("h" * (room + 1)))) == errno.ENAMETOOLONG


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_a_folder_of_the_bucket_is_mounted_as_its_root(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    mount = mount_factory(provider, start=False)
    payload = os.urandom(5 * 2**20)
    cloud_put(mount, "datasets/imagenet/train/a.bin", payload)
    cloud_put(mount, "datasets/imagenet/b.txt", b"b\n")
    cloud_put(mount, "datasets/other.txt", b"other\n")
    cloud_put(mount, "top.txt", b"top\n")
    cloud_mkdir(mount, "datasets/imagenet")  # the folder's own marker is no entry of it
    mount.flags["prefix"] = "datasets/imagenet"
    root = mount.start().path
    assert sorted(os.listdir(root)) == ["b.txt", "train"]
    assert (root / "train/a.bin").read_bytes() == payload
    (root / "new.txt").write_bytes(b"new\n")
    os.mkdir(root / "empty")
    os.rename(root / "b.txt", root / "train/c.txt")
    os.unlink(root / "train/a.bin")
    assert sorted(os.listdir(root)) == ["empty", "new.txt", "train"]
    assert os.listdir(root / "train") == ["c.txt"]
    keys = bucket_keys(mount)
    own_marker = "datasets/imagenet/"
    inside = sorted(
        k.removesuffix("/") for k in keys if k.startswith(own_marker) and k != own_marker
    )
    assert inside == [
        "datasets/imagenet/empty",
        "datasets/imagenet/new.txt",
        "datasets/imagenet/train/c.txt",
    ]
    assert "datasets/other.txt" in keys and "top.txt" in keys  # outside: untouched
    assert cloud_bytes(mount, "datasets/imagenet/train/c.txt") == b"b\n"
    assert "rw" in mount_options(mount)


@pytest.mark.parametrize("provider", ["local", "s3-seaweedfs"])
def test_a_folder_named_in_unicode_with_a_space_and_a_comma_is_mounted(
    mount_factory: Callable[..., Mount], provider: str
) -> None:
    """Its name went into the mount's options as it was: a traceback at start
    (UnicodeEncodeError) for `données`, and a comma split the options."""
    mount = mount_factory(provider, start=False)
    cloud_put(mount, "données été, 2026/a.txt", b"a\n")
    cloud_put(mount, "données été, 2026X/outside.txt", b"x\n")
    mount.flags["prefix"] = "données été, 2026/"
    root = mount.start().path
    assert os.listdir(root) == ["a.txt"]
    (root / "b.txt").write_bytes(b"b\n")
    assert cloud_bytes(mount, "données été, 2026/b.txt") == b"b\n"
    assert "données été, 2026X/outside.txt" in bucket_keys(mount)


def chunk_files(mount: Mount) -> int:
    return sum(1 for path in (mount.nvme / "chunks").rglob("*") if path.is_file())


def test_a_cache_dir_keeps_to_its_folder_and_sends_its_uploads_there(
    mount_factory: Callable[..., Mount],
) -> None:
    mount = mount_factory("local", start=False)
    cloud_put(mount, "one/x.bin", os.urandom(2**20))
    cloud_put(mount, "two/x.bin", theirs := os.urandom(2**20))
    mount.flags["prefix"] = "one"
    mount.start()
    (mount.path / "x.bin").read_bytes()
    assert mount.stop() == 0
    mount.start()  # the same folder: tier 1 kept
    assert chunk_files(mount) == 1
    fd = os.open(mount.path / "crash.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    assert os.write(fd, payload := os.urandom(3 * 2**20)) == len(payload)
    mount.kill()  # the upload is journaled, not sent
    with pytest.raises(OSError):
        os.close(fd)  # the daemon is gone
    mount.flags["prefix"] = "two"
    with pytest.raises(RuntimeError, match=r"holds 1 upload\(s\) not yet in local://.*/one/"):
        mount.start()
    assert mount.proc is not None and mount.proc.returncode == 1
    assert cloud_bytes(mount, "two/crash.bin") is None
    mount.flags["prefix"] = "one"
    mount.start()  # sends it where it was written
    assert cloud_bytes(mount, "one/crash.bin") == payload
    assert mount.stop() == 0
    mount.flags["prefix"] = "two"
    mount.start()  # no upload pending: the chunks of the other folder are dropped
    assert chunk_files(mount) == 0
    assert (mount.path / "x.bin").read_bytes() == theirs
    assert "its chunks are dropped" in mount.log_tail(200)


def test_a_mount_signs_with_the_keys_of_an_aws_profile(
    mount_factory: Callable[..., Mount], seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """No keys in the client's environment: it signs with a profile's, as the AWS CLI
    would, its folder markers included."""
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[datasets]\naws_access_key_id = {seaweedfs.access_key}\n"
        f"aws_secret_access_key = {seaweedfs.secret_key}\n"
    )
    (aws / "config").write_text("")
    mount = mount_with_profile(mount_factory, aws, "datasets")
    payload = os.urandom(5 * 2**20 + 3)
    (mount.path / "empty").mkdir()
    (mount.path / "data.bin").write_bytes(payload)
    assert (mount.path / "data.bin").read_bytes() == payload
    bucket = seaweedfs.boto3_client().list_objects_v2(Bucket=mount.flags["s3_bucket"])
    assert sorted(item["Key"] for item in bucket["Contents"]) == ["data.bin", "empty/"]


def test_a_credential_process_runs_once_at_start(
    mount_factory: Callable[..., Mount], seaweedfs: servers.S3Server, tmp_path: Path
) -> None:
    """A profile whose keys come from a `credential_process` (a program, which may be slow
    or ask a vault): the client runs it once, not once to check there are credentials and
    again for its store."""
    aws, runs = tmp_path / "aws", tmp_path / "runs"
    aws.mkdir()
    answer = json.dumps(
        {"Version": 1, "AccessKeyId": seaweedfs.access_key, "SecretAccessKey": seaweedfs.secret_key}
    )
    program = aws / "keys.sh"
    program.write_text(f"#!/bin/sh\necho run >> {runs}\necho '{answer}'\n")
    program.chmod(0o755)
    (aws / "config").write_text(f"[profile vault]\ncredential_process = {program}\n")
    mount = mount_with_profile(mount_factory, aws, "vault")
    (mount.path / "f").write_bytes(b"signed")
    assert (mount.path / "f").read_bytes() == b"signed"
    assert runs.read_text() == "run\n"


def mount_with_profile(mount_factory: Callable[..., Mount], aws: Path, profile: str) -> Mount:
    """A mount of a SeaweedFS bucket given no keys: AWS profile `profile` of the shared
    files `aws/credentials` and `aws/config`, no instance role."""
    mount = mount_factory("s3-seaweedfs", start=False)
    mount.env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
        "AWS_CONFIG_FILE": str(aws / "config"),
        "AWS_PROFILE": profile,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return mount.start()


def test_a_mount_given_no_region_takes_the_one_its_bucket_names(
    mount_factory: Callable[..., Mount], moto: servers.S3Server
) -> None:
    """No -s3-region: the bucket's own (moto names it as S3 does), not us-east-1."""
    bucket = moto.create_bucket(region="eu-west-2")
    moto.boto3_client().put_object(Bucket=bucket, Key="labels.csv", Body=b"id,label\n1,x\n")
    mount = mount_factory("s3-moto", start=False, s3_bucket=bucket)
    del mount.flags["s3_region"]
    mount.start()
    assert (mount.path / "labels.csv").read_bytes() == b"id,label\n1,x\n"
    assert f"S3 bucket {bucket}: region eu-west-2 (the bucket's)" in mount.log.read_text()


@pytest.mark.warnings_expected
def test_a_mount_given_another_region_than_its_buckets_takes_the_buckets(
    mount_factory: Callable[..., Mount], moto: servers.S3Server
) -> None:
    """-s3-region us-east-1 (or AWS_REGION, set so on ECS and Lambda) for a bucket in
    eu-west-2: AWS would refuse every request so signed; the bucket's region is used, and
    the log says so."""
    bucket = moto.create_bucket(region="eu-west-2")
    moto.boto3_client().put_object(Bucket=bucket, Key="labels.csv", Body=b"id,label\n1,x\n")
    mount = mount_factory("s3-moto", s3_bucket=bucket, s3_region="us-east-1")
    assert (mount.path / "labels.csv").read_bytes() == b"id,label\n1,x\n"
    log = mount.log.read_text()
    assert f"S3 bucket {bucket} is in region eu-west-2, not us-east-1" in log


def test_a_public_bucket_mounts_without_credentials(
    mount_factory: Callable[..., Mount], seaweedfs: servers.S3Server
) -> None:
    """-no-sign-request (mountpoint-s3's flag): a public dataset read with no credentials
    at all; what its owner did not open to all is refused (EACCES), the mount goes on."""
    bucket = seaweedfs.public_bucket()
    table = b"id,label\n" + b"".join(b"%d,x\n" % n for n in range(100_000))
    seaweedfs.boto3_client().put_object(Bucket=bucket, Key="tables/labels.csv", Body=table)
    mount = mount_factory("s3-seaweedfs", start=False, s3_bucket=bucket, no_sign_request="true")
    mount.env = {"AWS_EC2_METADATA_DISABLED": "true"}
    mount.start()
    assert "labels.csv" in os.listdir(mount.path / "tables")
    assert (mount.path / "tables/labels.csv").read_bytes() == table
    with pytest.raises(PermissionError):
        (mount.path / "tables/mine").mkdir()
    assert (mount.path / "tables/labels.csv").stat().st_size == len(table)


def test_no_s3_credentials_is_said_before_the_region_is_asked_for(
    mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    """No keys given nor found, the bucket's region to be found, its store out of reach:
    one line says what to set, at once. The region lookup's warning came first (and the
    lookup's wait), then this."""
    mount = mount_factory("s3-seaweedfs", start=False)
    del mount.flags["s3_region"]
    mount.flags["s3_endpoint"] = f"http://127.0.0.1:{servers.free_ports(1)[0]}"  # nobody
    mount.env = {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }
    assert refused_at_start(mount) == [f"tierfs client: {NOT_FOUND}"]


def test_a_mount_point_with_files_in_it_is_refused_unless_allowed(
    mount_factory: Callable[..., Mount],
) -> None:
    """It was mounted over, its files hidden while mounted, as mountpoint-s3 and rclone
    (without --allow-non-empty) refuse to; -allow-non-empty mounts over them, and they are
    there again once unmounted."""
    mount = mount_factory("local", start=False)
    cloud_put(mount, "theirs.txt", b"theirs\n")
    mount.path.mkdir(parents=True)
    (mount.path / "mine.txt").write_bytes(b"mine\n")
    assert refused_at_start(mount) == [
        f"tierfs client: mount point {mount.path} is not empty: its files would be hidden "
        "while it is mounted (-allow-non-empty mounts over them)"
    ]
    mount.flags["allow_non_empty"] = "true"
    mount.start()
    assert os.listdir(mount.path) == ["theirs.txt"]
    assert mount.stop() == 0
    assert os.listdir(mount.path) == ["mine.txt"]


# Where each provider lists a bucket named `portal` (a folder there: its index.html answers)
LISTING_PATH = {"s3": "portal", "azure": "acct/portal", "gcp": "storage/v1/b/portal/o"}


@pytest.mark.parametrize("provider", ["s3", "azure", "gcp"])
@pytest.mark.parametrize("status", [404, 200])
def test_an_endpoint_that_answers_with_a_web_page_is_said_so(
    mount_factory: Callable[..., Mount], tmp_path: Path, provider: str, status: int
) -> None:
    """A web server (its 404 page) was "no such bucket", and a captive portal (a page for
    every request, 200) a mount whose every listing failed."""
    site = tmp_path / "site"
    (site / LISTING_PATH[provider]).mkdir(parents=True)
    (site / LISTING_PATH[provider] / "index.html").write_text("<html>Log in</html>\n")
    port, server = servers.start_web_server(tmp_path, site)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        bucket = "portal" if status == 200 else "data"
        mount = mount_factory("local", start=False, cloud_provider=provider)
        if provider == "s3":
            mount.flags |= {"s3_endpoint": endpoint, "s3_bucket": bucket, "s3_region": "eu-1"}
            mount.env |= {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}
            store = f"s3://{bucket}"
        elif provider == "azure":
            mount.flags |= {"azure_endpoint": f"{endpoint}/acct", "azure_account": "acct"}
            mount.flags |= {"azure_key": "a2V5", "azure_container": bucket}
            store = f"azure://acct/{bucket}"
        else:
            mount.flags |= {"gcp_endpoint": endpoint, "gcp_bucket": bucket}
            store = f"gcs://{bucket}"
        assert refused_at_start(mount) == [
            f"tierfs client: {store}: {endpoint} is not an object store: it answered "
            f"HTTP {status} with text/html: check the endpoint"
        ]
    finally:
        server.stop()


@pytest.mark.parametrize("provider", ["azure", "azure-sas"])
def test_an_azure_account_that_refuses_this_client_stops_it_at_start(
    mount_factory: Callable[..., Mount], azurite: servers.AzureServer, provider: str
) -> None:
    """Azurite's answer to a wrong key (a signature made with it) is AuthorizationFailure,
    which real Azure gives to a request its firewall keeps out, whatever it asks: the
    client mounted, and every ls and write was EACCES."""
    mount = mount_factory(provider, start=False)
    wrong = azurite.key[:-8] + "AAAAAA=="
    if provider == "azure":
        mount.flags["azure_key"] = wrong
    else:
        container = mount.flags["azure_container"]
        mount.env["AZURE_STORAGE_SAS_TOKEN"] = azurite.container_sas(container, key=wrong)
    store = f"azure://{azurite.account}/{mount.flags['azure_container']}"
    assert refused_at_start(mount) == [
        f"tierfs client: {store}: the store refused this client (AuthorizationFailure): "
        "check the key, and the account's firewall (its network rules)"
    ]
