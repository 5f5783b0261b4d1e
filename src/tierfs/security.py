"""Checks on what arrives from the network: peer ids, object paths, the cluster token,
and the size of another node's answer.

Each check returns its input unchanged when it is acceptable and raises ValueError with a
message that names the problem otherwise (pydantic turns that into a 422 naming the field).
The HTTP servers of tierfs (coordinator, peer API) use these, never their own variants;
its HTTP clients read another node's answer only up to a bound (`read_bounded`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

import aiohttp

from tierfs.units import human_size

MAX_PEER_ID = 128  # characters
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux; object keys are at most 1024 bytes on every store
PEER_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
_PEER_ID_RE = re.compile(PEER_ID_PATTERN)


def check_peer_id(peer_id: str) -> str:
    """A peer id: 1-128 of `A-Z a-z 0-9 . _ : -`, and not `.` or `..` (it is a URL segment)."""
    if not peer_id:
        raise ValueError("peer id is empty")
    if len(peer_id) > MAX_PEER_ID:
        raise ValueError(f"peer id is {len(peer_id)} characters long, more than {MAX_PEER_ID}")
    if not _PEER_ID_RE.match(peer_id):
        raise ValueError("peer id takes only letters, digits and . _ : -")
    if peer_id in (".", ".."):
        raise ValueError(f"peer id {peer_id!r} is not a usable name")
    return peer_id


def check_path(path: str) -> str:
    """An object path relative to the bucket: no NUL, not absolute, no empty/`.`/`..` segment.

    At most MAX_PATH_BYTES bytes of UTF-8. `a/b.bin` passes; `/etc/passwd`, `a/../b`,
    `a//b`, `a/` and `a\\x00b` are refused.
    """
    if not path:
        raise ValueError("path is empty")
    if "\x00" in path:
        raise ValueError("path contains a NUL character")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("path is not valid Unicode (lone surrogate)") from None
    if size > MAX_PATH_BYTES:
        raise ValueError(f"path is {size} bytes long, more than {MAX_PATH_BYTES}")
    if path.startswith("/"):
        raise ValueError("path is absolute: paths are relative to the bucket")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise ValueError(f"path has a {segment!r} segment")
        if not segment:
            raise ValueError("path has an empty segment (a '//' or a trailing '/')")
    return path


def _same(given: str, token: str) -> bool:
    # compare_digest on bytes: constant time whatever the characters (str needs ASCII)
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True when the `Authorization` header is `Bearer <token>` (in constant time)."""
    if authorization is None:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and _same(given.strip(), token)


def basic_matches(authorization: str | None, token: str) -> bool:
    """True when the header is HTTP Basic with the token as password (any user name).

    For browsers, which can send Basic but not Bearer credentials: the dashboard only.
    """
    if authorization is None:
        return False
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    _, _, password = decoded.partition(":")
    return _same(password, token)


def token_refused(given: bool) -> str:
    """What a command (`tierfs status`, `tierfs warm`) says of a 401: the server's own
    words name an HTTP header, which its user cannot send."""
    if given:
        return "refused the token: -token (or TIERFS_TOKEN) is not this cluster's"
    return "needs the cluster's token: give -token or set TIERFS_TOKEN"


class AnswerTooLargeError(ValueError):
    """An HTTP answer longer than its reader's bound."""


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of `response` (decoded, if the session decodes), or AnswerTooLargeError
    once it says or proves to be over `limit` bytes: a broken or hostile server cannot
    fill our memory. What is left unread closes the connection when the response is
    released (aiohttp reuses only a connection whose answer was read to its end)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise AnswerTooLargeError(f"an answer of {human_size(declared)}, over {human_size(limit)}")
    body = bytearray()
    async for block in response.content.iter_any():
        body += block
        if len(body) > limit:
            raise AnswerTooLargeError(f"an answer over {human_size(limit)}")
    return bytes(body)
