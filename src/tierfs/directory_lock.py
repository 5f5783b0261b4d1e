"""One process at a time in a state directory: a client's `-nvme`, a coordinator's
`-data-dir`. The lock is an `flock` on a file holding the holder's pid: the kernel drops it
when the process dies, so a restart after `kill -9` is not refused."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tierfs.errors import ConfigError


def lock_directory(root: Path, lock_file: str, holder: str, flag: str) -> int:
    """Take `root` for this process alone until it exits or closes the descriptor returned;
    ConfigError naming the other's pid if another `holder` (a tierfs client, say) has it.
    `flag` is the option that names the directory, for the advice."""
    fd = os.open(root / lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"{root} is in use by another {holder} (pid {pid}): give each its own {flag}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
