"""The loop that owns one engine, in the engine process (``engine_process``).

One thread does everything: between steps it runs the commands the worker sent (add a
request, abort, look up or import or export blocks), then steps the engine while it
has work. After each step it sends the worker one message: the token deltas per
stream topic, the requests that finished, the block events, the load and the timings
of the decode-only steps since the last message (the Conductor fits its decode step
time on them). Nothing else
runs Python in this process, so a step never waits for the GIL.
"""

from __future__ import annotations

import logging
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mooncake.conductor.reports import StepTiming
from mooncake.outputs import RequestOutput
from mooncake.types import BlockKey
from mooncake.worker.channel import Channel, ChannelClosed
from mooncake.worker.token_stream import DirectStreams

if TYPE_CHECKING:
    from mooncake.engine import LLMEngine
    from mooncake.kvcache import KVBlock, KVExport
    from mooncake.kvcache.block import BlockRef, PackedExport
    from mooncake.sampling_params import SamplingParams
    from mooncake.worker.core_lending import CoreLender

logger = logging.getLogger(__name__)

MAX_STEP_TIMINGS = 1024
"""Decode step timings kept between two messages to the worker (older ones dropped)."""

ABORT_MEMORY_S = 60.0
"""How long an aborted request id is remembered (an add that arrives later is refused)."""

EXPORT_WAIT_S = 0.02
"""How long the loop waits, before its next step, for the worker's export of a request
whose prefill (prefill-only) just finished and whose decode follows elsewhere. The
worker asks for it as soon as it reads the step's result, a millisecond or two later; a
loop that stepped on at once kept the export (and the request's hand-off to decode)
waiting for a whole step, hundreds of ms when that step prefilled a batch of prompts.
A request that ended at prefill is not waited for: nobody waits for its export."""


class RequestAborted(RuntimeError):
    """The request was cancelled while its task waited on it."""


@dataclass
class Watch:
    """How the loop reports one request."""

    topic: str | None
    """Dask event topic of the request's deltas (through the worker), or None."""
    stream_addr: tuple[str, int] | None = None
    """The client's token stream address: deltas go there directly while it answers."""
    stream_key: bytes | None = None
    """The key that stream authenticates with (no key: no direct stream)."""
    sent_tokens: int = 0
    sent_text: int = 0
    prefill_only: bool = False
    """The engine runs only the first token here; 'length' after it is not the end."""
    final_max_tokens: int | None = None
    num_cached_tokens: int | None = None
    """Prefix-cache hit to report (decode reports prefill's, not its own import)."""
    token_times: list[float] = field(default_factory=list)
    """Wall-clock time each output token was published (for inter-token latency)."""
    prior_tokens: int = 0
    """Output tokens generated elsewhere before this engine took the request over."""


