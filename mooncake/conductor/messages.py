"""The placement messages between the client, the Conductor and the prefill worker.

One typed form each, built and parsed here; on the wire each is a plain dict (Dask's
comms carry msgpack):

- ``PlaceRequest``: client -> Conductor (``mooncake_place``), what to place;
- ``PlacementInfo``: the Conductor's answer when it admits the request, and the very
  same value the graph's tasks and the prefill worker's early lookup get;
- ``PlaceRefused``: the answer when it does not (overload or no worker of a role);
- ``start_lookup_msg``: Conductor -> prefill worker (``mooncake-start``), begin the
  lookup of an admitted request ahead of its graph;
- ``start_stream_msg``: Conductor -> decode worker (``mooncake-stream``), import the
  request's KV as its prefill publishes it (workers with ``WorkerConfig.stream_kv``);
- ``start_resume_msg``: Conductor -> decode worker (``mooncake-resume``), start the
  transfer and decode of a request moved off a lost worker, ahead of its resume graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mooncake.conductor.state import RequestInfo

START_OP = "mooncake-start"
"""Stream operation of the early-lookup message on the prefill worker."""
STREAM_OP = "mooncake-stream"
"""Stream operation that tells a streaming decode worker of a request at placement."""
RESUME_OP = "mooncake-resume"
"""Stream operation that starts a moved request's transfer and decode at placement."""


@dataclass(frozen=True)
class PlacementInfo:
    """Where the Conductor put the request."""

    prefill: str
    decode: str
    fetch_from: str | None = None
    """Worker to fetch a longer cached prefix from (Algorithm 1), or None."""
    fetch_blocks: int = 0
    """Leading prompt blocks to fetch from ``fetch_from``."""
    est_ttft_s: float = 0.0

    def to_msg(self) -> dict[str, Any]:
        return {
            "rejected": False,
            "prefill": self.prefill,
            "decode": self.decode,
            "fetch_from": self.fetch_from,
            "fetch_blocks": self.fetch_blocks,
            "est_ttft_s": self.est_ttft_s,
        }

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> PlacementInfo:
        fetch_from = msg.get("fetch_from")
        return cls(
            str(msg["prefill"]),
            str(msg["decode"]),
            None if fetch_from is None else str(fetch_from),
            int(msg.get("fetch_blocks", 0)),
            float(msg.get("est_ttft_s", 0.0)),
        )


@dataclass(frozen=True)
class PlaceRefused:
    """The Conductor did not place the request."""

    reason: str
    retry_after: float
    """Seconds after which a retry may succeed."""
    unavailable: bool = False
    """No worker of a role is in the cluster: an outage until one joins, not an overload."""

    def to_msg(self) -> dict[str, Any]:
        return {
            "rejected": True,
            "unavailable": self.unavailable,
            "reason": self.reason,
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> PlaceRefused:
        return cls(str(msg["reason"]), float(msg["retry_after"]), bool(msg.get("unavailable")))


PlaceReply = PlacementInfo | PlaceRefused


def parse_place_reply(msg: dict[str, Any]) -> PlaceReply:
    """The Conductor's answer to ``mooncake_place``."""
    return PlaceRefused.from_msg(msg) if msg["rejected"] else PlacementInfo.from_msg(msg)


@dataclass(frozen=True)
class PlaceRequest:
    """What the client asks the Conductor to place."""

    request_id: str
    prompt_len: int
    block_keys: list[bytes] = field(default_factory=list)
    """Prefix-chained keys of the prompt's full blocks."""
    output_len: int = 0
    """Output tokens to plan for (``max_tokens``, or what the context leaves)."""
    client: str = ""
    """Dask id of the asking client (its token deltas ride the scheduler's stream to it)."""
    resume: bool = False
    """A request moved off a lost worker: it goes straight to decode, no early lookup."""
    spec: object | None = None
    """The request itself, serialized by the client, passed on to the prefill worker so
    that it starts the lookup at placement (None: no early lookup). With ``resume``:
    the tokens it had so far too (``mooncake.worker.messages.ResumeStart``), passed on
    to the decode worker, which starts the transfer and decode at placement."""
    start: str = "prefill"
    """What the early lookup admits: ``prefill`` (disaggregated) or ``generate``."""
    exclude: tuple[str, ...] = ()
    """Workers not to place on: those a moved request was lost on. The client may learn
    of a loss before the scheduler removes the worker (its token stream closed), and
    must not be placed back on it meanwhile."""

    def info(self) -> RequestInfo:
        """What the Conductor's policy places."""
        return RequestInfo(self.request_id, self.prompt_len, list(self.block_keys), self.output_len)

    def to_msg(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "request_id": self.request_id,
            "prompt_len": self.prompt_len,
            "block_keys": list(self.block_keys),
            "output_len": self.output_len,
            "client": self.client,
        }
        if self.resume:
            msg["resume"] = True
        if self.spec is not None:
            msg["spec"] = self.spec
            msg["start"] = self.start
        if self.exclude:
            msg["exclude"] = list(self.exclude)
        return msg

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> PlaceRequest:
        return cls(
            str(msg["request_id"]),
            int(msg["prompt_len"]),
            list(msg["block_keys"]),
            int(msg["output_len"]),
            str(msg.get("client", "")),
            bool(msg.get("resume", False)),
            msg.get("spec"),
            str(msg.get("start", "prefill")),
            tuple(str(w) for w in msg.get("exclude", ())),
        )


def start_lookup_msg(spec: object, placement: PlacementInfo, start: str) -> dict[str, Any]:
    """The stream message that starts a placed request's lookup on its prefill worker
    (handled by ``MooncakeWorker.handle_start(spec, placement, start)``)."""
    return {"op": START_OP, "spec": spec, "placement": placement.to_msg(), "start": start}


def start_stream_msg(spec: object, placement: PlacementInfo) -> dict[str, Any]:
    """The stream message that tells a placed request's decode worker to import its KV
    while the prefill runs (handled by ``MooncakeWorker.handle_stream(spec, placement)``)."""
    return {"op": STREAM_OP, "spec": spec, "placement": placement.to_msg()}


def start_resume_msg(
    start: object, placement: PlacementInfo, peer: dict[str, Any] | None
) -> dict[str, Any]:
    """The stream message that starts a moved request's transfer and decode on its new
    decode worker (handled by ``MooncakeWorker.handle_resume(start, placement, peer)``;
    ``peer``: the prefill worker's store, as that worker published it)."""
    return {"op": RESUME_OP, "start": start, "placement": placement.to_msg(), "peer": peer}


__all__ = [
    "RESUME_OP",
    "START_OP",
    "STREAM_OP",
    "PlaceRefused",
    "PlaceReply",
    "PlaceRequest",
    "PlacementInfo",
    "parse_place_reply",
    "start_lookup_msg",
    "start_resume_msg",
    "start_stream_msg",
]
