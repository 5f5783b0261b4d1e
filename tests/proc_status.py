"""A process's memory as /proc tells it, for tests."""

from __future__ import annotations

from pathlib import Path


def memory_kib(field: str, pid: int | str = "self") -> int:
    """A field of the process's /proc status in KiB (VmRSS, VmHWM, RssAnon...)."""
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int | str = "self") -> None:
    """Set the process's VmHWM to its VmRSS: its peak from here on."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
