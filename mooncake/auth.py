"""Mutual HMAC challenge-response for mooncake's own TCP listeners (stdlib only).

Every socket mooncake opens besides Dask's comms (block servers, the client's token
stream) starts with this handshake, and serves nothing before it succeeds. Both sides
hold the same secret; it never crosses the wire, only proofs bound to fresh nonces do::

    server -> client   MAGIC | purpose-length u8 | purpose | nonce_s (32 bytes)
    client -> server   nonce_c (32 bytes) | HMAC-SHA256(secret, b"c" | purpose | nonce_s | nonce_c)
    server -> client   HMAC-SHA256(secret, b"s" | purpose | nonce_s | nonce_c)

The server checks the client's proof before the client may send anything else (a peer
without the secret is cut off after 64 bytes it cannot make valid); the client checks the
server's proof before it trusts what it receives (a process squatting on a stale port
learns nothing and feeds nothing in). ``purpose`` keeps a proof for one kind of listener
from opening another. A handshake has a deadline on both sides.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket

MAGIC = b"MKAUTH1\0"
NONCE_BYTES = 32
MAC_BYTES = 32
SECRET_MIN_BYTES = 16
PURPOSE_BLOCKS = b"blocks"
"""Block servers (``mooncake.transfer.server``)."""
PURPOSE_TOKENS = b"tokens"
"""The client's token stream (``mooncake.worker.token_stream``)."""
HANDSHAKE_TIMEOUT_S = 5.0
"""How long either side waits for the other's part of the handshake."""


class AuthError(ConnectionError):
    """The peer does not hold the secret (or did not answer in time)."""


def new_secret() -> bytes:
    """A fresh random secret (32 bytes)."""
    return os.urandom(32)


def check_secret(secret: bytes, name: str = "secret") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``secret`` is usable."""
    if not isinstance(secret, bytes) or len(secret) < SECRET_MIN_BYTES:
        raise ValueError(f"{name}: must be at least {SECRET_MIN_BYTES} bytes")


def _mac(secret: bytes, side: bytes, purpose: bytes, nonce_s: bytes, nonce_c: bytes) -> bytes:
    return hmac.new(secret, side + purpose + nonce_s + nonce_c, hashlib.sha256).digest()


def _hello(purpose: bytes, nonce_s: bytes) -> bytes:
    return MAGIC + bytes([len(purpose)]) + purpose + nonce_s


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AuthError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


def _with_deadline(sock: socket.socket, timeout: float) -> float | None:
    old = sock.gettimeout()
    sock.settimeout(timeout)
    return old


def server_handshake(
    sock: socket.socket, secret: bytes, purpose: bytes, timeout: float = HANDSHAKE_TIMEOUT_S
) -> None:
    """Authenticate the client on a freshly accepted blocking socket; raises ``AuthError``.

    Restores the socket's timeout afterwards (socket-option timeouts are left alone)."""
    nonce_s = os.urandom(NONCE_BYTES)
    old = _with_deadline(sock, timeout)
    try:
        sock.sendall(_hello(purpose, nonce_s))
        reply = _recv_exact(sock, NONCE_BYTES + MAC_BYTES)
    except (OSError, TimeoutError) as e:
        raise AuthError(f"handshake failed: {e}") from e
    nonce_c, proof = reply[:NONCE_BYTES], reply[NONCE_BYTES:]
    if not hmac.compare_digest(proof, _mac(secret, b"c", purpose, nonce_s, nonce_c)):
        raise AuthError("peer does not hold the secret")
    try:
        sock.sendall(_mac(secret, b"s", purpose, nonce_s, nonce_c))
    except OSError as e:
        raise AuthError(f"handshake failed: {e}") from e
    finally:
        sock.settimeout(old)


def client_handshake(
    sock: socket.socket, secret: bytes, purpose: bytes, timeout: float = HANDSHAKE_TIMEOUT_S
) -> None:
    """Prove the secret to a server and check its proof; raises ``AuthError``."""
    old = _with_deadline(sock, timeout)
    try:
        head = _recv_exact(sock, len(MAGIC) + 1 + len(purpose) + NONCE_BYTES)
        nonce_s = _check_hello(head, purpose)
        nonce_c = os.urandom(NONCE_BYTES)
        sock.sendall(nonce_c + _mac(secret, b"c", purpose, nonce_s, nonce_c))
        proof = _recv_exact(sock, MAC_BYTES)
    except (OSError, TimeoutError) as e:
        raise AuthError(f"handshake failed: {e}") from e
    finally:
        sock.settimeout(old)
    if not hmac.compare_digest(proof, _mac(secret, b"s", purpose, nonce_s, nonce_c)):
        raise AuthError("server does not hold the secret")


def _check_hello(head: bytes, purpose: bytes) -> bytes:
    if (
        head[: len(MAGIC)] != MAGIC
        or head[len(MAGIC)] != len(purpose)
        or head[len(MAGIC) + 1 : -NONCE_BYTES] != purpose
    ):
        raise AuthError(f"not a mooncake {purpose.decode(errors='replace')} listener")
    return head[-NONCE_BYTES:]


async def server_handshake_async(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: bytes,
    purpose: bytes,
    timeout: float = HANDSHAKE_TIMEOUT_S,
) -> None:
    """:func:`server_handshake` on asyncio streams; raises ``AuthError``."""
    nonce_s = os.urandom(NONCE_BYTES)
    try:
        writer.write(_hello(purpose, nonce_s))
        reply = await asyncio.wait_for(reader.readexactly(NONCE_BYTES + MAC_BYTES), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
        raise AuthError(f"handshake failed: {e!r}") from e
    nonce_c, proof = reply[:NONCE_BYTES], reply[NONCE_BYTES:]
    if not hmac.compare_digest(proof, _mac(secret, b"c", purpose, nonce_s, nonce_c)):
        raise AuthError("peer does not hold the secret")
    writer.write(_mac(secret, b"s", purpose, nonce_s, nonce_c))


__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "PURPOSE_BLOCKS",
    "PURPOSE_TOKENS",
    "AuthError",
    "check_secret",
    "client_handshake",
    "new_secret",
    "server_handshake",
    "server_handshake_async",
]
