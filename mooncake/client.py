"""``mooncake.LLM``: submit requests as Dask task graphs and get tokens back.

``LLM(model=..., prefill_workers=N, decode_workers=M)`` starts an embedded
``LocalCluster`` (one process per worker, roles as Dask resources); ``LLM(model=...,
scheduler="tcp://host:8786")`` joins a cluster started with ``dask scheduler`` and
``mooncake worker`` (see docs/cluster.md). Every request is tokenized here, placed by
the Conductor (a scheduler plugin), compiled into its graph and submitted with each task
restricted to the chosen worker. Streamed tokens come straight from the engine
processes to a port this client listens on (``mooncake.worker.token_stream``), with a
Dask event topic as the fallback; each request's final output comes back as the result
of its graph. Streams, moves off lost workers and aborts are in
``mooncake.client_stream``, batches in ``mooncake.client_batch``, worker liveness in
``mooncake.client_liveness`` (mixins of ``LLM``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dask.config
from dask._task_spec import Task, TaskRef, parse_input
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from distributed import Client, Future, LocalCluster, Nanny
from distributed.protocol.serialize import to_serialize
from distributed.security import Security

from mooncake.auth import new_secret
from mooncake.client_batch import BatchMixin
from mooncake.client_common import PLACE_TIMEOUT_S, Rejected, Unavailable, WorkerLost
from mooncake.client_liveness import LivenessMixin
from mooncake.client_moves import MoveRecord
from mooncake.client_place import PlaceBatcher
from mooncake.client_stream import StreamMixin
from mooncake.conductor.config import ConductorConfig
from mooncake.conductor.membership import TOPIC as MEMBERSHIP_TOPIC
from mooncake.conductor.messages import (
    PlacementInfo,
    PlaceRefused,
    PlaceRequest,
    parse_place_reply,
)
from mooncake.conductor.plugin import ConductorPlugin
from mooncake.config import EngineConfig
from mooncake.cpu_list import BIND_ENV, worker_slice
from mooncake.dashboard import PAGE_PATH, MonitorPlugin
from mooncake.dask_defaults import quiet_config
from mooncake.graphs import KeyRef, get_builder
from mooncake.graphs import resume as resume_graph
from mooncake.kvcache import block_keys, root_key
from mooncake.sampling_params import SamplingParams
from mooncake.security import TLSFiles, check_address, client_security, embedded_security, uses_tls
from mooncake.store import tier_dirs
from mooncake.tokenizer import Tokenizer
from mooncake.worker.config import WorkerConfig
from mooncake.worker.messages import KVHandle, RequestSpec, ResumeStart
from mooncake.worker.plugin import MooncakeWorker
from mooncake.worker.tasks import engine_stats, worker_info
from mooncake.worker.token_stream import TokenStreamServer

logger = logging.getLogger(__name__)

Mode = Literal["disaggregated", "colocated"]

CLIENT_SEND_INTERVAL_S = 0.001
"""Batching interval of the client's message stream to the scheduler."""
PLACE_CONCURRENCY = 4
"""Placement calls a client has in flight at once (more wait their turn)."""
MOVE_LOG_LEN = 10_000
"""How many move records ``LLM.move_log`` keeps."""


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def _refuse_in_spawn_bootstrap() -> None:
    """Raise if this process is a spawned child still importing the parent's main module.

    The embedded cluster starts its workers with multiprocessing's ``spawn``, which
    re-imports the script that created the ``LLM``. Without a ``__main__`` guard every
    worker would build an ``LLM`` of its own and fail deep inside multiprocessing
    ("...before the current process has finished its bootstrapping phase", then
    "Nanny failed to start"); this names the fix instead.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "mooncake.LLM(...) was created while a worker process was importing your main "
            "module: the embedded cluster starts its workers by re-importing the script. "
            "Put the code that creates and uses the LLM under "
            '`if __name__ == "__main__":` (or in a function called from there).'
        )


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What a batch partition task needs to submit requests as its ``LLM`` would, from a
    worker: built by the ``LLM``, shipped inside the collection's graph (small: the
    model facts and the workers known then), and attached there to the worker's own
    Dask client (:meth:`attach`)."""

    mode: Mode
    info: dict[str, Any]
    workers: dict[str, dict[str, Any]]

    def attach(self, client: Client) -> LLM:
        """An ``LLM`` over ``client`` (placement, submission, liveness and ``generate``;
        no token streams, nothing to close)."""
        return LLM._attach(client, self)


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str) -> Tokenizer | None:
    """One tokenizer per model directory and process (partition tasks share it)."""
    path = Path(model_path)
    return Tokenizer(path) if (path / "tokenizer.json").is_file() else None


