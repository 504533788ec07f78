"""``ServerConfig``: everything ``mooncake serve`` needs, validated once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mooncake.config import EngineConfig

GraphMode = Literal["disaggregated", "colocated"]
MODES: tuple[GraphMode, ...] = ("disaggregated", "colocated")
AdmissionName = Literal["none", "ttft", "early", "predictive"]
ADMISSIONS: tuple[AdmissionName, ...] = ("none", "ttft", "early", "predictive")

DEFAULT_TTFT_SLO_S = 10.0
"""TTFT SLO ``mooncake serve`` admits against when none is given (docs/server.md says how
to choose one): past it a request is answered 429 + ``Retry-After`` at once instead of
queueing for minutes."""


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
    stream_kv: bool = False
    """Stream each request's KV to its decode worker chunk by chunk while prefill runs
    (``WorkerConfig.stream_kv``; docs/cluster.md)."""
    cpu_core_lending: bool = False
    """CPU engines of this host borrow the cores of engines that have no work
    (``WorkerConfig.cpu_core_lending``; docs/cluster.md)."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """TCP port to listen on (0 picks a free one)."""
    api_key: str | None = None
    """If set, every route but ``/health`` requires ``Authorization: Bearer <api_key>``."""
    ttft_slo_s: float | None = None
    """TTFT SLO (seconds) the Conductor admits against; ``None``: ``DEFAULT_TTFT_SLO_S``."""
    tbt_slo_s: float | None = None
    """TBT SLO (seconds) the Conductor admits against; ``None`` keeps its default."""
    admission: AdmissionName | None = None
    """Conductor admission policy; ``None``: ``predictive`` when an SLO is given, else
    ``ttft`` against ``DEFAULT_TTFT_SLO_S``. ``none`` admits everything."""
    dashboard_address: str | None = "127.0.0.1:0"
    """Where the embedded cluster serves the Dask dashboard (loopback by default; ``None``:
    no dashboard)."""
    tls_ca_file: str | None = None
    """CA certificate to join ``scheduler`` over TLS with (else Dask's TLS config)."""
    tls_cert: str | None = None
    """This client's certificate for ``scheduler``."""
    tls_key: str | None = None
    """This client's private key (when not inside ``tls_cert``)."""
    insecure: bool = False
    """Allow a plain-TCP ``scheduler`` off the loopback; with the embedded cluster, plain
    TCP on the loopback instead of TLS."""
    max_body_bytes: int = 8 * 1024**2
    """Largest request body accepted (413 beyond)."""
    max_prompts_per_request: int = 32
    """Most prompts one ``/v1/completions`` request may carry."""
    max_prompt_chars: int | None = None
    """Longest text prompt (or chat, all messages) accepted before tokenization; ``None``:
    what ``max_model_len`` tokens of the longest vocabulary entry could spell."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Engine options of every worker (``engine.model`` is replaced by ``model``)."""
    log_level: str = "info"
    """uvicorn log level."""

    def __post_init__(self) -> None:
        _check(
            self.prefill_workers > 0,
            "prefill_workers",
            f"must be positive, got {self.prefill_workers}",
        )
        _check(
            self.decode_workers > 0,
            "decode_workers",
            f"must be positive, got {self.decode_workers}",
        )
        _check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        _check(0 <= self.port < 65536, "port", f"must be in [0, 65535], got {self.port}")
        _check(self.api_key is None or len(self.api_key) > 0, "api_key", "must not be empty")
        _check(
            self.ttft_slo_s is None or self.ttft_slo_s > 0,
            "ttft_slo_s",
            f"must be positive, got {self.ttft_slo_s}",
        )
        _check(
            self.tbt_slo_s is None or self.tbt_slo_s > 0,
            "tbt_slo_s",
            f"must be positive, got {self.tbt_slo_s}",
        )
        _check(
            self.admission is None or self.admission in ADMISSIONS,
            "admission",
            f"must be one of {ADMISSIONS}, got {self.admission!r}",
        )
        _check(
            self.max_body_bytes > 0,
            "max_body_bytes",
            f"must be positive, got {self.max_body_bytes}",
        )
        _check(
            self.max_prompts_per_request > 0,
            "max_prompts_per_request",
            f"must be positive, got {self.max_prompts_per_request}",
        )
        _check(
            self.max_prompt_chars is None or self.max_prompt_chars > 0,
            "max_prompt_chars",
            f"must be positive, got {self.max_prompt_chars}",
        )
        _check(
            (self.tls_ca_file is None) == (self.tls_cert is None),
            "tls_ca_file",
            "tls_ca_file and tls_cert go together",
        )
        _check(self.tls_key is None or self.tls_cert is not None, "tls_key", "needs tls_cert")
        _check(all(self.served_model_names), "served_model_names", "names must be non-empty")


__all__ = [
    "ADMISSIONS",
    "DEFAULT_TTFT_SLO_S",
    "MODES",
    "AdmissionName",
    "GraphMode",
    "ServerConfig",
]
