"""S3's answers read by tierfs itself: a CopyObject's (the copy's ETag, or an error sent
with status 200) and a ListObjectsV2 page's (its keys, and the token of the next page)."""

from __future__ import annotations

import pytest

from tierfs.cloud.s3 import _copy_etag, _parse_listing
from tierfs.errors import CloudError, TransientCloudError

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


def listing(truncated: str, token: str | None) -> bytes:
    """A ListObjectsV2 page of one key (URL-encoded, as tierfs asks)."""
    next_token = "" if token is None else f"<NextContinuationToken>{token}</NextContinuationToken>"
    return (
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<EncodingType>url</EncodingType>"
        f"<IsTruncated>{truncated}</IsTruncated>{next_token}"
        "<Contents><Key>d/a+b%C3%A9</Key><Size>5</Size><ETag>&quot;e1&quot;</ETag>"
        "<LastModified>2026-12-06T03:00:00.000Z</LastModified></Contents>"
        "</ListBucketResult>"
    ).encode()


def test_a_listing_page_tells_its_keys_and_the_next_pages_token() -> None:
    answer = _parse_listing(listing("true", "t-2"), "s3://b/d/")
    assert [(meta.key, meta.size, meta.version) for meta in answer.page.objects] == [
        ("d/a bé", 5, '"e1"')
    ]
    assert answer.next == "t-2"
    assert _parse_listing(listing("false", None), "s3://b/d/").next is None


def test_a_truncated_listing_without_a_token_fails_instead_of_starting_over() -> None:
    """Asked again without a token, S3 would list from the first page: forever."""
    for token in (None, ""):
        with pytest.raises(CloudError, match="s3://b/d/: .*no token"):
            _parse_listing(listing("true", token), "s3://b/d/")
