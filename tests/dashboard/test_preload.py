"""``dask scheduler --preload mooncake.dashboard.preload``: a scheduler started by hand
serves the Mooncake page (linked from the dashboard) before any client connects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, deadline: float) -> str:
    while True:
        try:
            return urllib.request.urlopen(url, timeout=10).read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.cluster
def test_preloaded_scheduler_serves_page_and_metrics():
    """The page answers with its Bokeh document, the status page links it, and /metrics
    works with no Conductor yet (no mooncake samples, no error)."""
    port, dash = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-address",
        f"127.0.0.1:{dash}",
        "--preload",
        "mooncake.dashboard.preload",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        page = _get(f"http://127.0.0.1:{dash}/mooncake", deadline)  # an unknown path is a 404
        assert "bokeh" in page.lower() and 'href="mooncake"' in page
        assert 'href="mooncake"' in _get(f"http://127.0.0.1:{dash}/status", deadline)
        metrics = _get(f"http://127.0.0.1:{dash}/metrics", deadline)
        assert "dask_scheduler_workers" in metrics
        assert "mooncake:" not in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
