"""Byte ranges of the peer API: `Range` of a GET, `Content-Range` of a PUT (RFC 9110 14).

One range per request: `bytes=a-b`, `bytes=a-` and `bytes=-n`. Spans are half-open,
[start, end), within an object of `size` bytes.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")


class RangeNotSatisfiableError(ValueError):
    """The `Range` asks for nothing within the object, or is not one byte range (416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The span a `Range` header asks of an object of `size` bytes; None for the whole."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or match[1] == match[2] == "":
        raise RangeNotSatisfiableError(f"not one byte range: {header[:100]!r}")
    first, last = match[1], match[2]
    if first == "":  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiableError(f"{header!r:.100}: nothing to send of {size} bytes")
        return max(0, size - n), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        raise RangeNotSatisfiableError(f"{header!r:.100}: the last byte is before the first")
    if start >= size:
        raise RangeNotSatisfiableError(f"{header!r:.100}: starts at or past the end ({size} bytes)")
    return start, end


def parse_content_range(header: str | None) -> tuple[int, int, int]:
    """(start, end, size) of a `Content-Range: bytes a-b/size` header; ValueError if bad."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if match is None:
        raise ValueError(f"Content-Range must be 'bytes first-last/size', not {header!r:.100}")
    first, last, size = int(match[1]), int(match[2]), int(match[3])
    if not first <= last < size:
        raise ValueError(f"Content-Range {header!r:.100} is not within the object")
    return first, last + 1, size
