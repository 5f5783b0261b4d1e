"""A real HTTP server that answers every request with a JSON body without end (plain, or
gzip that inflates 1000 to 1), but those it is told to answer as a coordinator would:
what a client meets at the URL of a broken coordinator or of some other server.

In the test's loop, `Babbler.answer` is the handler of an app; as a process (a node
mounted with it as `-coordinator`), `python babbler.py PORT [STATUS]` babbles to every
request (with that HTTP status, 200 unless told) and logs each one on stderr once it is
over.
"""

from __future__ import annotations

import logging
import sys
import zlib

from aiohttp import web

BLOCK = b" " * 2**20  # whitespace: the start of a JSON document, never its end


class Babbler:
    """`honest` maps "METHOD /path" to the JSON text answered there; `sent` counts the
    (inflated) body bytes of each endless answer so far."""

    def __init__(self, gzip: bool = False, status: int = 200) -> None:
        self.gzip, self.status = gzip, status
        self.honest: dict[str, str] = {}
        self.sent: list[int] = []
        squeeze = zlib.compressobj(wbits=31)  # gzip framing
        self._first = squeeze.compress(BLOCK) + squeeze.flush(zlib.Z_SYNC_FLUSH)
        self._next = squeeze.compress(BLOCK) + squeeze.flush(zlib.Z_SYNC_FLUSH)  # and so on

    async def answer(self, request: web.Request) -> web.StreamResponse:
        text = self.honest.get(f"{request.method} {request.path}")
        if text is not None:
            return web.Response(text=text, content_type="application/json")
        headers = {"Content-Type": "application/json"}
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(status=self.status, headers=headers)
        await response.prepare(request)
        self.sent.append(0)
        block = self._first if self.gzip else BLOCK
        try:
            while True:
                await response.write(block)  # one more MiB of body
                self.sent[-1] += len(BLOCK)
                block = self._next if self.gzip else block
        except ConnectionError:  # the client hung up
            return response


def app(babbler: Babbler) -> web.Application:
    served = web.Application()
    served.router.add_route("*", "/{tail:.*}", babbler.answer)
    return served


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # the access log: one line per request
    status = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    web.run_app(app(Babbler(status=status)), host="127.0.0.1", port=int(sys.argv[1]), print=None)
