"""When a worker's next report to the Conductor goes."""

from __future__ import annotations

import pytest

from mooncake.worker.report_pacer import ReportPacer, ReportPacing


def test_first_report_goes_at_once() -> None:
    """Nothing was sent yet: the first tick sends, whatever is pending."""
    assert ReportPacer().due(100.0, "none")


def test_urgent_goes_at_the_next_tick() -> None:
    """Right after a report, an urgent item (e.g. a finished prefill) still goes now."""
    p = ReportPacer(ReportPacing(urgent_s=0.05, slow_s=0.5, heartbeat_s=2.0))
    p.sent(100.0)
    assert p.due(100.05, "urgent")


def test_slow_changes_wait_for_slow_interval() -> None:
    """Load or decode-step changes alone go once ``slow_s`` has passed since the last report."""
    p = ReportPacer(ReportPacing(urgent_s=0.05, slow_s=0.5, heartbeat_s=2.0))
    p.sent(100.0)
    assert not p.due(100.2, "slow")
    assert p.due(100.5, "slow")


def test_idle_sends_only_a_heartbeat() -> None:
    """With nothing changed, a report goes every ``heartbeat_s`` only."""
    p = ReportPacer(ReportPacing(urgent_s=0.05, slow_s=0.5, heartbeat_s=2.0))
    p.sent(100.0)
    assert not p.due(101.0, "none")
    assert p.due(102.0, "none")
    p.sent(102.0)
    assert not p.due(103.9, "none")


def test_pacing_is_validated() -> None:
    """Intervals out of order are a ValueError naming the settings."""
    with pytest.raises(ValueError, match="urgent_s"):
        ReportPacing(urgent_s=1.0, slow_s=0.5)
