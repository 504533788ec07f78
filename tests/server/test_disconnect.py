"""A client that goes away mid-request cancels it: the backend stream is closed early (which
aborts the request and frees its blocks) and the server's in-flight count returns to 0."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.server.conftest import ScriptedBackend, ServerThread, metric


def _wait_for(cond: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _idle(backend: ScriptedBackend) -> bool:
    """No engine runs or queues a request and every KV block is free again (cached blocks
    count as free: they stay in the prefix cache until evicted)."""
    stats = backend.inner.worker_stats().values()
    return all(
        s["running"] == 0 and s["waiting"] == 0 and s["free_blocks"] == s["num_blocks"]
        for s in stats
    )


def test_stream_disconnect_cancels(
    scripted: tuple[ServerThread, ScriptedBackend], model_name: str
) -> None:
    """Read two SSE events of a long generation, drop the connection: the request is closed
    early well before it could have finished, and counted as aborted."""
    server, backend = scripted
    body = {
        "model": model_name,
        "prompt": [256, 1, 2, 3],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
        "request_id": "gone-1",
    }
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{server.base_url}/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        events = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                assert "choices" in json.loads(line[6:])
                events += 1
                if events == 2:
                    break
    assert _wait_for(lambda: any(r.startswith("gone-1-") for r in backend.closed_early))
    assert _wait_for(lambda: metric(server.base_url, "mooncake:num_requests_running") == 0)
    assert metric(server.base_url, "mooncake:request_success_total", finished_reason="abort") >= 1
    assert _wait_for(lambda: _idle(backend))
    # The server still serves at once (the abandoned 900-token request is not hogging it).
    t0 = time.monotonic()
    r2 = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": model_name, "prompt": [256, 9], "max_tokens": 2},
    )
    assert r2.status_code == 200 and time.monotonic() - t0 < 10


def test_non_stream_disconnect_cancels(
    scripted: tuple[ServerThread, ScriptedBackend], model_name: str
) -> None:
    """A non-streamed request whose client times out is cancelled too."""
    server, backend = scripted
    body = {
        "model": model_name,
        "prompt": [ScriptedBackend.SLOW, 4, 5],
        "max_tokens": 1000,
        "ignore_eos": True,
        "request_id": "gone-2",
    }
    # The client goes away once the request is streaming inside the cluster client (not
    # at a fixed time: on a busy machine the request may not have got that far, and then
    # there is nothing running to cancel).
    payload = json.dumps(body).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    assert _wait_for(lambda: any(k.startswith("gone-2-") for k in list(backend.inner._sinks)))
    conn.close()
    assert _wait_for(lambda: any(r.startswith("gone-2-") for r in backend.closed_early))
    assert _wait_for(lambda: metric(server.base_url, "mooncake:num_requests_running") == 0)
    assert _wait_for(lambda: _idle(backend))
