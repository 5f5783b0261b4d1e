"""Parsing of human-friendly sizes (`10G`, `10GiB`, `10737418240`) and durations (`30s`)."""

from __future__ import annotations

import math
import re

# The original spec writes its 10 GB default as 10737418240, so a bare "10G" is binary
# (10 * 2**30) like "10GiB"; only an explicit "GB" is decimal.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def _refuse_negative(text: str, what: str) -> None:
    """ValueError saying so in words for a negative `text` ("-1s", "-5", "--2m")."""
    if text.strip().startswith("-"):
        raise ValueError(f"{text!r} is negative: a {what} cannot be")


def parse_size(text: str) -> int:
    """Return the number of bytes `text` names; raise ValueError for anything else."""
    _refuse_negative(text, "size")
    match = _SIZE_RE.match(text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 10737418240, 10G, 10GiB, 512MiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(text: str) -> float:
    """Return the seconds `text` names (`30s`, `1m`, `500ms`, `1m30s`, or bare seconds),
    a finite number: ValueError for anything else."""
    _refuse_negative(text, "duration")
    stripped = text.strip().lower()
    try:
        seconds = float(stripped)
        # float() reads "nan", "inf", "infinity" and "1e999" (inf): no number of seconds
        # (`-cloud-timeout inf` was no deadline at all)
        if not math.isfinite(seconds):
            raise ValueError
    except ValueError:
        parts = _DURATION_PART_RE.findall(stripped)
        if not parts or "".join(n + u for n, u in parts) != stripped:
            raise ValueError(
                f"{text!r} is not a duration (examples: 30s, 1m, 500ms, 1m30s)"
            ) from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return seconds


def format_size(size: int) -> str:
    """Render `size` bytes with a binary suffix, the way `-help` shows defaults."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def human_size(size: int) -> str:
    """`size` bytes for people: `0 B`, `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:,.1f} {unit}"
    return f"{size} B"
