"""Block fetches between two test hosts while the serving host's link flaps: a record
cut off mid-way by the link is never delivered (every delivered block is byte-equal to
the one stored), no fetch hangs past its I/O timeout, and once the link is back a fetch
brings every block. Host 2 runs a store and its block server, host 3 the fetcher (the
default backends a worker runs with, TCP between hosts), fetching 64 blocks of 2 MiB
round after round while the test pulls host 2's link."""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster]

IO_TIMEOUT_S = 2.0

# The KV spec and chain both sides build (the same seed gives the same blocks).
COMMON = r"""
from mooncake.kvcache.block import KVBlockSpec
from tests.store.kvfactories import make_chain
SPEC = KVBlockSpec(num_layers=8, num_kv_heads=8, head_dim=128, block_size=64, dtype="bfloat16")
BLOCKS = make_chain(64, SPEC, seed=3)  # 2 MiB of KV each
"""

# Host 2: store the blocks, serve them on the host's address, publish how to reach it.
SERVER = (
    COMMON
    + r"""
import json, sys, time
from pathlib import Path
from mooncake.store.store import BlockStore
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.server import BlockServer
from tests.store.kvfactories import store_config

ip, secret, peer_file, stop = sys.argv[1:5]
Path("/dev/shm/tier").mkdir()
with BlockStore(store_config("/dev/shm/tier", host_blocks=70, spec=SPEC)) as store:
    store.put_many(BLOCKS)
    cfg = TransferConfig(listen_host=ip, secret=bytes.fromhex(secret))
    with BlockServer(store, cfg) as server:
        Path(peer_file).write_text(json.dumps(server.peer().to_msg()))
        while not Path(stop).exists():
            time.sleep(0.1)
"""
)

# Host 3: fetch every block round after round until STOP; check each delivered block
# against the original bytes. Prints one line per round.
FETCHER = (
    COMMON
    + r"""
import json, sys, time
from pathlib import Path
import numpy as np
from mooncake.transfer.base import Peer
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.fetcher import BlockFetcher

secret, peer_file, io_timeout, first, stop = sys.argv[1:6]
peer = Peer.from_msg(json.loads(Path(peer_file).read_text()))
fetcher = BlockFetcher(TransferConfig(secret=bytes.fromhex(secret), io_timeout_s=float(io_timeout)))
keys = [b.key for b in BLOCKS]
rounds = []
while not Path(stop).exists():
    t0 = time.monotonic()
    with fetcher.fetch(keys, peer) as res:
        bad = 0
        for obj, want in zip(res.objects, BLOCKS):
            if obj is not None:
                got = obj.to_kvblock(copy=True)
                bad += got.key != want.key or not np.array_equal(got.data, want.data)
        rounds.append({
            "fetched": res.num_fetched, "bad": bad, "seconds": time.monotonic() - t0,
            "paths": sorted({p for p in res.paths if p}), "errors": res.errors[:2],
        })
    Path(first).write_text("done")
fetcher.close()
print(json.dumps(rounds))
"""
)


def test_link_flap_mid_fetch_never_delivers_a_cut_block(network_of, tmp_path: Path):
    """Host 2's link goes down for 1 s (under the fetcher's 2 s I/O timeout: TCP
    retransmits, the round goes on) and then for 8 s (past it and past the connect
    timeout: the attempt in flight times out; its blocks are missed or fetched again by
    the retry). Every delivered block equals the stored one, every round ends within
    the timeouts, and rounds after the link is back bring all 64 blocks."""
    net = network_of(3)
    _, h2, h3 = net.hosts
    secret = secrets.token_hex(32)
    peer_file, first, stop = tmp_path / "peer.json", tmp_path / "first", tmp_path / "stop"
    # The server stops only after the fetcher has finished its last round: stopping
    # both at once would cut that round at random (the server closing, not the link).
    server_stop = tmp_path / "server-stop"
    repo = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": repo}
    h2.start(
        [sys.executable, "-c", SERVER, h2.ip, secret, str(peer_file), str(server_stop)],
        tmp_path / "server.log",
        env=env,
    )

    def logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(tmp_path.glob("*.log"))
        )

    deadline = time.monotonic() + 60
    while not peer_file.exists():
        assert time.monotonic() < deadline, f"the block server never started\n{logs()}"
        time.sleep(0.1)
    fetcher = h3.start(
        [
            sys.executable,
            "-c",
            FETCHER,
            secret,
            str(peer_file),
            str(IO_TIMEOUT_S),
            str(first),
            str(stop),
        ],
        tmp_path / "fetcher.log",
        env=env,
    )
    while not first.exists():
        assert fetcher.poll() is None, f"the fetcher ended\n{logs()}"
        assert time.monotonic() < deadline, f"no fetch within 60 s\n{logs()}"
        time.sleep(0.05)
    for down_s in (1.0, 8.0):
        h2.link(up=False)
        time.sleep(down_s)
        h2.link(up=True)
        time.sleep(3.0)
    stop.write_text("stop")
    try:
        fetcher.wait(timeout=60)
    except Exception:
        pytest.fail(f"the fetcher did not finish: a fetch hung\n{logs()}")
    finally:
        server_stop.write_text("stop")
    assert fetcher.returncode == 0, logs()
    rounds = json.loads((tmp_path / "fetcher.log").read_text().strip().splitlines()[-1])
    assert all(r["bad"] == 0 for r in rounds), rounds
    # An attempt ends after IO_TIMEOUT_S without progress, and a round makes at most
    # two (the second path is TCP again), plus its transfer time.
    assert max(r["seconds"] for r in rounds) < 4 * IO_TIMEOUT_S + 10, rounds
    # The long cut hit a fetch in flight: an attempt timed out (its blocks were then
    # missed, or fetched again on the second attempt once the link was back).
    assert any(r["errors"] for r in rounds), rounds
    assert rounds[-1]["fetched"] == 64 and rounds[-1]["paths"] == ["tcp"], rounds