JOIN_TIMEOUT_S = 120.0
"""How long ``LLM(scheduler=...)`` waits for the scheduler and for a worker of each role
it needs (workers of a deployed cluster may start after the server)."""


class LLM(BatchMixin, StreamMixin, LivenessMixin):
    """Disaggregated LLM serving on a Dask cluster.

    Args:
        model: local Hugging Face directory; None: the built-in default model.
        prefill_workers, decode_workers: embedded cluster size per role (ignored with
            ``scheduler``). In ``colocated`` mode, ``prefill_workers`` workers each do both.
        scheduler: address of an existing Dask scheduler to join instead.
        mode: ``disaggregated`` (prefill -> transfer -> decode) or ``colocated`` baseline.
        engine_config: engine settings for every worker (``model`` overrides its field).
        conductor_config: placement/admission policy and SLOs.
        threads_per_worker: Dask threads per worker process.
        dashboard_address: where the embedded cluster serves the Dask dashboard
            (loopback only by default; ``":8787"`` exposes it on every interface).
        worker_config: each worker's KV store tiers and transfer settings.
        tls: TLS files to join ``scheduler`` with (default: Dask's TLS config, if any).
        insecure: allow a plain-TCP scheduler off the loopback; for the embedded
            cluster, use plain TCP on the loopback instead of TLS with a temporary CA.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        prefill_workers: int = 1,
        decode_workers: int = 1,
        scheduler: str | None = None,
        mode: Mode = "disaggregated",
        engine_config: EngineConfig | None = None,
        conductor_config: ConductorConfig | None = None,
        threads_per_worker: int = 4,
        dashboard_address: str | None = "127.0.0.1:0",
        worker_config: WorkerConfig | None = None,
        tls: TLSFiles | None = None,
        insecure: bool = False,
    ) -> None:
        _refuse_in_spawn_bootstrap()
        self.build_graph = get_builder(mode)
        self.mode = mode
        if prefill_workers < 1:
            raise ValueError(f"prefill_workers: must be at least 1, got {prefill_workers}")
        if mode == "disaggregated" and decode_workers < 1:
            raise ValueError(f"decode_workers: must be at least 1, got {decode_workers}")
        ec = engine_config or EngineConfig()
        if model is not None:
            ec = dataclasses.replace(ec, model=model)
        cc = conductor_config or ConductorConfig()
        cc = dataclasses.replace(cc, block_size=ec.block_size, colocated=(mode == "colocated"))
        self.engine_config, self.conductor_config = ec, cc
        self.cluster: LocalCluster | None = None
        if scheduler is None:
            security = Security() if insecure else embedded_security()
            # The scheduler and each Nanny read Dask's config when they are made, and each
            # Nanny hands it to its worker process: the quieter housekeeping applies to all.
            with dask.config.set(quiet_config()):
                self.cluster = self._make_cluster(
                    ec,
                    prefill_workers,
                    0 if mode == "colocated" else decode_workers,
                    mode,
                    threads_per_worker,
                    dashboard_address,
                    security,
                )
            self.client = Client(self.cluster)
        else:
            security = client_security(tls)
            check_address(scheduler, uses_tls(scheduler, security), insecure, "scheduler")
            self.client = Client(scheduler, security=security, timeout=JOIN_TIMEOUT_S)
            # Workers of a deployed cluster may start before or after this client.
            self._wait_for_roles(
                ("prefill",) if mode == "colocated" else ("prefill", "decode"), JOIN_TIMEOUT_S
            )
        # The client's stream to the scheduler holds a message back until 10 ms after the
        # previous one (Dask's default): a request submitted right after another's futures
        # were released waited ~5 ms at p50 for its graph to leave. 1 ms still coalesces bursts.
        if self.client.scheduler_comm is not None:
            self.client.scheduler_comm.interval = CLIENT_SEND_INTERVAL_S
        # The monitor first: it owns the metric state that the Conductor then feeds.
        self.client.register_plugin(MonitorPlugin())
        self.client.register_plugin(ConductorPlugin(cc))
        self.worker_config = worker_config or WorkerConfig()
        self.client.register_plugin(MooncakeWorker(ec, self.worker_config))
        infos = self.client.run(worker_info)
        if not infos:
            raise RuntimeError("the cluster has no workers")
        self.info: dict[str, Any] = next(iter(infos.values()))
        self.workers: dict[str, dict[str, Any]] = infos
        self._wait_conductor_ready(len(infos))
        self.model_name: str = self.info["model_name"]
        self.max_model_len: int = int(self.info["max_model_len"])
        path = Path(self.info["model_path"])
        self.tokenizer: Tokenizer | None = (
            Tokenizer(path) if (path / "tokenizer.json").is_file() else None
        )
        self._topic = f"mooncake-stream-{self.client.id}"
        self._init_requests()
        self.client.subscribe_topic(self._topic, self._on_event)
        self.client.subscribe_topic(MEMBERSHIP_TOPIC, self._on_membership)
        # Deltas come straight from the engine processes to this port; the topic above
        # is their fallback (see mooncake.worker.token_stream).
        self._stream_key = new_secret()
        self._stream_server = TokenStreamServer(
            self._on_msgs, self._stream_key, self._on_stream_closed
        )
        self.client.sync(self._stream_server.start, self._stream_host())

    def _init_requests(self) -> None:
        """The per-request bookkeeping (also of an LLM attached inside a task)."""
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        self._futures: dict[str, dict[str, Future[Any]]] = {}
        self._placed: dict[str, set[str]] = {}
        """Request id -> the workers its graph's tasks run on (until it ends)."""
        self.moves: collections.Counter[str] = collections.Counter()
        """Request id -> how many times it was moved off a lost worker."""
        self._moved_to: dict[str, str] = {}
        """A moved stream's request id -> the id of its current attempt."""
        self.move_log: collections.deque[MoveRecord] = collections.deque(maxlen=MOVE_LOG_LEN)
        """The latest moves of streamed requests, step by step (``mooncake.client_moves``)."""
        self._placer: PlaceBatcher | None = None
        """Coalesces and bounds the placement calls (made on the client's loop at first use)."""
        self._left_at: dict[str, float] = {}
        """Worker -> when the client got its worker-left event (``time.monotonic()``)."""
        self._task_workers: dict[str, str] = {}
        """Task key -> the worker it is restricted to (until its request ends)."""
        self._gone: set[str] = set()
        """Workers the scheduler reported gone (``WorkerLeft``), or found dead here."""
        self._dead: set[str] = set()
        """Workers found dead here (their token stream closed, their port refuses) that
        the scheduler has not removed yet: placements exclude them."""
        self._probes: set[asyncio.Task[None]] = set()
        self._watches: dict[str, asyncio.Task[None]] = {}
        """Worker -> the task holding its liveness watch (``mooncake.client_liveness``)."""
        self._watching = True
        self._exit_poll: asyncio.Task[None] | None = None
        """Checks watched workers on this host for an exit (``client_liveness``)."""
        self._live_cache: tuple[float, set[str]] = (0.0, set())
        self._lock = threading.Lock()
        self._ids = itertools.count()

    @classmethod
    def _attach(cls, client: Client, ctx: TaskContext) -> LLM:
        """See :meth:`TaskContext.attach`: the state ``generate`` needs, over a client this
        object does not own (a worker's, inside a task)."""
        self = cls.__new__(cls)
        self.client, self.cluster, self.mode = client, None, ctx.mode
        self.build_graph = get_builder(ctx.mode)
        self.info, self.workers = ctx.info, dict(ctx.workers)
        self.model_name = ctx.info["model_name"]
        self.max_model_len = int(ctx.info["max_model_len"])
        self.tokenizer = _tokenizer(str(ctx.info["model_path"]))
        self._topic = f"mooncake-stream-{client.id}"
        self._init_requests()
        self._watching = False  # a partition task's client: its own event and liveness checks
        return self

    def task_context(self) -> TaskContext:
        """What a partition task needs to run ``generate`` from a worker
        (``mooncake.batch_dask``)."""
        with self._lock:
            workers = {w: dict(i) for w, i in self.workers.items()}
        return TaskContext(self.mode, dict(self.info), workers)

    def _wait_for_roles(self, roles: tuple[str, ...], timeout: float) -> None:
        """Wait until the cluster has a worker of every role (Dask resources), or raise
        ``RuntimeError`` naming the missing ones after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            have = {r for w in workers.values() for r in (w.get("resources") or {})}
            missing = [r for r in roles if r not in have]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster has no {' or '.join(missing)} worker after {timeout:.0f} s "
                    f"(start them with `mooncake worker SCHEDULER --role ROLE`)"
                )
            time.sleep(0.5)

    @property
    def _scheduler(self) -> Any:
        """RPC handle to the scheduler (its mooncake_* handlers come from the Conductor plugin)."""
        return self.client.scheduler

    @property
    def _client_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = self.client.loop.asyncio_loop  # type: ignore[union-attr]
        return loop

    async def _on_client_loop(self, coro: Any) -> Any:
        """Await ``coro`` on the client's event loop from any other loop."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._client_loop)
        return await asyncio.wrap_future(fut)

    # -- cluster -------------------------------------------------------------------
    @staticmethod
    def _make_cluster(
        ec: EngineConfig,
        n_prefill: int,
        n_decode: int,
        mode: Mode,
        threads: int,
        dashboard: str | None,
        security: Security,
    ) -> LocalCluster:
        # Loopback only; TLS with a temporary CA unless insecure (mooncake.security).
        cluster = LocalCluster(
            n_workers=0,
            processes=True,
            threads_per_worker=threads,
            host="127.0.0.1",
            dashboard_address=dashboard,
            security=security,
            silence_logs=logging.WARNING,
        )
        roles = [
            ("prefill-" if mode == "disaggregated" else "worker-") + str(i)
            for i in range(n_prefill)
        ]
        roles += [f"decode-{i}" for i in range(n_decode)]
        gpus = _gpu_count() if ec.device.startswith("cuda") else 0
        cores = os.cpu_count() or 1
        for i, name in enumerate(roles):
            resources = (
                {"prefill": 1.0, "decode": 1.0}
                if mode == "colocated"
                else {name.split("-")[0]: 1.0}
            )
            per_worker = max(1, cores // len(roles))
            env = {"OMP_NUM_THREADS": str(per_worker)}
            bind = ec.cpu_threads_bind or os.environ.get(BIND_ENV) or "auto"
            if bind == "auto" and ec.device == "cpu":
                # Each worker's engine pins its threads to a slice of CPUs of its own (the
                # default of an embedded cluster): unpinned, the engines' OpenMP threads
                # migrate and share cores with the server's and workers' threads, and
                # every parallel region waits for its descheduled thread (TPOT 1.65x
                # vllm serve's at 3 req/s unpinned, 1.07x pinned, docs/performance.md).
                env[BIND_ENV] = worker_slice(sorted(os.sched_getaffinity(0)), i, per_worker)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)  # one worker process per GPU
            opts = dict(cluster.new_spec["options"])
            opts.update(name=name, resources=resources, env=env)
            cluster.worker_spec[name] = {"cls": Nanny, "options": opts}
        try:
            cluster.sync(cluster._correct_state)
        except RuntimeError as e:
            cluster.close()
            if getattr(sys.modules.get("__main__"), "__file__", None) is None:
                raise
            # The usual cause in a script is a missing __main__ guard; the workers' own
            # error (printed above by each worker process) says so, this repeats it here.
            raise RuntimeError(
                f"{e} If the worker errors above say the LLM was created while importing the "
                "main module, put the code that creates the LLM under "
                '`if __name__ == "__main__":`.'
            ) from e
        return cluster

    def _wait_conductor_ready(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if len(stats["workers"]) >= n:
                return
            time.sleep(0.05)
        raise RuntimeError("workers did not report to the Conductor in time")

    @property
    def dashboard_link(self) -> str | None:
        link: str | None = self.client.dashboard_link
        return link

    @property
    def mooncake_dashboard_link(self) -> str | None:
        """The Mooncake page of the Dask dashboard (None without a dashboard)."""
        link = self.dashboard_link
        if not link:
            return None
        base = link.rsplit("/", 1)[0] if link.rstrip("/").endswith("status") else link.rstrip("/")
        return f"{base}/{PAGE_PATH}"

    def stats(self) -> dict[str, Any]:
        """The Conductor's view: placements, rejections, per-worker load."""
        result: dict[str, Any] = self.client.sync(self._scheduler.mooncake_stats)
        return result

    def history(self, request_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Finished requests as the Conductor saw them: the worker each step ran on
        (``ran_on``), the TTFT estimate, when it was placed and finished."""
        ids = list(request_ids) if request_ids is not None else None
        result: list[dict[str, Any]] = self.client.sync(
            self._scheduler.mooncake_history, request_ids=ids
        )
        return result

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        """Each worker's engine counters (prompt tokens computed/cached, steps, ...)."""
        result: dict[str, dict[str, Any]] = self.client.run(engine_stats)
        return result

    # -- requests -----------------------------------------------------------------------
    def make_request(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        cache_salt: str | None = None,
        stream: bool = False,
    ) -> RequestSpec:
        """Tokenize and validate; raises ``ValueError`` naming the problem."""
        params = params or SamplingParams()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: this model has no tokenizer.json; pass token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            vocab = int(self.info["vocab_size"])
            if any(not 0 <= t < vocab for t in ids):
                raise ValueError(f"prompt: token ids must be in [0, {vocab})")
        if not ids:
            raise ValueError("prompt: must contain at least one token")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(ids)} tokens is longer than the context limit; the "
                f"model accepts at most {self.max_model_len - 1} prompt tokens"
            )
        rid = request_id or f"{uuid.uuid4().hex[:12]}{next(self._ids)}"
        if not params.greedy and params.seed is None:
            # A seed of its own (what the engine would draw anyway) makes the request
            # reproducible: moved to another worker, it samples the same tokens again.
            params = dataclasses.replace(params, seed=random.getrandbits(63))
        root = root_key(int(self.info["hash_seed"]), self.info["fingerprint"], cache_salt)
        return RequestSpec(
            rid,
            ids,
            params,
            cache_salt,
            stream_topic=self._topic if stream else None,
            stream_addr=self._stream_server.address if stream else None,
            stream_key=self._stream_key if stream else None,
            arrival_time=time.time(),
            prompt=prompt if isinstance(prompt, str) else None,
            # Hashed here once: the Conductor, the workers and the engines reuse them.
            block_keys=block_keys(ids, int(self.info["block_size"]), root),
        )

    def _block_keys(self, spec: RequestSpec) -> list[Any]:
        root = root_key(int(self.info["hash_seed"]), self.info["fingerprint"], spec.cache_salt)
        return spec.prompt_block_keys(int(self.info["block_size"]), root)

    def _place_request(
        self,
        spec: RequestSpec,
        resume: bool = False,
        exclude: tuple[str, ...] = (),
        resume_from: ResumeStart | None = None,
    ) -> dict[str, Any]:
        max_out = spec.params.max_tokens or (self.max_model_len - len(spec.prompt_token_ids))
        with self._lock:
            # Workers found dead that the scheduler has not removed yet: no request on them.
            avoid = tuple(sorted(set(exclude) | self._dead))
        return PlaceRequest(
            request_id=spec.request_id,
            prompt_len=len(spec.prompt_token_ids),
            block_keys=self._block_keys(spec),
            output_len=max_out,
            client=self.client.id,
            # A resumed request goes straight to a decode worker: no early lookup; with
            # the tokens it had (``resume_from``) the Conductor passes it on to that
            # worker, which resumes it at placement (the early resume). Otherwise the
            # request is passed on to the prefill worker, which starts the lookup at
            # placement.
            resume=resume,
            spec=(to_serialize(resume_from) if resume_from is not None else None)
            if resume
            else to_serialize(spec),
            start="generate" if self.mode == "colocated" else "prefill",
            exclude=avoid,
        ).to_msg()

    @staticmethod
    def _placement(reply: dict[str, Any]) -> PlacementInfo:
        answer = parse_place_reply(reply)
        if isinstance(answer, PlaceRefused):
            if answer.unavailable:
                raise Unavailable(f"request not placed: {answer.reason}")
            raise Rejected(answer.reason, answer.retry_after)
        return answer

    def place(self, spec: RequestSpec) -> PlacementInfo:
        """Ask the Conductor where to run ``spec`` (raises ``Rejected``)."""
        reply = self.client.sync(
            self._ask_place, self._place_request(spec), callback_timeout=PLACE_TIMEOUT_S
        )
        return self._placement(reply)

    async def _ask_place(self, request: dict[str, Any]) -> dict[str, Any]:
        """(Client loop.) The Conductor's answer to one placement request. At most
        ``PLACE_CONCURRENCY`` calls at once: each call beyond the connections the pool
        holds opens a new (TLS) connection to the scheduler, and a burst of them (every
        request of a lost worker placed again at once) cost the scheduler and this loop
        a handshake each, delaying every placement of the burst by hundreds of ms. The
        requests waiting for a call go together in one (``mooncake.client_place``)."""
        if self._placer is None:
            scheduler = self._scheduler

            async def place_many(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
                replies: list[dict[str, Any]] = await scheduler.mooncake_place_many(
                    requests=requests
                )
                return replies

            self._placer = PlaceBatcher(place_many, PLACE_CONCURRENCY)
        return await self._placer.ask(request)

    def submit(self, spec: RequestSpec, placement: PlacementInfo) -> Future[Any]:
        """Submit the request's graph; returns the future of its final ``RequestOutput``."""
        return self._submit_graph(spec, self.build_graph(spec, placement))

    def _submit_resume(
        self, spec: RequestSpec, handle: KVHandle, placement: PlacementInfo
    ) -> Future[Any]:
        """Submit a moved request's resume graph: decode from ``handle`` (the tokens
        delivered so far) on ``placement.decode``."""
        return self._submit_graph(spec, resume_graph.build(handle, placement))

    def _submit_graph(self, spec: RequestSpec, graph: Any) -> Future[Any]:
        # The whole graph in one update-graph message (one submit per task cost the
        # scheduler a message and a graph update each, and all but the first waited for
        # the client's batched stream); each task is its own layer, restricted to its worker.
        layers = {
            t.key: MaterializedLayer(
                {
                    t.key: Task(
                        t.key,
                        t.func,
                        *(
                            TaskRef(a.key) if isinstance(a, KeyRef) else parse_input(a)
                            for a in t.args
                        ),
                    )
                },
                annotations={"workers": [t.worker], "allow_other_workers": False},
            )
            for t in graph.tasks
        }
        deps = {t.key: {a.key for a in t.args if isinstance(a, KeyRef)} for t in graph.tasks}
        keys = [t.key for t in graph.tasks]
        futures: dict[str, Future[Any]] = dict(
            zip(
                keys,
                self.client.get(
                    HighLevelGraph(layers, deps), keys, sync=False, fifo_timeout="100ms"
                ),
            )
        )
        workers = {t.worker for t in graph.tasks}
        with self._lock:
            self._futures[spec.request_id] = futures
            self._placed[spec.request_id] = workers
            self._task_workers.update({t.key: t.worker for t in graph.tasks})
        self._start_watches(workers)
        out = futures[graph.output_key]
        out.add_done_callback(lambda _f, rid=spec.request_id: self._forget(rid))
        return out

    def _forget(self, rid: str) -> None:
        with self._lock:
            for key in self._futures.pop(rid, {}):
                self._task_workers.pop(key, None)
            self._placed.pop(rid, None)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.client.sync(self._stop_watches)
            self.client.sync(self._stream_server.close)
        except Exception as e:
            logger.debug("token stream server close: %s", e)
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                address = self.cluster.scheduler_address
                self.cluster.close()
                # Every worker of the embedded cluster has stopped: remove what workers
                # killed on the way left in the store roots.
                for root in (self.worker_config.store_root, self.worker_config.ssd_root):
                    if root is not None:
                        tier_dirs.remove_cluster(root, address)

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LLM", "Rejected", "Unavailable", "WorkerConfig", "WorkerLost"]
