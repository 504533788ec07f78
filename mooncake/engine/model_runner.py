"""Owns the model and the KV cache tensor; turns a ``SchedulerOutput`` into one forward
pass and returns the logits of the positions that sample."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mooncake.engine.attention import (
    AttentionMetadata,
    DecodeGroup,
    NativeDecode,
    PrefillSegment,
    split_by_length,
)
from mooncake.engine.kernel_choice import KernelChoice, KernelShape, choose, choose_onednn_linear
from mooncake.engine.kv_cache_manager import KVWrite
from mooncake.engine.model import LlamaModel
from mooncake.engine.native import NativeKernels, kernels
from mooncake.engine.scheduler import ScheduledSeq, SchedulerOutput
from mooncake.kvcache import KVBlockSpec, copies


class ModelRunner:
    """Args: model; spec: KV block shape; num_blocks: blocks in the pool; native_kernels:
    use the compiled CPU kernels (attention, norms, rotary, SiLU) where they apply
    (float32 on CPU) and where they beat torch's ops on this CPU
    (``mooncake.engine.kernel_choice``)."""

    def __init__(
        self,
        model: LlamaModel,
        spec: KVBlockSpec,
        num_blocks: int,
        null_model: bool = False,
        native_kernels: bool = True,
        pool_path: str | None = None,
        fingerprint: str = "",
    ) -> None:
        self.model = model
        self.null_model = null_model
        self.spec = spec
        self.block_size = spec.block_size
        p = model.embed_tokens.weight
        self.device = p.device
        self.dtype = p.dtype
        self._fused_geo: tuple[Any, ...] | None = None
        # [layers, K/V, slots, Hkv, D]
        slots = num_blocks * spec.block_size
        pool_shape = (spec.num_layers, 2, slots, spec.num_kv_heads, spec.head_dim)
        self.pool_path: str | None = None
        """The shared-memory file the pool lives in (``mooncake.engine.shared_pool``)."""
        self._pool_map: Any = None
        if pool_path is not None and self.device.type == "cpu":
            from mooncake.engine.shared_pool import HEADER_BYTES, create_pool, header_for

            header = header_for(fingerprint, spec.dtype, pool_shape, spec.block_size)

            def over(mm: Any) -> tuple[torch.Tensor, Any]:
                count = header.nbytes // self.dtype.itemsize
                t = torch.frombuffer(mm, dtype=self.dtype, count=count, offset=HEADER_BYTES)
                t.zero_()  # prefault: every page written once, now rather than mid-prefill
                return t.view(pool_shape), mm

            try:
                self.kv_cache, self._pool_map = create_pool(pool_path, header, over)
                self.pool_path = pool_path
            except OSError as e:  # e.g. a small /dev/shm: serve, hand off the arena's way
                logging.getLogger(__name__).warning(
                    "KV pool not in shared memory (%s): %s", pool_path, e
                )
        if self.pool_path is None:
            self.kv_cache = torch.zeros(*pool_shape, dtype=self.dtype, device=self.device)
        self.window = model.cfg.sliding_window
        self.native: NativeKernels | None = None
        self.kernel_choice = KernelChoice.every(False)
        if (
            native_kernels
            and self.device.type == "cpu"
            and self.dtype == torch.float32
            and not null_model
        ):
            self.native = kernels()
        if self.native is not None:
            cfg = model.cfg
            shape = KernelShape(
                cfg.num_heads,
                cfg.num_kv_heads,
                cfg.head_dim,
                cfg.hidden_size,
                cfg.intermediate_size,
                spec.block_size,
                torch.get_num_threads(),
            )
            self.kernel_choice = choose(self.native, shape)
        if self.device.type == "cpu" and self.dtype == torch.float32 and not null_model:
            cfg = model.cfg
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
            projections = [
                (cfg.hidden_size, q + 2 * kv),
                (q, cfg.hidden_size),
                (cfg.hidden_size, 2 * cfg.intermediate_size),
                (cfg.intermediate_size, cfg.hidden_size),
                (cfg.hidden_size, cfg.vocab_size),
            ]
            if choose_onednn_linear(projections, torch.get_num_threads()):
                model.use_onednn()
        # Each group of kernels runs only where it was measured faster than torch's ops.
        pick = self.kernel_choice
        self.native_decode = self.native if pick.decode else None
        self.native_prefill = self.native if pick.prefill else None
        self.native_elementwise = self.native if pick.elementwise else None

    # -- KV import / export ------------------------------------------------------
    def write_blocks(self, writes: list[KVWrite]) -> None:
        for w in writes:
            with warnings.catch_warnings():
                # Blocks read zero-copy from a store are read-only; they are only copied from.
                warnings.simplefilter("ignore", UserWarning)
                data = torch.from_numpy(np.ascontiguousarray(w.data))
            if self.dtype == torch.bfloat16:
                data = data.view(torch.int16).view(torch.bfloat16)
            n = data.shape[2]
            start = w.block_id * self.block_size
            self.kv_cache[:, :, start : start + n].copy_(data.to(self.device))
            copies.count("engine.import", data.nbytes)

    def read_block_into(self, block_id: int, out: np.ndarray) -> None:
        """Copy one block's K/V into ``out`` (numpy ``[layers, 2, n, Hkv, D]``, writable,
        e.g. a view of shared memory): the block's one copy out of the pool."""
        start = block_id * self.block_size
        n = out.shape[2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dst = torch.from_numpy(out)
        if self.dtype == torch.bfloat16:
            dst = dst.view(torch.bfloat16)
        dst.copy_(self.kv_cache[:, :, start : start + n])
        copies.count("engine.export", dst.nbytes)

    def _fused(self, num_tokens: int) -> tuple[Any, int, int, int, int] | None:
        """(native library, pool address, token bytes, segment stride, segments) for the
        fused copy of a block of ``num_tokens`` (one segment per layer and K|V): a CPU
        pool, contiguous, and the compiled library; ``None`` where it does not apply.
        Cached: these calls cost more than a block's copy when made per block."""
        geo = self._fused_geo
        if geo is None:
            from mooncake.store.native import records_lib

            kv, lib = self.kv_cache, records_lib()
            ok = lib is not None and kv.device.type == "cpu" and kv.is_contiguous()
            elt = kv.element_size()
            segments = kv.shape[0] * kv.shape[1]
            geo = self._fused_geo = (
                (lib, kv.data_ptr(), kv.stride(2) * elt, kv.stride(1) * elt, segments) if ok else ()
            )
        return geo or None

    def _summed_copy(self, block_id: int, arr: np.ndarray, into_pool: bool) -> int | None:
        """Copy one block between the pool and ``arr`` (C-contiguous ``[layers, 2, n, Hkv,
        D]``) with the sum64 of the bytes, in one pass: into the pool or out of it. ``None``
        where the fused copy does not apply (nothing copied)."""
        n = arr.shape[2]
        geo = self._fused(n)
        if geo is None or not arr.flags.c_contiguous or arr.nbytes != n * geo[2] * geo[4]:
            return None
        lib, base, tok, stride, nseg = geo
        seg = n * tok
        here = arr.__array_interface__["data"][0]
        pool = base + block_id * self.block_size * tok
        if into_pool:  # pool segments are ``stride`` apart; ``arr``'s are contiguous
            total = int(lib.copy_sum64_strided(pool, stride, here, seg, seg, nseg))
        else:
            total = int(lib.copy_sum64_strided(here, seg, pool, stride, seg, nseg))
        copies.count("engine.import" if into_pool else "engine.export", seg * nseg)
        return total

    def copy_blocks_summed(
        self,
        block_ids: Sequence[int],
        base: int,
        offsets: Sequence[int],
        into_pool: bool,
        place: str | None = None,
    ) -> np.ndarray | None:
        """:meth:`_summed_copy` of many full blocks in one native call: block
        ``block_ids[i]`` of the pool and the contiguous payload at address ``base +
        offsets[i]`` (shared memory both engines map), into the pool or out of it.
        Returns each block's sum64 (uint64 ``[n]``), ``None`` where the fused copy does
        not apply (nothing copied). No per-block Python: a 2,048-token hand-off is 128
        blocks, and a call per block cost as much as the copies. ``place``: where the
        copies are counted (``mooncake.kvcache.copies``), if not the default."""
        geo = self._fused(self.block_size)
        if geo is None or not block_ids:
            return None
        lib, pool, tok, stride, nseg = geo
        seg = self.block_size * tok
        pool_off = np.asarray(block_ids, dtype=np.int64) * seg
        rec_off = np.asarray(offsets, dtype=np.int64)
        sums = np.empty(len(block_ids), dtype=np.uint64)
        pool_side = (pool, pool_off.ctypes.data, stride)
        rec_side = (base, rec_off.ctypes.data, seg)
        dst, src = (pool_side, rec_side) if into_pool else (rec_side, pool_side)
        lib.copy_sum64_many(*dst, *src, seg, nseg, len(block_ids), sums.ctypes.data)
        place = place or ("engine.import" if into_pool else "engine.export")
        copies.count(place, seg * nseg * len(block_ids))
        return sums

    def copy_blocks_from(
        self, src: int, src_slots: int, src_ids: Sequence[int], dst_ids: Sequence[int]
    ) -> bool:
        """Copy blocks ``src_ids`` of another engine's pool (same layout, ``src_slots``
        slots, mapped at address ``src``: ``mooncake.engine.shared_pool``) into this
        pool's blocks ``dst_ids``: one strided copy per block, all in one native call,
        no checksum (the owner holds the source unchanged meanwhile). False (nothing
        copied) where the native copy does not apply."""
        geo = self._fused(self.block_size)
        if geo is None or not src_ids:
            return False
        lib, pool, tok, stride, nseg = geo
        seg = self.block_size * tok
        dst_off = np.asarray(dst_ids, dtype=np.int64) * seg
        src_off = np.asarray(src_ids, dtype=np.int64) * seg
        lib.copy_many(
            pool,
            dst_off.ctypes.data,
            stride,
            src,
            src_off.ctypes.data,
            src_slots * tok,
            seg,
            nseg,
            len(src_ids),
        )
        copies.count("engine.import", seg * nseg * len(src_ids))
        return True

    def read_block_summed(self, block_id: int, out: np.ndarray) -> int | None:
        """:meth:`read_block_into` and the sum64 of what it wrote, in one pass
        (``mooncake.store.native``); ``None`` where that does not apply (then it copies
        nothing: the caller copies and sums apart). ``out`` must be C-contiguous."""
        return self._summed_copy(block_id, out, into_pool=False)

    def write_block_summed(self, block_id: int, data: np.ndarray) -> int | None:
        """Copy one block's payload (C-contiguous ``[layers, 2, n, Hkv, D]``, e.g. a view
        of a host tier) into the pool and return its sum64, in one pass: the import's
        check and copy together (the caller keeps the block only if the sum is the
        record's). ``None`` where the fused copy does not apply (nothing copied)."""
        return self._summed_copy(block_id, data, into_pool=True)

    def read_block(self, block_id: int, num_tokens: int) -> np.ndarray:
        """A copy of one block's K/V as numpy ``[layers, 2, n, Hkv, D]``."""
        start = block_id * self.block_size
        t = self.kv_cache[:, :, start : start + num_tokens].to("cpu", copy=True).contiguous()
        copies.count("engine.export", t.nbytes)
        if self.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()

    def _block_tables(self, group: list[ScheduledSeq], max_blocks: int) -> torch.Tensor:
        """``[len(group), max_blocks]`` block ids covering each sequence's context up to
        the step's last token (rows padded with 0)."""
        table = torch.zeros(len(group), max_blocks, dtype=torch.long)
        for b, s in enumerate(group):
            nb = -(-(s.start + s.num_tokens) // self.block_size)
            table[b, :nb] = torch.tensor([blk.block_id for blk in s.seq.block_table[:nb]])
        return table

    def _native_decode(self, rows: list[ScheduledSeq], max_blocks: int) -> NativeDecode:
        """One query per sequence, its step's last token (a decode, or a prefill chunk's
        sampling row in the last layer)."""
        ctx = [s.start + s.num_tokens for s in rows]
        assert self.native_decode is not None
        return NativeDecode(
            self._block_tables(rows, max_blocks),
            torch.tensor(ctx, dtype=torch.long),
            max(ctx),
            self.native_decode,
        )

    def _decode_group(
        self, group: list[ScheduledSeq], max_blocks: int, start: int, dev: torch.device
    ) -> DecodeGroup:
        ctx = torch.tensor([s.start + s.num_tokens for s in group])[:, None]
        k_pos = torch.arange(max_blocks * self.block_size)[None, :]
        mask = k_pos < ctx
        if self.window is not None:
            mask &= k_pos >= ctx - self.window
        return DecodeGroup(
            start, self._block_tables(group, max_blocks).to(dev), mask[:, None, None, :].to(dev)
        )

    def _sampling_meta(
        self, rows: list[ScheduledSeq], meta: AttentionMetadata, dev: torch.device
    ) -> AttentionMetadata:
        """Attention layout of the last layer when only the sampling rows go on: every
        token's K/V is still written (``meta.slot_mapping``), but each row left is one
        query at its sequence's last position, attended like a decode."""
        last = AttentionMetadata(
            slot_mapping=meta.slot_mapping, native=meta.native, window=meta.window
        )
        if not rows:
            return last
        max_blocks = max(-(-(s.start + s.num_tokens) // self.block_size) for s in rows)
        if self.native_decode is not None:
            last.native_decode = self._native_decode(rows, max_blocks)
        else:
            last.decodes.append(self._decode_group(rows, max_blocks, 0, dev))
        return last

    # -- one step ----------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, all_logits: bool = False) -> torch.Tensor:
        """Run the step. Returns logits ``[num sampling seqs, vocab]`` in decode-then-
        prefill order (or for every token when ``all_logits``)."""
        if out.kv_writes:
            self.write_blocks(out.kv_writes)
        bs = self.block_size
        dev = self.device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_idx: list[int] = []

        # Decodes sorted by context length (in place: the caller samples in this order),
        # then cut into at most two groups so short sequences are not padded to the longest.
        out.decodes.sort(key=lambda s: s.start)
        decodes = out.decodes
        meta = AttentionMetadata(
            slot_mapping=torch.empty(0, dtype=torch.long),
            native=self.native_prefill,
            window=self.window,
        )
        if decodes:
            nblocks = [-(-(s.start + 1) // bs) for s in decodes]
            if self.native_decode is not None:
                meta.native_decode = self._native_decode(decodes, max(nblocks))
            else:
                cut = split_by_length(nblocks)
                for lo, hi in ((0, cut), (cut, len(decodes))):
                    if lo < hi:
                        meta.decodes.append(
                            self._decode_group(decodes[lo:hi], nblocks[hi - 1], lo, dev)
                        )
            for b, s in enumerate(decodes):
                seq, pos = s.seq, s.start
                ids.append(seq.token_ids[pos])
                positions.append(pos)
                slots.append(seq.block_table[pos // bs].block_id * bs + pos % bs)
                if s.samples or all_logits:
                    logits_idx.append(b)

        for s in out.prefills:
            seq, start, n = s.seq, s.start, s.num_tokens
            flat_start = len(ids)
            ids.extend(seq.token_ids[start : start + n])
            ctx_len = start + n
            nb = -(-ctx_len // bs)
            bt = torch.tensor([blk.block_id for blk in seq.block_table[:nb]], dtype=torch.long)
            pos_t = torch.arange(start, ctx_len)
            positions.extend(pos_t.tolist())
            slots.extend((bt[pos_t // bs] * bs + pos_t % bs).tolist())
            # the mask is built by attention, only if the SDPA path runs
            meta.prefills.append(PrefillSegment(flat_start, n, ctx_len, bt.to(dev)))
            if all_logits:
                logits_idx.extend(range(flat_start, flat_start + n))
            elif s.samples:
                logits_idx.append(flat_start + n - 1)

        if self.null_model:
            return torch.zeros(len(logits_idx), self.model.cfg.vocab_size, device=dev)
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long, device=dev)
        # Only the sampling rows' hidden states leave the last layer: when that is not every
        # row (a prefill chunk needs one), the last layer computes attention and MLP for
        # those rows alone (1/12 of a 12-layer prefill's matmuls, less its K/V projection).
        last_meta = None
        if len(logits_idx) < len(ids):
            sampling = [s for s in decodes if s.samples] + [s for s in out.prefills if s.samples]
            last_meta = self._sampling_meta(sampling, meta, dev)
        logits: torch.Tensor = self.model(
            torch.tensor(ids, dtype=torch.long, device=dev),
            torch.tensor(positions, dtype=torch.long, device=dev),
            self.kv_cache,
            meta,
            torch.tensor(logits_idx, dtype=torch.long, device=dev),
            bs,
            self.native_elementwise,
            last_meta,
        )
        return logits