@dataclass
class AddRequest:
    """A request for the engine to admit, as the worker sends it."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    watch: Watch
    cache_salt: str | None = None
    keep_kv: bool = False
    """Keep the KV after the request finishes (prefill: the worker exports it)."""
    kv: KVExport | None = None
    """KV computed elsewhere to start from (decode without a store)."""
    prior_output_ids: Sequence[int] = ()
    """Output tokens generated elsewhere (prefill's first token)."""
    prior_logprobs: list[dict[int, float]] | None = None
    block_keys: list[BlockKey] | None = None
    """The prompt's full-block keys, as the client hashed them (``RequestSpec.block_keys``)."""


class EngineLoop:
    """Args: engine: owned from now on; channel: to the worker; profile: record each
    step's wall/CPU time, page faults and context switches (``profile_log`` command);
    lender: borrows idle peers' cores before each step and gives them back when the
    engine runs out of work (``WorkerConfig.cpu_core_lending``), owned from now on."""

    def __init__(
        self,
        engine: LLMEngine,
        channel: Channel,
        profile: bool = False,
        lender: CoreLender | None = None,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.profile = profile
        self.lender = lender
        self.profile_log: list[tuple[Any, ...]] = []
        self._watches: dict[str, Watch] = {}
        self._aborted: dict[str, float] = {}
        self._events: list[tuple[str, bytes]] = []
        self._failed: list[tuple[str, str]] = []
        self.busy_seconds = 0.0
        self._step_timings: list[StepTiming] = []
        self._last_decode_end: float | None = None
        """When the last step ended, if it was decode-only and the engine has been busy
        since (the next decode-only step's gap is the loop's time between steps)."""
        """(sequences, context tokens, seconds) of decode-only steps not yet sent."""
        self._stop = False
        self._exports_due: dict[str, float] = {}
        """Prefill-only requests finished here whose export the worker has not asked for
        yet -> when they finished (``time.monotonic()``)."""
        self._direct = DirectStreams()
        self._tier_readers: dict[str, Any] = {}
        """Host tiers of workers on this host, read in place (``import_from_tier``)."""
        self._arenas: dict[str, Any] = {}
        self._pools: dict[str, Any] = {}
        """Pool files of prefill engines on this host, mapped read-only, header checked."""
        """Its worker's arenas, mapped (``export_packed``, ``import_from_arena``)."""
        self._commands: dict[str, Callable[..., Any]] = {
            "add": self.add,
            "abort": self.abort,
            "match_prefix": self.match_prefix,
            "import_blocks": self.import_blocks,
            "import_from_tier": self.import_from_tier,
            "import_from_arena": self.import_from_arena,
            "import_from_records": self.import_from_records,
            "import_from_tier_and_add": self.import_from_tier_and_add,
            "import_from_records_and_add": self.import_from_records_and_add,
            "import_from_pool_and_add": self.import_from_pool_and_add,
            "held_blocks": self.held_blocks,
            "release": self.release,
            "unhold": self.unhold,
            "export_kv": self.export_kv,
            "export_packed": self.export_packed,
            "export_cached_blocks": self.export_cached_blocks,
            "stats": self.stats,
            "profile_log": lambda: self.profile_log,
            "stop": self.stop,
        }

    # -- commands (run between steps) -------------------------------------------------
    def add(
        self,
        req: AddRequest,
        stored: Sequence[bool] | None = None,
        keys: Sequence[BlockKey] | None = None,
    ) -> int | None:
        """Admit a request and report it under ``req.watch``.

        With ``stored`` (whether the worker's store holds each full block of the prompt)
        and ``keys`` (the prompt's block keys, as the worker computed them), look the
        prompt up first and return the cached tokens: when the store holds the block
        right after the cached prefix, the request is not admitted (the worker imports
        from the store first, then adds it); otherwise it is, in the same call.
        """
        request_id, prompt_token_ids, cache_salt = (
            req.request_id,
            req.prompt_token_ids,
            req.cache_salt,
        )
        if request_id in self._aborted:
            # Aborted while its lookup ran outside a task (at placement): do not admit it.
            raise RequestAborted(request_id)
        cached = None
        if stored is not None:
            cached = self.match_prefix(prompt_token_ids, cache_salt, keys)
            have = cached // self.engine.config.block_size
            if have < len(stored) and stored[have]:
                return -1 - cached  # not admitted: the store extends the prefix
        if self.profile:
            self.profile_log.append(("admit", request_id, time.time()))
        e = self.engine
        e.add_request(
            request_id,
            prompt_token_ids,
            req.params,
            cache_salt=cache_salt,
            keep_kv=req.keep_kv,
            kv=req.kv,
            prior_output_ids=req.prior_output_ids,
            prior_logprobs=req.prior_logprobs,
            block_keys=keys if keys is not None else req.block_keys,
        )
        watch = self._watches[request_id] = req.watch
        if req.prior_output_ids:
            seq = e._seqs[request_id]
            watch.sent_tokens = watch.prior_tokens = len(req.prior_output_ids)
            watch.sent_text = len(seq.detok.text) if seq.detok is not None else 0
        return cached

    def abort(self, request_id: str) -> bool:
        """Abort a request; its waiting task fails with ``RequestAborted``."""
        now = time.monotonic()
        self._aborted[request_id] = now
        for rid, t in list(self._aborted.items()):
            if now - t > ABORT_MEMORY_S:
                del self._aborted[rid]
        found = self.engine.abort_request(request_id)
        w = self._watches.pop(request_id, None)
        if w is not None:
            self._failed.append((request_id, "aborted"))
        return found or w is not None

    def match_prefix(
        self,
        prompt_token_ids: list[int],
        cache_salt: str | None,
        keys: Sequence[BlockKey] | None = None,
    ) -> int:
        """Prompt tokens whose blocks this engine caches (leading full blocks). ``keys``:
        the prompt's block keys when the caller has them (a worker hashes the prompt once
        for both processes); else they are computed here."""
        from mooncake.kvcache import block_keys

        e = self.engine
        bs = e.config.block_size
        if keys is None:
            keys = block_keys(prompt_token_ids, bs, e.root_key(cache_salt))
        chunks = [prompt_token_ids[i * bs : (i + 1) * bs] for i in range(len(keys))]
        return len(e.pool.match_prefix(keys, chunks)) * bs

    def import_blocks(self, blocks: list[KVBlock], hand_off: bool = False) -> int:
        return self.engine.import_cached_blocks(blocks, hand_off)

    def import_from_tier(
        self, path: str, keys: list[bytes], hand_off: bool = False
    ) -> tuple[int, int, int]:
        """Import the leading run of ``keys`` found intact in the host tier at ``path``
        (a worker's on this host) into the prefix cache, read in place: the tier's pages
        are the source of the engine's one copy into its pool, the worker's socket is
        not on the way. Returns (blocks found intact, blocks imported, payload bytes)."""
        from mooncake.store.reader import TierReader

        reader = self._tier_readers.get(path)
        if reader is None:
            # Headers are checked on read; each payload is checked while it is copied
            # into the pool (``import_checked_blocks``): one pass over it, not two.
            reader = self._tier_readers[path] = TierReader(path, verify=False)
        objs = reader.get_many([BlockKey(k) for k in keys])
        try:
            blocks, sums = [], []
            for o in objs:
                if o is None:
                    break
                blocks.append(o.to_kvblock(copy=False))
                sums.append((o.header.payload_checksum, o.header.checksum_algo))
            if not blocks:
                return 0, 0, 0
            found, taken = self.engine.import_checked_blocks(blocks, sums, hand_off)
            return found, taken, sum(b.data.nbytes for b in blocks[:found])
        finally:
            for o in objs:
                if o is not None:
                    o.release()

    def import_from_tier_and_add(
        self, path: str, keys: list[bytes], req: AddRequest
    ) -> tuple[int, int, int]:
        """A decode side's hand-off in one command: ``import_from_tier(path, keys,
        hand_off=True)``, then, when every block was there, ``add(req)``. One command
        waits for one step boundary; an import and then an add waited for two, and a
        request joined the batch two steps after its KV was ready. When a block is
        missing the request is not admitted (the worker fetches the rest another way,
        then adds it). Returns ``import_from_tier``'s counts."""
        got = self.import_from_tier(path, keys, True)
        if got[0] == len(keys):
            self.add(req)
        return got

    def import_from_records_and_add(
        self, arena: str, keys: list[bytes], offsets: list[int], req: AddRequest
    ) -> tuple[int, int, int]:
        """``import_from_tier_and_add`` for a hand-off served from the prefill worker's
        export arena: ``import_from_records(arena, keys, offsets, hand_off=True)``, then,
        when every block was there intact, ``add(req)``, in one command."""
        got = self.import_from_records(arena, keys, offsets, True)
        if got[0] == len(keys):
            self.add(req)
        return got

    def import_from_pool_and_add(
        self,
        path: str,
        src_ids: list[int],
        keys: list[bytes],
        token_ids: list[int],
        deadline: float,
        req: AddRequest,
    ) -> tuple[int, int, int]:
        """The same-host pool -> pool hand-off (``mooncake.engine.shared_pool``): copy
        the request's blocks ``src_ids`` out of the prefill engine's pool file at
        ``path`` (mapped read-only once, its header checked once) into free blocks of
        this pool, then, when every block is here, ``add(req)``, in one command.
        (0, 0, 0), nothing copied or admitted, where the mapping or its header does not
        suit this engine, or once ``time.monotonic()`` is past ``deadline`` (shortly
        before the prefill side's hold may end with its lease: this command may have
        waited for a step boundary)."""
        if time.monotonic() >= deadline:
            logger.warning("pool hand-off of %s came too late: not copied", req.request_id)
            return 0, 0, 0
        m = self._pools.get(path)
        if m is None:
            from mooncake.engine.shared_pool import map_pool

            m = map_pool(path)
            if not self.engine.pool_matches(m.header):
                m.mm.close()
                logger.warning("KV pool %s does not match this engine: not used", path)
                return 0, 0, 0
            self._pools[path] = m
        got = self.engine.import_pool_blocks(
            m.address, m.header.shape[2], src_ids, [BlockKey(k) for k in keys], token_ids, True
        )
        if got[0] == len(keys):
            self.add(req)
        return got

    def held_blocks(self, request_id: str) -> tuple[list[BlockKey], list[int], int] | None:
        """``LLMEngine.held_blocks``: a held request's full blocks where they are in the
        shared pool, kept held for a same-host decode engine."""
        self._exports_due.pop(request_id, None)
        return self.engine.held_blocks(request_id)

    def unhold(self, request_id: str) -> None:
        """``LLMEngine.unhold``: no decode engine copies from this held request's blocks
        after all; it stays held for an export."""
        self.engine.unhold(request_id)

    def release(self, request_id: str) -> None:
        """Free a held request's blocks (``LLMEngine.release``)."""
        self._exports_due.pop(request_id, None)
        self.engine.release(request_id)

    def import_from_arena(self, arena: str, refs: list[BlockRef], hand_off: bool = False) -> int:
        """Import blocks its worker received into the receive arena (checked there),
        read in place: one copy each, arena -> pool. Returns how many were added."""
        import numpy as np

        from mooncake.kvcache import KVBlock

        m = self._map(arena)
        blocks = []
        for r in refs:
            shape = r.spec.shape(len(r.token_ids))
            dtype = np.dtype(r.spec.numpy_dtype)
            data = np.frombuffer(
                m, dtype=dtype, count=int(np.prod(shape)), offset=r.offset
            ).reshape(shape)
            blocks.append(KVBlock(r.key, r.parent, r.token_ids, data, r.spec, r.model_fingerprint))
        return self.engine.import_cached_blocks(blocks, hand_off)

    def import_from_records(
        self, arena: str, keys: list[bytes], offsets: list[int], hand_off: bool = False
    ) -> tuple[int, int, int]:
        """Import blocks a prefill engine on this host laid out as store records in its
        worker's export arena (``arena``, mapped here once), read in place: the arena is
        the source of this engine's one copy into its pool, each block checked on the
        way (``LLMEngine.import_records``). Returns (blocks found intact, blocks
        imported, payload bytes)."""
        return self.engine.import_records(
            self._map(arena), offsets, [BlockKey(k) for k in keys], hand_off
        )

    def _map(self, arena: str) -> Any:
        from mooncake.store.shm_arena import map_arena

        m = self._arenas.get(arena)
        if m is None:
            m = self._arenas[arena] = map_arena(arena)
        return m

    def export_packed(
        self,
        request_id: str,
        arena: str,
        offset: int,
        size: int,
        algo: str,
        first: int = 0,
        release: bool = True,
        place: str | None = None,
    ) -> PackedExport | None:
        """Write the request's full blocks from ``first`` on as store records into its
        worker's export arena (``mooncake.store.shm_arena``) at ``[offset, offset +
        size)`` (see ``LLMEngine.export_packed``)."""
        self._exports_due.pop(request_id, None)
        return self.engine.export_packed(
            request_id,
            memoryview(self._map(arena))[offset : offset + size],
            algo,  # type: ignore[arg-type]
            first,
            release,
            place,
        )

    def export_kv(self, request_id: str) -> KVExport:
        self._exports_due.pop(request_id, None)
        return self.engine.export_kv(request_id, release=True)

    def export_cached_blocks(self, keys: list[bytes], token_ids: list[int]) -> list[KVBlock]:
        return self.engine.export_cached_blocks([BlockKey(k) for k in keys], token_ids)

    def stats(self) -> dict[str, Any]:
        import dataclasses

        e = self.engine
        from mooncake.kvcache import copies

        # KV bytes this (engine) process copied, by place: ``mooncake.kvcache.copies``.
        out = {**dataclasses.asdict(e.stats), **self.load(), "copies": copies.snapshot()}
        if self.lender is not None:
            out["core_lending"] = self.lender.report()
        return out

    def stop(self) -> None:
        self._stop = True

    def load(self) -> dict[str, Any]:
        e = self.engine
        return {
            "running": len(e.scheduler.running),
            "waiting": len(e.scheduler.waiting),
            "free_blocks": e.pool.num_free,
            "num_blocks": e.pool.num_blocks,
            "cached_blocks": e.pool.num_cached,
            "busy_seconds": self.busy_seconds,
        }

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Serve until the worker says stop or goes away."""
        try:
            while not self._stop:
                busy = self.engine.has_unfinished()
                if not busy and self.lender is not None:
                    self.lender.idle()  # before waiting: peers may borrow from now on
                wait = self._command_wait(time.monotonic()) if busy else 0.05
                if self.channel.poll(wait):
                    self._run_commands()
                    if self._command_wait(time.monotonic()) > 0.0:
                        # Exports of the step's finished prefills are still on their way
                        # (each from its own task): wait for them too, also when the
                        # commands just run were new requests for an idle engine.
                        continue
                if self._stop:
                    break
                if self.engine.has_unfinished():
                    if self.lender is not None:
                        self.lender.step()
                    self._step()
                    continue
                self._last_decode_end = None  # idle: the next step's wait is not a gap
                if self._failed or self._step_timings or self._drain_events():
                    self._send_state([], [])
        except ChannelClosed:
            logger.info("worker went away: engine process exits")
        finally:
            self._direct.close()
            for r in self._tier_readers.values():
                r.close()
            if self.lender is not None:
                self.lender.close()

    def _command_wait(self, now: float) -> float:
        """How long a busy loop waits for commands before its next step: until the
        exports the worker is about to ask for have come (``EXPORT_WAIT_S`` at most from
        each request's end), else not at all."""
        for rid, at in list(self._exports_due.items()):
            if now - at >= EXPORT_WAIT_S:
                del self._exports_due[rid]  # failed or aborted on the worker: not coming
        if not self._exports_due:
            return 0.0
        return min(self._exports_due.values()) + EXPORT_WAIT_S - now

    def _run_commands(self) -> None:
        while True:
            cid, name, args, kwargs = self.channel.recv()
            try:
                self.channel.send(("result", cid, True, self._commands[name](*args, **kwargs)))
            except Exception as exc:
                self.channel.send(("result", cid, False, _picklable(exc)))
            if self._stop or not self.channel.poll(0.0):
                return

    def _step(self) -> None:
        t0 = time.perf_counter()
        if self.profile:
            r0, w0, c0 = resource.getrusage(resource.RUSAGE_THREAD), time.time(), time.thread_time()
        try:
            outputs = self.engine.step()
        except Exception:  # pragma: no cover - a bug: fail every waiting request
            logger.exception("engine step failed")
            for rid in list(self._watches):
                self.engine.abort_request(rid)
                self._failed.append((rid, "engine step failed"))
            self._watches.clear()
            self._send_state([], [])
            return
        self.busy_seconds += time.perf_counter() - t0
        for rid, why in self.engine.take_failed().items():
            # Failed on its own (e.g. its sampling): its task fails, the batch goes on.
            logger.warning("request %s failed: %s", rid, why)
            if self._watches.pop(rid, None) is not None:
                self._failed.append((rid, why))
        if self.profile:
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            counts = (
                r1.ru_minflt - r0.ru_minflt,
                r1.ru_nivcsw - r0.ru_nivcsw,
                r1.ru_nvcsw - r0.ru_nvcsw,
            )
            self.profile_log.append(
                (
                    "step",
                    [o.request_id for o in outputs],
                    w0,
                    time.time(),
                    time.thread_time() - c0,
                    counts,
                )
            )
        self._publish(outputs)
        # A decode-only step, timed through the publishing of its tokens: what a token
        # gap costs. Steps with a prompt chunk are prefill's to account for.
        # Its gap: the loop's time since the previous decode-only step (taking commands,
        # sending state), which a token waits on top of the step.
        shape = self.engine.last_step
        end = time.perf_counter()
        if shape.decodes > 0 and shape.prefill_tokens == 0:
            if len(self._step_timings) >= MAX_STEP_TIMINGS:
                del self._step_timings[: MAX_STEP_TIMINGS // 2]
            gap = None if self._last_decode_end is None else t0 - self._last_decode_end
            self._step_timings.append((shape.decodes, shape.context_tokens, end - t0, gap, ()))
            self._last_decode_end = end
        else:
            self._last_decode_end = None
            if shape.decodes == 0 and shape.chunks:
                # A prompt-only step: what a batched prefill step costs.
                if len(self._step_timings) >= MAX_STEP_TIMINGS:
                    del self._step_timings[: MAX_STEP_TIMINGS // 2]
                self._step_timings.append((0, 0, end - t0, None, shape.chunks))

    def _drain_events(self) -> bool:
        self._events += [(ev.kind, ev.key) for ev in self.engine.pool.drain_events()]
        return bool(self._events)

    def _send_state(
        self,
        deltas: list[tuple[str, list[dict[str, Any]]]],
        finished: list[tuple[str, RequestOutput, list[float]]],
    ) -> None:
        self._drain_events()
        events, self._events = self._events, []
        failed, self._failed = self._failed, []
        steps, self._step_timings = self._step_timings, []
        self.channel.send(("state", deltas, finished, failed, events, self.load(), steps))

    def _publish(self, outputs: list[RequestOutput]) -> None:
        by_topic: dict[str, list[dict[str, Any]]] = {}
        direct: dict[tuple[tuple[str, int], bytes], list[tuple[Watch, dict[str, Any]]]] = {}
        finished: list[tuple[str, RequestOutput, list[float]]] = []
        now = time.time()
        for out in outputs:
            w = self._watches.get(out.request_id)
            if w is None:
                continue
            new = len(out.outputs[0].token_ids) - w.prior_tokens - len(w.token_times)
            w.token_times.extend([now] * max(0, new))
            done = out.finished
            if (
                done
                and w.prefill_only
                and out.finish_reason == "length"
                and (w.final_max_tokens is None or w.final_max_tokens > len(out.token_ids))
            ):
                done = False  # prefill's own limit, the request goes on at decode
            if w.stream_addr is not None and w.stream_key is not None:
                direct.setdefault((w.stream_addr, w.stream_key), []).append(
                    (w, self._delta(out, w, done))
                )
            elif w.topic is not None:
                by_topic.setdefault(w.topic, []).append(self._delta(out, w, done))
            if out.finished:
                del self._watches[out.request_id]
                finished.append((out.request_id, out, w.token_times))
                if w.prefill_only and not done:
                    # Its decode worker waits for the export (a request that ended here
                    # has nobody waiting: its export may wait for the next step).
                    self._exports_due[out.request_id] = time.monotonic()
        for (addr, key), items in direct.items():
            if not self._direct.send(addr, key, [m for _, m in items]):
                # Through the worker from now on, for these requests (keeps their order).
                for w, m in items:
                    w.stream_addr = None
                    if w.topic is not None:
                        by_topic.setdefault(w.topic, []).append(m)
        # One message: the worker streams the deltas first, then resolves the tasks, so
        # a client sees the last tokens no later than the task's completion.
        self._send_state(list(by_topic.items()), finished)

    @staticmethod
    def _delta(out: RequestOutput, w: Watch, done: bool) -> dict[str, Any]:
        comp = out.outputs[0]
        msg: dict[str, Any] = {
            "rid": out.request_id,
            "tokens": comp.token_ids[w.sent_tokens :],
            "text": comp.text[w.sent_text :],
            "finished": done,
            "cached": out.num_cached_tokens if w.num_cached_tokens is None else w.num_cached_tokens,
            "prompt_len": len(out.prompt_token_ids),
        }
        if comp.logprobs is not None:
            msg["logprobs"] = [
                [[int(k), float(v)] for k, v in d.items()] for d in comp.logprobs[w.sent_tokens :]
            ]
        if done:
            msg.update(
                finish_reason=comp.finish_reason, stop_reason=comp.stop_reason, final_text=comp.text
            )
        w.sent_tokens = len(comp.token_ids)
        w.sent_text = len(comp.text)
        return msg


def _picklable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a RuntimeError that says what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(
            f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"
        )
