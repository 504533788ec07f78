"""The load generator: send a workload at an arrival process, collect timings.

Arrivals: a trace's own times; otherwise gaps drawn from a gamma distribution with
shape ``burstiness`` and mean ``1 / request_rate`` (burstiness 1 is a Poisson process,
``request_rate=inf`` sends everything at once), as ``vllm bench serve`` does.
``max_concurrency`` caps requests in flight whatever the arrival process.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from mooncake.bench.datasets import SampleRequest
from mooncake.bench.request import RequestResult, payload, send_request


@dataclass(frozen=True)
class LoadConfig:
    """Where and how hard to send the workload."""

    base_url: str
    """Server root, e.g. ``http://127.0.0.1:8000``."""
    model: str | None = None
    """``model`` field of every request; ``None`` asks ``/v1/models`` for the first one."""
    endpoint: str = "/v1/completions"
    request_rate: float = math.inf
    """Mean requests per second (``inf``: all at once)."""
    burstiness: float = 1.0
    """Gamma shape of the inter-arrival gaps (1: Poisson; lower: burstier)."""
    max_concurrency: int | None = None
    """Most requests in flight."""
    seed: int = 0
    ignore_eos: bool = True
    """Send ``ignore_eos`` so every request generates exactly its ``max_tokens``."""
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.request_rate > 0:
            raise ValueError(f"request_rate: must be positive, got {self.request_rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness: must be positive, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be at least 1, got {self.max_concurrency}")


def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``n`` requests."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    theta = 1.0 / (rate * burstiness)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, theta)
    return out


async def resolve_model(client: httpx.AsyncClient, base_url: str) -> str:
    resp = await client.get(f"{base_url}/v1/models")
    resp.raise_for_status()
    return str(resp.json()["data"][0]["id"])


async def run_load(
    cfg: LoadConfig, requests: Sequence[SampleRequest]
) -> tuple[list[RequestResult], float, str]:
    """Send ``requests``; returns per-request results, the wall duration and the model name."""
    base = cfg.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(cfg.timeout_s, connect=30.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        model = cfg.model or await resolve_model(client, base)
        if all(r.arrival_s is not None for r in requests):
            times = [float(r.arrival_s or 0.0) for r in requests]
        else:
            times = arrival_times(len(requests), cfg.request_rate, cfg.burstiness, cfg.seed)
        sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        bar = tqdm(total=len(requests), desc="requests", unit="req", disable=not cfg.progress)
        url = base + cfg.endpoint
        t_start = time.perf_counter()

        async def one(req: SampleRequest, at: float) -> RequestResult:
            delay = at - (time.perf_counter() - t_start)
            if delay > 0:
                await asyncio.sleep(delay)
            body = payload(model, req, cfg.ignore_eos, cfg.extra_body)
            if sem is None:
                res = await send_request(client, url, body, req, t_start)
            else:
                async with sem:
                    res = await send_request(client, url, body, req, t_start)
            bar.update(1)
            return res

        results = await asyncio.gather(*(one(r, t) for r, t in zip(requests, times)))
        duration = time.perf_counter() - t_start
        bar.close()
    return list(results), duration, model


__all__ = ["LoadConfig", "arrival_times", "run_load"]
