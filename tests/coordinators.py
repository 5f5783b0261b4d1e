"""A real `tierfs coordinator` process on 127.0.0.1 for the tests, and a tiny HTTP client.

``start_coordinator(base, ...)`` picks a free port, runs ``python -m tierfs.cli coordinator``
in its own process group through ``servers.Proc`` and waits for ``/api/health``. Its state
lives in ``data_dir`` (kept across ``restart()``/``kill9_and_restart()``), its log in
``log``; ``assert_clean_log()`` fails on any traceback or ERROR line, since a 500 or a crash
of the coordinator is a bug whatever the test was about.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import servers

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Answer:
    """One HTTP answer: status, headers, raw body, and the body as JSON when it is JSON."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Coordinator:
    url: str
    port: int
    data_dir: Path
    proc: servers.Proc
    token: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Answer:
        """One request; `body` goes as JSON, `raw` as is. The coordinator's token is sent
        unless `token` says otherwise (None: no Authorization header)."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        send = self.token if token == "default" else token
        if send is not None:
            all_headers["Authorization"] = f"Bearer {send}"
        all_headers.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for key, value in all_headers.items():
            req.add_header(key, value)
        opener = _HTTP
        if self.ssl_context is not None:
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                urllib.request.HTTPSHandler(context=self.ssl_context),
            )
        try:
            with opener.open(req, timeout=timeout) as resp:
                return Answer(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as e:
            return Answer(e.code, dict(e.headers), e.read())

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def register(self, peer_id: str, address: str = "127.0.0.1:9000", **fields: Any) -> Any:
        answer = self.request(
            "POST", "/api/peers/register", {"peer_id": peer_id, "address": address, **fields}
        )
        assert answer.status == 200, answer.body
        return answer.json

    def heartbeat(self, peer_id: str, **fields: Any) -> Answer:
        return self.request("PUT", "/api/peers/status", {"peer_id": peer_id, **fields})

    def put_location(
        self, peer_id: str, path: str, version: str, chunks: list[int], **kw: Any
    ) -> Answer:
        return self.request(
            "PUT",
            "/api/files/location",
            {"peer_id": peer_id, "path": path, "version": version, "chunks": chunks, **kw},
        )

    def locations(self, path: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        answer = self.get(f"/api/files/location?path={quote(path)}")
        assert answer.status == 200, answer.body
        return list(answer.json["locations"])

    def live_ids(self) -> list[str]:
        answer = self.get("/api/peers")
        assert answer.status == 200, answer.body
        return [p["peer_id"] for p in answer.json["peers"]]

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.proc.restart()

    def kill9_and_restart(self) -> None:
        self.proc.kill()
        self.proc.start()
        assert self.proc.ready is not None
        self.proc.ready()

    def assert_clean_log(self) -> None:
        text = self.proc.log.read_text(errors="replace")
        bad = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
        assert not bad, f"coordinator log {self.proc.log} has errors:\n" + "\n".join(bad)


def start_coordinator(
    base: Path,
    *flags: str,
    token: str | None = None,
    data_dir: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Coordinator:
    """A coordinator on a free port with its state under `base` (or `data_dir`)."""

    def once() -> Coordinator:
        d = servers._workdir(base, "coordinator")
        (port,) = servers.free_ports(1)
        state = data_dir or d / "data"
        cmd = [sys.executable, "-m", "tierfs.cli", "coordinator", "-port", str(port)]
        cmd += ["-listen", "127.0.0.1"]
        cmd += ["-data-dir", str(state), *flags]
        if token is not None:
            cmd += ["-token", token]
        if tls is not None:
            cmd += ["-tls-cert", str(tls[0]), "-tls-key", str(tls[1])]
        proc = servers.Proc("coordinator", cmd, d / "coordinator.log", env=servers.clean_env())
        scheme = "https" if tls else "http"
        coordinator = Coordinator(f"{scheme}://127.0.0.1:{port}", port, state, proc, token)
        coordinator.ssl_context = ssl_context

        def ready() -> None:
            if tls is None:
                proc.wait_http(f"{coordinator.url}/api/health", ok=lambda s: s == 200)
                return
            deadline = time.monotonic() + servers.START_TIMEOUT
            while True:
                proc.check_alive()
                try:
                    if coordinator.get("/api/health", timeout=1.0).status == 200:
                        return
                except (OSError, http.client.HTTPException):
                    pass
                if time.monotonic() > deadline:
                    raise proc.fail("https health not ready")
                time.sleep(servers.POLL_INTERVAL)

        servers._started(proc, ready)
        return coordinator

    return servers._start_with_retries(once)
