"""Settings of the two commands, as data: every flag, its default and its environment variable.

This is the only module that reads the environment. The CLI turns argv into strings, and
`load_settings` merges them with the environment and validates them into a frozen model.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from tierfs.cloud.base import check_key
from tierfs.errors import ConfigError, InvalidKeyError
from tierfs.units import parse_duration, parse_size

COORDINATOR_PORT = 8080  # the coordinator's, and where nodes and commands look for it

_HOST_PORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")
_PEER_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _size(value: Any) -> int:
    size = value if isinstance(value, int) else parse_size(str(value))
    if size <= 0:
        raise ValueError(f"{value!r} must be a positive size")
    return size


def _duration(value: Any) -> float:
    seconds = parse_duration(str(value))
    if seconds <= 0:
        raise ValueError(f"{value!r} must be a positive duration")
    return seconds


def _ttl(value: Any) -> float:
    """A duration (0 allowed), or `indefinite`: the one endless value the help names."""
    text = str(value)
    if text.strip().lower() == "indefinite":
        return math.inf
    return parse_duration(text)


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a port number (1-65535)")
    return port


def _host_port(value: Any) -> str:
    text = str(value).strip()
    match = _HOST_PORT_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not host:port (example: localhost:8080)")
    _port(match.group(2))
    return text


def _prefix(value: Any) -> str:
    """A folder of the bucket as a key prefix: "" or "a/b/" (slashes around it optional)."""
    folder = str(value).strip("/")
    if not folder:
        return ""
    try:
        check_key(folder)
    except InvalidKeyError as exc:
        raise ValueError(f"{value!r} is no folder of a bucket ({exc})") from None
    return folder + "/"


def _endpoint(value: Any) -> str | None:
    """An endpoint URL: http:// or https:// and a host (a path may follow: Azurite's account);
    none given or empty: the provider's own."""
    if value is None or value == "":
        return None
    text = str(value)
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// URL (example: http://minio:9000)")
    return text


def _token(value: Any) -> str | None:
    """The cluster token; given empty (`-token "$UNSET"`) it is refused: the server ran open
    while saying so, and its nodes and commands were refused."""
    if value is not None and not str(value):
        raise ValueError("it is empty: give the cluster's token, or leave -token out")
    return None if value is None else str(value)


def _yes_or_no(value: Any, handler: ValidatorFunctionWrapHandler) -> bool:
    try:
        return bool(handler(value))
    except ValidationError:  # pydantic's "unable to interpret input" named no answer
        raise ValueError(f"{value!r} is not true or false") from None


def _count(value: Any, handler: ValidatorFunctionWrapHandler) -> int:
    try:
        return int(handler(value))
    except ValidationError:
        raise ValueError(f"{value!r} is not a whole number (example: 2)") from None


def _owner_id(value: Any) -> int:
    """A uid or gid: 0 to 2**32 - 2 (2**32 - 1 is the kernel's "no id")."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a user or group id (example: 1000)") from None
    if not 0 <= number < 2**32 - 1:
        raise ValueError(f"{number} is not a user or group id (0-4294967294)")
    return number


def _mode(value: Any) -> int:
    try:
        mode = value if isinstance(value, int) else int(str(value), 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal mode (example: 644)") from None
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{value!r} is not a permission mode (0-7777)")
    return mode


Size = Annotated[int, BeforeValidator(_size)]
Mode = Annotated[int, BeforeValidator(_mode)]
Endpoint = Annotated[str | None, BeforeValidator(_endpoint)]
OwnerId = Annotated[int, BeforeValidator(_owner_id)]
Prefix = Annotated[str, BeforeValidator(_prefix)]
Duration = Annotated[float, BeforeValidator(_duration)]
Ttl = Annotated[float, BeforeValidator(_ttl)]
Port = Annotated[int, BeforeValidator(_port)]
YesNo = Annotated[bool, WrapValidator(_yes_or_no)]
Count = Annotated[int, WrapValidator(_count)]
Token = Annotated[str | None, BeforeValidator(_token)]
HostPort = Annotated[str, BeforeValidator(_host_port)]
LogLevel = Literal["debug", "info", "warning", "error"]
Provider = Literal["s3", "azure", "gcp", "local"]


def flag(default: Any, help: str, env: str | None = None, secret: bool = False) -> Any:
    """A model field that is also a command-line flag (named after the field)."""
    extra: dict[str, JsonValue] = {"flag": True, "secret": secret}
    if env:
        extra["env"] = env
    return Field(default=default, description=help, json_schema_extra=extra, repr=not secret)


def from_env(env: str, help: str, secret: bool = False) -> Any:
    """A model field set only from the environment (credentials the original takes so)."""
    extra: dict[str, JsonValue] = {"env": env, "secret": secret}
    return Field(default=None, description=help, json_schema_extra=extra, repr=not secret)


WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # of each wildcard


class CommonSettings(BaseModel):
    """Flags both commands take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_level: LogLevel = flag("info", "log verbosity: debug, info, warning or error")
    listen: str = flag("0.0.0.0", "address the HTTP endpoints listen on (127.0.0.1: this host)")
    token: Token = flag(
        None, "cluster token required on every endpoint but health", "TIERFS_TOKEN", secret=True
    )
    tls_cert: Path | None = flag(None, "TLS certificate (PEM) for the HTTP endpoints")
    tls_key: Path | None = flag(None, "TLS private key (PEM) for the HTTP endpoints")

    @model_validator(mode="after")
    def _tls_pair(self) -> CommonSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("-tls-cert and -tls-key go together")
        return self


