"""Request and response schemas of the coordinator API (pydantic v2).

Requests are strict: JSON types exactly as declared (no `"5"` for 5, no `true` for 1) and
unknown fields rejected, so a typo is a 422 naming the field rather than a value silently
ignored. Integers are bounded by SQLite's signed 64 bits and strings by a length, so
nothing valid here can fail further down. The OpenAPI document is generated from these.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tierfs.security import MAX_PATH_BYTES, MAX_PEER_ID, PEER_ID_PATTERN, check_path, check_peer_id

MAX_INT = 2**63 - 1  # SQLite INTEGER
MAX_CHUNK_INDEX = 2**32 - 1  # 16 EiB at 4 MiB chunks
MAX_CHUNKS_PER_REPORT = 131_072  # ~1 MiB of JSON: the body cap
MAX_CHUNKS_PER_ENTRY = 1_048_576  # 4 TiB at 4 MiB chunks: what one location may list
MAX_VERSION = 1024  # ETags and generations are far shorter
_ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$"


def _check_address(address: str) -> str:
    port = int(address.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1-65535")
    return address


Count = Annotated[int, Field(ge=0, le=MAX_INT)]
ChunkIndex = Annotated[int, Field(ge=0, le=MAX_CHUNK_INDEX)]
PeerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PEER_ID,
        pattern=PEER_ID_PATTERN,
        description="1-128 letters, digits or . _ : -",
        examples=["node-a"],
    ),
    AfterValidator(check_peer_id),
]
ObjectPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_BYTES,
        description=(
            "object key relative to the bucket: at most 4096 bytes of UTF-8, "
            "no NUL, no leading '/', no empty, '.' or '..' segment"
        ),
        examples=["datasets/train/part-0001.parquet"],
    ),
    AfterValidator(check_path),
]
Address = Annotated[
    str,
    Field(
        max_length=300,
        pattern=_ADDRESS_PATTERN,
        description="host:port of the peer API",
        examples=["10.0.0.7:8081"],
    ),
    AfterValidator(_check_address),
]
Version = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_VERSION,
        description="object version (ETag or generation)",
        examples=['"9b2cf535f27731c974343645a3985328"'],
    ),
]
Instance = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="drawn by the peer's process when it starts: another process "
        "registering as a live peer at another address is refused",
        examples=["3f9c2a61d0b84e7a"],
    ),
]
PeerState = Literal["active", "draining"]
PeerStatus = Literal["active", "draining", "dead"]
TierName = Literal["local", "peer", "cloud"]
TIER_NAMES: tuple[TierName, ...] = ("local", "peer", "cloud")


class Strict(BaseModel):
    """Base of request bodies and queries: exact JSON types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- what a peer reports ------------------------------------------------------------------


class TierBytes(Strict):
    """Bytes per cache tier of a node: tier 1 for its own reads, and for chunks kept for peers."""

    local: Count = Field(default=0, description="tier-1 bytes for this node's reads (-nvme-size)")
    peer: Count = Field(default=0, description="tier-1 bytes kept for peers (-peer-size)")


class TierCounters(Strict):
    """One tier's counters, as `tierfs.stats.TierCounters`."""

    hits: Count = 0
    misses: Count = 0
    bytes: Count = 0
    errors: Count = 0


class TierStats(Strict):
    local: TierCounters = TierCounters()
    peer: TierCounters = TierCounters()
    cloud: TierCounters = TierCounters()


class NodeStatsReport(Strict):
    """A node's cache counters: the shape of `tierfs.stats.NodeStats.as_dict()`.

    Counters only grow while a node runs; a smaller value than last time means the node
    restarted, and the coordinator keeps the cluster totals growing across that.
    """

    tiers: TierStats = TierStats()
    evictions: Count = 0
    evicted_bytes: Count = 0
    corrupt_chunks: Count = 0
    not_cached: Count = 0
    cancelled_fetches: Count = 0
    cloud_retries: Count = 0
    prefetched_chunks: Count = 0
    prefetch_hits: Count = 0
    singleflight_joins: Count = 0
    peer_bad_chunks: Count = 0
    served_to_peers: Count = 0
    served_to_peers_bytes: Count = 0
    pushed_to_peers: Count = 0
    page_cache_stores: Count = 0
    page_cache_bytes: Count = 0


class RegisterRequest(Strict):
    """`POST /api/peers/register`: join (or rejoin) the cluster."""

    peer_id: PeerId
    address: Address
    status: PeerState = "active"
    capacity: TierBytes = TierBytes()
    usage: TierBytes = TierBytes()
    stats: NodeStatsReport | None = None
    instance: Instance | None = None


