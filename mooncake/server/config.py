"""``ServerConfig``: everything ``mooncake serve`` needs, validated once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mooncake.config import EngineConfig

GraphMode = Literal["disaggregated", "colocated"]
MODES: tuple[GraphMode, ...] = ("disaggregated", "colocated")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


@dataclass(frozen=True)
class ServerConfig:
    """How the OpenAI-compatible server runs and which cluster it serves from."""

    model: str | None = None
    """Local Hugging Face model directory; ``None`` serves the built-in default model."""
    served_model_names: tuple[str, ...] = ()
    """Names clients may put in ``model``; empty means the backend's own model name."""
    prefill_workers: int = 1
    """Prefill workers of the embedded cluster (ignored with ``scheduler``)."""
    decode_workers: int = 1
    """Decode workers of the embedded cluster (ignored with ``scheduler``)."""
    scheduler: str | None = None
    """Address of a running Dask scheduler (``tcp://host:8786``); ``None`` starts an
    embedded ``LocalCluster``."""
    mode: GraphMode = "disaggregated"
    """Request graph: prefill and decode on separate workers, or both on one (baseline)."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """TCP port to listen on (0 picks a free one)."""
    api_key: str | None = None
    """If set, every route but ``/health`` requires ``Authorization: Bearer <api_key>``."""
    ttft_slo_s: float | None = None
    """TTFT SLO (seconds) the Conductor admits against; ``None`` keeps its default."""
    tbt_slo_s: float | None = None
    """TBT SLO (seconds) the Conductor admits against; ``None`` keeps its default."""
    admission: Literal["none", "early", "predictive"] | None = None
    """Conductor admission policy; ``None``: ``predictive`` when an SLO is given, else ``none``."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Engine options of every worker (``engine.model`` is replaced by ``model``)."""
    log_level: str = "info"
    """uvicorn log level."""

    def __post_init__(self) -> None:
        _check(self.prefill_workers > 0, "prefill_workers", f"must be positive, got {self.prefill_workers}")
        _check(self.decode_workers > 0, "decode_workers", f"must be positive, got {self.decode_workers}")
        _check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        _check(0 <= self.port < 65536, "port", f"must be in [0, 65535], got {self.port}")
        _check(self.api_key is None or len(self.api_key) > 0, "api_key", "must not be empty")
        _check(self.ttft_slo_s is None or self.ttft_slo_s > 0, "ttft_slo_s", f"must be positive, got {self.ttft_slo_s}")
        _check(self.tbt_slo_s is None or self.tbt_slo_s > 0, "tbt_slo_s", f"must be positive, got {self.tbt_slo_s}")
        _check(
            self.admission in (None, "none", "early", "predictive"),
            "admission",
            f"must be none, early or predictive, got {self.admission!r}",
        )
        _check(all(self.served_model_names), "served_model_names", "names must be non-empty")


__all__ = ["MODES", "GraphMode", "ServerConfig"]
