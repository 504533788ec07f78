"""Closed streams stop decoding: an HTTP client that goes away mid-stream, or an
``LLM.stream`` generator closed early, stops the request on every worker at once and
frees its KV blocks (real uvicorn server, 1 prefill + 1 decode worker)."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mooncake.client import LLM
from mooncake.sampling_params import SamplingParams
from tests.server.conftest import ServerThread

pytestmark = pytest.mark.cluster


def _busy(llm: LLM) -> list[tuple[int, int, int]]:
    """(running, waiting, blocks in use) per worker; cached blocks count as free."""
    return [
        (s["running"], s["waiting"], s["num_blocks"] - s["free_blocks"])
        for s in llm.worker_stats().values()
    ]


def _wait_idle(llm: LLM, timeout: float) -> float | None:
    """Seconds until every worker is idle with all blocks free, or None after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(b == (0, 0, 0) for b in _busy(llm)):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def _read_then_close(base_url: str, model: str, i: int, chunks: int) -> int:
    body = {
        "model": model,
        "prompt": [256, *range(10 + i, 30 + i)],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }
    seen = 0
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{base_url}/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and "choices" in json.loads(line[6:]):
                seen += 1
                if seen == chunks:
                    break
    return seen


def test_closed_http_streams_stop_on_workers(
    server: ServerThread, llm: LLM, model_name: str
) -> None:
    """10 long streams (900 tokens) closed by their clients after 3 chunks: within 1 s no
    worker runs or queues a request and every KV block is free again."""
    assert _wait_idle(llm, 30) is not None
    with ThreadPoolExecutor(10) as pool:
        seen = list(
            pool.map(lambda i: _read_then_close(server.base_url, model_name, i, 3), range(10))
        )
    assert seen == [3] * 10
    took = _wait_idle(llm, 1.0)
    assert took is not None, f"still busy 1 s after the streams closed: {_busy(llm)}"


def test_closed_llm_stream_stops_on_workers(llm: LLM) -> None:
    """``LLM.stream`` generators closed early (``aclose``, and a ``break`` that drops the
    generator) stop their requests on every worker within 1 s."""

    async def read_then_close(i: int, drop: bool) -> None:
        agen = llm.stream(
            [256, *range(50 + i, 70 + i)],
            SamplingParams(temperature=0, max_tokens=900, ignore_eos=True),
        )
        n = 0
        async for _ in agen:
            n += 1
            if n == 3:
                break
        if not drop:
            await agen.aclose()

    async def main() -> None:
        await asyncio.gather(*(read_then_close(i, drop=i % 2 == 0) for i in range(6)))
        await asyncio.sleep(0)  # let the dropped generators' finalizers schedule their aclose

    assert _wait_idle(llm, 30) is not None
    asyncio.run(main())
    took = _wait_idle(llm, 1.0)
    assert took is not None, f"still busy 1 s after the streams closed: {_busy(llm)}"
