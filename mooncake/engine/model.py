"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) over a paged KV cache.

RMSNorm, RoPE, GQA, SwiGLU; q/k/v and gate/up projections are fused into one matmul
each. Numerics follow transformers' eager/SDPA path so float32 logits match it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mooncake.engine.attention import AttentionMetadata, paged_attention
from mooncake.engine.model_config import ModelConfig
from mooncake.engine.native import NativeKernels
from mooncake.engine.rope import RotaryTable, apply_rope


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor, native: NativeKernels | None = None) -> torch.Tensor:
        if native is not None:  # float32 on CPU: one fused pass (same order of operations)
            return native.rms_norm(x, self.weight, self.eps)
        # Same order of operations as transformers' LlamaRMSNorm (float32 statistics).
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def onednn_available() -> bool:
    """Whether torch ships oneDNN's fp32 linear (``mkldnn._linear_pointwise``)."""
    ops = torch.ops.mkldnn
    return bool(torch.backends.mkldnn.is_available()) and hasattr(ops, "_linear_pointwise")  # type: ignore[no-untyped-call]


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` through oneDNN (x: ``[T, in]``, weight: ``[out, in]`` contiguous)."""
    y: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return y


class Linear(nn.Module):
    """``y = x W^T + b`` with W stored transposed (``weight_t``: ``[in, out]``).

    With the weight row-major in ``[in, out]`` the BLAS call is a plain ``x @ W_t``, which
    MKL runs faster than ``nn.Linear``'s ``x @ W^T`` for the few-row activations of
    decode steps, and as fast for one row or prefill-sized ones
    (``benchmarks/kernel_bench.py`` compares both). Where oneDNN's GEMM is faster (MKL
    takes slow paths on AMD CPUs; ``mooncake.engine.kernel_choice`` measures it),
    :meth:`use_onednn` lays the weight out ``[out, in]`` for it instead.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.onednn = False

    def use_onednn(self) -> None:
        """Run through oneDNN from now on: the same values, stored ``[out, in]``
        (``weight_t`` becomes a transposed view of it: no second copy)."""
        with torch.no_grad():
            w = self.weight_t.detach().t().contiguous()  # [out, in]
        self.weight_t = nn.Parameter(w.t(), requires_grad=False)
        self.onednn = True

    def load(self, weight: torch.Tensor, bias: torch.Tensor | None, name: str) -> None:
        """Copy a Hugging Face ``[out, in]`` weight (and bias) in."""
        want = (self.weight_t.shape[1], self.weight_t.shape[0])
        if tuple(weight.shape) != want:
            raise ValueError(f"tensor {name!r} has shape {tuple(weight.shape)}, expected {want}")
        with torch.no_grad():
            self.weight_t.copy_(weight.t().to(self.weight_t.dtype))
            if self.bias is not None and bias is not None:
                if tuple(bias.shape) != tuple(self.bias.shape):
                    raise ValueError(
                        f"tensor {name!r} bias has shape {tuple(bias.shape)}, "
                        f"expected {tuple(self.bias.shape)}"
                    )
                self.bias.copy_(bias.to(self.bias.dtype))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: where the MKL path writes (the oneDNN one returns a new tensor)."""
        if self.onednn:
            return onednn_linear(x, self.weight_t.t(), self.bias)
        if self.bias is None:
            return torch.mm(x, self.weight_t, out=out)
        return torch.addmm(self.bias, x, self.weight_t, out=out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_size = cfg.num_heads * d
        self.kv_size = cfg.num_kv_heads * d
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.qkv_proj = Linear(h, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.q_size, h, bias=cfg.o_bias)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.gate_up_proj = Linear(h, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, h, bias=cfg.mlp_bias)
        self.scale = d**-0.5

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        block_size: int,
        mlp_buf: torch.Tensor,
        native: NativeKernels | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: ``[T, H]``; mlp_buf: ``[T, 2 * intermediate]`` scratch shared by all layers;
        keep: ``[N]`` rows whose output is wanted (``meta`` then lays out those N queries),
        or None for all. Every row's K/V is written either way. Returns ``[T or N, H]``."""
        cfg = self.cfg
        T = x.shape[0]
        qkv = self.qkv_proj(self.input_layernorm(x, native))  # [T, q + 2kv]
        # q and k rotate together: one pass over [T, Hq + Hkv, D]
        qk_in = qkv[:, : self.q_size + self.kv_size].view(
            T, cfg.num_heads + cfg.num_kv_heads, cfg.head_dim
        )
        if native is not None:
            qk = native.rope(qk_in, rope[0].view(T, -1), rope[1].view(T, -1))
        else:
            qk = apply_rope(qk_in, *rope)
        q, k = qk[:, : cfg.num_heads], qk[:, cfg.num_heads :]
        v = qkv[:, self.q_size + self.kv_size :].reshape(T, cfg.num_kv_heads, cfg.head_dim)
        if keep is not None:
            q, x = q[keep], x[keep]  # [N, Hq, D], [N, H] (copies: x is then this layer's own)
        attn = paged_attention(q, k, v, k_cache, v_cache, meta, block_size, self.scale)
        if native is not None:
            # residual add fused into the norm (x += o_proj(attn) in place: x is this
            # step's own activation, nobody else holds it)
            norm = self.post_attention_layernorm
            h = native.rms_norm(x, norm.weight, norm.eps, add=self.o_proj(attn))
        else:
            x = x + self.o_proj(attn)
            h = self.post_attention_layernorm(x)
        gate_up = self.gate_up_proj(h, out=mlp_buf[: h.shape[0]])
        if native is not None:
            act = native.silu_mul(gate_up)
        else:
            # gate/up are views of a temporary: activate and multiply in place (no new buffers)
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate, inplace=True).mul_(up)
        out: torch.Tensor = x + self.down_proj(act)
        return out


class LlamaModel(nn.Module):
    """The decoder stack plus LM head.

    Args:
        cfg: model shape.
        max_positions: length of the rotary table (context limit).
    """

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_positions = max_positions
        # Weights are allocated, never initialised: the checkpoint overwrites them. (An
        # initialiser such as normal_ run on the meta device makes the first model built
        # in a process pay for torch's lazy meta-kernel imports.)
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
        self.lm_head.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.lm_dnn = False
        """The LM head through oneDNN (:meth:`use_onednn`)."""
        self.rope: RotaryTable | None = None
        # gate/up output, the step's largest temporary (over glibc's 32 MB mmap ceiling for
        # a 2048-token step of a 100M model): kept and reused by every layer and step
        # instead of being mapped and page-faulted anew each layer.
        self._mlp_buf: torch.Tensor | None = None

    def init_rope(self) -> None:
        """Build the cos/sin table on the model's device and dtype (after loading)."""
        w = self.embed_tokens.weight
        self.rope = RotaryTable(
            self.cfg.rope, self.cfg.head_dim, self.max_positions, w.dtype, w.device
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
        block_size: int,
        native: NativeKernels | None = None,
        last_meta: AttentionMetadata | None = None,
    ) -> torch.Tensor:
        """One step over the flat batch.

        Args:
            input_ids, positions: ``[T]``.
            kv_cache: ``[num_layers, 2, num_slots, Hkv, D]``.
            meta: attention layout of this step.
            logits_indices: ``[N]`` flat positions whose next-token logits are needed.
            native: compiled CPU kernels for the norms, rotary and SiLU (float32 CPU only;
                attention takes them from ``meta``), or None.
            last_meta: if given, the last layer computes only the ``logits_indices`` rows
                past their K/V, with this layout (one query per row, at its sequence's
                last position); other rows' outputs would be discarded anyway.
        Returns:
            float32 logits ``[N, vocab]``.
        """
        assert self.rope is not None, "init_rope() not called"
        x = self.embed_tokens(input_ids)  # [T, H]
        rope = self.rope.lookup(positions)
        T = input_ids.shape[0]
        buf = self._mlp_buf
        if buf is None or buf.shape[0] < T or buf.dtype != x.dtype or buf.device != x.device:
            buf = self._mlp_buf = x.new_empty(T, 2 * self.cfg.intermediate_size)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and last_meta is not None:
                x = layer(
                    x,
                    rope,
                    kv_cache[i, 0],
                    kv_cache[i, 1],
                    last_meta,
                    block_size,
                    buf[:T],
                    native,
                    logits_indices,
                )
            else:
                x = layer(
                    x, rope, kv_cache[i, 0], kv_cache[i, 1], meta, block_size, buf[:T], native
                )
        if last_meta is None:
            x = x[logits_indices]  # norm is per-token, so select first
        x = self.norm(x, native)  # [N, H]
        if self.lm_dnn:
            logits: torch.Tensor = onednn_linear(x, self.lm_head.weight, None).float()
        else:
            logits = self.lm_head(x).float()
        return logits

    def use_onednn(self) -> None:
        """Every projection and the LM head through oneDNN's GEMM (CPU, float32)."""
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer)
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                lin.use_onednn()
        self.lm_dnn = True


def load_hf_state_dict(model: LlamaModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy Hugging Face-named tensors into the fused parameters.

    Raises:
        ValueError: a required tensor is missing or has the wrong shape.
    """
    cfg = model.cfg
    prefix = "model."

    def take(name: str) -> torch.Tensor:
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        return t

    def put(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(
                f"tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(value.to(param.dtype))

    put(model.embed_tokens.weight, take(prefix + "embed_tokens.weight"), "embed_tokens.weight")
    put(model.norm.weight, take(prefix + "norm.weight"), "norm.weight")
    if not cfg.tie_word_embeddings:
        put(model.lm_head.weight, take("lm_head.weight"), "lm_head.weight")
    for i, layer in enumerate(model.layers):
        assert isinstance(layer, DecoderLayer)
        p = f"{prefix}layers.{i}."
        a = p + "self_attn."
        qkv = torch.cat([take(a + f"{n}_proj.weight") for n in "qkv"], dim=0)
        qkv_b = torch.cat([take(a + f"{n}_proj.bias") for n in "qkv"]) if cfg.qkv_bias else None
        layer.qkv_proj.load(qkv, qkv_b, a + "qkv")
        layer.o_proj.load(
            take(a + "o_proj.weight"),
            take(a + "o_proj.bias") if cfg.o_bias else None,
            a + "o_proj.weight",
        )
        m = p + "mlp."
        gate_up = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")], dim=0)
        gate_up_b = (
            torch.cat([take(m + "gate_proj.bias"), take(m + "up_proj.bias")])
            if cfg.mlp_bias
            else None
        )
        layer.gate_up_proj.load(gate_up, gate_up_b, m + "gate_up")
        down_b = take(m + "down_proj.bias") if cfg.mlp_bias else None
        layer.down_proj.load(take(m + "down_proj.weight"), down_b, m + "down_proj.weight")
        put(
            layer.input_layernorm.weight,
            take(p + "input_layernorm.weight"),
            p + "input_layernorm.weight",
        )
        put(
            layer.post_attention_layernorm.weight,
            take(p + "post_attention_layernorm.weight"),
            p + "post_attention_layernorm.weight",
        )
