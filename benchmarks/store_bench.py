"""Store and transfer throughput, each next to a baseline measured in the same run.

    python benchmarks/store_bench.py [--reps 5] [--total-mib 128] [--sizes tiny,tiny-512,70b]
                                     [--dask] [--variants]
    python benchmarks/store_bench.py --between-hosts [--reps 5] [--sizes ...]   # as root

``--between-hosts`` measures the TCP rows between two test hosts (network namespaces
joined by veth pairs on a bridge, made and removed by this run, as the multi-host
tests do): the block server and the raw sender on one, the fetcher and the raw
receiver on the other. Host tiers are not measured then.

- host tier put / get vs numpy memcpy of the same blocks into preallocated memory
  (get = checked zero-copy view; get+copy = that view copied into a preallocated
  destination, what an engine loading its KV pool does);
- SSD tier put / get (an LMDB file under --ssd-dir; reads come from the page cache
  unless the file was evicted from it);
- TCP fetch (block server in another process -> BlockFetcher, pipelined, checked)
  vs raw ``sendall`` -> ``recv_into`` of the same bytes between two processes (the
  baseline: one ``recv_into`` asks for everything still missing; a second row caps each
  ``recv_into`` at 64 KiB, which is faster on loopback);
  with ``--dask``, also Dask's TCP comm moving the same bytes; with ``--variants``, also
  the fetch with every request frame at ``batch_blocks`` keys (``batch_bytes=0``) and
  with Python timeout sockets instead of blocking ones. Each block shape also prints the
  CPU seconds per GB of both ends of every TCP row (the receiver: this process; the
  sender: the server process), and its ratio to the raw socket's: on a shared machine
  the steadier figure (wall time also counts waiting for a core).

The raw sender sends from anonymous memory (numpy; transparent huge pages where the
kernel grants them), the block server from the tier's LMDB map (tmpfs: 4 KiB pages
unless mounted ``huge=``); copying out of the latter costs the kernel more per byte.

Block shapes: the engine's default tiny model (4 layers, 2 KV heads, head_dim 32,
fp32) with the engine's 16-token blocks (32 KiB) and with the paper's 512-token blocks
(1 MiB), and LLaMA3-70B (80 layers, 8 KV heads, head_dim 128, bf16: 320 KiB/token) with
16-token blocks (5 MiB). Every number is a median over --reps repetitions, each
repetition running the baseline and the measured operations back to back.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # mooncake, and tests.multihost between hosts

from mooncake.auth import new_secret
from mooncake.kvcache.block import KVBlock, KVBlockSpec
from mooncake.store import BlockStore, StoreConfig, TierConfig
from mooncake.store.block_object import encode
from mooncake.transfer import BlockFetcher, BlockServer, Peer, TcpBackend, TransferConfig
from mooncake.types import BlockKey


class Conn(Protocol):
    """What a server process talks to its parent through: a multiprocessing pipe, or
    (a server on another test host) JSON lines on its standard input and output."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...


class _StdioConn:
    def send(self, obj: Any) -> None:
        print(json.dumps(obj), flush=True)

    def recv(self) -> Any:
        line = sys.stdin.readline()
        return json.loads(line) if line else "stop"


