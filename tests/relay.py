"""A TCP relay in front of a real server, which a test cuts and restores: one node loses
the server (a network partition) while others still reach it."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

import servers


class Relay:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`target`; `cut` refuses and drops every
    connection until `restore`, `mute` drops the server's answers until then."""

    def __init__(self, target: int) -> None:
        self.target = target
        (self.port,) = servers.free_ports(1)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._muted = threading.Event()

    def start(self) -> Relay:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and break the ones open."""
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

    def mute(self) -> None:
        """Relay requests on, but drop what the server answers: it does what it is asked
        and its client never learns (an answer lost on the way)."""
        self._muted.set()

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
            for source, sink, muted in ((client, upstream, None), (upstream, client, self._muted)):
                threading.Thread(target=_pump, args=(source, sink, muted), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, muted: threading.Event | None) -> None:
    """Copy until either side closes (but what comes while `muted` is set), then close the
    other's writing side."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if muted is None or not muted.is_set():
                sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def relay_in_front_of(endpoint: str) -> tuple[Relay, str]:
    """A started relay in front of the server at the URL `endpoint`, and the URL that
    reaches the server through it."""
    parts = urlsplit(endpoint)
    relay = Relay(parts.port or 80).start()
    return relay, parts._replace(netloc=f"127.0.0.1:{relay.port}").geturl()
