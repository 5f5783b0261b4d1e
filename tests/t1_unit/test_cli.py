"""The `tierfs` command as a user runs it: help, version, and one-line errors with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tierfs.cli import build_parser
from tierfs.fuse.mount import mount_name, node_of

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
    if "PYTHONPATH" in os.environ:  # the tierfs under test (a worktree's), not the venv's
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
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


def test_client_help_shows_the_mode_defaults_in_octal() -> None:
    """-file-mode and -dir-mode take octal: their defaults read 420 and 493 (644, 755 in
    decimal), which, given back as -file-mode 420, is r---w----."""
    result = tierfs("client", "-help")
    assert "permission bits of files (octal) (default: 644)" in result.stdout
    assert "permission bits of directories (octal) (default: 755)" in result.stdout


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
        (["coordinator", "-token", ""], "-token"),  # was an API both open and refusing
        (["client", "-token="], "-token"),
        (["status", "-token", ""], "-token"),
        (["warm", "-token", "", "/tmp"], "-token"),
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
    absent, nvme = f"{tmp_path}/absent", f"{tmp_path}/nvme"  # not the default: it may be in use
    one = tierfs(
        "client", "-mount", absent, "-nvme", nvme, "-cloud-provider", "local", "-local-root", "/tmp"
    )
    two = tierfs(
        "client",
        f"--mount={absent}",
        f"--nvme={nvme}",
        "--cloud-provider=local",
        "--local-root=/tmp",
    )
    for result in (one, two):
        assert result.returncode == 1
        assert result.stderr == f"tierfs client: mount point {absent} does not exist\n"


def test_a_yes_or_no_flag_alone_means_yes() -> None:
    parser = build_parser()
    assert parser.parse_args(["client", "-direct-io"]).direct_io == "true"
    assert parser.parse_args(["client", "--direct-io=false"]).direct_io == "false"
    assert parser.parse_args(["client", "-direct-io", "-port", "9"]).direct_io == "true"
    assert parser.parse_args(["client"]).direct_io is None  # not given: the default


DURATION_AND_SIZE_FLAGS = [
    ("client", "-chunk-size"),
    ("client", "-nvme-size"),
    ("client", "-peer-size"),
    ("client", "-peer-timeout"),
    ("client", "-cloud-timeout"),
    ("client", "-metadata-ttl"),
    ("coordinator", "-heartbeat-interval"),
    ("coordinator", "-peer-expiry"),
    ("coordinator", "-dead-peer-retention"),
    ("warm", "-timeout"),
]


def test_every_duration_and_size_flag_is_in_the_negative_test() -> None:
    shown = set()
    for command in ("client", "coordinator", "warm"):
        words = tierfs(command, "-help").stdout.split()
        for flag, metavar in zip(words, words[1:], strict=False):
            if metavar.rstrip(",") in ("SIZE", "DURATION") and not flag.startswith("--"):
                shown.add((command, flag))
    assert shown == set(DURATION_AND_SIZE_FLAGS)


@pytest.mark.parametrize(("command", "flag"), DURATION_AND_SIZE_FLAGS)
@pytest.mark.parametrize("form", ["-1s", "-5", "-1MiB", "--2m"])
def test_a_negative_duration_or_size_is_refused_in_words(
    command: str, flag: str, form: str
) -> None:
    """`-metadata-ttl -1s` was argparse's "expected one argument" (a leading dash reads as
    a flag); given as `-flag=-1s` alike."""
    path = ["/"] if command == "warm" else []  # what warm takes besides
    for args in ([flag, form, *path], [f"{flag}={form}", *path]):
        result = tierfs(command, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        said = f"tierfs {command}: invalid value for {flag}: {form!r} is negative"
        assert lines[0].startswith(said), lines


# Every duration flag, -metadata-ttl too: its one endless value is `indefinite`.
DURATION_FLAGS = [
    (command, flag) for command, flag in DURATION_AND_SIZE_FLAGS if not flag.endswith("size")
]


@pytest.mark.parametrize(("command", "flag"), DURATION_FLAGS)
@pytest.mark.parametrize("form", ["inf", "Infinity", "1e999", "forever"])
def test_an_endless_duration_is_refused_in_words(command: str, flag: str, form: str) -> None:
    """Before 2026-12-06 `-cloud-timeout inf` (or `-peer-timeout`, `warm -timeout`) was
    taken, undocumented: no deadline at all; before 2026-12-07 `-metadata-ttl` took `inf`
    and `forever`, undocumented, beside its `indefinite`."""
    path = ["/"] if command == "warm" else []  # what warm takes besides
    result = tierfs(command, flag, form, *path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    said = f"tierfs {command}: invalid value for {flag}: {form!r} is not a duration"
    assert lines[0].startswith(said), lines


def test_a_mount_names_its_node_whatever_its_folder_is_called() -> None:
    """`tierfs warm PATH` finds the node to ask in the name of PATH's mount."""
    name = mount_name("s3://b/données été, 2026?node=x/", "http://[::1]:8081")
    assert name.isascii() and "," not in name and " " not in name
    assert name.startswith("tierfs:s3://b/donn%C3%A9es%20%C3%A9t%C3%A9%2C%202026%3Fnode%3Dx/")
    assert node_of(name) == "http://[::1]:8081"
    assert node_of("tierfs:s3://b") is None  # a mount by a tierfs before 2026-12-06
    assert node_of("sshfs?node=http://x:1") is None
