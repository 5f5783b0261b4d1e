"""The `tierfs` command as a user runs it: help, version, and one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tierfs.cli import build_parser

ORIGINAL_CLIENT_FLAGS = [
    "-mount",
    "-nvme",
    "-coordinator",
    "-port",
    "-peer-id",
    "-cloud-provider",
    "-s3-bucket",
    "-s3-region",
    "-azure-account",
    "-azure-key",
    "-azure-container",
    "-gcp-bucket",
    "-help",
]
OUR_CLIENT_FLAGS = [
    "-local-root",
    "-s3-endpoint",
    "-azure-endpoint",
    "-gcp-endpoint",
    "-chunk-size",
    "-metadata-ttl",
    "-direct-io",
    "-token",
    "-tls-cert",
    "-tls-key",
    "-log-level",
]
ENVIRONMENT = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_CONTAINER_NAME",
    "GCP_ACCESS_KEY_ID",
    "GCP_SECRET_ACCESS_KEY",
    "GCP_BUCKET",
    "FUSE_NVME_SIZE",
    "FUSE_PEER_SIZE",
    "FUSE_PEER_TIMEOUT",
    "FUSE_CLOUD_TIMEOUT",
]


def tierfs(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}  # none of the user's cloud variables
    return subprocess.run(
        [sys.executable, "-m", "tierfs.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_client_help_lists_every_flag_with_default_and_environment() -> None:
    result = tierfs("client", "-help")
    assert result.returncode == 0
    for flag in ORIGINAL_CLIENT_FLAGS + OUR_CLIENT_FLAGS:
        assert f"{flag}" in result.stdout, flag
    for variable in ENVIRONMENT:
        assert variable in result.stdout, variable
    assert "(default: fuse-client-cache; env GCP_BUCKET)" in result.stdout
    assert "(default: 10GiB; env FUSE_NVME_SIZE)" in result.stdout
    assert "(default: 30s; env FUSE_PEER_TIMEOUT)" in result.stdout


def test_coordinator_help() -> None:
    result = tierfs("coordinator", "--help")
    assert result.returncode == 0
    assert "-port PORT" in result.stdout and "(default: 8080)" in result.stdout


def test_version() -> None:
    result = tierfs("-version")
    assert result.returncode == 0 and result.stdout.startswith("tierfs ")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["coordinator", "-port", "abc"], "-port"),
        (["client", "--port", "abc"], "-port"),
        (["client", "-nvme-size", "-5"], "-nvme-size"),
        (["client", "-cloud-provider", "ftp"], "-cloud-provider"),
        (["client", "-cloud-provider", "azure", "-azure-account", "a"], "-azure-key"),
        (["client", "-no-such-flag", "1"], "-no-such-flag"),
        (["client", "-port"], "-port"),
        (["client", "-direct-io=maybe"], "-direct-io"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_flags_print_one_line_and_exit_2(args: list[str], names: str) -> None:
    result = tierfs(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr


def test_one_and_two_dashes_alike(tmp_path: object) -> None:
    absent = f"{tmp_path}/absent"
    one = tierfs("client", "-mount", absent, "-cloud-provider", "local", "-local-root", "/tmp")
    two = tierfs("client", f"--mount={absent}", "--cloud-provider=local", "--local-root=/tmp")
    for result in (one, two):
        assert result.returncode == 1
        assert result.stderr == f"tierfs client: mount point {absent} does not exist\n"


def test_a_yes_or_no_flag_alone_means_yes() -> None:
    parser = build_parser()
    assert parser.parse_args(["client", "-direct-io"]).direct_io == "true"
    assert parser.parse_args(["client", "--direct-io=false"]).direct_io == "false"
    assert parser.parse_args(["client", "-direct-io", "-port", "9"]).direct_io == "true"
    assert parser.parse_args(["client"]).direct_io is None  # not given: the default
