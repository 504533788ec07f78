"""Stage timestamps of the hand-off (``mooncake.worker.handoff_times``)."""

from __future__ import annotations

from mooncake.worker.handoff_times import HandoffTimes


def test_start_stages_keep_the_first_time_end_stages_the_last_and_bytes_add_up():
    """A streamed hand-off exports twice: ``export_start`` stays the first export's,
    ``stored`` becomes the last one's, and the bytes and blocks of both add up per side.
    The decode side's stages land in the same row."""
    t = HandoffTimes()
    t.mark("r", "export_start")
    t.mark("r", "stored", 100, 1)
    first = t.snapshot()["r"]
    t.mark("r", "export_start")
    t.mark("r", "stored", 300, 3)
    t.mark("r", "fetch_start")
    t.mark("r", "imported", 400, 4)
    row = t.snapshot()["r"]
    assert row["export_start"] == first["export_start"]
    assert row["stored"] >= first["stored"]
    assert (row["prefill_bytes"], row["prefill_blocks"]) == (400, 4)
    assert (row["decode_bytes"], row["decode_blocks"]) == (400, 4)
    assert row["export_start"] <= row["stored"] <= row["fetch_start"] <= row["imported"]


def test_the_table_keeps_only_the_latest_requests():
    """Beyond its bound the oldest request's row is dropped first."""
    t = HandoffTimes(max_requests=2)
    for rid in ("a", "b", "c"):
        t.mark(rid, "export_start")
    assert list(t.snapshot()) == ["b", "c"]
