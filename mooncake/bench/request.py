"""One streamed request against an OpenAI-compatible ``/v1/completions``, timed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from mooncake.bench.datasets import SampleRequest


@dataclass
class RequestResult:
    """What happened to one request (times in seconds, from ``time.perf_counter``)."""

    prompt_len: int
    expected_output_len: int
    start_s: float = 0.0
    """Send time relative to the benchmark start."""
    success: bool = False
    rejected: bool = False
    """The server refused it (HTTP 429)."""
    status: int | None = None
    error: str = ""
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    """Gaps between successive streamed chunks."""
    output_tokens: int = 0
    cached_tokens: int | None = None

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for a single token)."""
        return (
            (self.latency_s - self.ttft_s) / (self.output_tokens - 1)
            if self.output_tokens > 1
            else 0.0
        )


def payload(
    model: str, req: SampleRequest, ignore_eos: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": req.prompt,
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra or {})
    return body


async def send_request(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], req: SampleRequest, t_start: float
) -> RequestResult:
    """POST ``body`` with ``stream: true`` and time the SSE chunks.

    TTFT is the time to the first chunk that carries a choice; each later chunk adds an
    inter-token latency; the output token count comes from the final ``usage`` chunk.
    """
    res = RequestResult(req.prompt_len, req.output_len)
    st = time.perf_counter()
    res.start_s = st - t_start
    last = st
    chunks = 0
    try:
        async with client.stream("POST", url, json=body) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                res.rejected = resp.status_code == 429
                res.error = f"HTTP {resp.status_code}: {text[:300]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    res.error = str(msg["error"].get("message", msg["error"]))
                    return res
                now = time.perf_counter()
                if msg.get("choices"):
                    if chunks == 0:
                        res.ttft_s = now - st
                    else:
                        res.itl_s.append(now - last)
                    chunks += 1
                    last = now
                usage = msg.get("usage")
                if usage:
                    res.output_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    if details.get("cached_tokens") is not None:
                        res.cached_tokens = int(details["cached_tokens"])
    except (httpx.HTTPError, OSError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    if chunks == 0:
        res.error = "no chunk with a choice was received"
        return res
    res.success = True
    res.latency_s = last - st
    if res.output_tokens == 0:
        res.output_tokens = chunks
    return res


__all__ = ["RequestResult", "payload", "send_request"]