class CoordinatorSettings(CommonSettings):
    """`tierfs coordinator`: membership, file locations and cluster statistics."""

    port: Port = flag(COORDINATOR_PORT, "HTTP port of the coordinator API")
    data_dir: Path = flag(
        Path(platformdirs.user_data_dir("tierfs")) / "coordinator",
        "directory of the coordinator's state (SQLite)",
    )
    heartbeat_interval: Duration = flag(5.0, "how often peers are told to heartbeat")
    peer_expiry: Duration = flag(
        15.0, "a peer silent this long is marked dead and its locations hidden"
    )
    dead_peer_retention: Ttl = flag(
        24 * 3600.0,
        "a dead peer is forgotten, with its locations, once dead this long (0: as soon as "
        "dead; 'indefinite': never)",
    )

    @model_validator(mode="after")
    def _expiry_outlasts_heartbeats(self) -> CoordinatorSettings:
        # A peer must be able to miss at least one heartbeat without being declared dead.
        if self.peer_expiry <= self.heartbeat_interval:
            raise ValueError(
                f"-peer-expiry ({self.peer_expiry:g}s) must be longer than "
                f"-heartbeat-interval ({self.heartbeat_interval:g}s)"
            )
        return self


class ClientSettings(CommonSettings):
    """`tierfs client`: mounts the bucket and serves its cache to peers."""

    mount: Path = flag(Path("/tmp/fuse-client"), "mount point of the filesystem")
    nvme: Path = flag(Path("/tmp/nvme-cache"), "tier-1 cache directory on local NVMe")
    coordinator: HostPort = flag(f"localhost:{COORDINATOR_PORT}", "coordinator address (host:port)")
    port: Port = flag(8081, "HTTP port of this node's peer API")
    peer_id: str | None = flag(None, "this node's id in the cluster (none: hostname-port)")
    advertise: HostPort | None = flag(
        None, "host:port other nodes reach this node's peer API at (none: -listen or hostname)"
    )
    cloud_provider: Provider = flag("s3", "tier-3 store: s3, azure, gcp or local")
    s3_bucket: str = flag("fuse-client-cache", "S3 bucket")
    s3_region: str | None = flag(
        None,
        "S3 region; the bucket's own wins where S3 names it (none given: else "
        "AWS_DEFAULT_REGION's or the profile's, else us-east-1)",
        "AWS_REGION",
    )
    s3_endpoint: Endpoint = flag(
        None, "S3-compatible endpoint URL (MinIO, SeaweedFS, R2, ...)", "AWS_ENDPOINT_URL"
    )
    aws_access_key_id: str | None = from_env("AWS_ACCESS_KEY_ID", "S3 access key")
    aws_secret_access_key: str | None = from_env(
        "AWS_SECRET_ACCESS_KEY", "S3 secret key", secret=True
    )
    aws_session_token: str | None = from_env("AWS_SESSION_TOKEN", "S3 session token", secret=True)
    no_sign_request: YesNo = flag(False, "read a public S3 bucket: send requests unsigned")
    azure_account: str | None = flag(None, "Azure storage account", "AZURE_STORAGE_ACCOUNT")
    azure_key: str | None = flag(
        None, "Azure storage account key", "AZURE_STORAGE_KEY", secret=True
    )
    azure_sas_token: str | None = from_env(
        "AZURE_STORAGE_SAS_TOKEN", "Azure shared access signature, in place of the key", secret=True
    )
    azure_container: str = flag("fuse-cache", "Azure Blob container", "AZURE_CONTAINER_NAME")
    azure_endpoint: Endpoint = flag(
        None, "Azure Blob endpoint URL (Azurite: http://127.0.0.1:10000/ACCOUNT)"
    )
    gcp_bucket: str = flag("fuse-client-cache", "GCS bucket", "GCP_BUCKET")
    gcp_endpoint: Endpoint = flag(
        None, "GCS endpoint URL (S3 interoperability with HMAC keys, else the JSON API)"
    )
    gcp_access_key_id: str | None = from_env("GCP_ACCESS_KEY_ID", "GCS HMAC access key")
    gcp_secret_access_key: str | None = from_env(
        "GCP_SECRET_ACCESS_KEY", "GCS HMAC secret", secret=True
    )
    gcp_credentials: Path | None = from_env(
        "GOOGLE_APPLICATION_CREDENTIALS", "GCS service-account key file (native GCS)"
    )
    local_root: Path | None = flag(None, "directory used as the bucket by -cloud-provider local")
    prefix: Prefix = flag("", "mount this folder of the bucket (a key prefix) instead of all of it")
    chunk_size: Size = flag(4 * 2**20, "cache and transfer unit")
    metadata_ttl: Ttl = flag(1.0, "attribute and listing cache lifetime, or 'indefinite'")
    direct_io: YesNo = flag(
        False,
        "read and write around the kernel's page cache (data read once: faster cold reads, "
        "no page cache filled; re-reads come from tier 1)",
    )
    read_only: YesNo = flag(False, "mount read-only: the kernel refuses every change (EROFS)")
    allow_other: YesNo = flag(
        False, "let users other than the mounting one in (the permission bits still apply)"
    )
    allow_non_empty: YesNo = flag(
        False, "mount over a mount point that holds files (hidden while it is mounted)"
    )
    nvme_size: Size = flag(
        10 * 2**30,
        "tier-1 budget for this node's reads (in a cluster, but the chunks it owns)",
        "FUSE_NVME_SIZE",
    )
    peer_size: Size = flag(
        5 * 2**30,
        "tier-1 budget for chunks held for peers (and the chunks this node owns)",
        "FUSE_PEER_SIZE",
    )
    peer_timeout: Duration = flag(30.0, "deadline of one peer request", "FUSE_PEER_TIMEOUT")
    admit_after: Count = flag(
        1, "cache a chunk in tier 1 once it has been read this many times (1: always)"
    )
    uid: OwnerId = flag(os.getuid(), "owner of every file in the mount")
    gid: OwnerId = flag(os.getgid(), "group of every file in the mount")
    file_mode: Mode = flag(0o644, "permission bits of files (octal)")
    dir_mode: Mode = flag(0o755, "permission bits of directories (octal)")
    cloud_timeout: Duration = flag(
        60.0, "deadline of one cloud operation, retries included", "FUSE_CLOUD_TIMEOUT"
    )

    @property
    def node_id(self) -> str:
        """The peer id, defaulting to `hostname-port` so two nodes on one host differ."""
        return self.peer_id or f"{socket.gethostname()}-{self.port}"

    @property
    def peer_address(self) -> str:
        """Where other nodes reach this node: `-advertise`, else the `-listen` address
        when it is one, else this host's name; with `-port`."""
        if self.advertise is not None:
            return self.advertise
        host = socket.gethostname() if self.listen in WILDCARD_ADDRESSES else self.listen
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def local_api_url(self) -> str:
        """The URL of this node's peer API for a command on this host (`tierfs warm`): the
        `-listen` address (loopback for all of them); with TLS, the address peers reach
        it at, which its certificate names."""
        if self.tls_cert is not None:
            return f"https://{self.peer_address}"
        host = _LOOPBACK.get(self.listen, self.listen)
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.port}"

    @model_validator(mode="after")
    def _provider_needs(self) -> ClientSettings:
        if self.peer_id is not None and not _PEER_ID_RE.match(self.peer_id):
            raise ValueError("-peer-id takes 1-128 letters, digits or . _ : -")
        if self.chunk_size < 64 * 2**10 or self.chunk_size > 1 * 2**30:
            raise ValueError("-chunk-size must be between 64KiB and 1GiB")
        if self.admit_after < 1:
            raise ValueError("-admit-after must be at least 1")
        if self.cloud_provider == "local" and self.local_root is None:
            raise ValueError("-cloud-provider local needs -local-root DIR")
        if self.cloud_provider == "azure" and not self.azure_account:
            raise ValueError(
                "-cloud-provider azure needs -azure-account (or AZURE_STORAGE_ACCOUNT)"
            )
        if self.cloud_provider == "azure" and not (self.azure_key or self.azure_sas_token):
            raise ValueError(
                "-cloud-provider azure needs -azure-key (or AZURE_STORAGE_KEY), "
                "or a shared access signature in AZURE_STORAGE_SAS_TOKEN"
            )
        if (self.gcp_access_key_id is None) != (self.gcp_secret_access_key is None):
            raise ValueError("GCP_ACCESS_KEY_ID and GCP_SECRET_ACCESS_KEY go together")
        return self


