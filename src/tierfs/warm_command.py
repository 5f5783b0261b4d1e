"""`tierfs warm PATH...`: asks the node that mounts each PATH (`-node`, else the one its
mount names: `tierfs.fuse.mount.node_of`) to bring it into its tier 1 (`POST /api/warm`,
`tierfs.warm`), showing how far it is on a terminal, and says in one line per PATH what it
found and did. Exits 1 when a PATH could not be warmed whole, or its node stays silent
for `-timeout`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from tierfs.errors import TierfsError
from tierfs.fuse.mount import node_of
from tierfs.security import AnswerTooLargeError, read_bounded, token_refused
from tierfs.settings import WarmSettings
from tierfs.warm import WarmProgress

MOUNT_TYPE = "fuse.tierfs"
MAX_ERROR = 64 * 2**10  # bytes of an error answer read, at most
MiB = 2**20


def tierfs_mount_of(path: Path) -> tuple[str, str, str]:
    """The tierfs mount point holding `path`, `path` relative to it ("" for the root), and
    the mount's name."""
    try:
        os.stat(path)
    except OSError as exc:
        raise TierfsError(f"{path}: {exc.strerror}") from None
    real = os.path.realpath(path)
    with open("/proc/mounts") as mounts:
        names = {
            _unescape(fields[1]): _unescape(fields[0])
            for fields in (line.split() for line in mounts)
            if fields[2] == MOUNT_TYPE
        }
    inside = [p for p in names if real == p or real.startswith(p.rstrip("/") + "/")]
    if not inside:
        raise TierfsError(f"{path} is not on a tierfs mount")
    mount = max(inside, key=len)
    return mount, os.path.relpath(real, mount).removeprefix("."), names[mount]


def _unescape(field: str) -> str:
    """A /proc/mounts field: spaces, tabs, newlines and backslashes are octal escapes."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _size(count: int) -> str:
    return f"{count / MiB:,.1f} MiB"


def _files(count: int) -> str:
    return f"{count} file{'s' * (count != 1)}"


async def _message(response: aiohttp.ClientResponse) -> str:
    """What a node's error answer says: its JSON's message, else its first 200
    characters; no more of it is read than MAX_ERROR bytes."""
    try:
        body = (await read_bounded(response, MAX_ERROR)).decode(errors="replace")
    except AnswerTooLargeError as exc:
        return str(exc)
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200]


def summary(path: Path, progress: WarmProgress) -> str:
    """One line on what a warm of `path` found and did."""
    parts = [f"{_size(progress.fetched)} fetched", f"{_size(progress.held)} cached already"]
    if progress.not_kept:
        parts.append(f"{_size(progress.not_kept)} did not fit in tier 1 (-nvme-size)")
    if progress.changed:
        parts.append(f"{_size(progress.changed)} changed while warming (read anew when opened)")
    return f"{path}: {_files(progress.files)}, {_size(progress.bytes)}: " + ", ".join(parts)


async def warm_one(session: aiohttp.ClientSession, settings: WarmSettings, path: Path) -> bool:
    """Warm `path` through its node; True when all of it is in tier 1 now."""
    mount, relative, name = tierfs_mount_of(path)
    base = settings.node_url or node_of(name)
    if base is None:
        raise TierfsError(
            f"{path}: the mount at {mount} does not name its node (a tierfs before "
            "2026-12-06 mounted it): give -node"
        )
    node = settings.node or base.removeprefix("http://")  # as the user would write it
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    url = base.rstrip("/") + "/api/warm"
    started = time.monotonic()
    line: dict[str, Any] = {}
    answered = False
    try:
        async with session.post(
            url, params={"path": relative, "mount": mount}, headers=headers
        ) as response:
            answered = True
            if response.status == 401:
                raise TierfsError(f"{path}: the node at {node} {token_refused(bool(headers))}")
            if response.status != 200:
                message = await _message(response)
                raise TierfsError(f"{path}: the node at {node} answered: {message}")
            async for raw in response.content:  # lines of at most 512 KiB (aiohttp)
                line = json.loads(raw)
                _show(path, line, time.monotonic() - started)
    except TimeoutError:  # aiohttp's ServerTimeoutError among them (sock_connect, sock_read)
        raise TierfsError(
            f"{path}: the node at {node} sent nothing for {settings.timeout:g}s (-timeout)"
        ) from None
    except aiohttp.ClientError as exc:
        if answered and isinstance(
            exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)
        ):  # killed or stopped mid-answer: not "no answer", nor aiohttp's "400"
            raise TierfsError(
                f"{path}: the node at {node} went away before the end "
                "(its answer broke off: was it stopped?)"
            ) from None
        hint = ""
        if isinstance(exc, aiohttp.ServerDisconnectedError) and not answered:
            hint = _tls_hint(url)
        raise TierfsError(f"{path}: no answer from the node at {node}: {exc}{hint}") from None
    except (HttpProcessingError, ValueError) as exc:  # a line too long, or not JSON
        said = " ".join(str(exc).split())  # aiohttp's text spans lines
        raise TierfsError(
            f"{path}: the node at {node} gave no answer of a tierfs node: {said}"
        ) from None
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if "error" in line:
        raise TierfsError(f"{path}: {line['error']}")
    if not line.get("done"):
        raise TierfsError(f"{path}: the node at {node} stopped before the end")
    progress = WarmProgress(**{k: v for k, v in line.items() if k not in ("done", "error")})
    print(summary(path, progress))
    return not progress.not_kept and not progress.changed


def _tls_hint(url: str) -> str:
    """What to say when plain HTTP to `url` was hung up on before any answer: a node with
    -tls-cert does that (its TLS handshake fails), and 'Server disconnected' alone did
    not tell the user to write https://."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return ""
    return f" (a node with -tls-cert answers only https://{parts.netloc})"


def _show(path: Path, line: dict[str, Any], seconds: float) -> None:
    """The progress line, redrawn in place on a terminal."""
    if not sys.stderr.isatty():
        return
    done = line["fetched"] + line["held"]
    of = f"{_size(done)} of {_size(line['bytes'])}{'' if line['listed'] else '+'}"
    rate = done / MiB / seconds if seconds > 0 else 0.0
    print(f"\r{path}: {_files(line['files'])}, {of}, {rate:,.0f} MiB/s", end="", file=sys.stderr)


async def run_warm(settings: WarmSettings) -> None:
    """Warm every PATH in turn; TierfsError (exit 1) if any was not warmed whole."""
    whole = True
    # No deadline for the whole warm (a large folder takes as long as it takes), but one
    # for each wait: the node sends a line of progress every WARM_PROGRESS_EVERY (0.5 s).
    silence = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.timeout, sock_read=settings.timeout
    )
    async with aiohttp.ClientSession(timeout=silence) as session:
        for path in settings.paths:
            whole &= await warm_one(session, settings, path)
    if not whole:
        raise TierfsError("not everything could be warmed (see above)")
