"""`make run`'s script (scripts/run-demo.sh) as a new user meets it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import servers
from mounts import is_mounted

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "run-demo.sh"


def test_a_demo_whose_coordinator_port_is_taken_says_so_and_mounts_nothing(
    tmp_path: Path,
) -> None:
    """With the port taken (another `make run`, another server), the coordinator failed
    and the demo went on: a mount whose node warned of the other server's HTTP 501, and a
    `tierfs status` showing that server's answers."""
    (tmp_path / "bucket" / "datasets").mkdir(parents=True)  # no sample data to make
    (tmp_path / "mnt").mkdir()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = subprocess.Popen(
            [str(DEMO)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches its whole process group
            env=servers.clean_env(
                TIERFS_DEMO_BUCKET=str(tmp_path / "bucket"),
                TIERFS_DEMO_MOUNT=str(tmp_path / "mnt"),
                TIERFS_DEMO_NVME=str(tmp_path / "nvme"),
                TIERFS_DEMO_COORDINATOR_PORT=str(port),
            ),
        )
        try:
            _, stderr = demo.communicate(timeout=30)
        finally:  # a demo that went on runs until told to stop
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGINT)
                demo.communicate(timeout=30)
            mounted = is_mounted(tmp_path / "mnt")
    assert demo.returncode == 1
    assert stderr.splitlines() == [
        f"make run: port {port} is taken: by another `make run` (one at a time), or by "
        "another server (TIERFS_DEMO_COORDINATOR_PORT=PORT make run takes another port)"
    ]
    assert not mounted
