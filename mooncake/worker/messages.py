"""Small values that travel through the request graph (never KV tensors).

``PlacementInfo`` is the Conductor's placement message (``mooncake.conductor.messages``),
re-exported here: the graph's tasks carry the very value the Conductor answered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mooncake.conductor.messages import PlacementInfo
from mooncake.kvcache import block_keys
from mooncake.sampling_params import SamplingParams
from mooncake.types import BlockKey


@dataclass
class RequestSpec:
    """A request as the client submits it (already tokenized)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    stream_topic: str | None = None
    """Dask event topic that token deltas are published on; None: no streaming."""
    stream_addr: tuple[str, int] | None = None
    """The client's direct token stream (``token_stream``); the topic is the fallback."""
    stream_key: bytes | None = field(default=None, repr=False)
    """The key the engine proves to that stream (travels over Dask's comms only)."""
    arrival_time: float = 0.0
    """Client wall-clock time (``time.time()``) when the request arrived."""
    prompt: str | None = None
    block_keys: list[BlockKey] | None = field(default=None, repr=False)
    """The prompt's full-block keys in the cluster's chain, hashed once per request by
    the client; every worker and engine process reuses them (``prompt_block_keys``)."""

    def prompt_block_keys(self, block_size: int, root: BlockKey) -> list[BlockKey]:
        """The prompt's full-block keys: the client's when it sent them, else hashed here
        (under ``root``, the chain root of this request's salt)."""
        n = len(self.prompt_token_ids) // block_size
        if self.block_keys is not None and len(self.block_keys) == n:
            return list(self.block_keys)
        return block_keys(self.prompt_token_ids, block_size, root)


@dataclass
class LookupResult:
    spec: RequestSpec
    placement: PlacementInfo
    cached_tokens: int = 0
    """Prompt tokens already in the prefill worker's engine (device pool)."""
    store_blocks: int = 0
    """Further leading blocks found in the worker's own host/SSD tiers."""
    store_tiers: dict[str, int] = field(default_factory=dict)
    """``store_blocks`` by tier (``host``, ``ssd``), for the hit-source metrics."""
    fetched_blocks: int = 0
    fetch_seconds: float = 0.0


@dataclass
class KVHandle:
    """What prefill returns: where the request's KV is, and its first token."""

    spec: RequestSpec
    placement: PlacementInfo
    worker: str
    num_tokens: int
    """Tokens whose KV the prefill worker holds for this request."""
    first_token_ids: list[int]
    num_cached_tokens: int
    prefill_seconds: float
    first_logprobs: list[dict[int, float]] | None = None
    queue_seconds: float | None = None
    """Seconds the request waited in the prefill engine before its first step."""
    block_keys: list[bytes] = field(default_factory=list)
    """Keys of the request's full prompt blocks (what decode pulls from the store)."""
    peer: Any = None
    """``mooncake.transfer.Peer`` of the prefill worker's store, or None (no store)."""
    first_token_time: float | None = None
    """Wall-clock time the first token was sampled."""
    finished: bool = False
    """The first token already ended the request (EOS, stop, max_tokens=1)."""
    output: Any = None
    """The final ``RequestOutput`` when ``finished``."""
    records: ArenaRecords | None = None
    """Same host: the blocks are also in the prefill worker's export arena, where the
    decode engine imports them from (one copy per block); ``None``: from the store."""
    pool: PoolBlocks | None = None
    """Same host: the blocks are held in the prefill engine's shared pool, where the
    decode engine copies them from (``mooncake.worker.pool_handoff``)."""


@dataclass(frozen=True)
class PoolBlocks:
    """Where a prefill engine holds a request's full blocks in its shared KV pool for a
    decode engine on its host, until the decode side releases the request's hand-off
    lease or the lease expires (``mooncake.worker.pool_handoff``)."""

    path: str
    """The pool file (tmpfs, ``mooncake.engine.shared_pool``)."""
    block_ids: list[int]
    """Pool block of each full block: ``KVHandle.block_keys[i]``'s is ``block_ids[i]``."""
    host_id: str
    """``mooncake.transfer.base.local_host_id`` of the prefill worker's host."""


@dataclass(frozen=True)
class ArenaRecords:
    """Where a prefill worker keeps a request's full blocks for a decode engine on its
    host: store records in its export arena, held (not reused) until the decode side
    releases the request's hand-off lease or the lease expires
    (``mooncake.worker.arena_handoff``)."""

    path: str
    """The export arena's file (tmpfs), mapped by the decode engine."""
    offsets: list[int]
    """Arena offset of each record: ``KVHandle.block_keys[i]``'s is ``offsets[i]``."""
    host_id: str
    """``mooncake.transfer.base.local_host_id`` of the prefill worker's host."""


@dataclass
class TransferResult:
    handle: KVHandle
    nbytes: int = 0
    seconds: float = 0.0
    path: str = "none"
    """How the KV moved: the transfer paths used (``shm``, ``tcp``, ``rdma``), ``dask``
    (RPC, no store), ``local``, ``none`` (nothing to move) or ``miss`` (recompute)."""
    num_blocks: int = 0
    """Blocks that arrived (on a ``miss``, the prefix that did; decode computes the rest)."""
    early: bool = False
    """Begun ahead of the transfer task (a moved request's early resume, or the early
    hand-off its prefill worker asked for), collected by the task."""


@dataclass
class ResumeStart:
    """A request moved off a lost worker, as its client sends it with its placement
    (``PlaceRequest.spec``): the Conductor passes it on to the chosen decode worker,
    which starts the transfer and decode at once (the early resume); the resume graph
    carries the handle made from it (``handle``)."""

    spec: RequestSpec
    first_token_ids: list[int]
    """The tokens delivered to the caller before the move (decode continues after them)."""
    first_logprobs: list[dict[int, float]] | None = None
    num_cached_tokens: int = 0
    first_token_time: float | None = None
    """Wall-clock time the request's first token arrived at the client."""

    def handle(
        self, placement: PlacementInfo, peer: Any, block_keys: list[BlockKey] | list[bytes]
    ) -> KVHandle:
        """What the resumed decode starts from: these tokens as its first tokens, and the
        prompt's full blocks (``block_keys``) in ``peer``, the prefill worker's store
        (``mooncake.transfer.Peer``; None: no store, or the worker is gone). Decode
        recomputes whatever it cannot fetch."""
        return KVHandle(
            spec=self.spec,
            placement=placement,
            # No store: decode asks its own outbox, which has nothing (a miss: recompute).
            worker=placement.prefill if peer is not None else placement.decode,
            num_tokens=0,
            first_token_ids=list(self.first_token_ids),
            first_logprobs=list(self.first_logprobs) if self.first_logprobs is not None else None,
            num_cached_tokens=self.num_cached_tokens,
            prefill_seconds=0.0,
            block_keys=[bytes(k) for k in block_keys],
            peer=peer,
            first_token_time=self.first_token_time,
        )


__all__ = [
    "ArenaRecords",
    "KVHandle",
    "LookupResult",
    "PlacementInfo",
    "PoolBlocks",
    "RequestSpec",
    "ResumeStart",
    "TransferResult",
]
