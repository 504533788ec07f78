"""What the server needs from the cluster client, and how it builds one.

The server is a thin adapter: everything it serves goes through an object with this
shape, which :class:`mooncake.client.LLM` is. Typing against the protocol (rather than
the class) keeps the HTTP layer independent of how the client reaches the cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from mooncake.conductor.config import ConductorConfig
from mooncake.outputs import RequestOutput
from mooncake.sampling_params import SamplingParams
from mooncake.server.config import DEFAULT_TTFT_SLO_S, ServerConfig
from mooncake.tokenizer import Tokenizer


class ServingBackend(Protocol):
    """The client side of a serving cluster (``mooncake.client.LLM``)."""

    @property
    def model_name(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def tokenizer(self) -> Tokenizer | None: ...

    def stream(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        /,
        *,
        request_id: str | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Cumulative outputs of one request; the last has ``finished=True``.

        Raises ``ValueError`` (bad input) or ``Rejected`` (admission) before the first
        output. Closing the iterator early aborts the request and frees its blocks.
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    def close(self) -> None: ...


def build_backend(config: ServerConfig) -> ServingBackend:
    """Start (or connect to) the cluster described by ``config``. Blocking: seconds."""
    from dataclasses import replace

    from mooncake.client import LLM, WorkerConfig
    from mooncake.security import TLSFiles

    return LLM(
        model=config.model,
        prefill_workers=config.prefill_workers,
        decode_workers=config.decode_workers,
        scheduler=config.scheduler,
        mode=config.mode,
        engine_config=replace(config.engine, model=config.model),
        conductor_config=conductor_config(config),
        # Workers of a deployed cluster get this from the client too (its worker plugin).
        worker_config=WorkerConfig(
            stream_kv=config.stream_kv, cpu_core_lending=config.cpu_core_lending
        ),
        dashboard_address=config.dashboard_address,
        tls=TLSFiles(config.tls_ca_file, config.tls_cert, config.tls_key),
        insecure=config.insecure,
    )


def conductor_config(config: ServerConfig) -> ConductorConfig:
    """The Conductor's admission and SLOs for ``config``: admission is on by default
    (``ttft`` against ``DEFAULT_TTFT_SLO_S``); ``predictive`` when an SLO is given."""
    slos: dict[str, float] = {}
    if config.ttft_slo_s is not None:
        slos["ttft_slo_s"] = config.ttft_slo_s
    if config.tbt_slo_s is not None:
        slos["tbt_slo_s"] = config.tbt_slo_s
    admission = config.admission or ("predictive" if slos else "ttft")
    slos.setdefault("ttft_slo_s", DEFAULT_TTFT_SLO_S)
    return ConductorConfig(admission=admission, **slos)  # type: ignore[arg-type]


__all__ = ["ServingBackend", "build_backend", "conductor_config"]
