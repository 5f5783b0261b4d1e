"""Requests tierfs signs itself, for what obstore cannot send: Azure's Copy Blob with its
status, and folder markers (keys ending in `/`, which obstore's paths cannot name)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from tierfs.cloud.base import may_pass
from tierfs.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CloudError,
    CredentialsRefusedError,
    NotAnObjectStoreError,
    ObjectNotFoundError,
    TransientCloudError,
    VersionChangedError,
)


class SignedRequests:
    """One HTTP session of a store, for requests that carry their own signature; failures
    come back as tierfs errors named after the store's `url` and the key."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        key: str,
        listing: bool = False,
        body: bytes | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request (with `body`, if given: a few bytes): an answer of 400 or more
        raises its tierfs error (ObjectNotFoundError, AccessDeniedError, ...), a connection
        that failed or timed out TransientCloudError; that of a `listing`, a web page,
        NotAnObjectStoreError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            # aiohttp would add a Content-Type to a PUT after it was signed
            request = self._session.request(
                method, url, headers=headers, data=body, skip_auto_headers=["Content-Type"]
            )
            async with request as response:
                page = web_page_error(self.url, url, response.status, response.headers)
                if listing and page is not None:
                    raise page
                if response.status >= 400:
                    raise self._failure(
                        response, key, _error_code(await response.content.read(65536))
                    )
                yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = f"{self.url}/{key}"
            raise TransientCloudError(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc

    def _failure(self, response: aiohttp.ClientResponse, key: str, code: str) -> CloudError:
        """The tierfs error of an answer of 400 or more; `code` is its body's error code."""
        status, what = response.status, f"{self.url}/{key}"
        detail = response.headers.get("x-ms-error-code") or code or response.reason or ""
        if status == 404 and detail == "ContainerNotFound":  # Azure's; not the blob
            return BucketNotFoundError(f"{self.url}: no such bucket")
        if status == 404:
            return ObjectNotFoundError(f"{what}: no such object")
        if status == 412:  # a condition on the object's version
            return VersionChangedError(f"{what}: changed since ({detail})")
        if status in (401, 403) and detail in _CREDENTIALS_REFUSED:
            return CredentialsRefusedError(
                f"{self.url}: the store refused the credentials ({detail}): check them"
            )
        if status == 403 and detail == "AuthorizationFailure":
            # Azure's answer to a request its firewall (the account's network rules) keeps
            # out, whatever it asks; Azurite's to a wrong key. Not a permission a key lacks:
            # that is AuthorizationPermissionMismatch.
            return CredentialsRefusedError(
                f"{self.url}: the store refused this client ({detail}): check the key, and "
                "the account's firewall (its network rules)"
            )
        if status in (401, 403):
            return AccessDeniedError(f"access denied to bucket {self.url}: check the credentials")
        if may_pass(status):
            return TransientCloudError(f"{what}: HTTP {status} {detail}")
        return CloudError(f"{what}: HTTP {status} {detail}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# What a web server or a captive portal answers, and no object store's API does
WEB_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def web_page_error(
    store_url: str, url: URL | str, status: int, headers: Mapping[str, str] | None
) -> NotAnObjectStoreError | None:
    """The error of an answer to a listing from `url` that is a web page (a 404 page, a
    portal's 200), else None. Only a listing's: a store's answer to a HEAD or a GET of an
    object carries the object's own type, and a PUT's may be anything (moto's is
    text/html). Not one that may pass (a proxy's 502 page): that stays a transient
    failure."""
    headers = headers or {}
    media = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media not in WEB_PAGE_TYPES or "x-ms-error-code" in headers:
        return None
    if may_pass(status):
        return None
    origin = URL(str(url)).origin()
    return NotAnObjectStoreError(
        f"{store_url}: {origin} is not an object store: it answered HTTP {status} with {media}"
    )


# Error codes of a key or signature the store does not know (S3's, GCS's XML API's, Azure's).
_CREDENTIALS_REFUSED = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthenticationFailed", "InvalidSecurity"}
)
_CODE_RE = re.compile(rb"<Code>\s*([A-Za-z]+)\s*</Code>")


def _error_code(body: bytes) -> str:
    """The `<Code>` of an XML error answer (S3's, Azure's), else ""."""
    match = _CODE_RE.search(body)
    return match.group(1).decode() if match else ""
