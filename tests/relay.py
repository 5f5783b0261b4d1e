"""A TCP relay in front of a real server, which a test cuts and restores: one node loses
the server (a network partition) while others still reach it."""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import servers


class Relay:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`target`; `cut` refuses and drops every
    connection until `restore`, `mute` drops the server's answers until then, `rewrite`
    changes the next request that holds a given string, `shorten` sends it with part of its
    body, `hold` keeps it back until `release`, `slow` delays every request that holds a
    given string."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or servers.free_ports(1)[0]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._muted = threading.Event()
        self._rewrites: list[tuple[bytes, bytes]] = []  # (old, new), each for one request
        self._hold: bytes | None = None
        self._held = threading.Event()
        self._released = threading.Event()
        self._slow: tuple[bytes, float] | None = None
        self._shorten: tuple[bytes, int] | None = None

    def start(self) -> Relay:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and break the ones open (a held request too: it is let
        go only once its connection is closed, or it could still reach the server)."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            # shutdown wakes the accepting thread: a close alone would leave the port
            # listening until that accept returned (a refused restore, EADDRINUSE)
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._released.set()

    def mute(self) -> None:
        """Relay requests on, but drop what the server answers: it does what it is asked
        and its client never learns (an answer lost on the way)."""
        self._muted.set()

    def rewrite(self, old: bytes, new: bytes) -> None:
        """Replace `old` with `new` in the next request that holds it, once (a server that
        misunderstands one request); a request held (`hold`) is changed by the rewrites
        made until its `release`. Both the same length: the request's framing holds."""
        if len(old) != len(new):
            raise ValueError("a rewrite keeps the length")
        with self._lock:
            self._rewrites.append((old, new))

    def shorten(self, text: bytes, length: int) -> None:
        """Send the next request that holds `text` (in the part of it with its headers) with
        the first `length` bytes of its body only, its Content-Length saying so, and drop
        the rest (a server that read part of a body: its answer says what it kept)."""
        with self._lock:
            self._shorten = (text, length)

    @property
    def shortens_pending(self) -> bool:
        """Whether no request has met `shorten` yet."""
        with self._lock:
            return self._shorten is not None

    @property
    def rewrites_pending(self) -> int:
        """Rewrites no request has met yet."""
        with self._lock:
            return len(self._rewrites)

    def hold(self, text: bytes) -> None:
        """Keep the next request that holds `text` from the server until `release` (a
        call caught half way, while others go on)."""
        with self._lock:
            self._hold = text
        self._held.clear()
        self._released.clear()

    def slow(self, text: bytes, seconds: float) -> None:
        """Keep every request that holds `text` from the server for `seconds` (a slow
        server, or a slow way to it)."""
        with self._lock:
            self._slow = (text, seconds)

    def wait_until_held(self, timeout: float = 30.0) -> None:
        """Until a request is held (fails past `timeout`)."""
        assert self._held.wait(timeout), "no request came to be held"

    def release(self) -> None:
        """Let the held request go on."""
        self._released.set()

    def _from_client(self, body: _Body, data: bytes) -> bytes:
        """What of `data`, the next bytes from a client, goes to the server; `body` is the
        state of its connection's shortened request."""
        with self._lock:
            held = self._hold is not None and self._hold in data
            if held:
                self._hold = None
            delay = self._slow[1] if self._slow is not None and self._slow[0] in data else 0.0
        if held:
            self._held.set()
            self._released.wait(120)
        with self._lock:  # after the hold: rewrites made meanwhile change the held request
            for old, new in list(self._rewrites):
                if old in data:
                    self._rewrites.remove((old, new))
                    data = data.replace(old, new, 1)
            shorten, self._shorten = self._shorten, None
            if shorten is not None and shorten[0] not in data:
                self._shorten, shorten = shorten, None
        time.sleep(delay)
        if shorten is not None:
            return body.shorten(data, shorten[1])
        return body.passed(data)

    def restore(self) -> None:
        """Relay both ways again (after `cut` or `mute`)."""
        self._muted.clear()
        if self._listener is None:
            self.start()

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            for source, sink, change in (
                (client, upstream, functools.partial(self._from_client, _Body())),
                (upstream, client, self._unless_muted),
            ):
                threading.Thread(target=_pump, args=(source, sink, change), daemon=True).start()

    def _unless_muted(self, data: bytes) -> bytes:
        return b"" if self._muted.is_set() else data


class _Body:
    """The shortened request of one connection: how many bytes of its body still go to
    the server, then how many are dropped."""

    def __init__(self) -> None:
        self.sent = self.dropped = 0

    def shorten(self, data: bytes, length: int) -> bytes:
        """`data`, the start of a request, with its Content-Length made `length` and what
        of its body goes on; the bytes past `length` are dropped as they come."""
        head, _, rest = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: *(\d+)", head)
        assert found is not None, "the request to shorten has no Content-Length"
        self.sent, self.dropped = length, int(found[1]) - length
        head = head[: found.start(1)] + str(length).encode() + head[found.end(1) :]
        return head + b"\r\n\r\n" + self.passed(rest)

    def passed(self, data: bytes) -> bytes:
        """What of `data`, bytes of a body, goes on."""
        kept = data[: self.sent]
        self.sent -= len(kept)
        dropped = min(self.dropped, len(data) - len(kept))
        self.dropped -= dropped
        return kept + data[len(kept) + dropped :]


def _pump(source: socket.socket, sink: socket.socket, change: Callable[[bytes], bytes]) -> None:
    """Copy what `change` makes of the bytes until either side closes, then close the
    other's writing side."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if data := change(data):
                sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def relay_in_front_of(endpoint: str) -> tuple[Relay, str]:
    """A started relay in front of the server at the URL `endpoint`, and the URL that
    reaches the server through it."""
    parts = urlsplit(endpoint)
    relay = Relay(parts.port or 80).start()
    return relay, parts._replace(netloc=f"127.0.0.1:{relay.port}").geturl()


def abort_the_held_upload(relay: Relay, s3: Any, bucket: str) -> None:
    """Once `relay` holds a request of the bucket's one multipart upload in progress,
    abort that upload as another client would (boto3 client `s3`), then let it go on."""
    relay.wait_until_held()
    (upload,) = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    relay.release()
