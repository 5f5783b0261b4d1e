"""Azure Blob over obstore, and what obstore cannot send: a copy that is complete when it
returns, folder markers (`name/`, a name obstore's paths cannot hold), and the drop of the
blocks a failed upload left staged (`AzureBlobCloud._drop_staged_blocks`).

Azure's Copy Blob may answer before the copy is done (`x-ms-copy-status: pending`; within
one account it "can" finish at once, Azure says), and a source deleted meanwhile fails
the copy: a rename (copy, then delete) would lose the file. obstore's copy does not read
that status, so this store sends Copy Blob itself (signed with the account key, Azure's
Shared Key scheme, or carrying the shared access signature tierfs was given instead) and,
while the copy is pending, looks at the destination until it is done.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import formatdate, parsedate_to_datetime
from functools import partial
from urllib.parse import quote, unquote
from xml.etree import ElementTree

import aiohttp
from obstore.store import AzureStore
from yarl import URL

from tierfs.cloud.base import LIST_PAGE_SIZE, ListPage, ObjectMeta
from tierfs.cloud.objstore import ListAnswer, ObjstoreCloud, listing_xml
from tierfs.cloud.signed import SignedRequests
from tierfs.cloud.upload_drops import UploadDrops
from tierfs.errors import (
    CloudError,
    ConfigError,
    InvalidKeyError,
    ObjectNotFoundError,
    VersionChangedError,
)

log = logging.getLogger(__name__)

API_VERSION = "2021-08-06"  # x-ms-version of the requests made here
PUBLIC_ENDPOINT = "https://{account}.blob.core.windows.net"
# The most path segments ("a/b/c": 3) of a blob name; Azurite takes more.
MAX_SEGMENTS = 254
# Pauses between looks at a pending copy: from the first to the longest, doubling.
FIRST_LOOK, LONGEST_PAUSE = 0.05, 2.0
# The standard headers a Shared Key signature holds, in its order.
SIGNED_HEADERS = (
    "Content-Encoding", "Content-Language", "Content-Length", "Content-MD5", "Content-Type",
    "Date", "If-Modified-Since", "If-Match", "If-None-Match", "If-Unmodified-Since", "Range",
)  # fmt: skip
# Put Block List's body that commits no block (`AzureBlobCloud._drop_staged_blocks`).
EMPTY_BLOCK_LIST = b'<?xml version="1.0" encoding="utf-8"?><BlockList></BlockList>'
DROP_MARK = "x-ms-meta-tierfsdrop"  # names the drop that made such an empty blob


class AzureBlobCloud(ObjstoreCloud):
    """An Azure Blob container. A backslash in a name reads as `/` there (Azurite's too):
    a file named `a\\b` would come back as `b` in a folder `a`, so such a name is refused.

    A blob up to 256 MiB (the most Azure copies synchronously) is copied by Azure and
    waited for while pending, up to the cloud deadline; a larger one, whose copy may run
    longer, goes through this client (`copy_through`), each part with its own deadline.
    """

    copy_limit = 256 * 2**20
    max_parts = 50_000  # blocks of one blob

    def __init__(
        self,
        store: AzureStore,
        *,
        account: str,
        key: str | None,
        container: str,
        endpoint: str | None,
        timeout: float,
        sas_token: str | None = None,
    ) -> None:
        """Requests are signed with `key`; without one, they carry `sas_token` (no `?`)."""
        super().__init__(store, f"azure://{account}/{container}", timeout)
        self._secret: bytes | None = None
        if key is not None:
            try:
                self._secret = base64.b64decode(key, validate=True)
            except binascii.Error:
                raise ConfigError(
                    "invalid value for -azure-key: not a base64 account key"
                ) from None
        elif not sas_token:
            raise ConfigError("Azure needs the account key or a shared access signature")
        self._query = "" if key is not None else f"?{sas_token}"  # appended to blob URLs
        self._account = account
        base = endpoint.rstrip("/") if endpoint else PUBLIC_ENDPOINT.format(account=account)
        self._container_url = f"{base}/{quote(container, safe='')}"
        self._http = SignedRequests(self.url, timeout)
        # A retry's commit drops the blocks of the tries before it: no look before.
        self._drops = UploadDrops(_nothing, self._drop_staged_blocks, timeout)

    async def _stored_md5(self, key: str, meta: ObjectMeta) -> bytes | None:
        """Azure's Content-MD5, which Put Blob stores (its ETag is no digest)."""
        async with self._request("HEAD", key) as response:
            if _quoted(response.headers.get("ETag", "")) != meta.version:
                return None  # written again meanwhile
            digest = response.headers.get("Content-MD5")
        return base64.b64decode(digest) if digest else None

    def check_key(self, key: str) -> str:
        if "\\" in key:
            raise InvalidKeyError(f"invalid object key {key!r}: Azure reads a backslash as '/'")
        if key.rstrip("/").count("/") >= MAX_SEGMENTS:
            raise InvalidKeyError(
                f"invalid object key {key[:60]!r}...: over Azure's {MAX_SEGMENTS} path segments"
            )
        super().check_key(key)
        if any(segment.endswith(".") for segment in key.split("/")):
            # Azure stores "a." as "a", and so would overwrite the file "a" with no error
            raise InvalidKeyError(f"invalid object key {key!r}: Azure drops a name's ending dot")
        return key

    async def _server_copy(self, source: str, destination: str, version: str | None) -> str:
        """Copy Blob, of `version` only if given; the copy's version (its ETag), once
        Azure has finished copying."""
        copy_id, copied = await self._call(
            "COPY", source, lambda: self._start_copy(source, destination, version)
        )
        if copy_id is not None:
            copied = await self._wait_for_copy(destination, copy_id)
        return copied

    async def copy_state(self, key: str) -> tuple[str | None, str | None, str]:
        """The status (`pending`, `success`, `failed`, `aborted`) and id of the last copy
        into `key` (both None for a blob that was never a copy's destination), and the
        blob's version (ETag)."""
        self.check_key(key)

        async def look() -> tuple[str | None, str | None, str]:
            async with self._request("HEAD", key) as response:
                headers = response.headers
                return headers.get("x-ms-copy-status"), headers.get("x-ms-copy-id"), headers["ETag"]

        return await self._call("HEAD", key, look)

    async def _start_copy(
        self, source: str, destination: str, version: str | None
    ) -> tuple[str | None, str]:
        """Send Copy Blob: the copy's id while Azure is still copying (else None), and the
        destination's version (ETag) in the answer."""
        headers = {"x-ms-copy-source": self._blob_url(source) + self._query}
        if version is not None:
            headers["x-ms-source-if-match"] = version
        try:
            async with self._request("PUT", destination, headers) as response:
                status = response.headers.get("x-ms-copy-status")
                if status == "pending":
                    return response.headers["x-ms-copy-id"], response.headers["ETag"]
                if status != "success":
                    raise CloudError(f"{self.url}/{destination}: the copy ended {status}")
                return None, response.headers["ETag"]
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"{self.url}/{source}: no such object") from None

    async def _wait_for_copy(self, key: str, copy_id: str) -> str:
        """The copy's version, once the pending copy `copy_id` into `key` has succeeded;
        CloudError if it fails, is replaced by another, or is still pending at the cloud
        deadline."""
        deadline = time.monotonic() + self._timeout
        pause = FIRST_LOOK
        while True:
            await asyncio.sleep(pause)
            status, current, version = await self.copy_state(key)
            if current != copy_id:
                raise CloudError(f"{self.url}/{key}: another copy replaced this one")
            if status == "success":
                return version
            if status != "pending":
                raise CloudError(f"{self.url}/{key}: the copy ended {status}")
            if time.monotonic() >= deadline:
                raise CloudError(
                    f"{self.url}/{key}: the copy still pending after {self._timeout:g}s"
                )
            pause = min(pause * 2, LONGEST_PAUSE)

    def _blob_url(self, key: str) -> str:
        return f"{self._container_url}/{quote(key, safe='/~')}"

    def _request(
        self, method: str, key: str, extra: Mapping[str, str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A request for blob `key` (see `_send`)."""
        url = URL(self._blob_url(key) + self._query, encoded=True)
        return self._send(method, url, key, extra)

    def _block_list_request(
        self, method: str, key: str, query: str, extra: Mapping[str, str], body: bytes | None
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A request of blob `key`'s block list (`comp=blocklist` and `query`)."""
        joined = f"comp=blocklist{query}{self._query.replace('?', '&')}"
        url = URL(f"{self._blob_url(key)}?{joined}", encoded=True)
        return self._send(method, url, key, extra, body=body)

    def _send(
        self,
        method: str,
        url: URL,
        key: str,
        extra: Mapping[str, str] | None = None,
        listing: bool = False,
        body: bytes | None = None,
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A request to `url` (about `key`, or a `listing`), signed with the account key or
        carrying the shared access signature (see SignedRequests)."""
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": API_VERSION}
        headers |= extra or {}
        if method == "PUT":
            headers["Content-Length"] = str(len(body or b""))
        if self._secret is not None:
            auth = shared_key(self._account, self._secret, method, url, headers)
            headers["Authorization"] = auth
        return self._http.send(method, url, headers, key, listing, body)

    async def _drop_staged_blocks(self, key: str, _before: tuple[()]) -> None:
        """Drop the blocks of `key` left staged (`UploadDrops`' drop): obstore aborts
        nothing on Azure, and Azure keeps them a week, billed, while another tool's upload
        of `key` in blocks fails (Azure takes one length of block id per blob:
        InvalidBlobOrBlock). Only where no blob of `key` is: an empty block list committed
        there only while there is none (a commit drops every block it does not name),
        marked as this drop's, then that empty blob deleted, only at its version. Where a
        blob is, they stay (its next put drops them, else Azure after a week). Never
        raises: what fails is logged."""
        mark = secrets.token_hex(8)
        try:
            emptied = await self._call("PUT", key, partial(self._commit_no_block, key, mark))
            if emptied is None:
                return
            with contextlib.suppress(VersionChangedError, ObjectNotFoundError):  # not ours now
                await self._call("DELETE", key, partial(self._delete_at, key, emptied))
        except CloudError as exc:
            log.info("%s/%s: its staged blocks stay (Azure drops them in a week): %s",
                     self.url, key, exc)  # fmt: skip
            return
        log.info("%s/%s: dropped the blocks its failed upload left staged", self.url, key)

    async def _commit_no_block(self, key: str, mark: str) -> str | None:
        """Commit an empty block list at `key`, marked `mark`, if blocks are staged there and
        no blob is: the empty blob's version (also when a try before this one made it, its
        answer lost), else None."""
        try:
            async with self._block_list_request(
                "GET", key, "&blocklisttype=uncommitted", {}, None
            ) as answer:
                listed = listing_xml(await answer.read())
        except ObjectNotFoundError:
            return None
        if listed.find("UncommittedBlocks/Block") is None:
            return await self._marked(key, mark)
        try:
            async with self._request("HEAD", key):
                return None  # a blob is there: committing no block would empty it
        except ObjectNotFoundError:
            pass
        headers = {"If-None-Match": "*", DROP_MARK: mark}
        try:
            async with self._block_list_request(
                "PUT", key, "", headers, EMPTY_BLOCK_LIST
            ) as answer:
                return _quoted(answer.headers["ETag"])
        except CloudError as exc:
            if "BlobAlreadyExists" not in str(exc):  # Azure's 409 to If-None-Match: *
                raise
        return await self._marked(key, mark)

    async def _marked(self, key: str, mark: str) -> str | None:
        """The version of the blob at `key` if it is the empty one marked `mark`, else None."""
        try:
            async with self._request("HEAD", key) as answer:
                ours = answer.headers.get(DROP_MARK) == mark
                return _quoted(answer.headers["ETag"]) if ours else None
        except ObjectNotFoundError:
            return None

    async def _delete_at(self, key: str, version: str) -> None:
        async with self._request("DELETE", key, {"If-Match": version}):
            pass

    async def put_marker(self, prefix: str) -> None:
        await self._marker("PUT", prefix)

    async def delete_marker(self, prefix: str) -> None:
        await self._marker("DELETE", prefix)

    async def _marker(self, method: str, prefix: str) -> None:
        self.check_key(prefix)
        marker = prefix + "/"
        headers = {"x-ms-blob-type": "BlockBlob"} if method == "PUT" else {}

        async def send() -> None:
            try:
                async with self._request(method, marker, headers):
                    pass
            except ObjectNotFoundError:  # a DELETE of no marker: done
                if method != "DELETE":
                    raise

        await self._call(method, marker, send)

    def _list_unfiltered(
        self, prefix: str, delimiter: bool, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        """List Blobs (a folder's marker `a/` named with its slash)."""
        query = {"restype": "container", "comp": "list", "maxresults": str(page_size)}
        if delimiter:
            query["delimiter"] = "/"
        if prefix:
            query["prefix"] = prefix
        return self._pages(prefix, query, "marker", self._list_page)

    async def _list_page(self, query: dict[str, str]) -> ListAnswer:
        encoded = "&".join(f"{name}={quote(value, safe='')}" for name, value in query.items())
        url = URL(f"{self._container_url}?{encoded}{self._query.replace('?', '&')}", encoded=True)
        async with self._send("GET", url, query.get("prefix", ""), listing=True) as answer:
            return _parse_listing(await answer.read())

    async def close(self) -> None:
        await super().close()
        await self._http.close()


def _parse_listing(body: bytes) -> ListAnswer:
    """The blobs, blob prefixes and next marker of a List Blobs answer."""
    root = listing_xml(body)

    def name(item: ElementTree.Element) -> str:
        element = item.find("Name")
        value = "" if element is None else element.text or ""
        return unquote(value) if element is not None and element.get("Encoded") == "true" else value

    objects = [
        ObjectMeta(
            name(blob),
            int(blob.findtext("Properties/Content-Length") or 0),
            _quoted(blob.findtext("Properties/Etag") or ""),
            parsedate_to_datetime(blob.findtext("Properties/Last-Modified") or ""),
        )
        for blob in root.iterfind("Blobs/Blob")
    ]
    prefixes = [name(item) for item in root.iterfind("Blobs/BlobPrefix")]
    return ListAnswer(ListPage(objects, prefixes), root.findtext("NextMarker") or None)


async def _nothing(key: str) -> tuple[()]:
    """An empty look at `key` before its uploads: the drop needs none (`UploadDrops`)."""
    return ()


def _quoted(etag: str) -> str:
    """Azure lists ETags bare (`0x8D...`) and gives them quoted to HEAD, GET and PUT."""
    return etag if etag.startswith('"') else f'"{etag}"'


def shared_key(
    account: str, secret: bytes, method: str, url: URL, headers: Mapping[str, str]
) -> str:
    """The `Authorization` of a request, signed with the account key (Azure
    Storage's Shared Key scheme, versions 2015-02-21 on)."""
    length = headers.get("Content-Length", "")
    standard = [method] + [headers.get(name, "") for name in SIGNED_HEADERS]
    standard[3] = "" if length == "0" else length
    ms_headers = sorted((name.lower(), value.strip()) for name, value in headers.items())
    canonical = "".join(
        f"{name}:{value}\n" for name, value in ms_headers if name.startswith("x-ms-")
    )
    resource = f"/{account}{url.raw_path}" + "".join(
        f"\n{name.lower()}:{value}" for name, value in sorted(url.query.items())
    )
    text = "\n".join(standard) + "\n" + canonical + resource
    digest = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"
