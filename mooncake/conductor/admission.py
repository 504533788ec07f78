"""Admission: reject a request up front instead of letting it miss its SLOs.

Three views of a decode instance's load (FAST'25 §7):

- ``current``: the sequences running now. Early rejection uses it; because a request
  reaches decode only after its prefill, the load it sees has moved on by then, which
  makes admissions oscillate (paper Fig. 11).
- ``committed``: running plus every request already placed there. Used to spread
  requests when nothing is rejected up front.
- ``projected``: prediction-based early rejection. Assume a uniform decode time per
  token t_d; at the moment ``eta`` the new request would arrive, drop the running
  sequences that will have finished and add the placed ones that will have arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mooncake.conductor.placement import DecodeChoice, PrefillChoice
from mooncake.conductor.state import DecodeLoad

LoadView = Literal["current", "committed", "projected"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused request: why, and when trying again may succeed."""

    request_id: str
    reason: str
    retry_after: float
    """Seconds after which the same request may be admitted (a hint, ≥ 0)."""


def decode_view(load: DecodeLoad, view: LoadView, eta: float = 0.0, t_d: float = 0.0) -> tuple[int, int]:
    """(batch, KV tokens) of a decode instance under ``view``.

    Args:
        load: the instance.
        view: which load to count (see module docstring).
        eta: when the new request would join (``projected`` only).
        t_d: uniform decode seconds per token (``projected`` only).
    """
    if view == "current":
        return len(load.running), load.kv_running
    if view == "committed":
        return len(load.running) + len(load.incoming), load.kv_running + load.kv_incoming
    batch, kv = 0, 0
    for seq in load.running.values():
        if seq.at + (seq.output_len - 1) * t_d > eta:
            batch += 1
            kv += seq.kv_tokens
    for seq in load.incoming.values():
        if seq.at <= eta:
            batch += 1
            kv += seq.kv_tokens
    return batch, kv


def check_slos(request_id: str, prefill: PrefillChoice, decode: DecodeChoice, ttft_slo_s: float, tbt_slo_s: float, retry_after_decode: float) -> Rejection | None:
    """Reject when the estimated TTFT or TBT breaks its SLO or the KV does not fit.

    Estimates already count the cached prefix (``prefill.cached_tokens``), so a long but
    mostly cached prompt is judged by the work it really needs.
    """
    if prefill.ttft_s > ttft_slo_s:
        return Rejection(request_id, f"estimated TTFT {prefill.ttft_s:.2f}s > SLO {ttft_slo_s:g}s", prefill.ttft_s - ttft_slo_s)
    if not decode.fits:
        return Rejection(request_id, f"no KV memory on decode instance {decode.worker}", retry_after_decode)
    if decode.tbt_s > tbt_slo_s:
        return Rejection(request_id, f"estimated TBT {decode.tbt_s * 1e3:.0f}ms > SLO {tbt_slo_s * 1e3:g}ms", retry_after_decode)
    return None


__all__ = ["LoadView", "Rejection", "check_slos", "decode_view"]
