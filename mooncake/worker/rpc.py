"""A blocking call to another worker's handler, from a task or a worker thread."""

from __future__ import annotations

from typing import Any

from distributed import Worker, get_worker
from distributed.utils import sync


def rpc(addr: str, method: str, *, on: Worker | None = None, **kwargs: Any) -> Any:
    """Call ``method`` (a handler of the worker at ``addr``) on this worker's loop (``on``,
    or the current task's) and wait for its answer. Must run on a worker thread, never
    on the worker's loop."""
    worker = on if on is not None else get_worker()

    async def go() -> Any:
        return await getattr(worker.rpc(addr), method)(**kwargs)

    return sync(worker.loop, go)


__all__ = ["rpc"]
