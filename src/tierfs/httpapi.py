"""What the HTTP servers of tierfs (coordinator, peer API) share: JSON errors, the token,
request metrics, query parsing, TLS and serving an app on a port.

Middlewares, outermost first: `measure` (count and time by route template), `errors`
(every failure a JSON `ErrorBody`), `authenticate` (the cluster token).

- `errors` answers ApiError as raised, aiohttp's own HTTP errors (404, 405, 413)
  reworded, and anything else a 500 with its traceback logged. A 500 is a bug: bad
  input must be a 4xx before it gets that far.
- `authenticate` demands `Authorization: Bearer <token>` on every route but the open
  ones when the server has a token; `basic_paths` also take HTTP Basic with the token
  as password (what a browser can send: the coordinator's dashboard).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, ValidationError

from tierfs.coordinator.models import ErrorBody, ErrorDetail
from tierfs.errors import TierfsError
from tierfs.security import basic_matches, bearer_matches

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

SHUTDOWN_GRACE = 5.0  # seconds for requests in flight to finish
# A 4096-byte path and a 1024-character version percent-encode to ~25 KiB of request line;
# aiohttp's default (8190) would refuse valid requests.
MAX_REQUEST_LINE = 64 * 2**10
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_HTTP_ERRORS = {
    404: ("not_found", "no such endpoint: {method} {path}"),
    405: ("method_not_allowed", "{method} is not allowed on {path}"),
    413: ("body_too_large", "the request body is larger than {limit}"),
}


class ApiError(Exception):
    """An error answer: HTTP status, a machine word, one line for people, the fields at fault."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, message=message, details=details or [])
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=self.body.model_dump_json().encode(),
            content_type="application/json",
            headers=self.headers,
        )


def printable(text: str, limit: int = 200) -> str:
    """`text` as it may be echoed in an error: control characters masked, length bounded."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def invalid(exc: ValidationError, where: str) -> ApiError:
    """The 400 or 422 for a pydantic error on the request's `where` ("body", "query", ...)."""
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        message = str(errors[0]["msg"]).removeprefix("Invalid JSON: ")
        return ApiError(400, "malformed_json", f"the {where} is not valid JSON: {message}")
    if len(errors) == 1 and not errors[0]["loc"] and errors[0]["type"] == "model_type":
        return ApiError(400, "not_an_object", f"the {where} must be a JSON object")
    details = [
        ErrorDetail(
            field=printable(".".join([where, *(str(part) for part in e["loc"])])),
            message=str(e["msg"]).removeprefix("Value error, "),
        )
        for e in errors[:20]
    ]
    summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return ApiError(422, "invalid_request", summary + more, details)


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query string as `model`; a parameter given twice is a 422."""
    for key in request.query:
        if len(request.query.getall(key)) > 1:
            raise ApiError(422, "invalid_request", f"query.{key[:100]}: given more than once")
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise invalid(exc, "query") from None


def _size_text(size: int) -> str:
    return f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size} bytes"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        word, text = _HTTP_ERRORS.get(exc.status, ("http_error", "{reason}"))
        message = text.format(
            method=printable(request.method, 20),
            path=printable(request.path),
            reason=exc.reason,
            limit=_size_text(request.client_max_size),
        )
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return ApiError(exc.status, word, message, headers=headers).response()
    except ConnectionError as exc:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            raise  # not the asker's connection: aiohttp answers 500 and logs it
        # The asker left before its answer went (it timed out while this process did not
        # run): nothing to answer. Raised on, aiohttp logged an ERROR with a traceback.
        method, where = printable(request.method, 20), printable(request.path)
        log.info("%s %s: the asker left before its answer (%s)", method, where, exc)
        return web.Response(status=499)  # never sent: aiohttp drops it quietly
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, printable(request.path))
        message = "internal error (a bug: it has been logged)"
        return ApiError(500, "internal_error", message).response()


def authenticate(
    token: str | None,
    *,
    server: str,
    open_paths: Collection[str] = ("/api/health",),
    basic_paths: Collection[str] = (),
) -> Middleware:
    """The token check of `server` ("coordinator", "node"); `None` lets every request in."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or request.path in open_paths:
            return await handler(request)
        header = request.headers.get("Authorization")
        if bearer_matches(header, token):
            return await handler(request)
        challenge = 'Bearer realm="tierfs"'
        if request.path in basic_paths:
            if basic_matches(header, token):
                return await handler(request)
            challenge = 'Basic realm="tierfs"'  # a browser then asks for the token
        word = "unauthorized" if header is None else "wrong_token"
        raise ApiError(
            401,
            word,
            f"this {server} needs its token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": challenge},
        )

    return check


def measure(observe: Callable[[str, str, int, float], None]) -> Middleware:
    """Call `observe(route template, method, status, seconds)` for each request."""

    @web.middleware
    async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "other"
        observe(route, method, response.status, time.perf_counter() - started)
        return response

    return timed


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server side of TLS from `-tls-cert`/`-tls-key`; None without them."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TierfsError(f"cannot load -tls-cert/-tls-key: {exc}") from None
    return context


class _ClientErrorsAreNotOurs(logging.Filter):
    """aiohttp logs a malformed request (bad HTTP, a request line over the limit) as an ERROR
    with a traceback before answering it 400. It is the client's error: keep it at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            log.debug("bad HTTP request answered %d: %s", exc.code, exc.message)
            return False
        return True


_CLIENT_ERRORS_FILTER = _ClientErrorsAreNotOurs()


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    access_log: bool = False,
) -> web.AppRunner:
    """Serve `app` on `host`:`port` (0: any free port, see `runner.addresses`) in this loop.

    The app's startup runs here; the caller owns the runner and calls `cleanup()`, which
    closes the listener, lets requests in flight finish (SHUTDOWN_GRACE) and runs the
    app's cleanup. A port that cannot be bound is a TierfsError naming it.
    """
    logging.getLogger("aiohttp.server").addFilter(_CLIENT_ERRORS_FILTER)  # once: a set
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=SHUTDOWN_GRACE,
        max_line_size=MAX_REQUEST_LINE,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        raise TierfsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except BaseException:
        await runner.cleanup()
        raise
    return runner
