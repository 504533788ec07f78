"""An outsider: sends pickles that would create a file to every given TCP port.

Run as its own process (``python tests/security_probe.py MARKER_DIR PORT...``): it holds
no secret, no certificate, nothing but the ports. Each pickle, when loaded, opens
``MARKER_DIR/<port>-<framing>`` for writing, so a file appearing there means a listener
ran code it received. Framings: the bare pickle, a 4-byte (little- and big-endian) and an
8-byte length prefix, the frames of a Dask comm message (raw on the socket, and through
distributed's own ``connect`` over tcp:// and tls://), and an HTTP POST carrying it.
Every attempt has a deadline; the script prints what it sent and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import sys

TIMEOUT_S = 1.5


class Touch:
    """Unpickling this creates ``path`` (``open(path, "w")``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _payload(marker_dir: str, port: int, framing: str) -> bytes:
    return pickle.dumps(Touch(os.path.join(marker_dir, f"{port}-{framing}")), protocol=5)


def _send_raw(port: int, data: bytes) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
            s.settimeout(TIMEOUT_S)
            s.sendall(data)
            try:  # let the server read (and answer, or hang up)
                s.recv(65536)
            except OSError:
                pass
    except OSError:
        pass


async def _dask_frames(port: int, marker_dir: str) -> None:
    from distributed.comm import connect
    from distributed.comm.tcp import _add_frames_header
    from distributed.comm.utils import to_frames
    from distributed.protocol.serialize import Serialize

    # A message whose payload Dask serializes with pickle, as a worker's "run" would.
    msg = {
        "op": "run",
        "function": Serialize(Touch(os.path.join(marker_dir, f"{port}-dask-raw"))),
        "reply": True,
    }
    frames = await to_frames(msg, serializers=["pickle"])
    frames, _, _ = _add_frames_header(frames)
    _send_raw(port, b"".join(bytes(f) for f in frames))
    for scheme in ("tcp", "tls"):
        try:
            comm = await asyncio.wait_for(
                connect(f"{scheme}://127.0.0.1:{port}", timeout=TIMEOUT_S), TIMEOUT_S + 1
            )
        except Exception:
            continue
        try:
            path = os.path.join(marker_dir, f"{port}-dask-{scheme}")
            await asyncio.wait_for(
                comm.write(
                    {"op": "run", "function": Serialize(Touch(path)), "reply": True},
                    serializers=["pickle"],
                ),
                TIMEOUT_S,
            )
            await asyncio.wait_for(comm.read(), TIMEOUT_S)
        except Exception:
            pass
        finally:
            comm.abort()


def probe(marker_dir: str, port: int) -> None:
    _send_raw(port, _payload(marker_dir, port, "raw"))
    p = _payload(marker_dir, port, "len4le")
    _send_raw(port, struct.pack("<I", len(p)) + p)
    p = _payload(marker_dir, port, "len4be")
    _send_raw(port, struct.pack(">I", len(p)) + p)
    p = _payload(marker_dir, port, "len8")
    _send_raw(port, struct.pack("<Q", len(p)) + p)
    p = _payload(marker_dir, port, "http")
    _send_raw(
        port,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % len(p) + p,
    )
    asyncio.run(_dask_frames(port, marker_dir))


def main(argv: list[str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    marker_dir, ports = argv[0], [int(p) for p in argv[1:]]
    with ThreadPoolExecutor(len(ports)) as pool:  # ports in parallel, each on its own loop
        for port, _ in zip(ports, pool.map(lambda p: probe(marker_dir, p), ports)):
            print(f"probed {port}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
