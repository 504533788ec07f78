"""When a worker's next report to the Conductor goes (pure: no clock, no IO).

A report used to go every 50 ms whatever it held: ~19 messages a second per worker,
and a message is CPU in the worker, the scheduler's event loop and the Conductor, on
the same cores as the engines. What the Conductor places the next request with is
urgent; the rest is not:

- **urgent** (sent at the next tick, ``urgent_s``): the model's facts (the first
  report), blocks stored or removed (the prefix index), finished prefills (the prefill
  queue), decode joins and finished requests (the decode load and output lengths), KV
  transfer samples (the bandwidth estimate);
- **slow** (``slow_s``): only the load figures changed, decode step timings (the cost
  model's fit) or metrics records (lookups, the transfer log, expired leases);
- **heartbeat** (``heartbeat_s``): nothing changed; the report still goes now and then,
  so the dashboard's figures and a Conductor that restarted catch up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pending = Literal["urgent", "slow", "none"]


@dataclass(frozen=True, slots=True)
class ReportPacing:
    """How often a worker reports (seconds)."""

    urgent_s: float = 0.05
    """Tick of the report loop: the longest an urgent item waits."""
    slow_s: float = 0.5
    """The longest a change that does not affect placement waits."""
    heartbeat_s: float = 2.0
    """A report goes at least this often, changed or not."""

    def __post_init__(self) -> None:
        if not 0 < self.urgent_s <= self.slow_s <= self.heartbeat_s:
            raise ValueError(
                "ReportPacing: need 0 < urgent_s <= slow_s <= heartbeat_s, got "
                f"{self.urgent_s}, {self.slow_s}, {self.heartbeat_s}"
            )


class ReportPacer:
    """Decides, at each tick, whether a report goes now."""

    def __init__(self, pacing: ReportPacing | None = None) -> None:
        self.pacing = pacing or ReportPacing()
        self._last: float | None = None

    def due(self, now: float, pending: Pending) -> bool:
        """Whether to send at ``now`` (monotonic seconds) with ``pending`` waiting."""
        if self._last is None or pending == "urgent":
            return True
        waited = now - self._last
        if pending == "slow":
            return waited >= self.pacing.slow_s
        return waited >= self.pacing.heartbeat_s

    def sent(self, now: float) -> None:
        self._last = now


__all__ = ["Pending", "ReportPacer", "ReportPacing"]
