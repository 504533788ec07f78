"""mooncake: KVCache-centric, prefill/decode-disaggregated LLM serving on Dask.

``mooncake.LLM`` and ``mooncake.SamplingParams`` are the front door; ``LLM`` (and with
it Dask) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mooncake.sampling_params import SamplingParams

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mooncake.client import LLM, Rejected, Unavailable, WorkerLost


def __getattr__(name: str) -> Any:
    if name in ("LLM", "Rejected", "Unavailable", "WorkerLost"):
        from mooncake import client

        return getattr(client, name)
    raise AttributeError(f"module 'mooncake' has no attribute {name!r}")


__all__ = ["LLM", "Rejected", "SamplingParams", "Unavailable", "WorkerLost", "__version__"]
