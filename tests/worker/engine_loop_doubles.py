"""Test doubles shared by the engine-loop tests (no engine process, no socket)."""

from __future__ import annotations

from typing import Any


class RecordingChannel:
    """Stands in for the socket to the worker: records what the loop sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def poll(self, timeout: float = 0.0) -> bool:
        return False
