"""What the Conductor knows about each instance: load snapshots updated by events.

Plain dataclasses; the :class:`~mooncake.conductor.policy.Conductor` mutates them from
``on_*`` events and reads them when placing. Times are seconds on the caller's clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class LoadListener(Protocol):
    """Told after every change of a load it registered (the vectorised tables of
    :mod:`mooncake.conductor.load_table` keep their arrays current this way)."""

    def load_changed(self, slot: int) -> None: ...


class DecodeListener(LoadListener, Protocol):
    """A :class:`LoadListener` of a decode load that also follows its sequences."""

    def seq_added(self, slot: int, running: bool, rid: str, seq: DecodeSeq) -> None: ...

    def seq_removed(self, slot: int, running: bool, rid: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What placement needs to know about one request."""

    request_id: str
    prompt_len: int
    """Prompt tokens."""
    block_keys: Sequence[Hashable]
    """Prefix-chained keys of the prompt's blocks (the last one may be partial)."""
    output_len: int
    """Expected output tokens (the trace's length, or a predictor's guess)."""


@dataclass(slots=True)
class PrefillLoad:
    """One prefill instance: its FIFO of assigned work, one job running at a time.

    Sums are kept incrementally so a placement costs O(1) per instance however long
    the queue grows under overload.
    """

    queued: dict[str, float] = field(default_factory=dict)
    """Request id -> estimated seconds (fetch + prefill), in arrival order."""
    queued_s: float = 0.0
    running: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Request id -> (started at, estimated seconds)."""
    listener: LoadListener | None = field(default=None, repr=False, compare=False)
    """Told ``slot`` after every change (a table mirroring this load), or ``None``."""
    slot: int = field(default=-1, repr=False, compare=False)

    def enqueue(self, rid: str, est_s: float) -> None:
        self.queued[rid] = est_s
        self.queued_s += est_s
        if self.listener is not None:
            self.listener.load_changed(self.slot)

    def start(self, rid: str, now: float) -> None:
        est = self.queued.pop(rid, None)
        if est is None:
            return
        self.queued_s -= est
        self.running[rid] = (now, est)
        if self.listener is not None:
            self.listener.load_changed(self.slot)

    def finish(self, rid: str) -> None:
        if rid in self.running:
            del self.running[rid]
        else:
            est = self.queued.pop(rid, None)
            if est is not None:
                self.queued_s -= est
        if not self.queued:
            self.queued_s = 0.0  # drop float drift
        if self.listener is not None:
            self.listener.load_changed(self.slot)

    def queue_time(self, now: float) -> float:
        """Seconds until a newly queued job would start: queued estimates plus what is
        left of the running job(s)."""
        if not self.running:  # the common case: no generator for an idle instance
            return max(0.0, self.queued_s)
        left = sum(max(0.0, est - (now - t0)) for t0, est in self.running.values())
        return max(0.0, self.queued_s) + left


@dataclass(slots=True)
class DecodeSeq:
    """A request decoding (or on its way to decode) on one instance."""

    prompt_len: int
    output_len: int
    """Output tokens expected (when the sequence is projected to finish)."""
    at: float
    """Joined at (running) or expected arrival time (incoming)."""
    kv_output_len: int | None = None
    """Output tokens its KV is counted for (``None``: ``output_len``)."""
    max_tokens: int = 0
    """The request's cap (0: unknown); lets the projection re-estimate ``output_len``
    from what the sequence has already generated."""

    @property
    def kv_tokens(self) -> int:
        """KV counted for the sequence: prompt plus the output it may grow to."""
        return self.prompt_len + (
            self.output_len if self.kv_output_len is None else self.kv_output_len
        )


@dataclass(slots=True)
class DecodeLoad:
    """One decode instance: running batch and requests heading to it."""

    kv_capacity_tokens: int
    running: dict[str, DecodeSeq] = field(default_factory=dict)
    incoming: dict[str, DecodeSeq] = field(default_factory=dict)
    kv_running: int = 0
    """Sum of ``kv_tokens`` over ``running``."""
    kv_incoming: int = 0
    """Sum of ``kv_tokens`` over ``incoming``."""
    listener: DecodeListener | None = field(default=None, repr=False, compare=False)
    """Told after every change, sequence by sequence (a table mirroring this load), or
    ``None``. (Sequences are not changed after ``expect``, but for ``join``'s ``at``.)"""
    slot: int = field(default=-1, repr=False, compare=False)

    def expect(self, rid: str, seq: DecodeSeq) -> None:
        """A request was placed here; it arrives around ``seq.at``."""
        self.incoming[rid] = seq
        self.kv_incoming += seq.kv_tokens
        if self.listener is not None:
            self.listener.seq_added(self.slot, False, rid, seq)
            self.listener.load_changed(self.slot)

    def join(self, rid: str, now: float) -> None:
        seq = self.incoming.pop(rid, None)
        if seq is None:
            return
        self.kv_incoming -= seq.kv_tokens
        seq.at = now
        self.running[rid] = seq
        self.kv_running += seq.kv_tokens
        if self.listener is not None:
            self.listener.seq_removed(self.slot, False, rid)
            self.listener.seq_added(self.slot, True, rid, seq)
            self.listener.load_changed(self.slot)

    def leave(self, rid: str) -> None:
        seq = self.incoming.pop(rid, None)
        if seq is not None:
            self.kv_incoming -= seq.kv_tokens
            if self.listener is not None:
                self.listener.seq_removed(self.slot, False, rid)
        seq = self.running.pop(rid, None)
        if seq is not None:
            self.kv_running -= seq.kv_tokens
            if self.listener is not None:
                self.listener.seq_removed(self.slot, True, rid)
        if self.listener is not None:
            self.listener.load_changed(self.slot)


__all__ = [
    "DecodeListener",
    "DecodeLoad",
    "DecodeSeq",
    "LoadListener",
    "PrefillLoad",
    "RequestInfo",
]
