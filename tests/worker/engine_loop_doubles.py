"""Test doubles shared by the engine-loop tests (no engine process, no socket)."""

from __future__ import annotations

import time
from typing import Any


class RecordingChannel:
    """Stands in for the socket to the worker: records what the loop sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def poll(self, timeout: float = 0.0) -> bool:
        return False


class ScriptedChannel(RecordingChannel):
    """Delivers each scripted command at its time (seconds after the first poll)."""

    def __init__(self, script: list[tuple[float, Any]]) -> None:
        super().__init__()
        self.script = list(script)
        self.t0: float | None = None

    def poll(self, timeout: float = 0.0) -> bool:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        if not self.script:
            time.sleep(timeout)
            return False
        due = self.t0 + self.script[0][0]
        if due > now + timeout:
            time.sleep(timeout)
            return False
        time.sleep(max(0.0, due - now))
        return True

    def recv(self) -> Any:
        return self.script.pop(0)[1]