class _ChildConn:
    """The parent's end of a server started on another test host."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server on the other host exited ({self.proc.wait()})")
        return json.loads(line)


SPECS = {
    "tiny": KVBlockSpec(num_layers=4, num_kv_heads=2, head_dim=32, block_size=16, dtype="float32"),
    "tiny-512": KVBlockSpec(
        num_layers=4, num_kv_heads=2, head_dim=32, block_size=512, dtype="float32"
    ),
    "70b": KVBlockSpec(
        num_layers=80, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16"
    ),
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
        out.append(
            KVBlock(
                key=key,
                parent=None,
                token_ids=tuple(range(spec.block_size)),
                data=data,
                spec=spec,
                model_fingerprint="bench",
            )
        )
    return out


Op = tuple[Callable[[], object], Callable[[], object] | None]


def interleaved(
    ops: dict[str, Op],
    reps: int,
    cpu: dict[str, Callable[[], tuple[float, ...]]] | None = None,
    cpu_used: dict[str, list[tuple[float, ...]]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per rep of each op, ops run round-robin inside each rep so that a
    baseline and what is compared with it see the same machine load (2 shared cores).

    ``cpu``: per op, a reading of the CPU seconds of every process it runs in
    (:func:`proc_cpu` of each); each rep's difference is appended to ``cpu_used[name]``."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(reps):
        for name, (fn, setup) in ops.items():
            if setup is not None:
                setup()
            c0 = cpu[name]() if cpu and name in cpu else None
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if c0 is not None and cpu_used is not None and cpu is not None:
                c1 = cpu[name]()
                cpu_used.setdefault(name, []).append(tuple(b - a for a, b in zip(c0, c1)))
    return times


def print_cpu(cpu_used: dict[str, list[tuple[float, ...]]], nbytes: int) -> None:
    """CPU seconds per GB moved, summed over reps, of the receiver (this process) and
    the sender (the server process), each as total (user / system), and the total's
    ratio to the raw socket's. CPU per byte is steadier than wall time on a shared
    machine: it does not count the time the two ends wait for a core."""
    if not cpu_used:
        return
    print("| op | receiver CPU-s/GB (user / sys) | sender CPU-s/GB (user / sys) | total | vs raw |")
    print("| --- | --- | --- | --- | --- |")
    per: dict[str, list[float]] = {}
    for name, rows in cpu_used.items():
        gb = nbytes * len(rows) / GB
        per[name] = [sum(r[i] for r in rows) / gb for i in range(6)]
    base = per["raw socket"][2] + per["raw socket"][5] if "raw socket" in per else None
    for name, (ru, rs, rt, su, ss, st) in per.items():
        ratio = f"{(rt + st) / base:.2f}" if base else "-"
        print(
            f"| {name} | {rt:.3f} ({ru:.3f} / {rs:.3f}) | {st:.3f} ({su:.3f} / {ss:.3f}) "
            f"| {rt + st:.3f} | {ratio} |"
        )
    print(flush=True)


def proc_cpu(pid: int | None = None) -> tuple[float, float, float]:
    """(user, system, total) CPU seconds of this process (``pid`` None) or of process
    ``pid``, its threads included. The total is exact (``process_time``, or the sum of
    the threads' ``schedstat`` run times: threads of the server that ran during an op
    are alive after it); the user / system split of another process comes in clock
    ticks (``/proc/PID/stat``), only indicative per rep."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime, time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    total_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread exited meanwhile
    return int(fields[11]) / tick, int(fields[12]) / tick, total_ns / 1e9


def summarize(
    times: dict[str, list[float]], nbytes: int, base: str
) -> dict[str, tuple[float, float]]:
    """name -> (median GB/s, median over reps of the per-rep ratio to ``base``)."""
    out = {}
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(times[base], ts)]
        out[name] = (nbytes / statistics.median(ts) / GB, statistics.median(ratios))
    return out


