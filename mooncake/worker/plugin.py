"""``MooncakeWorker``: the Dask ``WorkerPlugin`` of each worker process.

It starts the worker's engine in a child process (``EngineClient`` /
``engine_process``: torch never loads in the worker itself), opens the worker's KV
store, registers the handlers peers, the Conductor and the client call, and reports the
worker's blocks and load to the Conductor. It is IO glue: what the worker keeps per
request lives in ``RequestTable`` (driven by the ``request_state`` machine), what it
reports in ``ReportBuffer``, the lookup in ``lookup``; it never imports the task
functions (``tasks`` imports it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from typing import Any

from distributed import Worker, WorkerPlugin
from distributed.comm.addressing import get_address_host
from distributed.protocol.serialize import to_serialize

from mooncake.conductor.messages import PlacementInfo
from mooncake.conductor.reports import REPORT_OP, DecodeStep, WorkerLoadReport, WorkerReport
from mooncake.config import EngineConfig
from mooncake.kvcache import KVExport, root_key
from mooncake.kvcache.shared_prefix import SharedPrefixProbe
from mooncake.metrics import LookupRecord, RequestRecord
from mooncake.outputs import RequestOutput
from mooncake.store import tier_dirs
from mooncake.transfer import Peer
from mooncake.transfer.base import local_host_id
from mooncake.types import BlockKey
from mooncake.worker import request_state
from mooncake.worker.block_presence import BlockPresence
from mooncake.worker.config import WorkerConfig, engine_config_for
from mooncake.worker.core_ledger import ledger_path
from mooncake.worker.core_lending import LendingSetup
from mooncake.worker.engine_client import EngineClient
from mooncake.worker.handoff_notices import HandoffNotices
from mooncake.worker.handoff_times import HandoffTimes
from mooncake.worker.kv_store import KVStore
from mooncake.worker.kv_stream import StreamImports
from mooncake.worker.lookup import begin_lookup, fetches_remote, run_lookup
from mooncake.worker.messages import (
    KVHandle,
    LookupResult,
    RequestSpec,
    ResumeStart,
    TransferResult,
)
from mooncake.worker.receive import receive
from mooncake.worker.report_buffer import ReportBuffer
from mooncake.worker.report_pacer import Pending, ReportPacer
from mooncake.worker.request_table import RequestTable
from mooncake.worker.rpc import rpc

logger = logging.getLogger(__name__)

PLUGIN_NAME = "mooncake"
EARLY_LOOKUP_TIMEOUT_S = 60.0
"""How long a lookup started at placement waits for its task before it is aborted."""
STREAM_INTERVAL_S = 0.001
"""Batching interval of the worker's message stream to the scheduler."""
RESUME_THREADS = 64
"""Threads that start moved requests' transfers at placement (``handle_resume``). Each
waits for the engine's next step boundary (its import and admission run there), so every
request of a lost worker needs one: with four, a kill that moved 13 requests admitted
them four per engine step, and the last waited three steps more for its first token."""
HANDOFF_THREADS = 8
"""Threads that receive hand-offs their prefill worker said are ready
(``handle_handoff``): one engine step boundary each, so a burst of prefills that ended
in one step does not queue behind each other's waits."""
WATCH_MAX_S = 300.0
"""The longest a client's liveness watch (``mooncake_watch``) is held open."""


def process_namespace() -> str:
    """Where ``worker_pid`` means this process: the host and its pid namespace (a client
    with the same one may look the pid up in its own /proc; empty: unknown)."""
    try:
        return f"{local_host_id()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:  # not Linux
        return ""


def roles_of(worker: Worker) -> list[str]:
    """``prefill`` / ``decode`` from the worker's Dask resources (both when it has neither)."""
    res = worker.state.total_resources
    roles = [r for r in ("prefill", "decode") if res.get(r, 0) > 0]
    return roles or ["prefill", "decode"]


