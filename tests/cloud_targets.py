"""Every tier-3 provider and the real server that stands in for it in tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import servers
from tierfs.settings import ClientSettings, load_settings

# Every provider tierfs supports, on the server that stands in for it here.
# (azure-sas: Azure with a shared access signature of the container in place of the key)
PROVIDERS = ["s3-seaweedfs", "s3-moto", "gcp-interop", "azure", "azure-sas", "gcp-native", "local"]
# The ones whose servers check credentials (moto and fake-gcs-server accept anything).
AUTHENTICATING = ["s3-seaweedfs", "gcp-interop", "azure", "azure-sas"]
# The ones behind a server process that a test can stop.
NETWORKED = ["s3-seaweedfs", "s3-moto", "gcp-interop", "azure", "gcp-native"]


def target_flags(
    provider: str,
    server: object,
    root: Path,
    *,
    timeout: float = 30.0,
    bad_credentials: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """(flags by field name, environment) that reach a fresh bucket of `provider`."""
    given: dict[str, str] = {"cloud_timeout": str(timeout), "cloud_provider": provider[:5]}
    environ: dict[str, str] = {}
    if isinstance(server, servers.S3Server):
        secret = "wrong-secret" if bad_credentials else server.secret_key
        if provider == "gcp-interop":  # GCS's XML API with HMAC keys, as the original spec
            given |= {"cloud_provider": "gcp", "gcp_bucket": server.create_bucket()}
            given["gcp_endpoint"] = server.endpoint
            environ |= {"GCP_ACCESS_KEY_ID": server.access_key, "GCP_SECRET_ACCESS_KEY": secret}
        else:
            given |= {"cloud_provider": "s3", "s3_bucket": server.create_bucket()}
            given |= {"s3_endpoint": server.endpoint, "s3_region": server.region}
            environ |= {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": secret}
    elif isinstance(server, servers.AzureServer):
        key = server.key[:-8] + "AAAAAA==" if bad_credentials else server.key
        given |= {"cloud_provider": "azure", "azure_container": server.create_container()}
        given |= {"azure_account": server.account, "azure_endpoint": server.endpoint}
        if provider == "azure-sas":
            environ["AZURE_STORAGE_SAS_TOKEN"] = server.container_sas(
                given["azure_container"], key=key
            )
        else:
            given["azure_key"] = key
    elif isinstance(server, servers.GcsServer):
        given |= {"cloud_provider": "gcp", "gcp_bucket": server.create_bucket()}
        given["gcp_endpoint"] = server.endpoint
    else:
        given |= {"cloud_provider": "local", "local_root": str(root / "bucket")}
    return given, environ


def settings_for(
    provider: str,
    server: object,
    root: Path,
    *,
    timeout: float = 30.0,
    bad_credentials: bool = False,
) -> ClientSettings:
    """Client settings that reach a fresh bucket of `provider` on `server`."""
    given, environ = target_flags(
        provider, server, root, timeout=timeout, bad_credentials=bad_credentials
    )
    return load_settings(ClientSettings, given, environ)


SERVER_FIXTURE = {
    "s3-seaweedfs": "seaweedfs",
    "gcp-interop": "seaweedfs",
    "s3-moto": "moto",
    "azure": "azurite",
    "azure-sas": "azurite",
    "gcp-native": "fake_gcs",
}


Server = servers.S3Server | servers.AzureServer | servers.GcsServer


def server_for(request: pytest.FixtureRequest, provider: str) -> Server | None:
    """The session server behind `provider` (None for local)."""
    fixture = SERVER_FIXTURE.get(provider)
    server: Server | None = request.getfixturevalue(fixture) if fixture else None
    return server


def networked_server_for(request: pytest.FixtureRequest, provider: str) -> Server:
    """The session server behind `provider`, one of NETWORKED."""
    server = server_for(request, provider)
    assert server is not None, f"{provider} has no server"
    return server


def s3_server_for(request: pytest.FixtureRequest, provider: str) -> servers.S3Server:
    """The session S3 server behind `provider` (SeaweedFS or moto)."""
    server = server_for(request, provider)
    assert isinstance(server, servers.S3Server), f"{provider} is not served over S3"
    return server