# -- tiers ------------------------------------------------------------------------------
def bench_tiers(
    shm: str, ssd: str, blocks: list[KVBlock], reps: int
) -> dict[str, tuple[float, float]]:
    total = sum(b.data.nbytes for b in blocks)
    cap = int(total * 1.1) + 1024**2
    keys = [b.key for b in blocks]
    dst = [np.empty_like(b.data) for b in blocks]
    host = BlockStore(
        StoreConfig(host=TierConfig(path=f"{shm}/host", capacity_bytes=cap), ssd=None)
    )
    disk = BlockStore(StoreConfig(host=None, ssd=TierConfig(path=f"{ssd}/ssd", capacity_bytes=cap)))

    def memcpy() -> None:
        for b, d in zip(blocks, dst):
            np.copyto(d, b.data)

    def ops_for(name: str, store: BlockStore) -> dict[str, Op]:
        def clear() -> None:
            store.delete_many(keys)  # type: ignore[arg-type]

        def put_each() -> None:
            for b in blocks:
                store.put(b)

        def get_each() -> None:
            for k in keys:
                assert store.get(k) is not None  # type: ignore[arg-type]

        def get_batch() -> None:
            for i in range(0, len(keys), 16):
                assert all(o is not None for o in store.get_many(keys[i : i + 16]))  # type: ignore[arg-type]

        def get_copy() -> None:
            for k, d in zip(keys, dst):
                o = store.get(k)  # type: ignore[arg-type]
                assert o is not None
                np.copyto(d, o.numpy())

        return {
            f"{name} put": (put_each, clear),
            f"{name} put_many": (lambda: store.put_many(blocks), clear),
            f"{name} get": (get_each, None),
            f"{name} get_many": (get_batch, None),
            f"{name} get+copy": (get_copy, None),
        }

    try:
        host.put_many(blocks)
        disk.put_many(blocks)
        ops: dict[str, Op] = {
            "memcpy": (memcpy, None),
            **ops_for("host", host),
            **ops_for("SSD", disk),
        }
        interleaved(ops, 1)  # warm up: first-touch page faults of destinations and maps
        times = interleaved(ops, reps)
        assert host.stats.corrupt == 0 and disk.stats.corrupt == 0
    finally:
        host.close()
        disk.close()
    return summarize(times, total, "memcpy")


def _serve_store(
    spec_name: str, n: int, shm: str, secret: str, conn: Conn, host: str = "127.0.0.1"
) -> None:
    blocks = make_blocks(SPECS[spec_name], n)
    total = sum(b.data.nbytes for b in blocks)
    cfg = StoreConfig(
        host=TierConfig(path=shm, capacity_bytes=int(total * 1.1) + 1024**2), ssd=None
    )
    with (
        BlockStore(cfg) as store,
        BlockServer(
            store, TransferConfig(listen_host=host, secret=bytes.fromhex(secret))
        ) as server,
    ):
        store.put_many(blocks)
        conn.send(server.address)
        conn.recv()


def _raw_sender(nbytes: int, chunk: int, conn: Conn, host: str = "127.0.0.1") -> None:
    srv = socket.create_server((host, 0))
    conn.send(srv.getsockname()[1])
    buf = np.random.default_rng(0).integers(0, 255, size=nbytes, dtype=np.uint8)
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mv = memoryview(buf)
    while c.recv(1):  # one byte = "send it all again"
        for off in range(0, nbytes, chunk):
            c.sendall(mv[off : off + chunk])
    c.close()


def _dask_sender(nbytes: int, chunk: int, conn: Conn) -> None:
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


class _TimeoutSocketTcp(TcpBackend):
    """The TCP backend with a Python timeout socket (non-blocking underneath: every wait is
    a failed ``recv``, a ``poll`` and a second ``recv``), as it was before blocking sockets."""

    def _connect(self, addr: tuple[str, int]) -> socket.socket:
        s = super()._connect(addr)
        s.settimeout(self.config.io_timeout_s)
        return s


