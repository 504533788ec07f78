"""Bandwidth of the engine -> engine KV hand-off on one host, against memcpy of the
same bytes in the same run.

Set-up: ``mooncake.LLM`` with 1 prefill + 1 decode worker on this host, store on
(the default), streaming off (the whole hand-off runs after the prefill). Each request
is a fresh prompt of random token ids (nothing cached), ``max_tokens=2``, one at a time,
after one warm-up request.

What is timed, per request (wall-clock stamps the workers record,
``worker_stats()[w]["handoff_times"]``, ``mooncake.worker.handoff_times``):

- **export**: on the prefill worker, from the moment it asks its engine to export the
  request's full blocks (``export_start``) until the decode side can take them
  (``stored``): the engine's copy out of its paged pool into the export arena with the
  checksum, and the lease (same host: the decode engine imports from the arena, and the
  host-tier put follows after the hand-off, docs/store.md; the store's way: the tier
  put too);
- **import**: on the decode worker, from the start of the transfer task's fetch
  (``fetch_start``) until the blocks are in the decode engine's paged pool
  (``imported``): the engine reading the prefill worker's export arena (or host
  tier) in place,
  checking each record, and copying it into its pool;
  With the shared pool (``WorkerConfig.shared_kv_pool``, the default; docs/store.md
  "Pool -> pool") export is only the hold and the lease (nothing copied) and import is
  the decode engine's one copy straight out of the prefill engine's pool; the copies
  counted ``*.after`` and ``store.put`` come after the hand-off;
- **data path** = export + import: the time bytes move. The wait between the two (the
  prefill task returning its handle and the scheduler starting the transfer task on
  the decode worker: Dask's control plane) is left out here and shown apart as
- **wall** = ``imported - export_start``, everything from export start to import done.

Bytes = the KV payload of the prompt's full blocks (what the decode engine imports;
headers not counted). Bandwidth = bytes / time. **memcpy**: ``numpy.copyto`` of a
buffer of the same size into a preallocated one (one thread, the benchmark process),
caches flushed before each copy (the hand-off's KV is not in cache either: the prefill
that wrote it has streamed the weights through since), median of 5, right after each
request, so both see the same machine state; the warm figure (same buffers again) is
printed too. The claim is data-path bandwidth / memcpy bandwidth (target ≥ 0.5 at
2,048 tokens).

Tier state (``--tiers``): ``fresh`` is the default worker, whose host tier takes each
page as it fills (a put into a fresh tier pays a page fault per 4 KiB);
``prefault`` sets ``WorkerConfig.host_tier_prefault`` (the tier's capacity taken when the
worker starts, like a preallocated pool).

Copies per block: the ``mooncake.kvcache.copies`` counters of both workers' processes
(engine included) over the measured requests, divided by the bytes handed off.

Run it alone on an idle machine::

    python benchmarks/handoff_bandwidth.py                    # llama-57m-16k, 2,048 tokens
    python benchmarks/handoff_bandwidth.py --prompts 512,2048,8192 --reps 5 --save-results
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mooncake.client import LLM, WorkerConfig
from mooncake.config import EngineConfig
from mooncake.sampling_params import SamplingParams


@dataclass
class Sample:
    """One request's hand-off."""

    nbytes: int
    blocks: int
    export_s: float
    import_s: float
    wall_s: float
    memcpy_s: float
    memcpy_warm_s: float

    @property
    def data_s(self) -> float:
        return self.export_s + self.import_s


@dataclass
class Row:
    tier: str
    prompt_tokens: int
    samples: list[Sample]
    copies_per_block: dict[str, dict[str, float]] = field(default_factory=dict)

    def med(self, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.samples)

    def gbps(self, what: str) -> float:
        """Median bandwidth (GB/s) of the stage ``what`` (a ``*_s`` field)."""
        return statistics.median(s.nbytes / getattr(s, what) / 1e9 for s in self.samples)


