"""Build the CloudStore a client's settings name: s3, azure, gcp (two ways) or local."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISDIR
from typing import TYPE_CHECKING
from urllib.parse import quote

from obstore.store import AzureStore, LocalStore, S3Store

from tierfs.cloud.azure import AzureBlobCloud
from tierfs.cloud.base import LIST_PAGE_SIZE, CloudStore, ListPage, ObjectMeta, began_then
from tierfs.cloud.objstore import NO_RETRIES, ObjstoreCloud, client_options
from tierfs.cloud.s3 import GcsInteropCloud, S3Cloud, S3Keys
from tierfs.cloud.s3_region import DEFAULT_REGION, check_given_region, find_region
from tierfs.errors import (
    BucketNotFoundError,
    CloudError,
    ConfigError,
    CredentialsRefusedError,
    EntryExistsError,
    FolderAtKeyError,
    InvalidKeyError,
    NotAnObjectStoreError,
    NotDirectoryError,
)
from tierfs.settings import ClientSettings

if TYPE_CHECKING:
    from tierfs.cloud.aws_credentials import AwsCredentials

log = logging.getLogger(__name__)

GCS_INTEROP_ENDPOINT = "https://storage.googleapis.com"
BUCKET_CHECK_DEADLINE = 2.0  # seconds


def open_store(settings: ClientSettings, credentials: AwsCredentials | None = None) -> CloudStore:
    """The tier-3 store of `settings.cloud_provider`; raises ConfigError if it cannot be.
    S3 signs with `credentials` where `require_s3_credentials` found them."""
    timeout = settings.cloud_timeout
    if settings.cloud_provider == "local":
        assert settings.local_root is not None  # ensured by ClientSettings
        return local_store(local_root(settings.local_root), timeout)
    if settings.cloud_provider == "s3":
        return s3_store(
            bucket=settings.s3_bucket,
            region=settings.s3_region or DEFAULT_REGION,
            endpoint=settings.s3_endpoint,
            access_key=settings.aws_access_key_id,
            secret_key=settings.aws_secret_access_key,
            session_token=settings.aws_session_token,
            timeout=timeout,
            signed=not settings.no_sign_request,
            credentials=credentials,
        )
    if settings.cloud_provider == "azure":
        assert settings.azure_account  # ensured by ClientSettings, as a key or a signature
        return azure_store(
            account=settings.azure_account,
            key=settings.azure_key,
            sas_token=settings.azure_sas_token,
            container=settings.azure_container,
            endpoint=settings.azure_endpoint,
            timeout=timeout,
        )
    if settings.gcp_access_key_id and settings.gcp_secret_access_key:
        # The original spec: GCS through its S3-compatible XML API with HMAC keys.
        return s3_store(
            bucket=settings.gcp_bucket,
            region="auto",
            endpoint=settings.gcp_endpoint or GCS_INTEROP_ENDPOINT,
            access_key=settings.gcp_access_key_id,
            secret_key=settings.gcp_secret_access_key,
            timeout=timeout,
            scheme="gcp",
        )
    from tierfs.cloud.gcs import GcsStore

    return GcsStore(
        bucket=settings.gcp_bucket,
        endpoint=settings.gcp_endpoint,
        credentials=settings.gcp_credentials,
        timeout=timeout,
    )


def require_s3_credentials(settings: ClientSettings) -> AwsCredentials | None:
    """The credentials of botocore's chain where S3 requests are to be signed with no keys
    given, for `open_store` (the chain is asked once: a `credential_process` runs once);
    ConfigError when it has none. Asked before the bucket's region is, over the network,
    which came first before 2026-12-07 (a warning that it could not be asked, then this)."""
    if settings.cloud_provider != "s3" or settings.no_sign_request:
        return None
    if settings.aws_access_key_id or settings.aws_secret_access_key:
        return None  # given (`s3_store` checks that both are)
    from tierfs.cloud.aws_credentials import AwsCredentials  # botocore: only here

    return AwsCredentials.find(DEFAULT_REGION)


async def settle_s3_region(settings: ClientSettings) -> ClientSettings:
    """`settings` with the S3 bucket's region: found (`find_region`) when none was given,
    else the one given unless the bucket says it is in another (`check_given_region`)."""
    if settings.cloud_provider != "s3":
        return settings
    bucket, endpoint, given = settings.s3_bucket, settings.s3_endpoint, settings.s3_region
    if given:
        region = await check_given_region(bucket, endpoint, given)
    else:
        region = await find_region(bucket, endpoint)
    return settings.model_copy(update={"s3_region": region})


async def check_bucket(cloud: CloudStore) -> None:
    """ConfigError if the store says its bucket does not exist, or refuses the credentials
    (a wrong key, not a permission they lack) or this client (Azure's firewall), or the
    endpoint is no object store (it answers web pages). Only that stops a client: a store
    that fails otherwise, or does not answer in BUCKET_CHECK_DEADLINE, is the mount's to
    meet (it starts with the cloud down, serving what tier 1 holds)."""
    try:
        async with asyncio.timeout(BUCKET_CHECK_DEADLINE):
            async for _ in cloud.list(""):
                break
    except BucketNotFoundError as exc:
        raise ConfigError(f"{exc}: create it, or check the name") from exc
    except CredentialsRefusedError as exc:
        raise ConfigError(str(exc)) from exc
    except NotAnObjectStoreError as exc:
        raise ConfigError(f"{exc}: check the endpoint") from exc
    except (CloudError, TimeoutError):
        pass


def s3_store(
    *,
    bucket: str,
    region: str,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    timeout: float,
    session_token: str | None = None,
    scheme: str = "s3",
    signed: bool = True,
    credentials: AwsCredentials | None = None,
) -> CloudStore:
    """An S3 bucket; `endpoint` selects an S3-compatible store (path-style addressing).

    Its requests are signed with the keys given, else with those AWS's own tools would find
    (`AwsCredentials`); not at all unless `signed` (a public bucket)."""
    if (access_key is None) != (secret_key is None):
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
    config: dict[str, str | bool] = {"region": region}
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
    provider = None
    keys: S3Keys | Callable[[], S3Keys] | None = None
    if not signed:
        config["skip_signature"] = True
    elif access_key and secret_key:
        config |= {"access_key_id": access_key, "secret_access_key": secret_key}
        if session_token:
            config["session_token"] = session_token
        keys = S3Keys(access_key, secret_key, region, session_token)
    else:
        if credentials is not None:
            provider = credentials.in_region(region)  # found before the region was known
        else:
            from tierfs.cloud.aws_credentials import AwsCredentials  # botocore: only here

            provider = AwsCredentials.find(region)
        keys = provider.keys
    store = S3Store(
        bucket,
        config=config,  # type: ignore[arg-type]
        client_options=client_options(timeout, allow_http=_is_http(endpoint)),  # type: ignore[arg-type]
        retry_config=NO_RETRIES,  # type: ignore[arg-type]
        credential_provider=provider,
    )
    base = endpoint.rstrip("/") if endpoint else f"https://s3.{region}.amazonaws.com"
    bucket_url = f"{base}/{quote(bucket, safe='')}"
    cloud = GcsInteropCloud if scheme == "gcp" else S3Cloud
    return cloud(store, f"{scheme}://{bucket}", timeout, bucket_url=bucket_url, keys=keys)


def azure_store(
    *,
    account: str,
    key: str | None,
    container: str,
    endpoint: str | None,
    timeout: float,
    sas_token: str | None = None,
) -> CloudStore:
    """An Azure Blob container; `endpoint` (Azurite) is `http://HOST:PORT/ACCOUNT`. Its
    requests are signed with the account `key`, else carry the shared access signature
    `sas_token` (with or without its leading `?`)."""
    config: dict[str, str] = {"account_name": account}
    if key:
        config["account_key"] = key
        sas_token = None
    elif sas_token:
        sas_token = sas_token.removeprefix("?")
        config["sas_key"] = sas_token
    if endpoint:
        config["endpoint"] = endpoint
    store = AzureStore(
        container,
        config=config,  # type: ignore[arg-type]
        client_options=client_options(timeout, allow_http=_is_http(endpoint)),  # type: ignore[arg-type]
        retry_config=NO_RETRIES,  # type: ignore[arg-type]
    )
    return AzureBlobCloud(
        store,
        account=account,
        key=key,
        sas_token=sas_token,
        container=container,
        endpoint=endpoint,
        timeout=timeout,
    )


def local_root(root: Path) -> str:
    """-local-root as a directory, made if missing, by its absolute path (a relative one
    was named `local://relbucket`, as a host); ConfigError naming it where it cannot be
    one (a file, under a file)."""
    root = root.absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"-local-root {root}: not a directory") from None
    except OSError as exc:
        raise ConfigError(f"-local-root {root}: {exc.strerror or exc}") from exc
    return str(root)


def local_store(root: str, timeout: float) -> CloudStore:
    """A directory as the bucket: writes are atomic (temp file + rename), so every put
    gets a new version (obstore's ETag of inode, mtime and size)."""
    store = LocalStore(root, mkdir=True)
    return LocalDirectoryCloud(store, root, timeout)


class LocalDirectoryCloud(ObjstoreCloud):
    """obstore's LocalStore writes a key's file as a temp file `<name>#<n>` beside it,
    then renames it: a name must leave room for that suffix in the local filesystem's 255
    bytes, and must not look like such a file (obstore refuses those).

    A folder marker is a directory marked with the extended attribute FOLDER_MARK: it
    stays until it is removed, as a `dir/` key on S3, while a directory a put made goes
    with its last key, as a prefix does (on a filesystem without user xattrs every folder
    goes so). An empty directory counts as a marker too (another tool's, or an old one)."""

    name_max = 255 - len("#9999")
    max_parts = None  # a file written part by part
    checks_puts = False  # LocalStore refuses an If-Match put (not implemented)

    def __init__(self, store: LocalStore, root: str, timeout: float) -> None:
        super().__init__(store, f"local://{root}", timeout)
        self._root = Path(root)
        self._opened_at = time.time()

    async def put(self, key: str, body: bytes | Path, expect: str | None = None) -> ObjectMeta:
        """FolderAtKeyError where a folder holds `key`'s name (obstore says "Is a
        directory" in a generic error)."""
        try:
            return await super().put(key, body, expect)
        except CloudError:
            if await asyncio.to_thread((self._root / key).is_dir):
                raise FolderAtKeyError(f"{self.url}/{key}: a folder of that name") from None
            raise

    async def put_marker(self, prefix: str) -> None:
        """A file at the folder's name is EntryExistsError, at a folder's above it
        NotDirectoryError: mkdir's EEXIST and ENOTDIR, where a bucket takes both keys."""
        self.check_key(prefix)
        try:
            await asyncio.to_thread(_make_marked_folder, self._root / prefix)
        except FileExistsError:
            raise EntryExistsError(f"{self.url}/{prefix}: a file of that name") from None
        except NotADirectoryError:
            raise NotDirectoryError(f"{self.url}/{prefix}: a file above it") from None

    async def delete_marker(self, prefix: str) -> None:
        """The directory goes if it is empty, and the unmarked ones it leaves empty."""
        self.check_key(prefix)
        await asyncio.to_thread(self._remove_unmarked_from, self._root / prefix, True)

    async def _store_copy(self, source: str, destination: str) -> None:
        """A hard link, as obstore's copy makes, without the temp file it left when the
        destination was a link of the source already (`_link_over`)."""
        await asyncio.to_thread(_link_over, self._root / source, self._root / destination)

    async def drop_uploads_begun(self, key: str, began: Sequence[float]) -> None:
        """Remove the temp files (`name#N`) of `key` that uploads a crash left were
        writing: last written before this store was opened (by no upload of this run) and
        when one noted in `began` ran (`began_then`); and the folders they alone kept.
        Left, such a file held its bytes for good, and kept its folder listed and
        unremovable once the folder was emptied. A temp file tells its last write, not
        its start: one of an upload that ran longer than the window is left."""
        self.check_key(key)
        await asyncio.to_thread(self._remove_temps_of, self._root / key, began)

    def _remove_temps_of(self, path: Path, began: Sequence[float]) -> None:
        try:
            entries = builtins.list(os.scandir(path.parent))
        except (FileNotFoundError, NotADirectoryError):
            return
        removed = False
        for entry in entries:
            suffix = _LOCAL_TEMP_SUFFIX.search(entry.name)
            if suffix is None or entry.name[: suffix.start()] != path.name:
                continue
            with contextlib.suppress(FileNotFoundError):
                written = entry.stat().st_mtime
                if written < self._opened_at and began_then(written, began, self._timeout):
                    os.unlink(entry.path)
                    removed = True
                    log.info("%s: removed %s, which a crash left", self.url, entry.path)
        if removed:
            self._remove_unmarked_from(path.parent, False)

    async def _list_unfiltered(
        self, prefix: str, delimiter: bool, page_size: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[ListPage]:
        """A scan of the folder, or without `delimiter` of each folder below it, one page
        a folder: its files, and its folders' markers as `name/` (obstore lists files
        alone). A link to a folder is not followed: what it holds is not in the tree."""
        if delimiter:
            yield await asyncio.to_thread(self._scan, prefix)
            return
        # The folder's own marker is in its tree, as `a/` is in S3's listing of `a/`.
        folders: builtins.list[str] = [""]
        markers: builtins.list[ObjectMeta] = []
        if prefix:
            folders, markers = await asyncio.to_thread(self._folders_among, [prefix])
        while folders:
            page, below = await asyncio.to_thread(self._tree_page, folders.pop())
            folders += below
            yield ListPage(markers + page.objects)
            markers = []

    def _tree_page(self, folder: str) -> tuple[ListPage, builtins.list[str]]:
        """A page of a tree's listing: the folder's files and its folders' markers; and
        the folders below it, to scan next."""
        page = self._scan(folder)
        below, markers = self._folders_among(page.prefixes)
        return ListPage(page.objects + markers), below

    def _scan(self, prefix: str) -> ListPage:
        """The files and folders in the folder `prefix`, as LocalStore lists them: its temp
        files left out, a file's version its `inode-mtime-size` ETag."""
        objects: builtins.list[ObjectMeta] = []
        prefixes: builtins.list[str] = []
        try:
            entries = builtins.list(os.scandir(self._root / prefix))
        except (FileNotFoundError, NotADirectoryError):  # no such folder: nothing in it
            return ListPage()
        for entry in entries:
            if _LOCAL_TEMP_SUFFIX.search(entry.name):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # removed meanwhile, or a dangling link
                continue
            key = prefix + entry.name
            if entry.is_dir():
                prefixes.append(key + "/")
            else:
                mtime_us = stat.st_mtime_ns // 1000
                version = f'"{stat.st_ino:x}-{mtime_us:x}-{stat.st_size:x}"'
                seconds, micros = divmod(mtime_us, 10**6)
                mtime = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
                objects.append(ObjectMeta(key, stat.st_size, version, mtime))
        return ListPage(objects, prefixes)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        await asyncio.to_thread(self._remove_unmarked_from, (self._root / key).parent, False)

    def _remove_unmarked_from(self, folder: Path, marked_too: bool) -> None:
        """Remove `folder` and its parents while they are empty and unmarked (`folder`
        itself even if marked, given `marked_too`)."""
        while folder != self._root and (marked_too or not _is_marked(folder)):
            try:
                folder.rmdir()
            except OSError:  # absent, or keys below it keep it
                return
            folder, marked_too = folder.parent, False

    def _folders_among(
        self, prefixes: builtins.list[str]
    ) -> tuple[builtins.list[str], builtins.list[ObjectMeta]]:
        """The `prefixes` that are folders, not links to one, and the markers of those
        that are marked or empty."""
        folders: builtins.list[str] = []
        markers: builtins.list[ObjectMeta] = []
        for prefix in prefixes:
            path = self._root / prefix
            try:
                stat = path.lstat()
                if not S_ISDIR(stat.st_mode):
                    continue
                marked = not any(path.iterdir()) or _is_marked(path)
            except (FileNotFoundError, NotADirectoryError):  # removed meanwhile, or no folder
                continue
            folders.append(prefix)
            if marked:
                mtime = datetime.fromtimestamp(stat.st_mtime, UTC)
                markers.append(ObjectMeta(prefix, 0, "", mtime))
        return folders, markers

    def check_key(self, key: str) -> str:
        super().check_key(key)
        for name in key.split("/"):
            if _LOCAL_TEMP_SUFFIX.search(name):
                raise InvalidKeyError(f"invalid object key {key!r}: a local name ends in '#N'")
            if len(name.encode()) > self.name_max:
                raise InvalidKeyError(
                    f"invalid object key {key!r}: a name over {self.name_max} bytes"
                )
        return key


_LOCAL_TEMP_SUFFIX = re.compile(r"#\d+$")
FOLDER_MARK = "user.tierfs.folder"


def _link_over(source: Path, destination: Path) -> None:
    """Link `source` at `destination` as obstore's LocalStore copies: under a free temp
    name beside it (`name#N`, which listings pass over), renamed over it. Where the
    destination was a link of the same file (two nodes moving one folder at once, a copy
    made again), rename(2) does nothing and leaves the temp name, which is removed here:
    left, it kept its folder listed though no key was below it, and rmdir could not
    remove it."""
    attempt = 0
    while True:
        staged = destination.with_name(f"{destination.name}#{attempt}")
        try:
            os.link(source, staged)
            break
        except FileExistsError:  # another copy's under way
            attempt += 1
        except FileNotFoundError:
            if not source.exists():
                raise
            destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staged, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


def _make_marked_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # no user xattrs here: a folder unmarked
        os.setxattr(folder, FOLDER_MARK, b"")


def _is_marked(folder: Path) -> bool:
    try:
        return FOLDER_MARK in os.listxattr(folder)
    except OSError:
        return False


def _is_http(endpoint: str | None) -> bool:
    return bool(endpoint and endpoint.startswith("http://"))
