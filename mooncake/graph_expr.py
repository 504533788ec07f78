"""A request's task graph as the Dask expression the client submits: the tasks as a
low-level graph with each task's worker restriction as an annotation.

``Client.get`` on a ``HighLevelGraph`` (one layer per task, each annotated with its
worker) made the scheduler optimise and walk the high-level graph, and then order it
with ``dask.order`` in a thread, for every request. This expression hands the scheduler
the tasks and the annotations as they are, and the client sends each key's priority
with it (``internal_priority``): no optimisation, no ordering. The scheduler unpickles
it, so it imports nothing but dask.
"""

from __future__ import annotations

from typing import Any

from dask._expr import Expr


class RequestGraphExpr(Expr):
    """Operands: ``dsk`` (key -> ``dask._task_spec.Task``) and ``annotations`` (annotation
    type -> key -> value, e.g. ``{"workers": {key: [address]}}``)."""

    _parameters = ["dsk", "annotations"]  # noqa: RUF012 (Expr declares it so)

    def __dask_keys__(self) -> list[Any]:
        return list(self.operands[0])

    def _layer(self) -> dict[Any, Any]:
        return dict(self.operands[0])

    def __dask_annotations__(self) -> dict[str, dict[Any, Any]]:
        annotations: dict[str, dict[Any, Any]] = self.operands[1]
        return annotations


__all__ = ["RequestGraphExpr"]
