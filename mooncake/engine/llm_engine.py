"""``LLMEngine``: requests in, tokens out, one continuous-batching step at a time."""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mooncake.config import EngineConfig
from mooncake.engine import thread_bind
from mooncake.engine.default_model import default_model_path
from mooncake.engine.kv_cache_manager import KVCacheManager
from mooncake.engine.loader import fingerprint, load_model
from mooncake.engine.malloc import keep_freed_memory
from mooncake.engine.model_runner import ModelRunner
from mooncake.engine.sampler import SampleRequest, sample
from mooncake.engine.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from mooncake.engine.sequence import Sequence, SequenceStatus
from mooncake.kvcache import BlockPool, KVBlock, KVBlockSpec, KVExport, root_key
from mooncake.kvcache.block import PackedExport
from mooncake.outputs import CompletionOutput, RequestMetrics, RequestOutput
from mooncake.sampling_params import SamplingParams, params_per_prompt
from mooncake.tokenizer import IncrementalDetokenizer, Tokenizer
from mooncake.types import BlockKey

if TYPE_CHECKING:
    from mooncake.store.config import ChecksumName


def _bytes_of(data: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes, without a copy (to checksum them)."""
    return memoryview(data).cast("B")  # type: ignore[arg-type]


@dataclass
class EngineStats:
    """Counters since the engine started."""

    num_steps: int = 0
    num_prompt_tokens_computed: int = 0
    """Prompt tokens run through the model (cache hits excluded)."""
    num_prompt_tokens_cached: int = 0
    num_generated_tokens: int = 0
    num_preemptions: int = 0


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one engine step computed (the Conductor fits decode step time on it)."""

    decodes: int = 0
    """Sequences that ran one decode token."""
    context_tokens: int = 0
    """KV tokens the decode tokens attended over (their context lengths summed)."""
    prefill_tokens: int = 0
    """Prompt (or recompute) tokens run as chunks in the same step."""
    chunks: tuple[tuple[int, int], ...] = ()
    """The prompt chunks as (end, start) token indices (the prefill step fit's input)."""


class LLMEngine:
    """An inference engine for one Llama-family model.

    Args:
        config: how to run it; ``config.model=None`` uses the built-in default model
            (random weights, generated locally).
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        if config.num_threads is not None and config.device == "cpu":
            torch.set_num_threads(config.num_threads)
        self.bound_cpus: list[int] | None = None
        """The CPUs the compute threads are pinned to (thread t to the t-th), if pinned."""
        if config.device == "cpu":
            self.bound_cpus = thread_bind.apply(config.cpu_threads_bind, config.num_threads)
        if config.keep_freed_memory and config.device == "cpu":
            keep_freed_memory()
        self.model_path = Path(config.model) if config.model is not None else default_model_path()
        device = torch.device(config.device)
        model_len = config.max_model_len
        self.model, self.model_config = load_model(
            self.model_path, config.dtype, device, model_len or 0
        )
        mc = self.model_config
        self.max_model_len = model_len or mc.max_position_embeddings
        if self.model.max_positions < self.max_model_len:  # table sized once the limit is known
            self.model.max_positions = self.max_model_len
            self.model.init_rope()
        self.tokenizer: Tokenizer | None = None
        if (self.model_path / "tokenizer.json").is_file():
            self.tokenizer = Tokenizer(self.model_path, mc.eos_token_ids)
        self.eos_token_ids = (
            self.tokenizer.eos_token_ids if self.tokenizer else frozenset(mc.eos_token_ids)
        )
        self.fingerprint = fingerprint(self.model_path)
        self.spec = KVBlockSpec(
            mc.num_layers, mc.num_kv_heads, mc.head_dim, config.block_size, config.dtype
        )
        num_blocks = config.num_blocks or max(1, config.kv_cache_bytes // self.spec.bytes_per_block)
        self.pool = BlockPool(num_blocks, enable_caching=config.enable_prefix_caching)
        self.kv = KVCacheManager(self.pool, config.block_size)
        self.scheduler = Scheduler(config, self.kv)
        self.runner = ModelRunner(
            self.model,
            self.spec,
            num_blocks,
            null_model=config.null_model,
            native_kernels=config.native_kernels,
            pool_path=config.kv_pool_path,
            fingerprint=self.fingerprint,
        )
        self.stats = EngineStats()
        self.last_step = StepShape()
        """The shape of the latest step (:meth:`step`)."""
        self._seqs: dict[str, Sequence] = {}
        self._held: dict[str, Sequence] = {}
        self._pool_holds: set[str] = set()
        """Held requests whose blocks a same-host decode engine may be copying
        (:meth:`held_blocks`): an abort does not free them, only :meth:`release`."""
        self._failed: dict[str, str] = {}
        self._ids = itertools.count()

    # -- requests ------------------------------------------------------------------
    def root_key(self, cache_salt: str | None = None) -> BlockKey:
        return root_key(self.config.hash_seed, self.fingerprint, cache_salt)

    def tokenize(self, prompt: str | Seq[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: this model has no tokenizer.json; pass token ids")
            return self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(
                f"prompt: token id(s) {bad[:5]} outside the "
                f"vocabulary [0, {self.model_config.vocab_size})"
            )
        return ids

    def add_request(
        self,
        request_id: str | None,
        prompt: str | Seq[int],
        params: SamplingParams | None = None,
        *,
        cache_salt: str | None = None,
        kv: KVExport | None = None,
        keep_kv: bool = False,
        arrival_time: float | None = None,
        prior_output_ids: Seq[int] = (),
        prior_logprobs: Seq[dict[int, float]] | None = None,
        block_keys: Seq[BlockKey] | None = None,
    ) -> str:
        """Queue a request.

        Args:
            request_id: unique id, or None to generate one.
            prompt: text or token ids. With ``kv``, the tokens continue from the import.
            params: sampling options (default: ``SamplingParams()``).
            cache_salt: isolates this request's prefix-cache entries (per tenant).
            kv: KV imported from another engine; its tokens must prefix ``prompt``.
            keep_kv: hold the blocks after the request finishes, for :meth:`export_kv`.
            prior_output_ids: tokens this request already generated elsewhere (e.g. the
                first token, sampled by a prefill worker). They count towards
                ``max_tokens``, appear in the output, and keep seeded sampling aligned.
            prior_logprobs: their logprobs (when ``params.logprobs`` is set), so the
                output's logprobs stay aligned with its tokens.
            block_keys: the prompt's full-block keys under this engine's chain root for
                ``cache_salt``, when the caller hashed them already (a worker passes the
                client's); the engine then does not hash the prompt again.
        Returns:
            The request id.
        Raises:
            ValueError: empty or too-long prompt, bad token ids, duplicate id, a KV
                import from another model or that does not match the prompt.
        """
        params = params or SamplingParams()
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._seqs or rid in self._held:
            raise ValueError(f"request_id: {rid!r} is already in use")
        prompt_ids = self.tokenize(prompt)
        if not prompt_ids:
            raise ValueError("prompt: must contain at least one token")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt_ids)} tokens is longer than the context limit; the model "
                f"accepts at most {self.max_model_len - 1} prompt tokens"
            )
        prior = self.tokenize(list(prior_output_ids)) if prior_output_ids else []
        if kv is not None:
            self._check_import(kv, prompt_ids + prior, cache_salt)
        seq = Sequence(
            request_id=rid,
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_token_ids=prompt_ids,
            params=params,
            seed=params.seed if params.seed is not None else random.getrandbits(63),
            root_key=self.root_key(cache_salt),
            metrics=RequestMetrics(
                arrival_time if arrival_time is not None else time.perf_counter()
            ),
            kv_import=kv,
            keep_kv=keep_kv,
            cache_salt=cache_salt,
            token_ids=prompt_ids + prior,
        )
        if block_keys is not None and len(block_keys) <= len(prompt_ids) // self.config.block_size:
            seq.block_keys = list(block_keys)
        if params.logprobs is not None:
            seq.logprobs = [dict(d) for d in (prior_logprobs or [])][: len(prior)]
            seq.cumulative_logprob = sum(d.get(t, 0.0) for t, d in zip(prior, seq.logprobs))
        if self.tokenizer is not None:
            seq.detok = IncrementalDetokenizer(self.tokenizer, prompt_ids)
            if prior:
                seq.detok.add(prior)
        self._seqs[rid] = seq
        self.scheduler.add(seq)
        return rid

    def _check_import(self, kv: KVExport, prompt_ids: list[int], cache_salt: str | None) -> None:
        if kv.model_fingerprint != self.fingerprint:
            raise ValueError("kv: exported by a different model (fingerprint mismatch)")
        if kv.spec != self.spec:
            raise ValueError(f"kv: block spec {kv.spec} does not match this engine's {self.spec}")
        if (kv.cache_salt or None) != (cache_salt or None):
            raise ValueError("kv: exported under a different cache_salt")
        if prompt_ids[: kv.num_tokens] != kv.token_ids or kv.num_tokens >= len(prompt_ids):
            raise ValueError("kv: its tokens must be a strict prefix of the prompt")
        if sum(b.num_tokens for b in kv.blocks) != kv.num_tokens:
            raise ValueError("kv: blocks do not cover its tokens")

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request and free its blocks. Returns False if it was unknown."""
        if request_id in self._pool_holds and request_id in self._held:
            return True  # freed by ``release`` once the decode side's copy is over
        seq = self._seqs.pop(request_id, None) or self._held.pop(request_id, None)
        if seq is None:
            return False
        seq.keep_kv = False
        if seq.status is SequenceStatus.FINISHED:
            self.kv.free(seq)
        else:
            self.scheduler.remove(seq)
            seq.status = SequenceStatus.FINISHED
            seq.finish_reason = "abort"
        return True

    def take_failed(self) -> dict[str, str]:
        """Requests that failed on their own since the last call (request id -> why).
        They are gone from the engine, their blocks freed; the rest of the batch went on."""
        failed, self._failed = self._failed, {}
        return failed

    def _fail(self, seq: Sequence, why: str) -> None:
        self.abort_request(seq.request_id)
        self._failed[seq.request_id] = why

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_unfinished(self) -> int:
        return len(self.scheduler.waiting) + len(self.scheduler.running)

    # -- stepping --------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one engine step. Returns an output for every request that produced a
        token (``finished`` set on the last one)."""
        out = self.scheduler.schedule()
        if out.is_empty:
            self.last_step = StepShape()
            return []
        self.last_step = StepShape(
            len(out.decodes),
            sum(s.start + s.num_tokens for s in out.decodes),
            sum(s.num_tokens for s in out.prefills),
            tuple((s.start + s.num_tokens, s.start) for s in out.prefills),
        )
        now = time.perf_counter()
        for s in (*out.decodes, *out.prefills):
            if s.seq.metrics.first_scheduled_time is None:
                s.seq.metrics.first_scheduled_time = now
        logits = self.runner.execute(out)
        self.scheduler.update(out)
        self._count(out)
        sampling = [s for s in (*out.decodes, *out.prefills) if s.samples]
        results = sample(
            logits,
            [SampleRequest(s.seq.params, s.seq.seed, s.seq.num_output_tokens) for s in sampling],
        )
        now = time.perf_counter()
        outputs = []
        for s, res in zip(sampling, results):
            seq = s.seq
            if res.error is not None:
                self._fail(seq, res.error)
                continue
            seq.token_ids.append(res.token_id)
            if (
                seq.logprobs is not None
                and res.top_logprobs is not None
                and res.logprob is not None
            ):
                seq.logprobs.append(res.top_logprobs)
                seq.cumulative_logprob += res.logprob
            if seq.metrics.first_token_time is None:
                seq.metrics.first_token_time = now
            try:
                self._check_stop(seq)
            except Exception as e:  # e.g. a detokenizer bug on one request's ids
                self._fail(seq, f"{type(e).__name__}: {e}")
                continue
            if seq.finish_reason is not None:
                self._finish(seq, now)
            outputs.append(self._output(seq))
        return outputs

    def _count(self, out: SchedulerOutput) -> None:
        st = self.stats
        st.num_steps += 1
        st.num_preemptions = self.scheduler.num_preemptions
        st.num_prompt_tokens_cached = self.scheduler.num_cached_tokens
        for s in (*out.decodes, *out.prefills):
            prompt_part = max(0, min(s.start + s.num_tokens, s.seq.num_prompt_tokens) - s.start)
            st.num_prompt_tokens_computed += prompt_part
            s.seq.metrics.num_computed_prompt_tokens += prompt_part
        st.num_generated_tokens += sum(1 for s in (*out.decodes, *out.prefills) if s.samples)

    def _check_stop(self, seq: Sequence) -> None:
        p = seq.params
        tok = seq.token_ids[-1]
        n_out = seq.num_output_tokens
        if seq.detok is not None:
            seq.detok.add([tok])
        if n_out >= p.min_tokens:
            if not p.ignore_eos and tok in self.eos_token_ids:
                seq.finish_reason = "stop"
                return
            if tok in p.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", tok
                return
            if p.stop and seq.detok is not None and self._match_stop(seq):
                return
        if (
            p.max_tokens is not None and n_out >= p.max_tokens
        ) or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"

    def _match_stop(self, seq: Sequence) -> bool:
        assert seq.detok is not None
        text = seq.detok.text
        window = max(len(s) for s in seq.params.stop) + 16
        for stop in seq.params.stop:
            idx = text.find(stop, max(0, len(text) - window))
            if idx >= 0:
                end = idx + len(stop) if seq.params.include_stop_str_in_output else idx
                seq.text = text[:end]
                seq.finish_reason, seq.stop_reason = "stop", stop
                return True
        return False

    def _finish(self, seq: Sequence, now: float) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.metrics.finish_time = now
        if not isinstance(seq.stop_reason, str):  # a stop string already cut the text
            seq.text = self._final_text(seq)
        self.scheduler.remove(seq)
        del self._seqs[seq.request_id]
        if seq.keep_kv:
            self._held[seq.request_id] = seq

    def _final_text(self, seq: Sequence) -> str:
        if self.tokenizer is None:
            return ""
        ids = seq.output_token_ids
        return self.tokenizer.decode(ids, skip_special_tokens=seq.params.skip_special_tokens)

    def _output(self, seq: Sequence) -> RequestOutput:
        finished = seq.status is SequenceStatus.FINISHED
        return RequestOutput(
            request_id=seq.request_id,
            prompt=seq.prompt,
            prompt_token_ids=seq.prompt_token_ids,
            outputs=[
                CompletionOutput(
                    index=0,
                    text=seq.text if finished else (seq.detok.text if seq.detok else ""),
                    token_ids=list(seq.output_token_ids),
                    cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
                    logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                )
            ],
            finished=finished,
            num_cached_tokens=seq.num_cached_tokens,
            metrics=seq.metrics,
        )

    # -- convenience -------------------------------------------------------------------
    def generate(
        self,
        prompts: Seq[str | Seq[int]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion as one continuous batch; results in input order."""
        params_list = params_per_prompt(params, len(prompts))
        ids = [self.add_request(None, p, sp) for p, sp in zip(prompts, params_list)]
        done: dict[str, RequestOutput] = {}
        while len(done) < len(ids):
            for o in self.step():
                if o.finished:
                    done[o.request_id] = o
            failed = self.take_failed()
            if failed:
                for rid in ids:
                    self.abort_request(rid)
                rid, why = next(iter(failed.items()))
                raise RuntimeError(f"request {rid} failed: {why}")
            if not self.has_unfinished() and len(done) < len(ids):  # pragma: no cover
                raise RuntimeError("engine stopped with requests unfinished")
        return [done[i] for i in ids]

    # -- KV export / import ----------------------------------------------------------
    def export_kv(self, request_id: str, release: bool = True) -> KVExport:
        """Copy out a request's computed KV (running, or finished with ``keep_kv``).

        Args:
            release: for a held finished request, free its blocks afterwards.
        """
        seq = self._seqs.get(request_id) or self._held.get(request_id)
        if seq is None:
            raise ValueError(f"request_id: {request_id!r} is not running or held")
        bs = self.config.block_size
        n = seq.num_computed_tokens
        keys = self.kv._keys(seq, n // bs)
        blocks = []
        for i in range(-(-n // bs)):
            ntok = min(bs, n - i * bs)
            blocks.append(
                KVBlock(
                    key=keys[i] if ntok == bs else None,
                    parent=keys[i - 1] if i else seq.root_key,
                    token_ids=tuple(seq.token_ids[i * bs : i * bs + ntok]),
                    data=self.runner.read_block(seq.block_table[i].block_id, ntok),
                    spec=self.spec,
                    model_fingerprint=self.fingerprint,
                )
            )
        export = KVExport(
            blocks=blocks,
            token_ids=list(seq.token_ids[:n]),
            next_token_ids=list(seq.token_ids[n:]),
            spec=self.spec,
            model_fingerprint=self.fingerprint,
            cache_salt=seq.cache_salt,
        )
        if release and request_id in self._held:
            self.abort_request(request_id)
        return export

    def export_packed(
        self,
        request_id: str,
        out: memoryview,
        algo: ChecksumName,
        first: int = 0,
        release: bool = True,
        place: str | None = None,
    ) -> PackedExport | None:
        """Write a held (or running) request's full blocks from block ``first`` on as
        store records into ``out`` (shared memory its worker lent), each block copied
        once, from the pool into its record; then, with ``release``, free a held
        request's blocks. When ``out`` holds fewer records than there are blocks, the
        leading ones that fit are written and nothing is freed (ask again from the next
        block). ``None`` (and nothing freed) when ``out`` holds not even one: export the
        old way. A request still in prefill (chunked) exports the blocks its chunks
        so far filled: that is how its KV streams to the decode side while it runs.
        ``place``: where the copies are counted, if not ``engine.export``."""
        from mooncake.store.records import record_size, write_record_in_place

        seq = self._seqs.get(request_id) or self._held.get(request_id)
        if seq is None:
            raise ValueError(f"request_id: {request_id!r} is not running or held")
        bs = self.config.block_size
        n = seq.num_computed_tokens
        full = n // bs
        first = min(first, full)
        size = record_size(self.spec, self.fingerprint, bs)
        if full > first and size > out.nbytes:
            return None
        # As many as fit: a long prompt's blocks may take several regions (the caller
        # asks again from ``first + len(keys)``); only the call that reaches the last
        # full block releases the request.
        last = min(full, first + out.nbytes // size)
        keys = self.kv._keys(seq, full)
        offsets, sizes = [], []
        if (
            algo == "sum64"
            and last > first
            and self._export_batched(seq, keys, out, first, last, place)
        ):
            offsets = [k * size for k in range(last - first)]
            sizes = [size] * (last - first)
        off = 0
        for i in range(first, last) if not offsets else ():
            block_id = seq.block_table[i].block_id
            written = write_record_in_place(
                out[off : off + size],
                keys[i],
                keys[i - 1] if i else seq.root_key,
                tuple(seq.token_ids[i * bs : (i + 1) * bs]),
                self.spec,
                self.fingerprint,
                i,
                algo,
                functools.partial(self._export_block, block_id, algo == "sum64"),
            )
            offsets.append(off)
            sizes.append(written)
            off += size
        if release and last == full and request_id in self._held:
            self.abort_request(request_id)
        return PackedExport(list(keys[first:last]), offsets, sizes, n, first)

    def _export_batched(
        self,
        seq: Sequence,
        keys: Seq[BlockKey],
        out: memoryview,
        first: int,
        last: int,
        place: str | None = None,
    ) -> bool:
        """``export_packed``'s records of blocks ``first..last-1``, laid back to back
        from ``out``'s start: every payload copied out of the pool and summed in one
        native call, then the headers written. False (nothing written) where the fused
        copy does not apply."""
        from mooncake.store.handoff_records import encode_headers, payload_at
        from mooncake.store.records import record_size

        bs = self.config.block_size
        size = record_size(self.spec, self.fingerprint, bs)
        poff = payload_at(self.fingerprint, bs)
        base = np.frombuffer(out, dtype=np.uint8).ctypes.data
        sums = self.runner.copy_blocks_summed(
            [seq.block_table[i].block_id for i in range(first, last)],
            base,
            [k * size + poff for k in range(last - first)],
            into_pool=False,
            place=place,
        )
        if sums is None:
            return False
        heads = encode_headers(
            keys[first:last],
            [keys[i - 1] if i else seq.root_key for i in range(first, last)],
            seq.token_ids[first * bs : last * bs],
            list(range(first, last)),
            sums,
            self.spec,
            self.fingerprint,
        )
        rows = np.frombuffer(out, dtype=np.uint8, count=(last - first) * size)
        rows = rows.reshape(last - first, size)
        rows[:, : heads.shape[1]] = heads
        rows[:, heads.shape[1] : poff] = 0
        return True

    def _export_block(self, block_id: int, summed: bool, out: np.ndarray) -> int | None:
        """Copy a pool block into ``out``; with ``summed``, return its sum64 computed on
        the way where the fused copy applies (else ``None``: the caller sums)."""
        if summed:
            got = self.runner.read_block_summed(block_id, out)
            if got is not None:
                return got
        self.runner.read_block_into(block_id, out)
        return None

    def release(self, request_id: str) -> None:
        """Free a held request's blocks (they stay in the prefix cache)."""
        self._pool_holds.discard(request_id)
        if request_id in self._held:
            self.abort_request(request_id)

    def export_cached_blocks(self, keys: Seq[BlockKey], token_ids: Seq[int]) -> list[KVBlock]:
        """Copy out the leading run of ``keys`` that this engine still caches (for a peer
        that fetches a prefix instead of recomputing it). ``token_ids`` verify the hit."""
        bs = self.config.block_size
        chunks = [token_ids[i * bs : (i + 1) * bs] for i in range(len(keys))]
        out = []
        for i, block in enumerate(self.pool.match_prefix(keys, chunks)):
            out.append(
                KVBlock(
                    key=keys[i],
                    parent=keys[i - 1] if i else None,
                    token_ids=tuple(chunks[i]),
                    data=self.runner.read_block(block.block_id, bs),
                    spec=self.spec,
                    model_fingerprint=self.fingerprint,
                )
            )
        return out

    def import_cached_blocks(self, blocks: Seq[KVBlock], hand_off: bool = False) -> int:
        """Put full blocks received from a peer into this engine's prefix cache (they are
        evictable at once, like any freed cached block). Returns how many were added.
        ``hand_off``: a request's own KV from its prefill worker, kept addressable for it
        even without prefix caching (``BlockPool.register``)."""
        from mooncake.engine.kv_cache_manager import KVWrite

        fresh = [
            b
            for b in blocks
            if b.is_full and b.key is not None and self.pool.lookup(b.key, b.token_ids) is None
        ]
        for b in fresh:
            if b.model_fingerprint != self.fingerprint or b.spec != self.spec:
                raise ValueError("blocks: exported by a different model or block spec")
        fresh = fresh[: self.pool.num_free]
        if not fresh:
            return 0
        new = self.pool.allocate(len(fresh))
        self.runner.write_blocks([KVWrite(nb.block_id, b.data) for nb, b in zip(new, fresh)])
        for nb, b in zip(new, fresh):
            assert b.key is not None
            self.pool.register(nb, b.key, b.token_ids, hand_off=hand_off)
        self.pool.free(new)
        return len(fresh)

    def import_checked_blocks(
        self,
        blocks: Seq[KVBlock],
        checksums: Seq[tuple[int, ChecksumName]],
        hand_off: bool = False,
    ) -> tuple[int, int]:
        """Put full blocks whose payloads are not checked yet (views of a host tier) into
        this engine's prefix cache, checking each as it is copied: ``checksums[i]`` is
        block ``i``'s record checksum and algorithm. A block not yet cached is copied
        into a free pool block and summed in the same pass (sum64; other algorithms, or a
        pool the fused copy does not suit, are checked first, then copied); the first
        block whose sum differs ends the run and is not used (its pool block goes back
        unregistered), nor are the blocks after it. Blocks already cached, and those past
        the free pool blocks, are only checked. ``hand_off``: as for
        ``import_cached_blocks``.

        Returns (the leading run of blocks found intact, blocks imported)."""
        from mooncake.engine.kv_cache_manager import KVWrite
        from mooncake.kvcache import copies
        from mooncake.store.block_object import checksum

        for b in blocks:
            if b.model_fingerprint != self.fingerprint or b.spec != self.spec:
                raise ValueError("blocks: exported by a different model or block spec")
        intact = 0
        new = []
        try:
            for b, (want, algo) in zip(blocks, checksums):
                if not b.is_full or b.key is None:
                    break
                if self.pool.lookup(b.key, b.token_ids) is not None or not self.pool.num_free:
                    if checksum(_bytes_of(b.data), algo) != want:
                        break
                    intact += 1
                    continue
                nb = self.pool.allocate(1)[0]
                got = None
                if algo == "sum64":
                    got = self.runner.write_block_summed(nb.block_id, b.data)
                if got is None:
                    got = checksum(_bytes_of(b.data), algo)
                    copies.count("check.import", b.data.nbytes)
                    if got == want:
                        self.runner.write_blocks([KVWrite(nb.block_id, b.data)])
                if got != want:
                    self.pool.free([nb])
                    break
                self.pool.register(nb, b.key, b.token_ids, hand_off=hand_off)
                new.append(nb)
                intact += 1
        finally:
            self.pool.free(new)  # cached and evictable at once, like any freed block
        return intact, len(new)

    def import_records(
        self, buf: Any, offsets: Seq[int], keys: Seq[BlockKey], hand_off: bool = False
    ) -> tuple[int, int, int]:
        """Import full blocks laid out as store records in shared memory another engine
        wrote (its worker's export arena, mapped here as ``buf``): record ``i`` at
        ``offsets[i]`` is block ``keys[i]``. Headers are checked first
        (``mooncake.store.handoff_records``); each payload not cached here yet is copied
        into a free pool block with its sum64 computed on the way, all in one native
        call, and kept only when the sum is its header's. The first record that fails
        ends the run: it and those after it are not used. ``hand_off``: as for
        ``import_cached_blocks``.

        Returns (the leading run of blocks found intact, blocks imported, payload bytes
        of the run)."""
        from mooncake.store.handoff_records import leading_heads, payload_at

        heads = leading_heads(buf, offsets, keys, self.fingerprint, self.spec)
        todo = [i for i, h in enumerate(heads) if self.pool.lookup(keys[i], h.token_ids) is None]
        if len(todo) > self.pool.num_free:  # the rest are not imported: not intact here
            heads = heads[: todo[self.pool.num_free]]
            todo = todo[: self.pool.num_free]
        new = self.pool.allocate(len(todo)) if todo else []
        intact, kept = len(heads), 0
        try:
            if new:
                base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
                poff = payload_at(self.fingerprint, self.config.block_size)
                got_sums = self.runner.copy_blocks_summed(
                    [nb.block_id for nb in new], base, [offsets[i] + poff for i in todo], True
                )
                sums = (
                    got_sums.tolist()
                    if got_sums is not None
                    else self._copy_records_apart(buf, [offsets[i] + poff for i in todo], new)
                )
                for nb, i, got in zip(new, todo, sums):
                    if int(got) != heads[i].payload_checksum:
                        intact = i
                        break
                    self.pool.register(nb, keys[i], heads[i].token_ids, hand_off=hand_off)
                    kept += 1
        finally:
            self.pool.free(new)  # registered: cached and evictable; the rest: free again
        return intact, kept, intact * self.spec.bytes_per_block

    def _copy_records_apart(self, buf: Any, payloads: Seq[int], new: Seq[Any]) -> list[int]:
        """``import_records``' copies where the fused native copy does not apply (a
        device pool, no compiled library): each payload summed, then written."""
        from mooncake.engine.kv_cache_manager import KVWrite
        from mooncake.kvcache import copies
        from mooncake.store.block_object import checksum

        bs, spec = self.config.block_size, self.spec
        count = spec.bytes_per_token * bs // np.dtype(spec.numpy_dtype).itemsize
        sums, writes = [], []
        for off, nb in zip(payloads, new):
            data = np.frombuffer(buf, dtype=spec.numpy_dtype, count=count, offset=off)
            data = data.reshape(spec.shape(bs)).copy()  # ours: the arena may change after
            sums.append(checksum(_bytes_of(data), "sum64"))
            copies.count("check.import", data.nbytes)
            writes.append(KVWrite(nb.block_id, data))
        self.runner.write_blocks(writes)
        return sums

    # -- same-host pool -> pool hand-off (``mooncake.engine.shared_pool``) ---------------
    def held_blocks(self, request_id: str) -> tuple[list[BlockKey], list[int], int] | None:
        """A held request's full blocks as they are in the pool: (keys, pool block ids,
        tokens computed). They stay held (neither freed nor reused, not even by a prefix
        hit, which only shares them read-only; an abort does not free them either)
        until :meth:`release`. ``None`` (nothing marked) when the request is not held,
        has no full block, or the pool is not in shared memory."""
        seq = self._held.get(request_id)
        if seq is None or self.runner.pool_path is None:
            return None
        full = seq.num_computed_tokens // self.config.block_size
        if not full:
            return None
        keys = list(self.kv._keys(seq, full))
        self._pool_holds.add(request_id)
        return keys, [seq.block_table[i].block_id for i in range(full)], seq.num_computed_tokens

    def unhold(self, request_id: str) -> None:
        """Undo :meth:`held_blocks`' mark: no decode engine copies from the request's
        blocks after all (they stay held for an export; an abort frees them again)."""
        self._pool_holds.discard(request_id)

    def pool_matches(self, header: Any) -> bool:
        """Whether another engine's pool (its ``shared_pool.PoolHeader``) has this
        engine's model and block layout (any number of blocks): checked once per
        mapping, not per block."""
        shape = tuple(self.runner.kv_cache.shape)
        return bool(
            header.fingerprint == self.fingerprint
            and header.dtype == self.spec.dtype
            and header.block_size == self.config.block_size
            and len(header.shape) == 5
            and header.shape[:2] == shape[:2]
            and header.shape[3:] == shape[3:]
            and header.shape[2] % self.config.block_size == 0
        )

    def import_pool_blocks(
        self,
        src: int,
        src_slots: int,
        src_ids: Seq[int],
        keys: Seq[BlockKey],
        token_ids: Seq[int],
        hand_off: bool = False,
    ) -> tuple[int, int, int]:
        """Copy full blocks from another engine's live pool on this host (mapped at
        address ``src``, ``src_slots`` slots, checked by :meth:`pool_matches`) into free
        blocks of this pool: block ``keys[i]`` (tokens ``token_ids[i*bs:(i+1)*bs]``) is
        its block ``src_ids[i]``. One strided copy per block, all in one native call;
        blocks already cached here are not copied. The leading run that fits in the free
        blocks is imported. ``hand_off``: as for ``import_cached_blocks``.

        Returns (blocks now here, blocks imported, payload bytes of the run); (0, 0, 0)
        where the native copy does not apply (the caller takes another way)."""
        bs = self.config.block_size
        chunks = [tuple(token_ids[i * bs : (i + 1) * bs]) for i in range(len(keys))]
        todo = [i for i in range(len(keys)) if self.pool.lookup(keys[i], chunks[i]) is None]
        n = len(keys)
        if len(todo) > self.pool.num_free:
            n = todo[self.pool.num_free]
            todo = todo[: self.pool.num_free]
        new = self.pool.allocate(len(todo)) if todo else []
        kept = 0
        try:
            if new and not self.runner.copy_blocks_from(
                src, src_slots, [src_ids[i] for i in todo], [nb.block_id for nb in new]
            ):
                return 0, 0, 0
            for nb, i in zip(new, todo):
                self.pool.register(nb, keys[i], chunks[i], hand_off=hand_off)
                kept += 1
        finally:
            self.pool.free(new)  # registered: cached and evictable; the rest: free again
        return n, kept, n * self.spec.bytes_per_block

    # -- diagnostics -----------------------------------------------------------------
    def prompt_logits(self, token_ids: Seq[int]) -> torch.Tensor:
        """float32 logits ``[len, vocab]`` of every position of a prompt (no caching)."""
        ids = self.tokenize(token_ids)
        seq = Sequence(
            "__logits__", None, ids, SamplingParams(), 0, self.root_key(), RequestMetrics(0.0)
        )
        if not self.kv.allocate(seq, len(ids)):
            raise ValueError("prompt: not enough free KV blocks")
        try:
            out = SchedulerOutput()
            s = ScheduledSeq(seq, 0, len(ids))
            (out.decodes if len(ids) == 1 else out.prefills).append(s)
            return self.runner.execute(out, all_logits=True)
        finally:
            self.kv.free(seq)
