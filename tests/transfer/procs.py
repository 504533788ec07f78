"""Child-process bodies for the transfer tests (run under ``spawn``)."""

from __future__ import annotations

from multiprocessing.connection import Connection

from mooncake.store.config import StoreConfig
from mooncake.store.store import BlockStore
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.server import BlockServer
from tests.store.kvfactories import make_chain


def serve_chain(
    cfg: StoreConfig, n: int, seed: int, conn: Connection, transfer: TransferConfig
) -> None:
    """Own a store holding ``make_chain(n, seed=seed)`` and serve it until told to stop."""
    with BlockStore(cfg) as store:
        store.put_many(make_chain(n, seed=seed))
        with BlockServer(store, transfer) as server:
            conn.send(server.peer())
            conn.recv()  # stop
