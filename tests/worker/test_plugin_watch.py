"""The worker's liveness watch handler answers only after the time asked, capped (no
cluster: the handler alone)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mooncake.config import EngineConfig
from mooncake.worker import plugin
from mooncake.worker.plugin import MooncakeWorker


def test_watch_answers_after_the_time_asked_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch for 0.05 s answers after about that long; one for an hour answers at the
    cap (here 0.1 s), so no call is held open without a deadline."""
    monkeypatch.setattr(plugin, "WATCH_MAX_S", 0.1)
    w = MooncakeWorker(EngineConfig())
    t0 = time.monotonic()
    assert asyncio.run(w.handle_watch(0.05)) is True
    assert 0.04 <= time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    assert asyncio.run(w.handle_watch(3600)) is True
    assert time.monotonic() - t0 < 1.0
