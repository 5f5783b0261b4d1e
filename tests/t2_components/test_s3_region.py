"""The region of an S3 bucket whose client was given none: the bucket's own, as S3 names
it (moto, as AWS, answers a HEAD of the bucket with it), else the one the AWS tools are
configured with, else us-east-1. One given gives way to the bucket's own."""

from __future__ import annotations

from pathlib import Path

import pytest

import servers
from tierfs.cloud.s3_region import check_given_region, find_region

pytestmark = pytest.mark.asyncio


@pytest.fixture
def aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ~/.aws/config that is the AWS tools' only say on the region."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return config


async def test_the_bucket_names_its_own_region(moto: servers.S3Server, aws_config: Path) -> None:
    aws_config.write_text("[default]\nregion = ap-south-1\n")  # the bucket's wins over it
    assert await find_region(moto.create_bucket(region="eu-west-2"), moto.endpoint) == "eu-west-2"
    assert await find_region(moto.create_bucket(), moto.endpoint) == "us-east-1"


async def test_where_the_bucket_does_not_say_the_configured_region_is_used(
    seaweedfs: servers.S3Server, aws_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS, as most S3-compatible stores, names no region."""
    bucket = seaweedfs.create_bucket()
    assert await find_region(bucket, seaweedfs.endpoint) == "us-east-1"
    aws_config.write_text("[default]\nregion = eu-north-1\n[profile lab]\nregion = sa-east-1\n")
    assert await find_region(bucket, seaweedfs.endpoint) == "eu-north-1"
    monkeypatch.setenv("AWS_PROFILE", "lab")
    assert await find_region(bucket, seaweedfs.endpoint) == "sa-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    assert await find_region(bucket, seaweedfs.endpoint) == "ca-central-1"


@pytest.mark.warnings_expected
async def test_a_store_that_does_not_answer_leaves_the_configured_region(
    aws_config: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The cloud down at start: the client still starts (tier 1 serves what it holds)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    nobody = f"http://127.0.0.1:{servers.free_ports(1)[0]}"
    assert await find_region("datasets", nobody) == "eu-west-3"
    assert "S3 bucket datasets: its region could not be asked" in caplog.text


@pytest.mark.warnings_expected
async def test_a_region_given_gives_way_to_the_buckets_own(
    moto: servers.S3Server, seaweedfs: servers.S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """AWS refuses requests signed for another region than the bucket's: AWS_REGION set
    for the machine's region (ECS, Lambda) made every request to a bucket elsewhere fail."""
    bucket = moto.create_bucket(region="eu-west-2")
    assert await check_given_region(bucket, moto.endpoint, "eu-west-2") == "eu-west-2"
    assert await check_given_region(bucket, seaweedfs.endpoint, "eu-north-1") == "eu-north-1"
    nobody = f"http://127.0.0.1:{servers.free_ports(1)[0]}"
    assert await check_given_region(bucket, nobody, "eu-west-3") == "eu-west-3"
    assert "WARNING" not in caplog.text
    assert await check_given_region(bucket, moto.endpoint, "us-east-1") == "eu-west-2"
    assert f"S3 bucket {bucket} is in region eu-west-2, not us-east-1" in caplog.text
