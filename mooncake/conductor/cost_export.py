"""The cost model a live Conductor fitted online, as a JSON document the simulator reads.

The live scheduler plugin starts from the closed-form :class:`CostModel` (the served
model's shape and a hardware prior) and refines the prefill time model, the decode step
time model and the transfer bandwidth from observed timings. :func:`export_cost_model`
writes what it has learned; :func:`load_cost_model` turns such a file back into a
:class:`CostModel` (``mooncake sim --cost-model FILE``), so a replay uses the timings the
cluster actually showed.

Format (``schema_version`` 1)::

    {"schema_version": 1,
     "model": {ModelSpec fields}, "hardware": {HardwareSpec fields},
     "prefill_fit": {"per_attn_flop_s": ..., "per_linear_flop_s": ..., "fixed_s": ...},
     "prefill_observations": int,
     "decode_fit": {"per_step_s": ..., "per_seq_s": ..., "per_kv_token_s": ...} | null,
     "decode_observations": int,
     "prefill_step_fit": {same keys as prefill_fit} | null,
     "prefill_step_observations": int,
     "transfer_bandwidth_bytes_per_s": float}

``hardware.request_overhead_s`` is the median serving-path time per request the plugin
measured (TTFT − engine queue − prefill compute, from the workers' request reports);
``hardware.handoff_s`` the median hand-over time (a request's first token gap − its
median later gap − the KV transfer time at the fitted bandwidth, see
:func:`handoff_seconds`); ``hardware.token_overhead_s`` the median engine-loop time
between two decode-only steps; ``hardware.prefill_step_tokens``,
``prefill_chunk_tokens`` and ``prefill_max_seqs`` the prefill engine's step budget
(``max_num_batched_tokens``, ``long_prefill_chunk``, ``max_num_seqs``). Files without
them load with 0 (not modelled).
``decode_fit`` is ``null`` until an engine has reported a decode-only step (the replay
then uses the roofline of ``hardware``); files without it (written before decode steps
were fitted) load the same way. ``prefill_step_fit`` is the time of one batched
prompt-only engine step (the fixed term once per step), fitted on the engines' step
timings; the simulator's batched prefill steps use it (``prefill_fit`` without it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mooncake.conductor.cost_model import (
    CostModel,
    HardwareSpec,
    ModelSpec,
    PrefillTimeEstimator,
)

if TYPE_CHECKING:
    from mooncake.conductor.policy import Conductor

COST_MODEL_SCHEMA_VERSION = 1


def export_cost_model(
    conductor: Conductor,
    request_overhead_s: float | None = None,
    measured: dict[str, float] | None = None,
    prefill_steps: PrefillTimeEstimator | None = None,
) -> dict[str, Any]:
    """What ``conductor`` has learned, as a JSON-able document (see module docstring);
    ``request_overhead_s``: the serving path's measured time per request, if known
    (``HardwareSpec.request_overhead_s``); ``measured``: other :class:`HardwareSpec`
    fields the live cluster measured or configured (hand-off, per-step serving gap,
    the prefill engine's step budget); ``prefill_steps``: the fit of the engines'
    prompt-only steps."""
    per_attn, per_linear, fixed = conductor.estimator.coefficients()
    bandwidth = conductor.bandwidth.bandwidth
    dec = conductor.decode_estimator
    hardware: dict[str, Any] = {**(measured or {}), "rdma_bandwidth": bandwidth}
    if request_overhead_s is not None:
        hardware["request_overhead_s"] = request_overhead_s
    decode_fit = None
    if dec.num_observations > 0:
        per_step, per_seq, per_kv = dec.coefficients()
        decode_fit = {"per_step_s": per_step, "per_seq_s": per_seq, "per_kv_token_s": per_kv}
    step_fit = None
    if prefill_steps is not None and prefill_steps.num_observations > 0:
        sa, sl, sf = prefill_steps.coefficients()
        step_fit = {"per_attn_flop_s": sa, "per_linear_flop_s": sl, "fixed_s": sf}
    return {
        "schema_version": COST_MODEL_SCHEMA_VERSION,
        "model": asdict(conductor.cost.model),
        "hardware": asdict(replace(conductor.cost.hardware, **hardware)),
        "prefill_fit": {
            "per_attn_flop_s": per_attn,
            "per_linear_flop_s": per_linear,
            "fixed_s": fixed,
        },
        "prefill_observations": conductor.estimator.num_observations,
        "decode_fit": decode_fit,
        "decode_observations": dec.num_observations,
        "prefill_step_fit": step_fit,
        "prefill_step_observations": (
            prefill_steps.num_observations if prefill_steps is not None else 0
        ),
        "transfer_bandwidth_bytes_per_s": bandwidth,
    }


def handoff_seconds(conductor: Conductor, prompt_tokens: int, itl_s: Sequence[float]) -> float:
    """One disaggregated request's hand-over time beyond its KV transfer: its first
    token gap (the prefill's token to the decode worker's first) less a regular gap
    (the median of its later ones: the decode step and loop it also contains) less the
    transfer of its prompt's KV at the Conductor's fitted bandwidth."""
    later = sorted(itl_s[1:])
    regular = later[len(later) // 2]
    transfer = conductor.cost.transfer_time(prompt_tokens, conductor.bandwidth.bandwidth)
    return itl_s[0] - regular - transfer


def _spec(cls: type[Any], data: Any, field_name: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{field_name}: must be an object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{field_name}.{unknown[0]}: unknown field")
    for k, v in data.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{field_name}.{k}: must be a finite number, got {v!r}")
    try:
        return cls(**data)
    except ValueError as e:
        raise ValueError(f"{field_name}.{e}") from None


def cost_model_from_dict(data: Any) -> CostModel:
    """A :class:`CostModel` from an exported document; ``ValueError`` names the field."""
    if not isinstance(data, dict):
        raise ValueError("cost model: must be a JSON object")
    version = data.get("schema_version")
    if version != COST_MODEL_SCHEMA_VERSION:
        raise ValueError(f"schema_version: expected {COST_MODEL_SCHEMA_VERSION}, got {version!r}")
    model = _spec(ModelSpec, data.get("model"), "model")
    hardware = _spec(HardwareSpec, data.get("hardware"), "hardware")
    prefill = _fit(data.get("prefill_fit"), "prefill_fit", _PREFILL_KEYS)
    decode = _fit(data.get("decode_fit"), "decode_fit", _DECODE_KEYS)
    step = _fit(data.get("prefill_step_fit"), "prefill_step_fit", _PREFILL_KEYS)
    return CostModel(model, hardware, prefill, decode, step)


_PREFILL_KEYS = ("per_attn_flop_s", "per_linear_flop_s", "fixed_s")
_DECODE_KEYS = ("per_step_s", "per_seq_s", "per_kv_token_s")


def _fit(
    fit: Any, field_name: str, keys: tuple[str, str, str]
) -> tuple[float, float, float] | None:
    """Three named coefficients (``None`` stays ``None``)."""
    if fit is None:
        return None
    if not isinstance(fit, dict):
        raise ValueError(f"{field_name}: must be an object")
    coef = []
    for key in keys:
        v = fit.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{field_name}.{key}: must be a finite number, got {v!r}")
        coef.append(float(v))
    return coef[0], coef[1], coef[2]


def load_cost_model(path: str | Path) -> CostModel:
    """Read an exported cost model; ``ValueError`` names the file and the field."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: is a directory, not a cost model file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    try:
        return cost_model_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


__all__ = [
    "COST_MODEL_SCHEMA_VERSION",
    "cost_model_from_dict",
    "export_cost_model",
    "handoff_seconds",
    "load_cost_model",
]
