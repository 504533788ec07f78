"""Every port a running ``mooncake serve`` listens on, probed by an outsider process.

The ports come from the server's process tree (psutil), not from its configuration, so
a listener added later is probed too."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server.conftest import free_port

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"

    def listening(self) -> dict[int, int]:
        """TCP port -> pid, for every listening socket of the server's process tree."""
        root = psutil.Process(self.proc.pid)
        out: dict[int, int] = {}
        for p in [root, *root.children(recursive=True)]:
            try:
                conns = p.net_connections(kind="inet")
            except psutil.Error:
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    out[c.laddr.port] = p.pid
        return out

    def listening_hosts(self) -> set[str]:
        root = psutil.Process(self.proc.pid)
        hosts = set()
        for p in [root, *root.children(recursive=True)]:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    hosts.add(c.laddr.ip)
        return hosts


@pytest.fixture(scope="module")
def served(chat_checkpoint: Path) -> Iterator[Served]:
    """``mooncake serve`` with its defaults (embedded cluster, 1 prefill + 1 decode)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mooncake.cli",
            "serve",
            "--model",
            str(chat_checkpoint),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    s = Served(proc, port)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the server exited"
            try:
                if httpx.get(f"{s.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the server did not come up")
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _complete(s: Served, stream: bool = False) -> None:
    body = {"prompt": "hello there", "max_tokens": 4, "temperature": 0, "stream": stream}
    r = httpx.post(f"{s.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


def _vulnerable_listener() -> tuple[int, socket.socket]:
    """A listener that unpickles 4-byte length-prefixed frames: the probe's positive control."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                try:
                    (n,) = struct.unpack("<I", c.recv(4))
                    data = b""
                    while len(data) < n and (chunk := c.recv(n - len(data))):
                        data += chunk
                    pickle.loads(data)
                except Exception:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], srv


def test_no_listener_runs_a_pickle_it_receives(served: Served, tmp_path: Path) -> None:
    """An outsider process sends file-creating pickles (bare, 4/8-byte length-prefixed,
    Dask comm frames raw and through distributed's connect over tcp and tls, inside an HTTP
    body) to every port the server's process tree listens on: no file appears, and the
    server still answers, streaming included. The same probe does create its file on a
    listener that unpickles (so it would notice)."""
    _complete(served, stream=True)  # the token stream and block servers are in use
    ports = served.listening()
    assert served.port in ports and len(ports) >= 6, (
        ports
    )  # HTTP, scheduler, nannies, workers, blocks, tokens
    control, srv = _vulnerable_listener()
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "tests" / "security_probe.py"),
                str(markers),
                *map(str, [*ports, control]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        srv.close()
    assert out.returncode == 0, out.stderr
    time.sleep(1)
    made = sorted(os.listdir(markers))
    assert f"{control}-len4le" in made, "the probe did not work"
    assert [m for m in made if not m.startswith(f"{control}-")] == []
    assert served.proc.poll() is None
    _complete(served, stream=True)
    _complete(served)


def test_everything_listens_on_loopback_only(served: Served) -> None:
    """With the defaults no socket of the process tree listens beyond 127.0.0.1 (the
    dashboard included)."""
    hosts = served.listening_hosts()
    assert hosts and all(h.startswith("127.") for h in hosts), hosts


def test_a_dask_client_without_credentials_cannot_run_anything(
    served: Served, tmp_path: Path
) -> None:
    """A plain ``distributed.Client`` (no certificates) cannot connect to any port of the
    server process (where the embedded scheduler runs), over tcp:// or tls://, so it cannot
    ``run_on_scheduler``: the marker file its function would write never appears."""
    from distributed import Client

    main_ports = [
        p for p, pid in served.listening().items() if pid == served.proc.pid and p != served.port
    ]
    marker = tmp_path / "ran"

    def touch() -> None:
        marker.write_text("ran")

    async def attempt(address: str) -> str | None:
        try:
            client = await asyncio.wait_for(Client(address, asynchronous=True, timeout=2), 8)
        except Exception:  # refused, timed out (a TLS port answering a plain handshake), ...
            return None
        try:
            await asyncio.wait_for(client.run_on_scheduler(touch), 5)
            return address
        except Exception:
            return None
        finally:
            await client.close()

    async def all_attempts() -> list[str | None]:
        return await asyncio.gather(
            *(attempt(f"{scheme}://127.0.0.1:{p}") for p in main_ports for scheme in ("tcp", "tls"))
        )

    assert main_ports
    assert [a for a in asyncio.run(all_attempts()) if a] == []
    assert not marker.exists()
