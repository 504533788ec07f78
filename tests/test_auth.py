"""``mooncake.auth``: the mutual HMAC handshake of mooncake's own listeners."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from mooncake import auth


def _pair_run(
    server_secret: bytes,
    client_secret: bytes,
    purpose: bytes = auth.PURPOSE_BLOCKS,
    client_purpose: bytes | None = None,
) -> tuple[BaseException | None, BaseException | None]:
    a, b = socket.socketpair()
    errors: list[BaseException | None] = [None, None]

    def server() -> None:
        try:
            auth.server_handshake(a, server_secret, purpose, timeout=2)
        except BaseException as e:
            errors[0] = e
            a.close()

    t = threading.Thread(target=server)
    t.start()
    try:
        auth.client_handshake(b, client_secret, client_purpose or purpose, timeout=2)
    except BaseException as e:
        errors[1] = e
        b.close()  # the server sees the refusal at once, not at its deadline
    t.join(5)
    a.close()
    b.close()
    return errors[0], errors[1]


def test_same_secret_authenticates_both_ways() -> None:
    """Both sides holding the secret: the handshake completes on both."""
    key = auth.new_secret()
    assert _pair_run(key, key) == (None, None)


def test_wrong_secret_is_refused_by_the_server() -> None:
    """A client with another secret is refused by the server, and learns it (no proof back)."""
    srv, cli = _pair_run(auth.new_secret(), auth.new_secret())
    assert isinstance(srv, auth.AuthError) and isinstance(cli, auth.AuthError)


def test_a_proof_for_one_purpose_does_not_open_another() -> None:
    """A client expecting a block server does not accept a token-stream listener's hello."""
    key = auth.new_secret()
    _, cli = _pair_run(key, key, auth.PURPOSE_TOKENS, auth.PURPOSE_BLOCKS)
    assert isinstance(cli, auth.AuthError) and "not a mooncake" in str(cli)


def test_a_silent_client_times_out() -> None:
    """A peer that connects and sends nothing is cut off at the deadline."""
    a, b = socket.socketpair()
    with a, b, pytest.raises(auth.AuthError):
        auth.server_handshake(a, auth.new_secret(), auth.PURPOSE_BLOCKS, timeout=0.2)


def test_async_server_side_interoperates() -> None:
    """The asyncio server side accepts the blocking client side with the same secret and
    refuses another secret."""
    key = auth.new_secret()

    async def run(client_key: bytes) -> bool:
        ok = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await auth.server_handshake_async(
                    reader, writer, key, auth.PURPOSE_TOKENS, timeout=2
                )
                ok.set_result(True)
            except auth.AuthError:
                ok.set_result(False)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def connect() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                try:
                    auth.client_handshake(s, client_key, auth.PURPOSE_TOKENS, timeout=2)
                except auth.AuthError:
                    pass

        await asyncio.to_thread(connect)
        result = await asyncio.wait_for(ok, 5)
        server.close()
        return bool(result)

    assert asyncio.run(run(key)) is True
    assert asyncio.run(run(auth.new_secret())) is False


def test_short_secrets_are_rejected() -> None:
    """A secret under 16 bytes is a ValueError naming the field."""
    with pytest.raises(ValueError, match="secret"):
        auth.check_secret(b"short")