class MooncakeWorker(WorkerPlugin):
    """Args: engine_config: how to build this worker's engine (in its engine process);
    worker_config: the worker's KV store tiers and transfer settings."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(
        self, engine_config: EngineConfig, worker_config: WorkerConfig | None = None
    ) -> None:
        self.engine_config = engine_config
        self.worker_config = worker_config or WorkerConfig()

    def _with_shared_pool(self, worker: Worker) -> EngineConfig:
        """The engine's config, with its KV pool in a shared-memory file of this
        worker's tier directory when a same-host decode engine may copy from it
        (``WorkerConfig.shared_kv_pool``): there the tier directories' sweep removes it
        after a ``kill -9``. The directory is claimed here, before the store claims it
        (the same one: this process, this name)."""
        wc = self.worker_config
        # A path given in the shared engine config would be every worker's: never used.
        ec = dataclasses.replace(self.engine_config, kv_pool_path=None)
        if (
            not (wc.shared_kv_pool and wc.enable_store and wc.transfer.same_host)
            or ec.device != "cpu"
            or "prefill" not in self.roles
        ):
            return ec
        try:
            d = tier_dirs.claim(
                wc.store_root, worker.scheduler.address, str(worker.name or worker.address)
            )
        except OSError as e:
            logger.warning("KV pool stays private: %s", e)
            return ec
        return dataclasses.replace(ec, kv_pool_path=os.path.join(d, "kv.pool"))

    async def setup(self, worker: Worker) -> None:
        self.worker = worker
        self.roles = roles_of(worker)
        self.engine_config = engine_config_for(self.engine_config, self.worker_config, self.roles)
        self._lookup_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="mooncake-lookup"
        )
        # Early resumes: a lost worker's requests arrive here all at once; each waits on
        # its own KV fetch (the engine runs the imports that wait at a step boundary
        # together, before that step). Threads start on demand.
        self._resume_pool = concurrent.futures.ThreadPoolExecutor(
            RESUME_THREADS, thread_name_prefix="mooncake-resume"
        )
        self._handoff_pool = concurrent.futures.ThreadPoolExecutor(
            HANDOFF_THREADS, thread_name_prefix="mooncake-handoff"
        )
        self.reports = ReportBuffer()
        """What the next report to the Conductor carries (tasks record here)."""
        self._probe = SharedPrefixProbe(self.engine_config.block_size)
        self._probe_lock = threading.Lock()
        self.transfer_paths: Counter[str] = Counter()
        # Remote-prefix blocks pulled at lookup (Algorithm 1), by the path that brought
        # them: the store's (shm, tcp, rdma) or the peer engine's, over Dask (dask).
        self.prefix_fetch_paths: Counter[str] = Counter()
        self.handoff_times = HandoffTimes()
        self.pool_handoffs = 0
        """Same-host hand-offs served from this engine's shared pool (``pool_handoff``)."""
        self.pool_imports = 0
        """Hand-offs this engine copied from a prefill engine's shared pool."""
        """When each stage of recent hand-offs ran here (``worker_stats``)."""
        # Prefix blocks found at lookup, by where: device pool, own host/SSD tiers, a peer.
        self.hit_blocks: Counter[str] = Counter()
        # The engine process inherits this worker's environment: a GPU worker's
        # CUDA_VISIBLE_DEVICES, the thread count. torch loads there, never here.
        self.engine = EngineClient(
            self._with_shared_pool(worker), self._emit, core_lending=self._lending_setup()
        )
        self.requests: RequestTable[LookupResult, RequestOutput, KVExport, TransferResult] = (
            RequestTable(
                request_state.WorkerRequests(EARLY_LOOKUP_TIMEOUT_S, EARLY_LOOKUP_TIMEOUT_S),
                abort_engine=lambda rid: self.engine.call("abort", rid),
                forget=self._forget,
            )
        )
        """Each request's state on this worker and what is kept for it: the decisions (a
        repeated start, an abort that came first, a graph that never arrived, a lost
        peer) are made by its state machine."""
        try:
            await asyncio.to_thread(self.engine.start)
        except BaseException:
            self.engine.stop()
            raise
        self.kv_store: KVStore | None = None
        if self.worker_config.enable_store:
            wc = self.worker_config
            if wc.transfer.listen_host is None:
                # Peers on other hosts reach the block server where they reach this worker.
                wc = dataclasses.replace(
                    wc,
                    transfer=dataclasses.replace(
                        wc.transfer, listen_host=get_address_host(worker.address)
                    ),
                )
            cluster = worker.scheduler.address  # the same on every worker of the cluster
            self.kv_store = await asyncio.to_thread(
                KVStore, wc, str(worker.name or worker.address), cluster
            )
        self.streams: StreamImports | None = (
            StreamImports(self, self.worker_config.stream_poll_s)
            if self.kv_store is not None and self.worker_config.stream_kv
            else None
        )
        """Hand-offs this (decode) worker imports while their prefill runs elsewhere."""
        self._peers: dict[str, Peer | None] = {}
        self._presence = BlockPresence()
        worker.handlers["mooncake_fetch_kv"] = self.handle_fetch_kv
        worker.handlers["mooncake_fetch_blocks"] = self.handle_fetch_blocks
        worker.handlers["mooncake_abort"] = self.handle_abort
        worker.handlers["mooncake_release_handoff"] = self.handle_release_handoff
        worker.handlers["mooncake_info"] = self.handle_info
        worker.handlers["mooncake_handoff"] = self.handle_handoff
        self._notices: HandoffNotices[KVHandle] = HandoffNotices(
            asyncio.get_running_loop(), self._send_notices
        )
        worker.handlers["mooncake_watch"] = self.handle_watch
        worker.stream_handlers["mooncake-start"] = self.handle_start
        worker.stream_handlers["mooncake-stream"] = self.handle_stream
        worker.stream_handlers["mooncake-resume"] = self.handle_resume
        worker.stream_handlers["mooncake-peer-lost"] = self.handle_peer_lost
        # Token deltas that cannot go straight to the client (mooncake.worker.token_stream)
        # ride this stream to the scheduler, then the client; Dask holds a message until
        # 2 ms after the previous one.
        worker.batched_stream.interval = STREAM_INTERVAL_S
        self._reported_model = False
        self._pacer = ReportPacer()
        self._sent_load: dict[str, Any] | None = None
        self.reports_sent = 0
        """Reports sent to the Conductor (``benchmarks/runtime_overhead.py`` counts them)."""
        self._report_task = asyncio.ensure_future(self._report_forever())
        logger.info(
            "mooncake worker %s ready: roles=%s model=%s engine pid=%s",
            worker.address,
            self.roles,
            self.engine.info["model_path"],
            self.engine.proc.pid,
        )

    def _lending_setup(self) -> LendingSetup | None:
        wc = self.worker_config
        if not wc.cpu_core_lending or self.engine_config.device != "cpu":
            return None  # GPU workers keep their threads as they are
        return LendingSetup(ledger_path(wc.store_root), wc.cpu_core_lending_idle_s)

    async def teardown(self, worker: Worker) -> None:
        self._report_task.cancel()
        self._lookup_pool.shutdown(wait=False, cancel_futures=True)
        self._resume_pool.shutdown(wait=False, cancel_futures=True)
        self._handoff_pool.shutdown(wait=False, cancel_futures=True)
        if self.streams is not None:
            self.streams.close()
        await asyncio.to_thread(self.engine.stop)
        if self.kv_store is not None:
            self.kv_store.close()

    # -- streaming ----------------------------------------------------------------
    def _emit(self, topic: str, msgs: list[dict[str, Any]]) -> None:
        self.worker.log_event(
            topic, {"worker": self.worker.address, "t": time.time(), "msgs": msgs}
        )

    # -- handlers (called by peers and the client) -----------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "worker": self.worker.address,
            "roles": self.roles,
            "worker_pid": os.getpid(),
            "process_ns": process_namespace(),
            **self.engine.info,
            "peer": self.kv_store.peer.to_msg() if self.kv_store is not None else None,
            "stream_kv": self.streams is not None,
        }

    @property
    def block_size(self) -> int:
        bs: int = self.engine.info["block_size"]
        return bs

    def root_key(self, cache_salt: str | None) -> BlockKey:
        """The engine's block-key chain root for this salt (see ``LLMEngine.root_key``)."""
        info = self.engine.info
        return root_key(info["hash_seed"], info["fingerprint"], cache_salt)

    def handle_info(self) -> dict[str, Any]:
        return self.info()

    async def handle_watch(self, seconds: float) -> bool:
        """(A client's liveness watch.) Answer only after ``seconds`` (at most
        ``WATCH_MAX_S``): while the call is open, its connection breaks the moment this
        worker's process dies, so the client learns of it without waiting for the
        scheduler's event (``mooncake.client_liveness``)."""
        await asyncio.sleep(min(max(0.0, float(seconds)), WATCH_MAX_S))
        return True

    def peer_of(self, address: str) -> Peer | None:
        """How to fetch blocks from the worker at ``address`` (asked once, then cached)."""
        if address not in self._peers:
            info = rpc(address, "mooncake_info", on=self.worker)
            self._peers[address] = Peer.from_msg(info.get("peer"))
        return self._peers[address]

    def handle_fetch_kv(self, request_id: str) -> dict[str, Any]:
        """A decode worker pulls a prefilled request's KV (once)."""
        export = self.requests.handoff.take_outgoing(request_id)
        self.requests.handle(request_state.HandedOff(request_id, time.monotonic()))
        return {
            "found": export is not None,
            "export": to_serialize(export) if export is not None else None,
        }

    async def handle_fetch_blocks(self, keys: list[bytes], token_ids: list[int]) -> dict[str, Any]:
        """A prefill worker pulls the leading cached blocks of a prefix (Algorithm 1's
        fetch of a remote prefix)."""
        blocks = await asyncio.wrap_future(
            self.engine.call("export_cached_blocks", keys, token_ids)
        )
        return {"blocks": to_serialize(blocks)}

    def handle_start(self, spec: RequestSpec, placement: dict[str, Any], start: str) -> None:
        """(Stream message from the Conductor at placement.) Start the request's lookup
        now, so its prefill does not wait for the scheduler to receive its graph and
        dispatch the lookup task; that task then collects the result."""
        rid = spec.request_id
        where = PlacementInfo.from_msg(placement)
        if not any(
            isinstance(i, request_state.BeginLookup)
            for i in self.requests.handle(request_state.Placed(rid, time.monotonic(), where.decode))
        ):
            return  # started already, or aborted before its start arrived
        # The engine admits the request as soon as it reads this call; the lookup thread
        # only collects the answer (and imports stored blocks when there are any).
        begun = None if fetches_remote(self, where) else begin_lookup(self, spec, start)
        fut = self._lookup_pool.submit(run_lookup, self, spec, where, start, begun)
        self.requests.futures.set_early(rid, fut, time.monotonic())

    def handle_resume(
        self, start: ResumeStart, placement: dict[str, Any], peer: dict[str, Any] | None
    ) -> None:
        """(Stream message from the Conductor when it places a request moved off a lost
        worker here.) Fetch what the prefill worker's store still holds of its prompt
        (``peer``) and admit it into the engine now (the early resume), so its next
        token does not wait for the client to submit the resume graph and for the
        scheduler to dispatch it; that graph's transfer task then collects the result
        and its decode task the engine's future. Without a graph within
        ``EARLY_LOOKUP_TIMEOUT_S`` the request is aborted (``_expire_early``)."""
        rid = start.spec.request_id
        where = PlacementInfo.from_msg(placement)
        told = self.requests.handle(
            request_state.ResumePlaced(rid, time.monotonic(), where.prefill)
        )
        if not any(isinstance(i, request_state.BeginTransfer) for i in told):
            return  # started already (or by its graph), or aborted before this arrived
        keys = start.spec.prompt_block_keys(self.block_size, self.root_key(start.spec.cache_salt))
        handle = start.handle(where, Peer.from_msg(peer), keys)
        fut = self._resume_pool.submit(receive, self, handle)
        # Set before any task of the graph can run: a task runs after this handler.
        self.requests.futures.set_receiving(rid, fut, time.monotonic())

    def offer_handoff(self, handle: KVHandle) -> None:
        """(Prefill side, any thread.) Tell the request's decode worker that its KV is
        ready (``handle_handoff``), directly and without waiting for an answer: its
        transfer then does not wait for the scheduler to learn of the prefill task's
        end and dispatch the transfer task. Lost on the way, the transfer task does it.
        Notices to one worker go one call at a time, together (``HandoffNotices``)."""
        decode = handle.placement.decode
        if handle.finished or decode is None or decode == self.worker.address:
            return
        self._notices.offer(decode, handle)

    async def _send_notices(self, decode: str, handles: list[KVHandle]) -> None:
        await self.worker.rpc(decode).mooncake_handoff(handles=to_serialize(handles))

    def handle_handoff(self, handles: list[KVHandle]) -> None:
        """(From a prefill worker, decode side.) These requests' KV is ready: bring each
        here and admit it now, in the hand-off threads (the early hand-off); its transfer
        task collects the result. A transfer task that came first does it all itself,
        and the notice does nothing."""
        for handle in handles:
            self._begin_handoff(handle)

    def _begin_handoff(self, handle: KVHandle) -> None:
        rid = handle.spec.request_id
        # Set before the event: a transfer task told to collect finds it at once.
        fut: concurrent.futures.Future[TransferResult] = concurrent.futures.Future()
        self.requests.futures.set_receiving(rid, fut, time.monotonic())
        told = self.requests.handle(
            request_state.HandoffReady(rid, time.monotonic(), handle.worker)
        )
        if not any(isinstance(i, request_state.BeginTransfer) for i in told):
            self.requests.futures.discard_receiving(rid, fut)
            return

        def run() -> None:
            try:
                fut.set_result(receive(self, handle))
            except BaseException as e:
                fut.set_exception(e)

        self._handoff_pool.submit(run)

    def handle_stream(self, spec: RequestSpec, placement: dict[str, Any]) -> None:
        """(Stream message from the Conductor at placement, to the decode worker.) Import
        the request's blocks as its prefill worker publishes them (``kv_stream``)."""
        if self.streams is not None:
            self.streams.start(spec, PlacementInfo.from_msg(placement))

    def _forget(self, request_id: str) -> None:
        """What a dropped request leaves besides its futures and hand-off KV: its token
        timings, and the lease on blocks a decode worker will now never fetch."""
        self.engine.token_times.pop(request_id, None)
        streams = getattr(self, "streams", None)
        if streams is not None:
            streams.cancel(request_id)
        kvs = getattr(self, "kv_store", None)
        if kvs is not None:
            kvs.release_handoff(request_id)

    async def _expire_early(self) -> None:
        """Deadlines: abort early lookups and early resumes no task claimed (the client
        went away between placement and submission), forget old aborts."""
        for ins in self.requests.handle(request_state.Tick(time.monotonic())):
            if isinstance(ins, request_state.AbortEngine):
                logger.warning(
                    "request %s was placed but its graph never arrived: aborting it", ins.request_id
                )

    def handle_release_handoff(self, request_id: str) -> bool:
        """A decode worker on another host fetched a request's blocks: release their lease."""
        return self.kv_store is not None and self.kv_store.release_handoff(request_id)

    async def handle_abort(self, request_id: str) -> bool:
        # The engine's abort is awaited here (its answer is the handler's), not fired
        # and forgotten as the machine's ``AbortEngine``.
        self.requests.handle(request_state.Abort(request_id, time.monotonic()), apply=False)
        self.requests.drop(request_id)
        if self.streams is not None:
            self.streams.cancel(request_id)
        return bool(await asyncio.wrap_future(self.engine.call("abort", request_id)))

    def handle_peer_lost(self, worker: str) -> None:
        """(Stream message from the scheduler.) A worker left: drop what was kept for it."""
        self.requests.handle(request_state.PeerLost(worker, time.monotonic()))

    # -- metrics (drained into the next report) ------------------------------------
    def report_lookup(self, spec: RequestSpec, lookup: LookupResult, cached_tokens: int) -> None:
        """Record where a prefill's cached prefix came from and, past it, how much an
        earlier prompt shared (see ``SharedPrefixProbe``)."""
        bs = self.block_size
        root = self.root_key(spec.cache_salt)
        keys = spec.prompt_block_keys(bs, root)
        # The reused prefix is, in order: blocks the engine had (device), blocks from this
        # worker's host/SSD tiers, blocks fetched from a peer (Algorithm 1). Whatever the
        # engine found beyond that (cached meanwhile by a concurrent request) is device.
        hits: dict[str, int] = {}
        left = cached_tokens
        for src, n in (
            ("device", lookup.cached_tokens // bs),
            *lookup.store_tiers.items(),
            ("remote", lookup.fetched_blocks),
        ):
            take = min(left, n * bs)
            hits[src] = hits.get(src, 0) + take
            left -= take
        hits["device"] += left
        with self._probe_lock:
            kind, shared = self._probe.probe(root, keys, spec.prompt_token_ids, cached_tokens // bs)
            self._probe.record(root, keys, spec.prompt_token_ids)
        self.reports.lookup(
            LookupRecord(
                prompt_tokens=len(spec.prompt_token_ids),
                hits=hits,
                shared_prefix=kind,
                shared_below_block_tokens=shared if kind == "below_block" else 0,
            )
        )

    def report_request(
        self,
        out: RequestOutput,
        *,
        queue_s: float | None,
        prefill_s: float | None,
        decode_s: float | None,
        itl: list[float],
    ) -> None:
        """Record a finished request's timings (wall clock, from the client's arrival)."""
        m = out.metrics
        self.reports.request(
            RequestRecord(
                request_id=out.request_id,
                ttft_s=m.ttft,
                e2e_s=m.finish_time - m.arrival_time if m.finish_time is not None else None,
                queue_s=queue_s,
                prefill_s=prefill_s,
                decode_s=decode_s,
                itl_s=itl,
                prompt_tokens=len(out.prompt_token_ids),
                generation_tokens=len(out.outputs[0].token_ids),
            )
        )

    def _tier_blocks(self) -> dict[str, tuple[int, int]]:
        """Host/SSD tier occupancy in blocks of this engine's size: (used, capacity)."""
        kvs = self.kv_store
        if kvs is None:
            return {}
        per_block = max(1, self.engine.info["kv_bytes_per_block"])
        return {
            name: (kvs.store.used_bytes(name) // per_block, tier.capacity_bytes // per_block)
            for name, tier in kvs.store.tiers.items()
        }

    # -- reports to the Conductor ---------------------------------------------------
    def _presence_changes(self) -> tuple[list[bytes], list[bytes]]:
        """Fold device-pool and store events into (keys now held, keys now gone)."""
        events = self.engine.block_events
        changes: list[tuple[str, bytes, str]] = []
        while events:
            kind, key = events.popleft()
            changes.append((kind, key, "device"))
        if self.kv_store is not None:
            changes += [
                (ev.kind, ev.key, "store")
                for ev in self.kv_store.store.events.drain()
                if ev.kind in ("stored", "removed")
            ]
        return self._presence.fold(changes)

    def _load(self) -> WorkerLoadReport:
        load = self.engine.load  # running, waiting, free/num/cached blocks, busy_seconds
        return WorkerLoadReport.from_msg(
            {
                **load,
                "tiers": self._tier_blocks(),
                "host_bytes": self.kv_store.store.used_bytes("host")
                if self.kv_store is not None
                else 0,
            }
        )

    def report(self) -> WorkerReport:
        stored, removed = self._presence_changes()
        steps = self.engine.step_timings
        decode_steps = []
        while steps:
            decode_steps.append(DecodeStep(*steps.popleft()))
        rep = self.reports.drain(
            self._load(),
            stored,
            removed,
            None if self._reported_model else self.info(),
            decode_steps,
        )
        if self.kv_store is not None:
            rep.leases_expired = len(self.kv_store.sweep_leases())
        return rep

    def _pending(self) -> Pending:
        """How soon the next report is needed (cheap: nothing is drained here)."""
        kvs = self.kv_store
        if (
            not self._reported_model
            or self.engine.block_events
            or (kvs is not None and len(kvs.store.events))
        ):
            return "urgent"
        own = self.reports.pending()
        if own != "none":
            return own
        if self.engine.step_timings or self._load_key() != self._sent_load:
            return "slow"
        return "none"

    def _load_key(self) -> dict[str, Any]:
        """The engine's load figures that tell a change (its busy time always grows)."""
        return {k: v for k, v in self.engine.load.items() if k != "busy_seconds"}

    async def _report_forever(self) -> None:
        """Report to the Conductor when the pacer says so, on the worker's batched stream
        to the scheduler: one message, no reply, ordered with the task results."""
        interval = self._pacer.pacing.urgent_s
        while True:
            try:
                await self._expire_early()
                now = time.monotonic()
                if self._pacer.due(now, self._pending()):
                    load = self._load_key()
                    rep = self.report().to_msg()
                    self.worker.batched_stream.send({"op": REPORT_OP, "report": rep})
                    self._pacer.sent(now)
                    self._sent_load = load
                    self._reported_model = True
                    self.reports_sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug("mooncake report failed: %s", e)
                await asyncio.sleep(0.5)
            await asyncio.sleep(interval)


def get_plugin() -> MooncakeWorker:
    """The plugin of the worker running the current task."""
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, MooncakeWorker):
        raise RuntimeError(
            "this worker has no mooncake engine (MooncakeWorker plugin not registered)"
        )
    return plugin
