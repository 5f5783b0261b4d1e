"""Settings: defaults of the original spec, environment fallbacks, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tierfs.cloud.providers import open_store
from tierfs.errors import ConfigError
from tierfs.settings import ClientSettings, CoordinatorSettings, StatusSettings, load_settings


def client(given: dict[str, str], environ: dict[str, str] | None = None) -> ClientSettings:
    return load_settings(ClientSettings, given, environ or {})


def test_original_defaults() -> None:
    settings = client({})
    assert settings.port == 8081
    assert settings.coordinator == "localhost:8080"
    assert settings.cloud_provider == "s3"
    assert settings.s3_bucket == "fuse-client-cache"
    assert settings.s3_region is None  # found at start (the bucket's, ..., us-east-1)
    assert settings.azure_container == "fuse-cache"
    assert settings.nvme_size == 10737418240
    assert settings.peer_size == 5 * 2**30
    assert settings.peer_timeout == 30.0
    assert settings.cloud_timeout == 60.0
    assert settings.chunk_size == 4 * 2**20
    assert settings.metadata_ttl == 1.0
    assert load_settings(CoordinatorSettings, {}, {}).port == 8080


def test_environment_fills_what_flags_leave() -> None:
    environ = {
        "FUSE_NVME_SIZE": "20G",
        "FUSE_PEER_SIZE": "1GiB",
        "FUSE_PEER_TIMEOUT": "500ms",
        "FUSE_CLOUD_TIMEOUT": "1m",
        "AWS_REGION": "eu-west-1",
        "AZURE_STORAGE_ACCOUNT": "acct",
        "AZURE_STORAGE_KEY": "a2V5",
        "AZURE_CONTAINER_NAME": "box",
        "GCP_BUCKET": "gbucket",
        "GCP_ACCESS_KEY_ID": "GOOG1",
        "GCP_SECRET_ACCESS_KEY": "secret",
    }
    settings = client({"nvme_size": "30G"}, environ)
    assert settings.nvme_size == 30 * 2**30  # the flag wins over FUSE_NVME_SIZE
    assert settings.peer_size == 2**30
    assert settings.peer_timeout == 0.5
    assert settings.cloud_timeout == 60.0
    assert settings.s3_region == "eu-west-1"
    assert (settings.azure_account, settings.azure_key) == ("acct", "a2V5")
    assert settings.azure_container == "box"
    assert settings.gcp_bucket == "gbucket"
    assert settings.gcp_access_key_id == "GOOG1"


def test_secrets_stay_out_of_repr() -> None:
    settings = client(
        {"cloud_provider": "azure", "azure_account": "acct", "azure_key": "TOPSECRETKEY"},
        {"AWS_SECRET_ACCESS_KEY": "AWSSECRET", "TIERFS_TOKEN": "TOKENVALUE"},
    )
    shown = repr(settings) + str(settings)
    for secret in ("TOPSECRETKEY", "AWSSECRET", "TOKENVALUE"):
        assert secret not in shown


def test_direct_io_is_a_yes_or_no() -> None:
    assert client({}).direct_io is False
    assert client({"direct_io": "true"}).direct_io is True
    assert client({"direct_io": "false"}).direct_io is False


@pytest.mark.parametrize("form", ["indefinite", "Indefinite", " indefinite "])
def test_indefinite_ttl(form: str) -> None:
    assert client({"metadata_ttl": form}).metadata_ttl == math.inf


@pytest.mark.parametrize("form", ["inf", "forever", "Infinity", "1e999"])
def test_indefinite_is_the_only_endless_ttl(form: str) -> None:
    """`inf` and `forever` were taken before 2026-12-07, undocumented."""
    with pytest.raises(ConfigError, match=f"-metadata-ttl: '{form}' is not a duration"):
        client({"metadata_ttl": form})


@pytest.mark.parametrize(
    ("given", "prefix"),
    [
        ({}, ""),
        ({"prefix": "/"}, ""),
        ({"prefix": "data/set"}, "data/set/"),
        ({"prefix": "/d/"}, "d/"),
    ],
)
def test_a_folder_of_the_bucket_is_a_key_prefix(given: dict[str, str], prefix: str) -> None:
    assert client(given).prefix == prefix


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"port": "abc"}, "invalid value for -port: 'abc' is not a port number"),
        ({"port": "70000"}, "-port"),
        ({"nvme_size": "-5"}, "invalid value for -nvme-size"),
        ({"chunk_size": "1K"}, "-chunk-size must be between"),
        ({"cloud_provider": "dropbox"}, "invalid value for -cloud-provider"),
        ({"cloud_provider": "local"}, "needs -local-root"),
        ({"cloud_provider": "azure", "azure_account": "a"}, "needs -azure-key"),
        ({"coordinator": "nohost"}, "invalid value for -coordinator"),
        ({"peer_id": "a/b"}, "-peer-id"),
        ({"peer_timeout": "0s"}, "-peer-timeout"),
        ({"peer_timeout": "nan"}, "invalid value for -peer-timeout: 'nan' is not a duration"),
        ({"metadata_ttl": "nan"}, "invalid value for -metadata-ttl: 'nan' is not a duration"),
        ({"cloud_timeout": "inf"}, "invalid value for -cloud-timeout: 'inf' is not a duration"),
        ({"tls_cert": "/tmp/cert.pem"}, "-tls-cert and -tls-key go together"),
        ({"direct_io": "maybe"}, "invalid value for -direct-io: 'maybe' is not true or false$"),
        ({"read_only": "2"}, "invalid value for -read-only: '2' is not true or false$"),
        ({"admit_after": "x"}, "invalid value for -admit-after: 'x' is not a whole number"),
        ({"prefix": "a//b"}, "invalid value for -prefix: 'a//b' is no folder of a bucket"),
        ({"prefix": "../up"}, "invalid value for -prefix"),
        ({"uid": "-5"}, "invalid value for -uid: -5 is not a user or group id"),
        ({"gid": "99999999999"}, "invalid value for -gid: 99999999999 is not a user or group id"),
        ({"uid": "4294967295"}, "invalid value for -uid"),
        ({"s3_endpoint": "not-a-url"}, "invalid value for -s3-endpoint: 'not-a-url' is not an"),
        ({"s3_endpoint": "ftp://127.0.0.1:9000"}, "invalid value for -s3-endpoint"),
        ({"azure_endpoint": "127.0.0.1:10000/acct"}, "invalid value for -azure-endpoint"),
        ({"gcp_endpoint": "http://"}, "invalid value for -gcp-endpoint"),
    ],
)
def test_bad_values_name_the_flag(given: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        client(given)


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="invalid value for AWS_ENDPOINT_URL: 'minio:9000'"):
        client({}, {"AWS_ENDPOINT_URL": "minio:9000"})
    with pytest.raises(ConfigError, match="invalid value for FUSE_NVME_SIZE: 'lots' is not"):
        client({}, {"FUSE_NVME_SIZE": "lots"})
    with pytest.raises(ConfigError, match="invalid value for FUSE_PEER_TIMEOUT: '-1s' is negative"):
        client({}, {"FUSE_PEER_TIMEOUT": "-1s"})
    with pytest.raises(ConfigError, match="invalid value for FUSE_PEER_SIZE: '-1G' is negative"):
        client({}, {"FUSE_PEER_SIZE": "-1G"})
    with pytest.raises(ConfigError, match="GCP_ACCESS_KEY_ID and GCP_SECRET_ACCESS_KEY"):
        client({}, {"GCP_ACCESS_KEY_ID": "GOOG1"})


def test_the_address_peers_reach_a_node_at() -> None:
    def address(**given: str) -> str:
        return load_settings(ClientSettings, given, {}).peer_address

    assert address(listen="127.0.0.1", port="9001") == "127.0.0.1:9001"
    assert address(listen="::1", port="9001") == "[::1]:9001"
    assert address(port="9001").endswith(":9001")  # 0.0.0.0: this host's name
    assert not address(port="9001").startswith("0.0.0.0")
    assert address(listen="127.0.0.1", advertise="node-7.example:8081") == "node-7.example:8081"


def test_the_address_a_warm_on_this_host_reaches_a_node_at() -> None:
    def url(**given: str) -> str:
        return load_settings(ClientSettings, given, {}).local_api_url

    assert url() == "http://127.0.0.1:8081"  # all addresses: loopback is one of them
    assert url(listen="::", port="9001") == "http://[::1]:9001"
    assert url(listen="10.1.2.3", port="9001") == "http://10.1.2.3:9001"
    assert url(listen="::1") == "http://[::1]:8081"
    tls = {"tls_cert": "/c.pem", "tls_key": "/k.pem", "advertise": "node-7.example:8443"}
    assert url(**tls) == "https://node-7.example:8443"  # the name its certificate holds


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("nohost", "http://nohost:8080"),
        ("10.0.0.5", "http://10.0.0.5:8080"),
        ("[::1]", "http://[::1]:8080"),
        ("nohost:9000", "http://nohost:9000"),
        ("https://coordinator.example", "https://coordinator.example"),
    ],
)
def test_status_takes_a_bare_host_at_the_coordinators_port(given: str, url: str) -> None:
    """`tierfs status -coordinator HOST` asks HOST:8080, the coordinator's default port;
    before 2026-12-07 it asked port 80 (an URL given whole is taken as it is)."""
    assert load_settings(StatusSettings, {"coordinator": given}, {}).coordinator_url == url


def test_a_relative_local_root_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-local-root relbucket` is the folder relbucket of where the client started: its
    store is named by its absolute path (it was `local://relbucket`, read as a host)."""
    monkeypatch.chdir(tmp_path)
    given = {"cloud_provider": "local", "local_root": "relbucket"}
    store = open_store(load_settings(ClientSettings, given, {}))
    assert store.url == f"local://{tmp_path}/relbucket"
    assert (tmp_path / "relbucket").is_dir()
