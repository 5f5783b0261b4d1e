"""S3 credentials found the way the AWS tools find them, for a client given no keys in its
environment: botocore's chain (AWS_PROFILE and the shared files, SSO, credential_process,
web identity, a container's or an instance's role). obstore's requests and the folder
markers (`tierfs.cloud.s3`) both sign with them, and both ask again as they near their
expiry, which botocore then renews.

botocore costs a client 13 MB: `tierfs.cloud.providers` imports this module only for a
client that needs it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import botocore.credentials
import botocore.exceptions
import botocore.session

from tierfs.cloud.s3 import S3Keys
from tierfs.errors import ConfigError, TransientCloudError

if TYPE_CHECKING:
    from obstore.store import S3Credential

NOT_FOUND = (
    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile "
    "(AWS_PROFILE, ~/.aws/credentials, ~/.aws/config), or run with an instance or container "
    "role; for a public bucket, -no-sign-request"
)


class AwsCredentials:
    """The chain's credentials: `keys()` for the requests tierfs signs, and the object itself
    as obstore's `credential_provider`."""

    def __init__(self, credentials: botocore.credentials.Credentials, region: str) -> None:
        self._credentials = credentials
        self._region = region

    @classmethod
    def find(cls, region: str) -> AwsCredentials:
        """The chain's credentials; ConfigError when it has none, or a profile is broken."""
        try:
            credentials = botocore.session.Session().get_credentials()
        except botocore.exceptions.BotoCoreError as exc:  # a missing profile, a failing process
            raise ConfigError(f"S3 credentials: {exc}") from exc
        if credentials is None:
            raise ConfigError(NOT_FOUND)
        return cls(credentials, region)

    def in_region(self, region: str) -> AwsCredentials:
        """The same credentials, signing for `region` (the bucket's, once it is known)."""
        return AwsCredentials(self._credentials, region)

    def keys(self) -> S3Keys:
        """The keys to sign with now; blocks while botocore renews them near their expiry
        (TransientCloudError if that fails)."""
        try:
            frozen = self._credentials.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise TransientCloudError(f"S3 credentials could not be renewed: {exc}") from exc
        if not frozen.access_key or not frozen.secret_key:
            raise TransientCloudError("S3 credentials came without a key")
        return S3Keys(frozen.access_key, frozen.secret_key, self._region, frozen.token)

    def __call__(self) -> S3Credential:
        """obstore's credential provider: it asks again when `expires_at` is near (within
        5 minutes); credentials that never expire (a profile's keys) are asked for once."""
        keys = self.keys()
        # Only botocore's RefreshableCredentials expire; they keep the time here, in a time
        # zone of dateutil's (obstore takes UTC alone).
        expiry: datetime | None = getattr(self._credentials, "_expiry_time", None)
        return {
            "access_key_id": keys.access_key,
            "secret_access_key": keys.secret_key,
            "token": keys.session_token,
            "expires_at": None if expiry is None else expiry.astimezone(UTC),
        }
