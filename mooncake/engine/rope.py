"""Rotary position embeddings, computed exactly as transformers does (float32)."""

from __future__ import annotations

import math

import torch

from mooncake.engine.model_config import RopeConfig


def inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` (float32), llama3/linear scaling applied."""
    base = 1.0 / (
        rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    )
    if rope.rope_type == "linear":
        return base / rope.factor
    if rope.rope_type != "llama3":
        return base
    old = rope.original_max_position_embeddings
    low_wavelen = old / rope.low_freq_factor
    high_wavelen = old / rope.high_freq_factor
    wavelen = 2 * math.pi / base
    scaled = torch.where(wavelen > low_wavelen, base / rope.factor, base)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryTable:
    """cos/sin for every position up to ``max_positions``, built once.

    Args:
        rope: rotary parameters.
        head_dim: attention head size.
        max_positions: table length (the context limit).
        dtype, device: of the returned cos/sin.
    """

    def __init__(
        self,
        rope: RopeConfig,
        head_dim: int,
        max_positions: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        freqs = (
            torch.arange(max_positions, dtype=torch.float32)[:, None]
            * inv_freq(rope, head_dim)[None, :]
        )
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, head_dim]
        half = head_dim // 2
        sin = emb.sin()
        self.cos = emb.cos().to(dtype=dtype, device=device)
        # rotate_half(x) * sin == swap_halves(x) * [-sin_lo, sin_hi]: folding the sign into
        # the table saves the negation pass over every q/k tensor.
        self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(dtype=dtype, device=device)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin ``[T, 1, head_dim]`` for ``positions: [T]``
        (once per step, all layers)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: [T, heads, head_dim]`` with ``cos`` and the signed ``sin`` of
    :meth:`RotaryTable.lookup` (``[T, 1, head_dim]``): transformers'
    ``x * cos + rotate_half(x) * sin`` in three passes instead of five."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, swapped, sin)
