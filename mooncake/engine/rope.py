"""Rotary position embeddings, computed exactly as transformers does (float32)."""

from __future__ import annotations

import math

import torch

from mooncake.engine.model_config import RopeConfig


def inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` (float32), llama3/linear scaling applied."""
    base = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
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

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device) -> None:
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq(rope, head_dim)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, head_dim]
        self.cos = emb.cos().to(dtype=dtype, device=device)
        self.sin = emb.sin().to(dtype=dtype, device=device)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[T, 1, head_dim]`` for ``positions: [T]`` (once per step, all layers)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: [T, heads, head_dim]`` with ``cos, sin: [T, 1, head_dim]`` (as
    transformers' ``apply_rotary_pos_emb``: x * cos + rotate_half(x) * sin)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
