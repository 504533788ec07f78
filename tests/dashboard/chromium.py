"""Headless Chromium driven through the DevTools protocol (tests only): load a page,
evaluate JavaScript in it, take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def find_or_install() -> str | None:
    """The Chromium binary; installs Debian's ``chromium`` when missing and root.
    Returns None when neither works."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(
            ["apt-get", "update", "-q"], check=False, capture_output=True, timeout=300, env=env
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"],
            check=False,
            capture_output=True,
            timeout=900,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("chromium")


class Browser:
    """One headless Chromium with one page, controlled over the DevTools websocket."""

    def __init__(self, binary: str, width: int = 1500, height: int = 1150) -> None:
        self.profile = tempfile.mkdtemp(prefix="mooncake-chromium-")
        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read()
        )
        self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        from tornado.websocket import websocket_connect

        async def connect() -> Any:
            return await websocket_connect(self.ws_url, max_message_size=256 * 2**20)

        self.ws = self.loop.run_until_complete(connect())

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; returns its result (events in between are skipped)."""

        async def go() -> dict[str, Any]:
            i = next(self._ids)
            await self.ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = await self.ws.read_message()
                if msg is None:
                    raise RuntimeError("DevTools connection closed")
                data = json.loads(msg)
                if data.get("id") == i:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    result: dict[str, Any] = data.get("result", {})
                    return result

        return self.loop.run_until_complete(asyncio.wait_for(go(), 60))

    def goto(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    async def _close_ws(self) -> None:
        self.ws.close()
        await asyncio.sleep(0)

    def close(self) -> None:
        try:
            if hasattr(self, "ws"):
                # inside our own loop: tornado's close() looks up the current loop, and
                # outside a running one that fails when earlier tests closed the default
                self.loop.run_until_complete(self._close_ws())
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
            if hasattr(self, "loop"):
                self.loop.close()
