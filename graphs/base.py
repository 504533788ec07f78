"""What a graph builder returns: tasks with keys that name the step and the request, the
worker each must run on, and references between them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeyRef:
    """An argument that is the result of another task of the same request."""

    key: str


@dataclass(frozen=True)
class TaskSpec:
    key: str
    """``<step>-<request id>`` (``mooncake.request_ids.task_key``), so the dashboard's
    task stream reads as the request path."""
    func: Callable[..., Any]
    args: tuple[Any, ...]
    worker: str
    """The worker it is restricted to (chosen by the Conductor)."""


@dataclass(frozen=True)
class RequestGraph:
    tasks: list[TaskSpec]
    output_key: str
    """The task whose result is the request's final ``RequestOutput``."""