_SCRATCH: np.ndarray | None = None


def memcpy_seconds(nbytes: int, reps: int = 5, cold: bool = True) -> float:
    """Median time of ``numpy.copyto`` of ``nbytes`` into a preallocated buffer (both
    touched first: no page faults timed). ``cold``: a 64 MiB write before each copy
    evicts both buffers from the caches, as the hand-off's data is (the prefill that
    wrote the KV streamed the weights and activations through the caches since)."""
    global _SCRATCH
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    if _SCRATCH is None:
        _SCRATCH = np.zeros(64 * 2**20, dtype=np.uint8)
    times = []
    for i in range(reps):
        if cold:
            _SCRATCH.fill(i)
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _copies(llm: LLM) -> dict[str, Counter[str]]:
    out = {}
    for w, s in llm.worker_stats().items():
        side = "+".join(llm.workers[w]["roles"])
        out[side] = Counter(s.get("copies", {})) + Counter(s.get("worker_copies", {}))
    return out


def _times(llm: LLM, rid: str) -> dict[str, float]:
    row: dict[str, float] = {}
    for s in llm.worker_stats().values():
        row.update(s.get("handoff_times", {}).get(rid, {}))
    return row


def run(
    model: str, tier: str, lengths: list[int], reps: int, seed: int, shared_pool: bool = True
) -> list[Row]:
    ec = EngineConfig(model=model, max_model_len=max(lengths) + 64)
    llm = LLM(
        mode="disaggregated",
        engine_config=ec,
        worker_config=WorkerConfig(
            stream_kv=False, host_tier_prefault=tier == "prefault", shared_kv_pool=shared_pool
        ),
        dashboard_address=None,
    )
    rng = random.Random(seed)
    vocab = int(llm.info["vocab_size"])
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    per_block = int(next(iter(llm.workers.values()))["kv_bytes_per_block"])
    rows = []
    try:
        warm = [rng.randrange(vocab) for _ in range(min(lengths))]
        llm.generate([warm], params, use_tqdm=False)
        for n in lengths:
            before = _copies(llm)
            samples = []
            for _ in range(reps):
                prompt = [rng.randrange(vocab) for _ in range(n)]
                out = llm.generate([prompt], params, use_tqdm=False)[0]
                t = _times(llm, out.request_id)
                need = ("export_start", "stored", "fetch_start", "imported")
                if not all(k in t for k in need):
                    raise SystemExit(f"request {out.request_id}: hand-off stages missing: {t}")
                nbytes = int(t.get("decode_bytes", 0))
                samples.append(
                    Sample(
                        nbytes,
                        int(t.get("decode_blocks", 0)),
                        t["stored"] - t["export_start"],
                        t["imported"] - t["fetch_start"],
                        t["imported"] - t["export_start"],
                        memcpy_seconds(nbytes),
                        memcpy_seconds(nbytes, cold=False),
                    )
                )
            after = _copies(llm)
            moved = sum(s.blocks for s in samples) * per_block
            cpb = {
                side: {p: round(v / moved, 2) for p, v in (after[side] - before[side]).items() if v}
                for side in after
            }
            rows.append(Row(tier, n, samples, cpb))
    finally:
        llm.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: --shape's)")
    ap.add_argument("--shape", default="llama-57m-16k", help="benchmarks/checkpoints.py shape")
    ap.add_argument("--prompts", default="2048", help="prompt lengths, tokens")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-shared-pool",
        action="store_true",
        help="the export arena's way (WorkerConfig.shared_kv_pool=False), to compare",
    )
    ap.add_argument("--tiers", default="prefault,fresh", help="host tier states: prefault, fresh")
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/handoff-bandwidth.json for docs/performance.md",
    )
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from checkpoints import ensure_checkpoint

        model = str(ensure_checkpoint(args.shape))
    lengths = [int(x) for x in args.prompts.split(",")]
    rows = []
    for tier in args.tiers.split(","):
        if tier not in ("prefault", "fresh"):
            raise SystemExit(f"--tiers: unknown {tier!r}; known: prefault, fresh")
        rows += run(model, tier, lengths, args.reps, args.seed, not args.no_shared_pool)
    print(f"model {model}, {args.reps} rep(s), medians; GB/s = 1e9 bytes/s")
    print(
        f"{'tier':9s} {'prompt':>7s} {'MiB':>6s} {'export ms':>10s} {'import ms':>10s} "
        f"{'data GB/s':>10s} {'wall GB/s':>10s} {'memcpy GB/s':>12s} {'warm':>6s} "
        f"{'data/memcpy':>12s}  copies/block"
    )
    for r in rows:
        mem = r.gbps("memcpy_s")
        print(
            f"{r.tier:9s} {r.prompt_tokens:7d} {r.samples[0].nbytes / 2**20:6.1f} "
            f"{r.med('export_s') * 1e3:10.2f} {r.med('import_s') * 1e3:10.2f} "
            f"{r.gbps('data_s'):10.2f} {r.gbps('wall_s'):10.2f} {mem:12.2f} "
            f"{r.gbps('memcpy_warm_s'):6.2f} "
            f"{r.gbps('data_s') / mem:12.2f}  {r.copies_per_block}"
        )
    if args.save_results:
        save_results(rows, args)