def bench_tcp(
    spec_name: str,
    n: int,
    reps: int,
    shm: str,
    dask: bool,
    variants: bool = False,
    server_host: Any = None,
) -> dict[str, tuple[float, float]]:
    """Raw socket, block fetch (and Dask comm) from three server processes, interleaved.

    ``server_host``: a test host (``tests/multihost``) to run the servers on instead of
    this host; this process must then run on another test host of the same network."""
    import asyncio

    spec = SPECS[spec_name]
    total = n * spec.bytes_per_block
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    pipes: list[Conn] = []
    ip = "127.0.0.1" if server_host is None else server_host.ip

    def start(target: Callable[..., None], *args: object) -> Any:
        if server_host is not None:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                target.__name__,
                json.dumps([*args, ip]),
            ]
            proc = subprocess.Popen(
                server_host.argv(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            procs.append(proc)
            pipes.append(_ChildConn(proc))
            got = pipes[-1].recv()
            return tuple(got) if isinstance(got, list) else got
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(*args, child))
        p.start()
        procs.append(p)
        pipes.append(parent)
        return parent.recv()

    raw_port = start(_raw_sender, total, spec.bytes_per_block)
    secret = new_secret()  # the cluster secret both ends hold
    store_addr = start(_serve_store, spec_name, n, shm, secret.hex())
    raw = socket.create_connection((ip, raw_port))
    dst = np.empty(total, dtype=np.uint8)
    mv = memoryview(dst)

    def raw_run() -> None:
        raw.sendall(b"x")
        got = 0
        while got < total:
            got += raw.recv_into(mv[got:], total - got)

    def raw_run_64k() -> None:
        # The same with each recv capped at 64 KiB: a stronger baseline on loopback,
        # shown beside the plain one.
        raw.sendall(b"x")
        got = 0
        while got < total:
            got += raw.recv_into(mv[got:], min(65536, total - got))

    keys = [b.key for b in make_blocks(spec, n)]
    cfg = TransferConfig(secret=secret)  # the defaults a worker runs with
    fetcher = BlockFetcher(cfg, backends=[])
    fetcher.backends = [TcpBackend(cfg, fetcher.pool)]
    peer = Peer("bench-remote", tcp=store_addr)  # type: ignore[arg-type]

    def fetch_with(f: BlockFetcher) -> Callable[[], None]:
        def run() -> None:
            with f.fetch(keys, peer) as res:  # type: ignore[arg-type]
                assert res.num_fetched == n, res.errors

        return run

    ops: dict[str, Op] = {
        "raw socket": (raw_run, None),
        "raw socket, 64 KiB recv": (raw_run_64k, None),
        "TCP fetch": (fetch_with(fetcher), None),
    }
    others: list[BlockFetcher] = []
    if variants:
        # What two of the transfer layer's choices are worth, measured beside the default.
        fixed_cfg = TransferConfig(
            batch_bytes=0, secret=secret
        )  # every frame batch_blocks (8) keys
        fixed = BlockFetcher(fixed_cfg, backends=[])
        fixed.backends = [TcpBackend(fixed_cfg, fixed.pool)]
        timeout_sockets = BlockFetcher(cfg, backends=[])
        timeout_sockets.backends = [_TimeoutSocketTcp(cfg, timeout_sockets.pool)]
        others += [fixed, timeout_sockets]
        ops["TCP fetch, 8-block frames"] = (fetch_with(fixed), None)
        ops["TCP fetch, timeout sockets"] = (fetch_with(timeout_sockets), None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # distributed binds its futures to the current loop
    if dask and server_host is not None:
        raise SystemExit("--dask is not measured between hosts")
    if dask:
        from distributed.comm import connect

        dask_addr = start(_dask_sender, total, spec.bytes_per_block)
        comm = loop.run_until_complete(connect(dask_addr))  # type: ignore[arg-type]

        async def dask_once() -> None:
            await comm.write("go")
            msg = await comm.read()
            assert sum(np.asarray(a).nbytes for a in msg["frames"]) == total

        ops["Dask comm"] = (lambda: loop.run_until_complete(dask_once()), None)
    # CPU of both ends of each op: this process plus the server process it reads from.
    raw_pid, store_pid = procs[0].pid, procs[1].pid

    def both(pid: int) -> Callable[[], tuple[float, ...]]:
        return lambda: (*proc_cpu(), *proc_cpu(pid))

    cpu = {
        name: both(raw_pid if name.startswith("raw") else store_pid)
        for name in ops
        if name.startswith(("raw", "TCP"))
    }
    cpu_used: dict[str, list[tuple[float, ...]]] = {}
    try:
        interleaved(ops, 1)  # warm up: connections, pooled buffers
        times = interleaved(ops, reps, cpu, cpu_used)
    finally:
        if dask:
            loop.run_until_complete(comm.close())
        loop.close()
        raw.close()
        for f in (fetcher, *others):
            f.close()
        for pipe in pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass  # already exited
        for p in procs:
            if isinstance(p, subprocess.Popen):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                continue
            p.join(10)
            if p.is_alive():
                p.kill()
    print_cpu(cpu_used, total)
    out = summarize(times, total, "raw socket")
    # The same fetch against the stronger baseline (ratio per rep, as above).
    tuned = summarize(
        {k: times[k] for k in ("raw socket, 64 KiB recv", "TCP fetch")},
        total,
        "raw socket, 64 KiB recv",
    )
    out["TCP fetch / 64 KiB-recv raw"] = tuned["TCP fetch"]
    for name in ("TCP fetch, 8-block frames", "TCP fetch, timeout sockets"):
        if name in times:
            out[f"{name} / 64 KiB-recv raw"] = summarize(
                {k: times[k] for k in ("raw socket, 64 KiB recv", name)},
                total,
                "raw socket, 64 KiB recv",
            )[name]
    return out


def save_results(
    results: dict[str, dict[str, tuple[float, float]]],
    sizes: list[str],
    reps: int,
    total_mib: int,
    between_hosts: bool = False,
) -> None:
    """docs/performance.md's store section (``benchmarks/results/store.json``; between test
    hosts ``store-between-hosts.json``, TCP rows only)."""
    import result_file as rf

    def label(n: str) -> str:
        kib = SPECS[n].bytes_per_block / 1024
        return f"{n} ({kib / 1024:.0f} MiB)" if kib >= 1024 else f"{n} ({kib:.0f} KiB)"

    rows = [
        (
            "TCP fetch",
            "TCP fetch",
            "raw socket",
            "raw socket (`recv_into` of all that is missing)",
            "≥ 0.7",
        ),
        (
            "TCP fetch / 64 KiB-recv raw",
            "TCP fetch",
            "raw socket, 64 KiB recv",
            "raw socket, 64 KiB receives",
            None,
        ),
        ("host get", "host-tier get (checked, zero copy)", "memcpy", "memcpy", "≥ 0.5"),
        ("host put_many", "host-tier put_many", "memcpy", "memcpy", None),
    ]
    claims = []
    for op, what, base, base_label, target in rows:
        for n in sizes:
            if op in results[n] and base in results[n]:
                rate, ratio = results[n][op]
                claims.append(
                    rf.claim(
                        f"{what}, {label(n)} blocks",
                        rate,
                        "GB/s",
                        base_label,
                        results[n][base][0],
                        ratio=ratio,
                        target=target,
                    )
                    | {"row": f"{what} vs {base_label}", "col": f"{label(n)} blocks"}
                )

    def series(op: str) -> list[float]:
        return [results[n][op][1] if op in results[n] else 0.0 for n in sizes]

    xs = [label(n) for n in sizes]
    if between_hosts:
        path = rf.save(
            "store-between-hosts",
            "KV transfer between two test hosts",
            claims,
            notes=(
                "TCP block fetch between two network namespaces joined by veth pairs on a bridge "
                "(block server on one, fetcher on the other), against a raw socket between the "
                f"same two, {total_mib} MiB per repetition, median of {reps} "
                "per-repetition ratios; `tests/multihost` builds the same network."
            ),
        )
        # The command a user runs, not the inner one this run made on the second host.
        doc = json.loads(path.read_text())
        argv = doc["command"].split(" --on-host ")[0]
        doc["command"] = argv
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        return
    rf.save(
        "store",
        "KV store and transfer",
        claims,
        series={
            "TCP fetch / raw socket": {
                "x": xs,
                "ylabel": "ratio to baseline",
                "reference": 0.7,
                "groups": {
                    "vs raw socket": series("TCP fetch"),
                    "vs raw, 64 KiB receives": series("TCP fetch / 64 KiB-recv raw"),
                },
            },
            "host-tier get / memcpy": {
                "x": xs,
                "ylabel": "ratio to baseline",
                "reference": 0.5,
                "groups": {"checked zero-copy get": series("host get")},
            },
        },
        notes=(
            f"Per repetition ({reps}) the baseline and each operation move {total_mib} MiB of KV "
            "payload back to back; a ratio is the median of per-repetition ratios, GB/s the median "
            "rate. TCP fetch uses the default `TransferConfig()` and "
            "checks every record. Block shapes: this script's docstring."
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--total-mib", type=int, default=128, help="bytes moved per repetition, per block shape"
    )
    ap.add_argument("--sizes", default="tiny,tiny-512,70b")
    ap.add_argument(
        "--ssd-dir", default=None, help="directory on disk for the SSD tier (default: a temp dir)"
    )
    ap.add_argument("--dask", action="store_true", help="also measure Dask's TCP comm")
    ap.add_argument(
        "--variants",
        action="store_true",
        help="also measure TCP fetch with fixed 8-block frames and with Python timeout sockets",
    )
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/store.json for docs/performance.md",
    )
    ap.add_argument(
        "--between-hosts",
        action="store_true",
        help="TCP rows between two test hosts (network namespaces; root)",
    )
    ap.add_argument("--child", nargs=2, metavar=("SERVER", "ARGS"), help=argparse.SUPPRESS)
    ap.add_argument("--on-host", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        server = {"_raw_sender": _raw_sender, "_serve_store": _serve_store}[args.child[0]]
        *pos, host = json.loads(args.child[1])
        server(*pos, _StdioConn(), host)
        return
    if args.between_hosts and args.on_host is None:
        _between_hosts(args)
        return

    results: dict[str, dict[str, tuple[float, float]]] = {}
    sizes = args.sizes.split(",")
    for name in sizes:
        spec = SPECS[name]
        n = max(8, args.total_mib * 1024**2 // spec.bytes_per_block)
        blocks = make_blocks(spec, n)
        hdr, _ = encode(blocks[0])
        print(
            f"# {name}: {n} blocks x {spec.bytes_per_block / 1024:.0f} KiB payload "
            f"(+{len(hdr)} B header) = {n * spec.bytes_per_block / 1024**2:.0f} MiB per rep",
            flush=True,
        )
        shm = tempfile.mkdtemp(prefix="mooncake-bench-", dir="/dev/shm")
        ssd = tempfile.mkdtemp(prefix="mooncake-bench-ssd-", dir=args.ssd_dir)
        try:
            server_host = None
            if args.on_host is not None:  # between hosts: the TCP rows only
                from tests.multihost.conftest import Host

                res = {}
                server_host = Host(**json.loads(args.on_host))
            else:
                res = bench_tiers(shm, ssd, blocks, args.reps)
            del blocks
            res.update(
                bench_tcp(name, n, args.reps, f"{shm}/peer", args.dask, args.variants, server_host)
            )
        finally:
            shutil.rmtree(shm, ignore_errors=True)
            shutil.rmtree(ssd, ignore_errors=True)
        results[name] = res

    print()
    print("| operation | " + " | ".join(f"{n}: GB/s | {n}: ratio" for n in sizes) + " |")
    print("| --- |" + " --- | --- |" * len(sizes))
    for op in results[sizes[0]]:
        cells = []
        for n in sizes:
            rate, ratio = results[n][op]
            cells += [f"{rate:.2f}", f"{ratio:.0%}"]
        print(f"| {op} | " + " | ".join(cells) + " |")
    print(
        "\nGB/s = 1e9 B/s of KV payload, median of reps; ratio = median over reps of the per-rep "
        "ratio to memcpy (host/SSD rows) or to the raw socket (TCP/Dask rows), run interleaved."
    )
    if args.save_results:
        save_results(
            results, sizes, args.reps, args.total_mib, between_hosts=args.on_host is not None
        )


def _between_hosts(args: argparse.Namespace) -> None:
    """Make two test hosts, run this benchmark on host 2 with its servers on host 1."""
    from tests.multihost.conftest import TestNetwork, why_not

    reason = why_not()
    if reason is not None:
        raise SystemExit(reason)
    argv = [a for a in sys.argv[1:] if a != "--between-hosts"]
    with TestNetwork(2) as net:
        server, here = net.hosts
        spec = json.dumps({"netns": server.netns, "name": server.name, "ip": server.ip})
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            *argv,
            "--between-hosts",
            "--on-host",
            spec,
        ]
        print(
            f"# between test hosts: servers on {server.name} "
            f"({server.ip}), fetcher on {here.name} ({here.ip})",
            flush=True,
        )
        subprocess.run(here.argv(cmd), check=True)


if __name__ == "__main__":
    main()