class HeartbeatRequest(Strict):
    """`PUT /api/peers/status`: I am alive, in this state, with this usage and these counters.

    `epoch` is the membership epoch the peer last saw: when it is still current the answer
    leaves out the peer list (`peers: null`), which keeps heartbeats cheap.
    """

    peer_id: PeerId
    status: PeerState = "active"
    capacity: TierBytes | None = None
    usage: TierBytes | None = None
    stats: NodeStatsReport | None = None
    epoch: Count | None = None


class LocationReport(Strict):
    """`PUT /api/files/location`: this peer holds these chunks of this version of `path`.

    By default the chunks are added to what the peer already listed for that version (a
    new version replaces the old). `replace: true` sets the list exactly; an empty list
    with `replace: true` removes the entry (the peer evicted the file).
    """

    path: ObjectPath
    peer_id: PeerId
    version: Version
    chunks: list[ChunkIndex] = Field(max_length=MAX_CHUNKS_PER_REPORT)
    replace: bool = False

    @model_validator(mode="after")
    def _something_to_say(self) -> LocationReport:
        if not self.chunks and not self.replace:
            raise ValueError("chunks is empty: send replace=true to remove the entry")
        return self


class LocationQuery(Strict):
    """The query of `GET /api/files/location`."""

    path: ObjectPath
    version: Version | None = None


# --- answers --------------------------------------------------------------------------------


class PeerInfo(BaseModel):
    peer_id: str
    address: str
    status: PeerStatus
    capacity: TierBytes
    usage: TierBytes
    registered_at: float = Field(description="unix time of the last registration")
    last_heartbeat: float = Field(description="unix time of the last heartbeat")


class Membership(BaseModel):
    """The live peers and the epoch; `peers` is null when the caller's epoch is current."""

    epoch: int = Field(description="changes whenever a peer joins, leaves, dies or changes state")
    heartbeat_interval: float = Field(description="seconds between a peer's heartbeats")
    peer_expiry: float = Field(description="seconds of silence after which a peer is dead")
    peers: list[PeerInfo] | None


class AllPeers(BaseModel):
    """Every peer the coordinator knows, the dead ones too till forgotten (`tierfs status`)."""

    peers: list[PeerInfo]


class Departed(BaseModel):
    peer_id: str
    epoch: int


class Location(BaseModel):
    peer_id: str
    address: str
    status: PeerStatus
    version: str
    chunks: list[int] = Field(description="indices of the chunks held, ascending")
    updated_at: float


class Locations(BaseModel):
    """The live peers holding `path` (any version unless the query named one)."""

    path: str
    epoch: int
    locations: list[Location]


class LocationStored(BaseModel):
    path: str
    peer_id: str
    version: str
    chunk_count: int = Field(description="chunks now listed for this peer; 0: entry removed")


class TierTotals(BaseModel):
    hits: int
    misses: int
    bytes: int
    errors: int
    hit_ratio: float | None = Field(description="hits / (hits + misses), null before any read")


class PeerCounts(BaseModel):
    total: int
    active: int
    draining: int
    dead: int


class ClusterBytes(BaseModel):
    """`TierBytes` summed over the live peers: past any one peer's bound."""

    local: int = Field(description="tier-1 bytes for the peers' own reads")
    peer: int = Field(description="tier-1 bytes kept for other peers")


class ClusterStats(BaseModel):
    """Cluster totals. Capacity and usage are over live peers; counters over every peer ever
    seen, kept growing across peer restarts and departures."""

    epoch: int
    peers: PeerCounts
    capacity: ClusterBytes
    usage: ClusterBytes
    tiers: dict[TierName, TierTotals]
    cloud_bytes_fetched: int = Field(description="bytes read from the cloud (tier 3)")
    peer_bytes_served: int = Field(description="bytes read from other peers (tier 2)")
    cloud_egress_saved: int = Field(
        description="bytes served by tiers 1 and 2 that would otherwise have come from the cloud"
    )
    evictions: int
    evicted_bytes: int
    corrupt_chunks: int
    prefetched_chunks: int
    prefetch_hits: int
    files: int = Field(description="distinct paths in the location index")
    locations: int = Field(description="(path, peer) entries in the location index")


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class ErrorDetail(BaseModel):
    field: str = Field(description="where the problem is: body.peer_id, query.path, ...")
    message: str


class ErrorBody(BaseModel):
    """Every error answer: a machine word, one line for people, and the fields at fault."""

    error: str = Field(examples=["invalid_request"])
    message: str
    details: list[ErrorDetail] = []
