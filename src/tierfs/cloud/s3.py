"""S3 and the stores that speak it (SeaweedFS, MinIO, R2, GCS's XML API) over obstore, and
the requests obstore cannot make: the folder markers `prefix/`, whose trailing slash its
paths drop, and a copy that tells the copy's ETag. Those are signed here (AWS Signature
Version 4)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from urllib.parse import quote, unquote_plus
from xml.etree import ElementTree

from obstore.store import S3Store
from yarl import URL

from tierfs.cloud.base import (
    GCS_ACME_FOLDER,
    LIST_PAGE_SIZE,
    ListPage,
    ObjectMeta,
    began_then,
)
from tierfs.cloud.objstore import ListAnswer, ObjstoreCloud, listing_xml
from tierfs.cloud.signed import SignedRequests
from tierfs.cloud.upload_drops import UploadDrops
from tierfs.errors import (
    CloudError,
    CloudUnavailableError,
    ObjectNotFoundError,
    TransientCloudError,
)

log = logging.getLogger(__name__)

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

    `keys` sign the requests tierfs sends itself (markers, listings), as obstore's own
    are signed: static ones, or `AwsCredentials.keys`, which may block while it renews
    them (asked off the event loop); None: requests are not signed (a public bucket,
    `-no-sign-request`).
    """

    copy_limit = 5 * 2**30

    def __init__(
        self,
        store: S3Store,
        url: str,
        timeout: float,
        *,
        bucket_url: str,
        keys: S3Keys | Callable[[], S3Keys] | None,
    ) -> None:
        super().__init__(store, url, timeout)
        self._bucket_url = bucket_url.rstrip("/")  # path-style: ENDPOINT/BUCKET
        self._keys = keys
        self._http = SignedRequests(url, timeout)
        # Each try of a put is an upload of its own, which a retry's success leaves.
        self._drops = UploadDrops(
            self._uploads_now, self._drop_parts, timeout, failed_tries_leave_uploads=True
        )

    async def _uploads_now(self, key: str) -> set[str] | None:
        """The ids of the multipart uploads of `key` in progress before this node's puts
        of it (`UploadDrops`' look before), or None where they cannot be listed: then
        nothing is dropped."""
        try:
            return await self._call("LIST", key, lambda: self._uploads_of(key))
        except CloudError as exc:  # no ListBucketMultipartUploads right: nothing to compare
            log.info("%s/%s: in-progress uploads not listed: %s", self.url, key, exc)
            return None

    async def _drop_parts(self, key: str, before: set[str]) -> None:
        """Abort the uploads of `key` begun since `before` (`UploadDrops`' drop), within
        the deadline: obstore aborts none that is cancelled, and sends the abort of a
        failed one the way that just failed, so their parts stayed in the bucket, billed
        until a lifecycle rule drops them. A completed upload is in progress no more, so a
        put that succeeded keeps its object. One begun meanwhile by another client of the
        same key would go too."""
        try:
            await asyncio.wait_for(self._abort_begun(key, before), self._timeout)
        except (CloudError, TimeoutError) as exc:
            log.info("%s/%s: parts of a failed upload left: %s", self.url, key, exc)

    async def _abort_begun(self, key: str, before: set[str]) -> None:
        """Abort the multipart uploads of `key` that are not among `before`."""
        for upload_id in await self._uploads_of(key) - before:
            await self._abort(key, upload_id)

    async def _abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload of `key`'s upload `upload_id` (gone already: nothing)."""
        url = URL(
            f"{self._bucket_url}/{quote(key, safe='/~')}?uploadId={_quoted(upload_id)}",
            encoded=True,
        )
        with contextlib.suppress(ObjectNotFoundError):  # NoSuchUpload: done meanwhile
            async with self._http.send("DELETE", url, await self._signed("DELETE", url), key):
                pass

    async def drop_uploads_begun(self, key: str, began: Sequence[float]) -> None:
        """Abort the uploads of `key` in progress that the store says began when one of
        `began` did (`began_then`). obstore does not say which upload is its own: an
        upload of `key` by another client is left, unless it began in that same window."""

        def ours(initiated: datetime | None) -> bool:
            return initiated is not None and began_then(initiated.timestamp(), began, self._timeout)

        try:
            uploads = await self._call("LIST", key, lambda: self._uploads_begun(key))
            for upload_id in (upload_id for upload_id, at in uploads.items() if ours(at)):
                await self._call("DELETE", key, partial(self._abort, key, upload_id))
                log.info("%s/%s: aborted the upload %s a crash left", self.url, key, upload_id)
        except CloudUnavailableError:
            raise  # a later try may reach the store
        except CloudError as exc:
            log.info("%s/%s: uploads a crash left not aborted: %s", self.url, key, exc)

    async def _uploads_of(self, key: str) -> set[str]:
        """The ids of the multipart uploads of `key` in progress (ListMultipartUploads)."""
        return set(await self._uploads_begun(key))

    async def _uploads_begun(self, key: str) -> dict[str, datetime | None]:
        """The multipart uploads of `key` in progress (ListMultipartUploads): when each
        began (None if the store does not say), by id."""
        url = URL(f"{self._bucket_url}?prefix={_quoted(key)}&uploads=", encoded=True)
        async with self._http.send("GET", url, await self._signed("GET", url), key) as response:
            root = listing_xml(await response.read())
        namespace = _namespace(root)
        return {
            upload.findtext(namespace + "UploadId") or "": _moment(
                upload.findtext(namespace + "Initiated")
            )
            for upload in root.iterfind(namespace + "Upload")
            if upload.findtext(namespace + "Key") == key  # not a longer key of the prefix
        }

    async def put_marker(self, prefix: str) -> None:
        await self._marker("PUT", prefix)

    async def delete_marker(self, prefix: str) -> None:
        await self._marker("DELETE", prefix)  # S3 answers 204 whether it was there or not

    async def _marker(self, method: str, prefix: str) -> None:
        self.check_key(prefix)
        marker = prefix + "/"
        url = URL(f"{self._bucket_url}/{quote(marker, safe='/~')}", encoded=True)

        async def send() -> None:
            async with self._http.send(method, url, await self._signed(method, url), marker):
                pass

        await self._call(method, marker, send)

    def _list_unfiltered(
        self, prefix: str, delimiter: bool, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        """ListObjectsV2 (keys URL-encoded in the answer, as XML cannot carry every
        character a key may hold)."""
        query = {"list-type": "2", "encoding-type": "url", "prefix": prefix}
        query["max-keys"] = str(page_size)
        if delimiter:
            query["delimiter"] = "/"
        return self._pages(prefix, query, "continuation-token", self._list_page)

    async def _list_page(self, query: dict[str, str]) -> ListAnswer:
        canonical = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
        url = URL(f"{self._bucket_url}?{canonical}", encoded=True)
        headers = await self._signed("GET", url)
        async with self._http.send("GET", url, headers, query["prefix"], True) as response:
            return _parse_listing(await response.read(), f"{self.url}/{query['prefix']}")

    async def _server_copy(self, source: str, destination: str, version: str | None) -> str:
        """CopyObject, of `version` only if given; the copy's ETag from its answer
        (obstore's copy drops it, and AWS gives the copy of a multipart object an ETag of
        its own)."""
        url = URL(f"{self._bucket_url}/{quote(destination, safe='/~')}", encoded=True)
        bucket = self._bucket_url.rsplit("/", 1)[1]
        copy_source = {"x-amz-copy-source": f"/{bucket}/{quote(source, safe='/~')}"}
        if version is not None:
            copy_source["x-amz-copy-source-if-match"] = version

        async def send() -> str:
            headers = await self._signed("PUT", url, copy_source)
            async with self._http.send("PUT", url, headers, source) as response:
                return _copy_etag(await response.read(), f"{self.url}/{destination}")

        return await self._call("COPY", source, send)

    async def _signed(
        self, method: str, url: URL, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """The SigV4 headers of a request without a body, `extra` among them; only
        `extra` for an unsigned store."""
        if self._keys is None:
            return dict(extra or {})
        keys = self._keys
        if not isinstance(keys, S3Keys):  # a lookup lists: no thread hop for static keys
            keys = await asyncio.to_thread(keys)
        return sigv4(method, url, keys, datetime.now(UTC), extra)

    async def close(self) -> None:
        await super().close()
        await self._http.close()


def _moment(text: str | None) -> datetime | None:
    """An S3 answer's time ("2026-12-06T18:03:46.000Z"); None if it gives none."""
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def _quoted(value: str) -> str:
    """`value` encoded for a canonical query (all but `-_.~`)."""
    return quote(value, safe="-_.~")


def _namespace(root: ElementTree.Element) -> str:
    """The `{uri}` an S3 answer's element names start with ("" where it has none)."""
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _copy_etag(body: bytes, what: str) -> str:
    """The ETag of a CopyObject answer; an error S3 sent with status 200 (as it may, once
    the copy has begun) is a TransientCloudError: the copy is asked for again."""
    try:  # AWS may send spaces before the answer while it copies
        root = ElementTree.fromstring(body.strip())
    except ElementTree.ParseError as exc:
        raise TransientCloudError(f"{what}: a copy answer that is not XML: {exc}") from None
    namespace = _namespace(root)
    etag = root.findtext(namespace + "ETag")
    if root.tag != namespace + "CopyObjectResult" or not etag:
        code = root.findtext(namespace + "Code") or root.tag
        raise TransientCloudError(f"{what}: the copy failed: {code}")
    return etag if etag.startswith('"') else f'"{etag}"'  # quoted, as in a HEAD's header


def _parse_listing(body: bytes, what: str) -> ListAnswer:
    """The objects, common prefixes and continuation token of a ListObjectsV2 answer."""
    root = listing_xml(body)
    namespace = _namespace(root)

    def text(element: ElementTree.Element, name: str) -> str:
        return element.findtext(namespace + name) or ""

    encoded = text(root, "EncodingType") == "url"

    def name(value: str) -> str:
        return unquote_plus(value) if encoded else value

    objects = [
        ObjectMeta(
            name(text(item, "Key")),
            int(text(item, "Size") or 0),
            text(item, "ETag"),
            datetime.fromisoformat(text(item, "LastModified")),
        )
        for item in root.iterfind(namespace + "Contents")
    ]
    prefixes = [name(text(item, "Prefix")) for item in root.iterfind(namespace + "CommonPrefixes")]
    if text(root, "IsTruncated") != "true":
        return ListAnswer(ListPage(objects, prefixes), None)
    token = text(root, "NextContinuationToken")
    if not token:  # asking on without one would list from the start again, forever
        raise CloudError(f"{what}: the listing has more pages and gave no token for the next")
    return ListAnswer(ListPage(objects, prefixes), token)


def sigv4(
    method: str, url: URL, keys: S3Keys, now: datetime, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The headers of a request with no body, signed with AWS Signature Version 4 for
    service `s3` (`Authorization` among them), `extra` (lower-case `x-amz-` names) signed
    too. `url`'s query must be in canonical form: its names sorted, names and values
    encoded but for `-_.~`."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    host = url.host if url.is_default_port() else f"{url.host}:{url.port}"
    headers = {"host": str(host), "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
    headers |= extra or {}
    if keys.session_token:
        headers["x-amz-security-token"] = keys.session_token
    names = sorted(headers)
    signed = ";".join(names)
    canonical_headers = "".join(f"{name}:{headers[name]}\n" for name in names)
    query = url.raw_query_string
    request = f"{method}\n{url.raw_path}\n{query}\n{canonical_headers}\n{signed}\n{EMPTY_SHA256}"
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


class GcsInteropCloud(S3Cloud):
    """A GCS bucket through its S3-compatible XML API: S3's requests, GCS's names."""

    reserved_prefixes = (GCS_ACME_FOLDER,)
