"""The coordinator's middlewares, outermost first: metrics, errors, auth.

- `measure` times every request and counts it by route template and status.
- `errors` makes every failure a JSON `ErrorBody`: ApiError as raised, aiohttp's own
  HTTP errors (404, 405, 413) reworded, and anything else a 500 with its traceback
  logged. A 500 is a bug: bad input must be a 4xx before it gets that far.
- `authenticate` demands `Authorization: Bearer <token>` on every route but health when
  the coordinator has a token (the dashboard also takes HTTP Basic with the token as
  password, which browsers can send).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import ValidationError

from tierfs.coordinator.metrics import CoordinatorMetrics
from tierfs.coordinator.models import ErrorBody, ErrorDetail
from tierfs.security import basic_matches, bearer_matches

log = logging.getLogger(__name__)


MAX_BODY = 2**20  # 1 MiB: the largest legitimate body is a location report of ~130k chunks
OPEN_PATHS = frozenset({"/api/health"})
DASHBOARD_PATH = "/"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_HTTP_ERRORS = {
    404: ("not_found", "no such endpoint: {method} {path}"),
    405: ("method_not_allowed", "{method} is not allowed on {path}"),
    413: ("body_too_large", f"the request body is larger than {MAX_BODY // 2**20} MiB"),
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


def _printable(text: str, limit: int = 200) -> str:
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
            field=_printable(".".join([where, *(str(part) for part in e["loc"])])),
            message=str(e["msg"]).removeprefix("Value error, "),
        )
        for e in errors[:20]
    ]
    summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return ApiError(422, "invalid_request", summary + more, details)


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
            method=_printable(request.method, 20), path=_printable(request.path), reason=exc.reason
        )
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return ApiError(exc.status, word, message, headers=headers).response()
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client went away: nothing to answer
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, _printable(request.path))
        message = "internal error (a bug: it has been logged)"
        return ApiError(500, "internal_error", message).response()


def authenticate(token: str | None) -> Middleware:
    """The token check; `None` lets every request through."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization")
        if bearer_matches(header, token):
            return await handler(request)
        challenge = 'Bearer realm="tierfs"'
        if request.path == DASHBOARD_PATH:
            if basic_matches(header, token):
                return await handler(request)
            challenge = 'Basic realm="tierfs"'  # a browser then asks for the token
        word = "unauthorized" if header is None else "wrong_token"
        raise ApiError(
            401,
            word,
            "this coordinator needs its token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": challenge},
        )

    return check


def measure(metrics: CoordinatorMetrics) -> Middleware:
    """Count and time each request by route template, method and status."""

    @web.middleware
    async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "other"
        metrics.observe(route, method, response.status, time.perf_counter() - started)
        return response

    return timed
