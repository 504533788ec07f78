"""Store and transfer throughput, each next to a baseline measured in the same run.

    python benchmarks/store_bench.py [--reps 5] [--total-mib 128] [--sizes tiny,70b] [--dask]

- host tier put / get vs numpy memcpy of the same blocks into preallocated memory
  (get = checked zero-copy view; get+copy = that view copied into a preallocated
  destination, what an engine loading its KV pool does);
- SSD tier put / get (an LMDB file under --ssd-dir; reads come from the page cache
  unless the file was evicted from it);
- TCP fetch (block server in another process -> BlockFetcher, pipelined, CRC checked)
  vs raw ``sendall`` -> ``recv_into`` of the same bytes between two processes;
  with ``--dask``, also Dask's TCP comm moving the same bytes.

Block shapes: the engine's default tiny model (4 layers, 2 KV heads, head_dim 32,
fp32, 16 tokens: 32 KiB) and LLaMA3-70B (80 layers, 8 KV heads, head_dim 128, bf16,
16 tokens: 320 KiB/token, 5 MiB). Every number is the median of --reps repetitions.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mooncake.kvcache.block import KVBlock, KVBlockSpec
from mooncake.store import BlockStore, StoreConfig, TierConfig
from mooncake.store.block_object import encode
from mooncake.transfer import BlockFetcher, BlockServer, Peer, TcpBackend, TransferConfig
from mooncake.types import BlockKey

SPECS = {
    "tiny": KVBlockSpec(num_layers=4, num_kv_heads=2, head_dim=32, block_size=16, dtype="float32"),
    "70b": KVBlockSpec(num_layers=80, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16"),
}
GB = 1e9


def make_blocks(spec: KVBlockSpec, n: int, seed: int = 0) -> list[KVBlock]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = spec.shape(spec.block_size)
        if spec.dtype == "float32":
            data = rng.integers(0, 2**31, size=shape, dtype=np.int32).view(np.float32)
        else:
            data = rng.integers(0, 2**16, size=shape, dtype=np.uint16)
        key = BlockKey(i.to_bytes(8, "little") + seed.to_bytes(8, "little"))
        out.append(KVBlock(key=key, parent=None, token_ids=tuple(range(spec.block_size)), data=data, spec=spec,
                           model_fingerprint="bench"))  # fmt: skip
    return out


def median_rate(nbytes: int, fn: Callable[[], object], reps: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / GB


# -- tiers ------------------------------------------------------------------------------
def bench_tier(kind: str, path: str, blocks: list[KVBlock], reps: int) -> dict[str, float]:
    total = sum(b.data.nbytes for b in blocks)
    cap = int(total * 1.1) + 1024**2
    tier = TierConfig(path=path, capacity_bytes=cap)
    cfg = StoreConfig(host=tier, ssd=None) if kind == "host" else StoreConfig(host=None, ssd=tier)
    keys = [b.key for b in blocks]
    dst = [np.empty_like(b.data) for b in blocks]
    res: dict[str, float] = {}
    with BlockStore(cfg) as store:

        def clear() -> None:
            store.delete_many(keys)  # type: ignore[arg-type]

        def put_each() -> None:
            for b in blocks:
                store.put(b)

        def get_each() -> None:
            for k in keys:
                o = store.get(k)  # type: ignore[arg-type]
                assert o is not None

        def get_batch() -> None:
            for i in range(0, len(keys), 16):
                objs = store.get_many(keys[i : i + 16])  # type: ignore[arg-type]
                assert all(o is not None for o in objs)

        def get_copy() -> None:
            for k, d in zip(keys, dst):
                o = store.get(k)  # type: ignore[arg-type]
                assert o is not None
                np.copyto(d, o.numpy())

        res["put"] = median_rate(total, put_each, reps, setup=clear)
        res["put_batch"] = median_rate(total, lambda: store.put_many(blocks), reps, setup=clear)
        res["get"] = median_rate(total, get_each, reps)
        res["get_batch"] = median_rate(total, get_batch, reps)
        res["get_copy"] = median_rate(total, get_copy, reps)
        assert store.stats.corrupt == 0
    return res


def bench_memcpy(blocks: list[KVBlock], reps: int) -> float:
    total = sum(b.data.nbytes for b in blocks)
    dst = [np.empty_like(b.data) for b in blocks]

    def run() -> None:
        for b, d in zip(blocks, dst):
            np.copyto(d, b.data)

    return median_rate(total, run, reps)


# -- TCP --------------------------------------------------------------------------------
def _serve_store(spec_name: str, n: int, shm: str, conn: Connection) -> None:
    blocks = make_blocks(SPECS[spec_name], n)
    total = sum(b.data.nbytes for b in blocks)
    cfg = StoreConfig(host=TierConfig(path=shm, capacity_bytes=int(total * 1.1) + 1024**2), ssd=None)
    with BlockStore(cfg) as store, BlockServer(store, TransferConfig()) as server:
        store.put_many(blocks)
        conn.send(server.address)
        conn.recv()


def _raw_sender(nbytes: int, chunk: int, conn: Connection) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    conn.send(srv.getsockname()[1])
    buf = np.random.default_rng(0).integers(0, 255, size=nbytes, dtype=np.uint8)
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mv = memoryview(buf)
    while c.recv(1):  # one byte = "send it all again"
        for off in range(0, nbytes, chunk):
            c.sendall(mv[off : off + chunk])
    c.close()


def bench_raw_socket(nbytes: int, chunk: int, reps: int) -> float:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_raw_sender, args=(nbytes, chunk, child))
    p.start()
    port = parent.recv()
    s = socket.create_connection(("127.0.0.1", port))
    dst = np.empty(nbytes, dtype=np.uint8)
    mv = memoryview(dst)

    def run() -> None:
        s.sendall(b"x")
        got = 0
        while got < nbytes:
            got += s.recv_into(mv[got:], nbytes - got)

    run()  # warm up
    rate = median_rate(nbytes, run, reps)
    s.close()
    p.join(10)
    return rate


def bench_tcp_fetch(spec_name: str, n: int, reps: int, shm: str) -> float:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_serve_store, args=(spec_name, n, shm, child))
    p.start()
    addr = parent.recv()
    keys = [b.key for b in make_blocks(SPECS[spec_name], n)]
    cfg = TransferConfig(batch_blocks=16)
    f = BlockFetcher(cfg, backends=[])
    f.backends = [TcpBackend(cfg, f.pool)]
    peer = Peer("bench-remote", tcp=addr)
    total = n * SPECS[spec_name].bytes_per_block

    def run() -> None:
        with f.fetch(keys, peer) as res:  # type: ignore[arg-type]
            assert res.num_fetched == n, res.errors

    run()  # warm up: connection, pooled buffers
    rate = median_rate(total, run, reps)
    f.close()
    parent.send("stop")
    p.join(10)
    return rate


def _dask_sender(nbytes: int, chunk: int, conn: Connection) -> None:
    import asyncio

    from distributed.comm import listen
    from distributed.protocol import to_serialize

    buf = np.random.default_rng(0).integers(0, 255, size=nbytes, dtype=np.uint8)
    frames = [to_serialize(buf[off : off + chunk]) for off in range(0, nbytes, chunk)]

    async def main() -> None:
        async def handle(comm: object) -> None:
            while True:
                try:
                    await comm.read()  # type: ignore[attr-defined]
                except Exception:
                    return
                await comm.write({"frames": frames})  # type: ignore[attr-defined]

        listener = listen("tcp://127.0.0.1:0", handle)
        await listener.start()
        conn.send(listener.contact_address)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def bench_dask_comm(nbytes: int, chunk: int, reps: int) -> float:
    import asyncio

    from distributed.comm import connect

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_dask_sender, args=(nbytes, chunk, child))
    p.start()
    addr = parent.recv()

    async def main() -> float:
        comm = await connect(addr)
        times = []
        for i in range(reps + 1):
            t0 = time.perf_counter()
            await comm.write("go")
            msg = await comm.read()
            assert sum(np.asarray(a).nbytes for a in msg["frames"]) == nbytes
            if i:
                times.append(time.perf_counter() - t0)
        await comm.close()
        return nbytes / statistics.median(times) / GB

    rate = asyncio.run(main())
    parent.send("stop")
    p.join(10)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--total-mib", type=int, default=128, help="bytes moved per repetition, per block shape")
    ap.add_argument("--sizes", default="tiny,70b")
    ap.add_argument("--ssd-dir", default=None, help="directory on disk for the SSD tier (default: a temp dir)")
    ap.add_argument("--dask", action="store_true", help="also measure Dask's TCP comm")
    args = ap.parse_args()

    rows = []
    for name in args.sizes.split(","):
        spec = SPECS[name]
        n = max(8, args.total_mib * 1024**2 // spec.bytes_per_block)
        blocks = make_blocks(spec, n)
        total = n * spec.bytes_per_block
        hdr, _ = encode(blocks[0])
        print(f"# {name}: {n} blocks x {spec.bytes_per_block / 1024:.0f} KiB (+{len(hdr)} B header) = {total / 1024**2:.0f} MiB",
              flush=True)  # fmt: skip
        shm = tempfile.mkdtemp(prefix="mooncake-bench-", dir="/dev/shm")
        ssd = tempfile.mkdtemp(prefix="mooncake-bench-ssd-", dir=args.ssd_dir)
        try:
            memcpy = bench_memcpy(blocks, args.reps)
            host = bench_tier("host", f"{shm}/host", blocks, args.reps)
            ssd_r = bench_tier("ssd", f"{ssd}/ssd", blocks, args.reps)
            raw = bench_raw_socket(total, spec.bytes_per_block, args.reps)
            tcp = bench_tcp_fetch(name, n, args.reps, f"{shm}/peer")
            dask = bench_dask_comm(total, spec.bytes_per_block, args.reps) if args.dask else None
        finally:
            shutil.rmtree(shm, ignore_errors=True)
            shutil.rmtree(ssd, ignore_errors=True)
        rows.append((name, memcpy, host, ssd_r, raw, tcp, dask))

    print("\n| block | memcpy | host put | host put_many | host get (view) | host get_many (view) | host get+copy | SSD put | SSD get (view) | raw socket | TCP fetch | Dask comm |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, memcpy, host, ssd_r, raw, tcp, dask in rows:
        def r(x: float, base: float) -> str:
            return f"{x:.2f} ({x / base:.0%})"

        print(f"| {name} | {memcpy:.2f} | {r(host['put'], memcpy)} | {r(host['put_batch'], memcpy)} | "
              f"{r(host['get'], memcpy)} | {r(host['get_batch'], memcpy)} | {r(host['get_copy'], memcpy)} | {r(ssd_r['put'], memcpy)} | "
              f"{r(ssd_r['get'], memcpy)} | {raw:.2f} | {r(tcp, raw)} | {'-' if dask is None else r(dask, raw)} |")  # fmt: skip
    print("\nGB/s (1e9 B/s), medians; host/SSD percentages vs memcpy, TCP and Dask vs raw socket.")


if __name__ == "__main__":
    main()
