"""The worker's KV hand-off without a store: outbox and inbox by request id."""

from __future__ import annotations

from mooncake.worker.kv_handoff import KVHandoff


def test_outgoing_is_taken_once() -> None:
    """The prefill side keeps the KV; the decode worker's pull takes it, a second pull
    finds nothing (a miss: decode recomputes)."""
    h: KVHandoff[str] = KVHandoff()
    h.keep("r1", "kv")
    assert h.outgoing() == ["r1"]
    assert h.take_outgoing("r1") == "kv"
    assert h.take_outgoing("r1") is None and h.outgoing() == []


def test_incoming_waits_for_decode() -> None:
    """The decode side's received KV waits until its decode task takes it (once)."""
    h: KVHandoff[str] = KVHandoff()
    h.receive("r1", "kv")
    assert h.incoming() == ["r1"]
    assert h.take_incoming("r1") == "kv" and h.take_incoming("r1") is None


def test_drop_forgets_both_sides() -> None:
    """A drop (abort, lost peer, engine failure) forgets the outbox and the inbox entry
    of that request only."""
    h: KVHandoff[str] = KVHandoff()
    h.keep("r1", "out")
    h.receive("r1", "in")
    h.keep("r2", "other")
    h.drop("r1")
    assert h.take_outgoing("r1") is None and h.take_incoming("r1") is None
    assert h.outgoing() == ["r2"]
