"""Server fixtures: one cluster client per session, real uvicorn servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from mooncake.client import LLM, Rejected
from mooncake.outputs import RequestOutput
from mooncake.sampling_params import SamplingParams
from mooncake.server import ServerConfig, create_app


@pytest.fixture(scope="session")
def llm(chat_checkpoint: Path) -> Iterator[LLM]:
    """The cluster client every server test serves from (1 prefill + 1 decode worker)."""
    client = LLM(model=str(chat_checkpoint), prefill_workers=1, decode_workers=1)
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port from a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(llm: LLM) -> Iterator[ServerThread]:
    """An open server (no API key) over the session's client."""
    with ServerThread(create_app(ServerConfig(), backend=llm)) as s:
        yield s


@pytest.fixture(scope="session")
def client(server: ServerThread) -> openai.OpenAI:
    """The official client, unmodified (no retries, so 429 and 5xx surface at once)."""
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60
    )


@pytest.fixture(scope="session")
def model_name(llm: LLM) -> str:
    return llm.model_name


def metric(base_url: str, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
    """Sum of the samples of metric ``name`` on ``/metrics`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", headers=headers or {}).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class ScriptedBackend:
    """Wraps the real client; prompts starting with a marker token take a scripted path
    (admission rejection, internal failure, or a record of being closed early). ``SLOW``
    hands each output on 10 ms per new token late, so a request of a few hundred tokens
    is still running when a test's client goes away, however fast the engine is."""

    REJECT, FAIL, SLOW = 250, 251, 252

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.closed_early: list[str] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def max_model_len(self) -> int:
        return self.inner.max_model_len

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    async def stream(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        /,
        *,
        request_id: str | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        head = prompt[0] if isinstance(prompt, list) and prompt else None
        if head == self.REJECT:
            raise Rejected("estimated TTFT 3.20s > SLO 0.7s", 2.5)
        if head == self.FAIL:
            raise RuntimeError("secret detail: /internal/path worker tcp://10.0.0.7:4242")
        finished = False
        seen = 0
        try:
            async for out in self.inner.stream(
                prompt, params, request_id=request_id, cache_salt=cache_salt
            ):
                finished = out.finished
                yield out
                if head == self.SLOW:
                    # 10 ms per new token, not per output: one output may carry many
                    # tokens (a step's worth, or all that arrived while the reader was busy).
                    n = len(out.outputs[0].token_ids)
                    await asyncio.sleep(0.01 * max(1, n - seen))
                    seen = n
        finally:
            if not finished:
                self.closed_early.append(str(request_id))

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def scripted(llm: LLM) -> Iterator[tuple[ServerThread, ScriptedBackend]]:
    """A server over the scripted wrapper of the session's client."""
    backend = ScriptedBackend(llm)
    with ServerThread(create_app(ServerConfig(), backend=backend)) as s:
        yield s, backend
