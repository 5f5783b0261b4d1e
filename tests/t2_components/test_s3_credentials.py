"""S3 credentials found as AWS's own tools find them (a profile, a credential process), and
unsigned requests to a public bucket, on SeaweedFS, which checks every signature."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import servers
from tierfs.cloud.aws_credentials import NOT_FOUND
from tierfs.cloud.base import CloudStore
from tierfs.cloud.providers import s3_store
from tierfs.errors import AccessDeniedError, ConfigError

pytestmark = pytest.mark.asyncio

# Where else botocore's chain would look: none of it is this test's.
CHAIN_VARIABLES = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
]

# A credential process that hands out the server's two key pairs in turn, each expiring in a
# minute (so each is renewed at its next use), and counts its runs in the file argv[1].
ROTATING = """
import json, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
runs = Path(sys.argv[1])
count = len(runs.read_text()) if runs.exists() else 0
runs.write_text("x" * (count + 1))
access, secret = sys.argv[2:4] if count % 2 == 0 else sys.argv[4:6]
expiry = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({"Version": 1, "AccessKeyId": access, "SecretAccessKey": secret,
                  "Expiration": expiry}))
"""


@pytest.fixture
def aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No keys in the environment, no instance metadata: only the shared files, in the
    folder returned (both empty)."""
    for name in CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "home" / ".aws"
    folder.mkdir(parents=True)
    (folder / "credentials").write_text("")
    (folder / "config").write_text("")
    monkeypatch.setenv("HOME", str(folder.parent))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return folder


def store_without_keys(server: servers.S3Server, bucket: str, *, signed: bool = True) -> CloudStore:
    return s3_store(
        bucket=bucket,
        region=server.region,
        endpoint=server.endpoint,
        access_key=None,
        secret_key=None,
        timeout=10,
        signed=signed,
    )


async def write_read_and_mark(store: CloudStore) -> None:
    """A put, a ranged get, a listing and a folder marker made and removed: each request
    signed (SeaweedFS refuses the rest)."""
    version = (await store.put("data/part-0.bin", b"0123456789")).version
    assert await store.get_range("data/part-0.bin", 2, 5, version) == b"23456"
    await store.put_marker("empty")
    listing = await store.list_all("")
    assert listing.prefixes == ["data/", "empty/"]
    await store.delete_marker("empty")
    assert (await store.list_all("")).prefixes == ["data/"]


async def test_a_profiles_keys_sign_every_request(
    seaweedfs: servers.S3Server, aws_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (aws_files / "credentials").write_text(
        "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n"
        f"[datasets]\naws_access_key_id = {seaweedfs.access_key}\n"
        f"aws_secret_access_key = {seaweedfs.secret_key}\n"
    )
    bucket = seaweedfs.create_bucket()
    monkeypatch.setenv("AWS_PROFILE", "datasets")
    store = store_without_keys(seaweedfs, bucket)
    try:
        await write_read_and_mark(store)
    finally:
        await store.close()
    monkeypatch.delenv("AWS_PROFILE")  # the default profile's keys are wrong
    store = store_without_keys(seaweedfs, bucket)
    try:
        with pytest.raises(AccessDeniedError):
            await store.list_all("")
        with pytest.raises(AccessDeniedError):
            await store.put_marker("other")
    finally:
        await store.close()


async def test_expiring_credentials_are_asked_for_again_and_used(
    seaweedfs: servers.S3Server, aws_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, runs = aws_files / "rotate.py", aws_files / "runs"
    script.write_text(ROTATING)
    renewed = servers.SEAWEED_RENEWED_KEYS
    pairs = f"{seaweedfs.access_key} {seaweedfs.secret_key} {renewed[0]} {renewed[1]}"
    (aws_files / "config").write_text(
        f"[profile rotating]\ncredential_process = {sys.executable} {script} {runs} {pairs}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    store = store_without_keys(seaweedfs, seaweedfs.create_bucket())
    try:
        for _ in range(2):
            await write_read_and_mark(store)
    finally:
        await store.close()
    # Credentials frozen at the start would have run the process once.
    assert len(runs.read_text()) >= 4


async def test_no_credentials_or_a_missing_profile_is_one_clear_error(
    seaweedfs: servers.S3Server, aws_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as raised:
        store_without_keys(seaweedfs, "any")
    assert str(raised.value) == NOT_FOUND
    monkeypatch.setenv("AWS_PROFILE", "nowhere")
    with pytest.raises(ConfigError, match="S3 credentials: .*nowhere"):
        store_without_keys(seaweedfs, "any")


async def test_a_public_bucket_reads_without_credentials(
    seaweedfs: servers.S3Server, aws_files: Path
) -> None:
    bucket = seaweedfs.public_bucket()
    seaweedfs.boto3_client().put_object(Bucket=bucket, Key="open/data.csv", Body=b"a,b\n1,2\n")
    store = store_without_keys(seaweedfs, bucket, signed=False)
    try:
        meta = await store.head("open/data.csv")
        assert await store.get_range("open/data.csv", 0, meta.size, meta.version) == b"a,b\n1,2\n"
        assert "open/data.csv" in [m.key for m in (await store.list_all("open/")).objects]
        with pytest.raises(AccessDeniedError):
            await store.put("open/mine.csv", b"x")
        with pytest.raises(AccessDeniedError):
            await store.put_marker("mine")
    finally:
        await store.close()
