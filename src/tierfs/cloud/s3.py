"""S3 and the stores that speak it (SeaweedFS, MinIO, R2, GCS's XML API) over obstore, and
the requests obstore cannot make: the folder markers `prefix/`, whose trailing slash its
paths drop. Those are signed here (AWS Signature Version 4)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from obstore.store import S3Store
from yarl import URL

from tierfs.cloud.objstore import ObjstoreCloud
from tierfs.cloud.signed import SignedRequests

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, repr=False)
class S3Keys:
    """What signs a request: the access key pair (and session token) and the region."""

    access_key: str
    secret_key: str
    region: str
    session_token: str | None = None


class S3Cloud(ObjstoreCloud):
    """An S3 bucket. AWS refuses a CopyObject of a source over 5 GiB (it wants a multipart
    copy, which obstore does not make): larger objects are copied through this client.

    `keys` gives the keys that sign the folder markers, as obstore's own requests are
    signed (static ones, or `AwsCredentials.keys`, which may block while it renews them);
    None: requests are not signed (a public bucket, `-no-sign-request`).
    """

    copy_limit = 5 * 2**30

    def __init__(
        self,
        store: S3Store,
        url: str,
        timeout: float,
        *,
        bucket_url: str,
        keys: Callable[[], S3Keys] | None,
    ) -> None:
        super().__init__(store, url, timeout)
        self._bucket_url = bucket_url.rstrip("/")  # path-style: ENDPOINT/BUCKET
        self._keys = keys
        self._http = SignedRequests(url, timeout)

    async def put_marker(self, prefix: str) -> None:
        await self._marker("PUT", prefix)

    async def delete_marker(self, prefix: str) -> None:
        await self._marker("DELETE", prefix)  # S3 answers 204 whether it was there or not

    async def _marker(self, method: str, prefix: str) -> None:
        self.check_key(prefix)
        marker = prefix + "/"
        url = URL(f"{self._bucket_url}/{quote(marker, safe='/~')}", encoded=True)

        async def send() -> None:
            headers = {}
            if self._keys is not None:
                keys = await asyncio.to_thread(self._keys)
                headers = sigv4(method, url, keys, datetime.now(UTC))
            async with self._http.send(method, url, headers, marker):
                pass

        await self._call(method, marker, send)

    async def close(self) -> None:
        await self._http.close()
        await super().close()


def sigv4(method: str, url: URL, keys: S3Keys, now: datetime) -> dict[str, str]:
    """The headers of a request with no body and no query, signed with AWS Signature
    Version 4 for service `s3` (`Authorization` among them)."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    host = url.host if url.is_default_port() else f"{url.host}:{url.port}"
    headers = {"host": str(host), "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
    if keys.session_token:
        headers["x-amz-security-token"] = keys.session_token
    names = sorted(headers)
    signed = ";".join(names)
    canonical_headers = "".join(f"{name}:{headers[name]}\n" for name in names)
    request = f"{method}\n{url.raw_path}\n\n{canonical_headers}\n{signed}\n{EMPTY_SHA256}"
    scope = f"{day}/{keys.region}/s3/aws4_request"
    digest = hashlib.sha256(request.encode()).hexdigest()
    text = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
    key = f"AWS4{keys.secret_key}".encode()
    for part in (day, keys.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    credential = f"{keys.access_key}/{scope}"
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]  # aiohttp sends it, as signed
    return headers
