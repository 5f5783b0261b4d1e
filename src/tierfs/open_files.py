"""The process's limit of open files: its hard limit, not the soft one it was started with.

A file open for writing on the mount holds its staging file open here, and each upload
and fetch a file or a socket: under the soft limit of 1024 that a shell and a systemd
service give (their hard limit is far higher), the 1001st create and then the closes of
the thousand failed with EIO. Go's runtime raises every program's so; tierfs waits with
epoll and poll, never `select` (which stops at descriptor 1024).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def take_hard_limit() -> int:
    """Raise the soft limit of open files to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # a hard limit the kernel will not give (unlimited)
        log.info("open files: the soft limit stays at %d (%s)", soft, exc)
        return soft
    log.info("open files: the soft limit of %d is raised to the hard one, %d", soft, hard)
    return hard