class StatusSettings(BaseModel):
    """`tierfs status`: the cluster as its coordinator sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coordinator: str = flag(
        f"localhost:{COORDINATOR_PORT}", "the coordinator (host:port, or an http(s) URL)"
    )
    token: Token = flag(None, "the cluster's token", "TIERFS_TOKEN", secret=True)
    log_level: LogLevel = flag("warning", "log verbosity: debug, info, warning or error")

    @property
    def coordinator_url(self) -> str:
        """A URL as given; host:port over http, a bare host at the coordinator's default
        port (it was asked at 80)."""
        if "://" in self.coordinator:
            return self.coordinator
        url = f"http://{self.coordinator}"
        try:
            named = urlsplit(url).port is not None
        except ValueError:  # not a port: the request says so
            named = True
        return url if named else f"{url}:{COORDINATOR_PORT}"


class WarmSettings(BaseModel):
    """`tierfs warm PATH...`: files and folders of a mount brought into its node's tier 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paths: list[Path] = Field(min_length=1, description="files or folders on a tierfs mount")
    node: str | None = flag(
        None,
        "peer API of the node that mounts PATH (host:port, or an http(s) URL; none: the "
        "one its mount names)",
    )
    timeout: Duration = flag(
        30.0, "give up on a node silent this long (it reports progress twice a second)"
    )
    token: Token = flag(None, "the cluster's token", "TIERFS_TOKEN", secret=True)
    log_level: LogLevel = flag("warning", "log verbosity: debug, info, warning or error")

    @property
    def node_url(self) -> str | None:
        """The URL of -node; None when not given."""
        if self.node is None:
            return None
        return self.node if "://" in self.node else f"http://{self.node}"


S = TypeVar("S", bound=BaseModel)


def flag_fields(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """The fields of `model` that are command-line flags, with their metadata."""
    return {
        name: field.json_schema_extra
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("flag")
    }


def load_settings(
    model: type[S], given: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> S:
    """Validate flags given on the command line, falling back to the environment.

    `given` maps field names to the raw strings of the flags that were set. Raises
    ConfigError with one line naming the flag and what is wrong.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source: dict[str, str] = {}  # field -> what the user wrote it as, for error messages
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        env = extra.get("env")
        if name in given:
            values[name], source[name] = given[name], f"-{name.replace('_', '-')}"
        elif isinstance(env, str) and environ.get(env):
            values[name], source[name] = environ[env], env
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            name = str(error["loc"][0])
            message = f"invalid value for {source.get(name, name)}: {message}"
        raise ConfigError(message) from None
