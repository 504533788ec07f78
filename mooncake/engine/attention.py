"""Attention over the paged KV cache.

The running batch is laid out flat: first one token per decoding sequence, then each
prefill chunk. Where the native kernels are available (float32 on CPU, see
``mooncake.engine.native``) both read K/V in place from the paged cache. Otherwise decode
attention runs as one batched SDPA over each group's blocks (gathered by block table,
padded, masked) and each prefill chunk as one SDPA over its gathered cached prefix plus
itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mooncake.engine.native import NativeKernels


@dataclass
class PrefillSegment:
    """One sequence's chunk inside the flat batch."""

    start: int
    """Index of the chunk's first token in the flat batch."""
    num_tokens: int
    """Tokens computed in this step."""
    context_len: int
    """Tokens whose KV is attended to (cached prefix + this chunk)."""
    block_table: torch.Tensor
    """Block ids covering ``context_len`` tokens, ``[num_blocks]``."""
    mask: torch.Tensor | None = None
    """``[1, 1, num_tokens, context_len]`` bool, or None for plain causal (no prefix)."""


@dataclass
class DecodeGroup:
    """Consecutive single-token decodes attended in one batched call."""

    start: int
    """Index of the group's first token in the flat batch."""
    block_table: torch.Tensor
    """``[B, max_blocks]`` block ids of each sequence (padded with 0)."""
    mask: torch.Tensor
    """``[B, 1, 1, max_blocks * block_size]`` bool: which gathered slots are valid."""


@dataclass
class NativeDecode:
    """All single-token decodes of the step, for the in-place kernel (no padding, so no
    grouping by length)."""

    block_tables: torch.Tensor
    """``[B, max_blocks]`` int64 block ids (rows padded with 0)."""
    context_lens: torch.Tensor
    """``[B]`` int64 tokens each sequence attends to."""
    max_context: int
    kernels: NativeKernels
    """The compiled kernels that run it."""


@dataclass
class AttentionMetadata:
    """Everything attention needs for one step, shared by all layers."""

    slot_mapping: torch.Tensor
    """``[T]`` cache slot of every new token (where its K/V are written)."""
    decodes: list[DecodeGroup] = field(default_factory=list)
    """Decode tokens (the flat batch's head), grouped by similar context length so
    padding stays small."""
    prefills: list[PrefillSegment] = field(default_factory=list)
    native: NativeKernels | None = None
    """The compiled kernels, when they run this step's prefill attention (then prefill
    masks are not built unless a segment falls back to SDPA)."""
    native_decode: NativeDecode | None = None
    """Set instead of ``decodes`` when the native kernel runs the decode tokens."""
    window: int | None = None
    """Sliding window of the model, or None."""


def split_by_length(num_blocks: list[int], min_saving: float = 0.25) -> int:
    """Where to cut a batch sorted by blocks-per-sequence into two padded groups.

    Returns the size of the first group, or ``len(num_blocks)`` for no cut (the cut must
    save at least ``min_saving`` of the padded blocks to be worth a second call).
    """
    n = len(num_blocks)
    whole = n * num_blocks[-1]
    best, best_cost = n, whole
    for i in range(1, n):
        cost = i * num_blocks[i - 1] + (n - i) * num_blocks[-1]
        if cost < best_cost:
            best, best_cost = i, cost
    return best if best_cost <= (1 - min_saving) * whole else n


def causal_mask(
    num_tokens: int, context_len: int, window: int | None, device: torch.device
) -> torch.Tensor:
    """``[1, 1, n, ctx]``: query i (absolute position ctx-n+i) sees keys j <= its position
    (and within the sliding window, if any)."""
    q_pos = torch.arange(context_len - num_tokens, context_len, device=device)[:, None]
    k_pos = torch.arange(context_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask[None, None]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Write this step's K/V into the cache and attend.

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]`` for the new tokens.
        k_cache, v_cache: ``[num_slots, Hkv, D]`` of one layer.
        meta: step layout.
    Returns:
        ``[T, Hq * D]``.
    """
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    gqa = Hq != Hkv
    out = q.new_empty(T, Hq, D)
    kb = k_cache.view(-1, block_size, Hkv, D)
    vb = v_cache.view(-1, block_size, Hkv, D)

    nd = meta.native_decode
    if nd is not None:
        B = nd.context_lens.shape[0]
        nd.kernels.paged_decode(
            q[:B],
            k_cache,
            v_cache,
            nd.block_tables,
            nd.context_lens,
            out[:B],
            block_size,
            meta.window,
            scale,
            nd.max_context,
        )

    for g in meta.decodes:
        B = g.block_table.shape[0]
        # [B, MB, bs, Hkv, D] -> [B, Hkv, L, D]
        # index_select along the block axis is several times faster than advanced indexing
        flat = g.block_table.view(-1)
        kd = kb.index_select(0, flat).view(B, -1, Hkv, D).transpose(1, 2)
        vd = vb.index_select(0, flat).view(B, -1, Hkv, D).transpose(1, 2)
        # One query token per sequence: the G query heads sharing a KV head become G query
        # rows of that head ([B, Hkv, G, D]), so GQA needs no K/V repetition.
        qd = q[g.start : g.start + B].reshape(B, Hkv, Hq // Hkv, D)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=g.mask, scale=scale)
        out[g.start : g.start + B] = o.reshape(B, Hq, D)

    for seg in meta.prefills:
        sl = slice(seg.start, seg.start + seg.num_tokens)
        if meta.native is not None and meta.native.paged_prefill(
            q[sl],
            k_cache,
            v_cache,
            seg.block_table,
            seg.context_len,
            out[sl],
            block_size,
            meta.window,
            scale,
        ):
            continue
        if seg.mask is None and (seg.context_len > seg.num_tokens or meta.window is not None):
            seg.mask = causal_mask(seg.num_tokens, seg.context_len, meta.window, q.device)
        qs = q[sl].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        if seg.context_len == seg.num_tokens:
            ks, vs = k[sl], v[sl]  # no prefix: this chunk's own K/V
        else:
            ks = kb.index_select(0, seg.block_table).view(-1, Hkv, D)[: seg.context_len]
            vs = vb.index_select(0, seg.block_table).view(-1, Hkv, D)[: seg.context_len]
        ks = ks.transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, D]
        vs = vs.transpose(0, 1).unsqueeze(0)
        if seg.mask is None:
            o = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale, enable_gqa=gqa
            )
        else:
            o = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=seg.mask, scale=scale, enable_gqa=gqa
            )
        out[sl] = o.squeeze(0).transpose(0, 1)
    return out.view(T, Hq * D)
