"""The domain errors of tierfs.

Every layer raises these; only the FUSE adapter turns them into errno values and only the
CLI turns them into exit codes.
"""

from __future__ import annotations


class TierfsError(Exception):
    """Base of every error tierfs raises on purpose."""


class ConfigError(TierfsError):
    """A setting has a bad value; the message names the flag and what is wrong."""


class UnsentUploadsError(TierfsError):
    """The client stopped with uploads still journaled (the cloud was down): they go up at
    the next start on the same `-nvme`; or with files being streamed whose streams could
    not be finished: those are lost."""


class JournalError(TierfsError):
    """The upload journal cannot be opened (not a database, damaged, read-only); the
    message names its file."""


class CloudError(TierfsError):
    """A cloud request failed for good (after any retries)."""


class CloudUnavailableError(CloudError):
    """The store did not answer, or answered only with failures that may pass, for the whole
    `-cloud-timeout` (down, or out of reach)."""


class ObjectNotFoundError(CloudError):
    """The object does not exist in the bucket."""


class BucketNotFoundError(CloudError):
    """The bucket (or container) itself does not exist."""


class VersionChangedError(CloudError):
    """The object changed since the version a read was pinned to."""


class AccessDeniedError(CloudError):
    """The credentials were refused for the bucket."""


class CredentialsRefusedError(AccessDeniedError):
    """The store does not know the credentials (a wrong key or signature), or lets this
    client in for nothing (Azure's firewall), whatever the request: not a permission the
    credentials lack."""


class NotAnObjectStoreError(CloudError):
    """The endpoint answered as no object store does: with a web page (a web server, a
    captive portal), where a store answers XML or JSON."""


class InvalidKeyError(CloudError):
    """The key cannot be stored by this provider (empty, or not a valid object name)."""


class KeyTooLongError(InvalidKeyError):
    """The key, or a folder's marker (its key and "/"), is over the stores' 1024 bytes
    (ENAMETOOLONG, with or without a `-prefix` before it)."""


class FolderAtKeyError(CloudError):
    """A put to a key that names a folder, in a store that holds no file beside a folder
    of its name (the local directory; S3, Azure and GCS hold both)."""


class RemovedMeanwhileError(CloudError):
    """A late upload of a file being removed when the previous run stopped, whose removal
    had reached the bucket: its bytes are dropped, not sent (`Uploader.upload_late`)."""


class UnnamableKeyError(CloudError):
    """A listing met a key that no path can name (put by another tool: "a//b", say)."""


class UnsupportedUploadError(CloudError):
    """The provider cannot do this kind of upload (a streamed one, on native GCS)."""


class TransientCloudError(CloudError):
    """A failure that may pass: 5xx (but 501/505), 408, 429, a reset or a timeout.

    Raised by providers for the retry helper; it reaches callers only once the
    `FUSE_CLOUD_TIMEOUT` deadline is spent.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FsError(TierfsError):
    """A filesystem operation refused; the FUSE adapter maps each subclass to its errno."""


class EntryNotFoundError(FsError):
    """No such file or directory (ENOENT)."""


class EntryExistsError(FsError):
    """The name is taken (EEXIST)."""


class IsDirectoryError(FsError):
    """A file operation on a directory (EISDIR)."""


class NotDirectoryError(FsError):
    """A directory operation on a file (ENOTDIR)."""


class DirectoryNotEmptyError(FsError):
    """rmdir, or rename onto, a directory with entries (ENOTEMPTY)."""


class NameTooLongError(FsError):
    """A name over 255 bytes (ENAMETOOLONG; a key over 1024: KeyTooLongError)."""


class InvalidArgumentError(FsError):
    """A request no file could answer: readlink of a file, a directory moved into itself,
    a name ending as tierfs's links do (EINVAL)."""


class StaleHandleError(FsError):
    """The object changed under an open handle, or the inode is gone (ESTALE)."""


class BusyError(FsError):
    """In use in a way the operation cannot follow: a rename of a file being streamed to
    the cloud, or of a folder above one (EBUSY)."""


class UnsupportedError(FsError):
    """An operation object storage cannot represent: links, devices (ENOTSUP)."""
