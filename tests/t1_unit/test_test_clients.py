"""The clients the tests start join no cluster but their test's, and take nothing from the
developer's shell: the default coordinator (localhost:8080) is where `make run`'s demo
listens, and a test whose client joined what ran there depended on it (a cold read waited
30 s on the hung nodes of a cluster there)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from pydantic import BaseModel

import servers
from mounts import Mount, client_command, flag_value, no_coordinator, status_command
from tierfs.settings import ClientSettings, CoordinatorSettings, StatusSettings, WarmSettings

ROOT = Path(__file__).resolve().parents[2]
# the module and command of a client (or a status) in an argument list, however wrapped
RAW_CLIENT = re.compile(r"""["']tierfs\.cli["'],\s*["']client["']""")
RAW_STATUS = re.compile(r"""(["']tierfs\.cli["'],|\btierfs\()\s*["']status["']""")


def test_a_client_given_no_coordinator_gets_one_that_refuses_every_connection() -> None:
    command = client_command("-mount", "/mnt/x")
    address = flag_value(tuple(command), "coordinator")
    assert address == no_coordinator()
    host, _, port = address.rpartition(":")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 5):
        pass
    assert flag_value(tuple(command), "port") not in (None, "8081")  # nor the demo's peer port


@pytest.mark.parametrize(
    "given",
    [
        ("-coordinator", "localhost:8080"),
        ("--coordinator", "127.0.0.1:8080"),
        ("--coordinator=localhost:8080",),
    ],
)
def test_a_client_sent_to_the_default_coordinator_fails_at_once(given: tuple[str, ...]) -> None:
    with pytest.raises(RuntimeError, match="where `make run`'s coordinator listens"):
        client_command("-mount", "/mnt/x", *given)


def test_a_mount_sent_to_the_default_coordinator_fails_before_it_starts(tmp_path: Path) -> None:
    mount = Mount(tmp_path / "mnt", tmp_path / "nvme", {"coordinator": "localhost:8080"}, {},
                  tmp_path / "client.log")  # fmt: skip
    with pytest.raises(RuntimeError, match="-coordinator localhost:8080"):
        mount.start()
    assert mount.proc is None and not (tmp_path / "client.log").exists()


@pytest.mark.parametrize(
    "given",
    [
        (),  # its default: localhost:8080
        ("-coordinator", "localhost:8080"),
        ("--coordinator=127.0.0.1:8080",),
        ("-coordinator", "http://localhost:8080/"),
    ],
)
def test_a_status_of_the_default_coordinator_fails_at_once(given: tuple[str, ...]) -> None:
    """`tierfs status` asks localhost:8080 unless told: a test's status showed the cluster
    of `make run`'s demo, if it ran."""
    with pytest.raises(RuntimeError, match="where `make run`'s coordinator listens"):
        status_command(*given)


def test_a_status_of_a_test_coordinator_is_run_as_given() -> None:
    command = status_command("-coordinator", "http://127.0.0.1:18080")
    assert command[-3:] == ["status", "-coordinator", "http://127.0.0.1:18080"]


def raw_commands(pattern: re.Pattern[str]) -> list[str]:
    """Where the tests and benchmarks (but mounts.py) write `pattern`: file:line."""
    return [
        f"{path.relative_to(ROOT)}:{text[: found.start()].count(chr(10)) + 1}"
        for folder in ("tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "mounts.py"
        for text in [path.read_text()]
        for found in pattern.finditer(text)
    ]


def test_every_client_the_tests_and_benchmarks_start_goes_through_client_command() -> None:
    """A client started by its own argument list skips the guard above."""
    raw = raw_commands(RAW_CLIENT)
    assert not raw, "start clients with mounts.Mount or mounts.client_command:\n" + "\n".join(raw)


def test_every_status_the_tests_and_benchmarks_run_goes_through_status_command() -> None:
    """A status run by its own argument list skips the guard above."""
    raw = raw_commands(RAW_STATUS)
    assert not raw, "run statuses with mounts.status or mounts.status_command:\n" + "\n".join(raw)


def test_no_variable_a_tierfs_command_reads_reaches_a_test_process_from_the_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A TIERFS_TOKEN exported for a real cluster put a token on every test client: its
    peer API answered the tests 401."""
    models: list[type[BaseModel]] = [
        ClientSettings,
        CoordinatorSettings,
        StatusSettings,
        WarmSettings,
    ]
    read = {
        str(extra["env"])
        for model in models
        for field in model.model_fields.values()
        if isinstance(extra := field.json_schema_extra, dict) and "env" in extra
    }
    assert {"TIERFS_TOKEN", "FUSE_NVME_SIZE", "GCP_BUCKET"} <= read
    for name in read:
        monkeypatch.setenv(name, "from-the-shell")
    assert read & set(servers.clean_env()) == set()
