from __future__ import annotations

from mooncake.store.events import EventLog, StoreEvent
from mooncake.store.store import BlockStore
from mooncake.types import BlockKey
from tests.store.kvfactories import make_chain, store_config


def test_listener_sees_every_change_in_order(host_dir: str, ssd_dir: str) -> None:
    """A subscriber gets stored / moved / removed events in order, and
    nothing after unsubscribing."""
    blocks = make_chain(3)
    seen: list[StoreEvent] = []
    with BlockStore(store_config(host_dir, ssd_dir, host_blocks=2, ssd_blocks=8)) as store:
        unsubscribe = store.events.subscribe(seen.append)
        store.put_many(blocks)
        store.delete(blocks[1].key)  # type: ignore[arg-type]
        unsubscribe()
        store.delete(blocks[2].key)  # type: ignore[arg-type]
        k = [b.key for b in blocks]
        assert [(e.kind, e.key, e.tier, e.reason) for e in seen] == [
            ("stored", k[0], "host", "put"),
            ("stored", k[1], "host", "put"),
            ("moved", k[0], "ssd", "demoted"),
            ("stored", k[2], "host", "put"),
            ("removed", k[1], "host", "deleted"),
        ]
        assert len(store.events.drain()) == 6 and store.events.drain() == []


def test_bounded_buffer_counts_what_it_dropped() -> None:
    """Past maxlen the oldest events are dropped and counted, so a consumer knows to resync."""
    log = EventLog(maxlen=3)
    for i in range(5):
        log.emit(StoreEvent("stored", BlockKey(bytes([i]) * 16), "host"))
    got = log.drain()
    assert [e.key[0] for e in got] == [2, 3, 4] and log.dropped == 2


def test_presence_changes_feed_a_global_index() -> None:
    """stored/removed collapse per key (last wins); moved changes nothing;
    order of first appearance kept."""
    from mooncake.store.events import presence_changes

    a, b, c = (BlockKey(bytes([i]) * 16) for i in range(3))
    events = [
        StoreEvent("stored", a, "host"),
        StoreEvent("stored", b, "host"),
        StoreEvent("moved", a, "ssd", from_tier="host"),
        StoreEvent("removed", b, "host"),
        StoreEvent("removed", c, "ssd"),
    ]
    assert presence_changes(events) == ([a], [b, c])
