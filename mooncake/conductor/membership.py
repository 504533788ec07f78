"""The messages the scheduler publishes when a mooncake worker joins or leaves.

Clients subscribe to ``TOPIC`` (a Dask event topic): they move or fail the requests
that were placed on a worker that left, and learn about new (restarted) workers. One typed form,
built and parsed here; on the wire it is a plain dict (Dask events travel as msgpack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TOPIC = "mooncake-workers"


@dataclass(frozen=True, slots=True)
class WorkerLeft:
    """A worker left (closed, or died: its comm broke)."""

    worker: str
    roles: tuple[str, ...]
    """``prefill`` and/or ``decode`` (empty when it never reported)."""
    requests: tuple[str, ...]
    """Requests the Conductor had placed on it and that had not ended."""

    def to_msg(self) -> dict[str, Any]:
        return {
            "kind": "left",
            "worker": self.worker,
            "roles": list(self.roles),
            "requests": list(self.requests),
        }

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> WorkerLeft:
        return cls(
            str(msg["worker"]),
            tuple(str(r) for r in msg["roles"]),
            tuple(str(r) for r in msg["requests"]),
        )


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    """A worker reported for the first time (a new or a restarted one)."""

    worker: str
    info: dict[str, Any]
    """What the worker reports about itself (roles, model, store peer, pids)."""

    def to_msg(self) -> dict[str, Any]:
        return {"kind": "joined", "worker": self.worker, "info": self.info}

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> WorkerJoined:
        return cls(str(msg["worker"]), dict(msg["info"]))


def parse(msg: dict[str, Any]) -> WorkerLeft | WorkerJoined | None:
    """The message published on ``TOPIC`` (None: a kind this version does not know)."""
    kind = msg.get("kind")
    if kind == "left":
        return WorkerLeft.from_msg(msg)
    if kind == "joined":
        return WorkerJoined.from_msg(msg)
    return None


__all__ = ["TOPIC", "WorkerJoined", "WorkerLeft", "parse"]
