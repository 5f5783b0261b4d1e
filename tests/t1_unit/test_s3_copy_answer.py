"""S3's answer to a CopyObject: the copy's ETag, or an error sent with status 200."""

from __future__ import annotations

import pytest

from tierfs.cloud.s3 import _copy_etag
from tierfs.errors import TransientCloudError

AWS_ANSWER = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<CopyObjectResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<LastModified>2026-12-06T03:00:00.000Z</LastModified>"
    b"<ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag></CopyObjectResult>"
)


def test_the_copys_etag_is_quoted_as_a_heads() -> None:
    assert _copy_etag(AWS_ANSWER, "s3://b/k") == '"9b2cf535f27731c974343645a3985328"'
    # SeaweedFS and GCS's XML API send it bare
    bare = b"<CopyObjectResult><ETag>9b2cf535f27731c974343645a3985328</ETag></CopyObjectResult>"
    assert _copy_etag(bare, "s3://b/k") == '"9b2cf535f27731c974343645a3985328"'


def test_an_error_sent_with_status_200_is_asked_again() -> None:
    """AWS may answer 200 and keep the connection with spaces while it copies, then fail."""
    failed = b"   \n<Error><Code>InternalError</Code><Message>retry</Message></Error>"
    with pytest.raises(TransientCloudError, match="InternalError"):
        _copy_etag(failed, "s3://b/k")
    with pytest.raises(TransientCloudError, match="not XML"):
        _copy_etag(b"   ", "s3://b/k")