def save_results(rows: list[Row], args: argparse.Namespace) -> None:
    """Per prompt length: the data path's bandwidth against memcpy (the target at 2,048
    tokens), and the wall (control plane included), export and import against it too."""
    import result_file as rf

    claims: list[dict[str, Any]] = []
    for r in rows:
        mem = r.gbps("memcpy_s")
        label = (
            f"{r.prompt_tokens}-token prompt ({r.samples[0].nbytes / 2**20:.0f} MiB), {r.tier} tier"
        )
        for what, col, target in (
            ("data_s", "data path (export + import)", "≥ 0.5" if r.prompt_tokens == 2048 else ""),
            ("export_s", "export (prefill side, to the hand-off's handle)", None),
            ("import_s", "import (decode side, into its pool)", None),
            ("wall_s", "wall, export start -> import done", None),
        ):
            note = None
            if what == "data_s":
                copies = {side: sum(v.values()) for side, v in r.copies_per_block.items()}
                note = f"copies per block {copies}"
            claims.append(
                rf.claim(
                    f"hand-off, {label}: {col} bandwidth (p50)",
                    r.gbps(what),
                    "GB/s",
                    "memcpy",
                    mem,
                    target=target or None,
                    note=note,
                )
                | {"row": label, "col": col}
            )
    rf.save(
        "handoff-bandwidth",
        "Engine -> engine hand-off bandwidth (same host) vs memcpy",
        claims,
        notes=(
            f"1 prefill + 1 decode worker, streaming off, uncached prompts one at a time, "
            f"{args.reps} rep(s) each, medians; `--shape {args.shape}`. Export: the prefill "
            "side from its export call to the hand-off's handle (on the same-host pool path "
            "a hold of the blocks, no copy: a figure far above memcpy); import: the decode "
            "worker's fetch start to the blocks in its engine's pool (the pool -> pool copy "
            "and its engine command); data path = both; wall adds the wait "
            "for the transfer task (Dask). memcpy: `numpy.copyto` of the same bytes into a "
            "preallocated buffer, caches flushed, one thread, in the same run. A fresh tier "
            "faults in each page it writes; a prefaulted one "
            "(`WorkerConfig.host_tier_prefault`) took them when the worker started. "
            "Definitions in "
            "benchmarks/handoff_bandwidth.py."
        ),
        extra={
            "copies_per_block": {f"{r.tier}/{r.prompt_tokens}": r.copies_per_block for r in rows}
        },
    )


if __name__ == "__main__":
    main()
