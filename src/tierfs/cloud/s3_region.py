"""The region of an S3 bucket whose client was given none, as mountpoint-s3 and the AWS
tools find it: the bucket's own, which S3 names in `x-amz-bucket-region` on its answer to
a HEAD of the bucket, signed or not, allowed or not; else the region the AWS tools are
configured with (AWS_DEFAULT_REGION, the profile's); else us-east-1. A region given
(-s3-region, AWS_REGION) gives way to the bucket's own where they differ.

A request signed for another region than the bucket's is refused by AWS (a redirect or
AuthorizationHeaderMalformed), so a client in eu-west-1 used to fail on a bucket there
unless told `-s3-region`.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

AWS_GLOBAL_ENDPOINT = "https://s3.amazonaws.com"
DEFAULT_REGION = "us-east-1"
ASK_DEADLINE = 5.0  # seconds: a bucket that does not answer leaves the configured region


async def find_region(bucket: str, endpoint: str | None) -> str:
    """The region to sign `bucket`'s requests for."""
    region, source = await bucket_region(bucket, endpoint), "the bucket's"
    if not region:
        region, source = configured_region(), "configured"
    if not region:
        region, source = DEFAULT_REGION, "the default"
    log.info("S3 bucket %s: region %s (%s)", bucket, region, source)
    return region


async def check_given_region(bucket: str, endpoint: str | None, given: str) -> str:
    """`given` (-s3-region, AWS_REGION), unless the bucket names another region as its
    own: AWS refuses every request signed for another region than the bucket's, so the
    bucket's is used, with a warning (as the AWS tools follow S3's redirect). AWS_REGION
    is often set for the machine's own region (ECS, Lambda), not the bucket's."""
    own = await bucket_region(bucket, endpoint, quiet=True)
    if own is None or own == given:
        return given
    log.warning(
        "S3 bucket %s is in region %s, not %s (-s3-region or AWS_REGION): its requests are "
        "signed for %s",
        bucket,
        own,
        given,
        own,
    )
    return own


async def bucket_region(bucket: str, endpoint: str | None, quiet: bool = False) -> str | None:
    """What an unsigned HEAD of the bucket says of its region (None: nothing, as most
    S3-compatible stores, or no answer in ASK_DEADLINE; `quiet`: no warning then). A
    bucket that does not exist is for `providers.check_bucket` to say."""
    url = f"{(endpoint or AWS_GLOBAL_ENDPOINT).rstrip('/')}/{quote(bucket, safe='')}"
    try:
        timeout = aiohttp.ClientTimeout(total=ASK_DEADLINE)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.head(url, allow_redirects=False) as response,
        ):
            return response.headers.get("x-amz-bucket-region") or None
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "S3 bucket %s: its region could not be asked (%s)",
            bucket,
            exc or type(exc),
        )
        return None


def configured_region() -> str | None:
    """AWS_DEFAULT_REGION, else the region of the profile (AWS_PROFILE, ~/.aws/config)."""
    import botocore.exceptions  # botocore: only for a client that needs it (13 MB)
    import botocore.session

    try:
        region = botocore.session.Session().get_config_variable("region")
    except botocore.exceptions.BotoCoreError:  # a missing profile: credentials will say so
        return None
    return str(region) if region else None
