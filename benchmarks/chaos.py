"""Chaos: a steady load through a 1 prefill + 2 decode cluster while a random worker is
killed (``kill -9``) every ``--kill-every`` seconds; the Nanny restarts each one.

Every request ends one of three ways:

- completed;
- failed with a clear error (``WorkerLost``, ``Unavailable`` or ``Rejected``);
- lost: neither within ``--request-timeout`` seconds (or any other exception): a bug.

For the requests moved off a lost worker it says what the move cost them, against one
uncached prefill of their prompt (the median TTFT of up to three runs of a prompt of
that length with a fresh cache salt, measured after the load once the cluster is whole
again; and, printed beside it, of the workload's first five prompts before the first
kill):

- **stall** of a resumed request (moved after its first token): the gap between the
  last token before the move and the first one after it, minus the request's own median
  gap between tokens: the time the move added to its stream;
- **extra end-to-end time against its own pace** of a resumed request: the time from
  its last token before the move to its last token, minus what its tokens since would
  have taken at its own pace before the move (the median gap between its tokens before
  the move; its whole stream's with fewer than two tokens before it). The
  counterfactual: the request had gone on at the pace it had on its old worker. It is
  the stall (against that pace) plus what the tokens after the move took beyond that
  pace (``after_move_own_pace``: a bigger batch on the new worker, the killed worker's
  restart taking the CPU, ...);
- **extra end-to-end time against unmoved requests** of a moved request: its end-to-end
  time minus the median end-to-end time of the requests of the same shape (prompt and
  output length) that were not moved and were in flight at the same kill; with fewer
  than three of those, of all unmoved requests of that shape. This one is biased:
  ``--kill-target busiest`` kills the worker with the most requests, so the moved ones
  decoded in a bigger batch (slower tokens) before the kill than the unmoved ones, and a
  trace's requests rarely share a shape (no baseline). The token gaps printed beside
  it (``token gap p50``: the moved requests' before and after the move, the unmoved
  in-flight requests' in the second before the kill and the second after the first
  resumed token) show how large the bias is;
- **extra TTFT** of a request moved before its first token: its TTFT minus the median
  TTFT of the unmoved requests with a prompt within 25% of its length (in flight at the
  same kill when three or more were, else all of them).

Each move is broken down (``LLM.move_log``, ``mooncake.client_moves``) into: noticing the
loss (kill -> the client learning of it: its watch on the worker, the worker's token
stream, or the worker-left event -> the stream acting on it), placing it
again (the Conductor), submitting the new graph, the KV transfer on the new decode worker
(from the prefill worker's host tier, or a miss: recompute) and the rest up to the first
resumed token (recomputing prompt + tokens so far less what was fetched, one decode
step; and, without the early resume, scheduling the tasks). With the early resume the
Conductor starts the transfer and decode on the new decode worker when it places the
request, so the transfer and the rest count from the placement, not the submission.
For early resumes, the Conductor's placement time (``LLM.history``) and the new decode
worker's hand-off times (``handoff_times`` in ``LLM.worker_stats``) split the path from
the stream acting to the first resumed token: ``to_conductor`` (the placement request
reaching the Conductor and its decision), ``conductor_to_fetch`` (the start reaching
the decode worker), ``fetch`` (the import from the prefill worker's host tier, and the
request's admission with it), ``imported_to_first_token`` (the engine's step with the
recompute, the token's way to the client); ``answer_back`` (the placement's answer
reaching the stream) is off that path.

``--kill-target busiest`` kills the worker (of ``--kill-roles``) with the most requests
in flight rather than a random one, and ``--min-inflight`` waits until it has that many;
with ``--output-len`` long enough for several streams to run at each kill, each kill
moves several requests.

``--dataset mooncake-trace`` drives the first ``--num-prompts`` requests of the
conversation trace (``--trace PATH``; lengths scaled by ``--length-scale``, prompts cut
at ``--max-input-len``, outputs at ``--output-len``) at ``--rate``, instead of the
prefix-repetition load. ``--json`` also writes every request's record (its token
times, relative to the start of the load) and every move's breakdown.

    python benchmarks/chaos.py [--model DIR] [--dataset prefix-repetition|mooncake-trace]
        [--trace PATH] [--num-prompts 200] [--rate 4] [--kill-every 10]
        [--kill-roles prefill,decode] [--kill-target random|busiest] [--min-inflight 0]
        [--keep-spare] [--output-len 32] [--json out.json] [--save-results]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import json
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mooncake.bench.datasets import SampleRequest, mooncake_trace_dataset, prefix_repetition_dataset
from mooncake.client import LLM, Rejected, Unavailable
from mooncake.client_moves import MoveRecord
from mooncake.config import EngineConfig
from mooncake.sampling_params import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
TRACE = Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"
"""The FAST'25 conversation trace (docs/paper-reproduction.md says where to get it)."""


@dataclass
class Outcome:
    request_id: str
    kind: str = "lost"
    """``completed``, ``failed`` (a clear error) or ``lost``."""
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_len: int = 0
    output_len: int = 0
    start: float = 0.0
    """``time.monotonic()`` when it was sent."""
    token_times: list[float] | None = None
    """``time.monotonic()`` of each output that brought tokens."""


@dataclass
class Kill:
    at: float
    """``time.monotonic()``."""
    worker: str
    roles: str
    inflight: int
    """Requests the client had placed on it then."""


def workload(args: argparse.Namespace) -> list[SampleRequest]:
    if args.dataset == "mooncake-trace":
        return mooncake_trace_dataset(
            Path(args.trace),
            args.num_prompts,
            length_scale=args.length_scale,
            max_input_len=args.max_input_len,
            max_output_len=args.output_len,
        )
    return prefix_repetition_dataset(
        args.num_prompts, args.prefix_len, args.suffix_len, args.num_prefixes, args.output_len
    )


async def run_one(llm: LLM, i: int, req: SampleRequest, timeout: float) -> Outcome:
    rid = f"chaos-{i}"
    params = SamplingParams(temperature=0.0, max_tokens=req.output_len, ignore_eos=True)
    t0 = time.monotonic()
    out = Outcome(rid, prompt_len=req.prompt_len, output_len=req.output_len, start=t0)
    out.token_times = []
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async for o in llm.stream(req.prompt, params, request_id=rid):
            n = len(o.outputs[0].token_ids)
            if n > seen:
                seen = n
                out.token_times.append(time.monotonic())  # type: ignore[union-attr]
            if out.ttft_s is None and o.outputs[0].token_ids:
                out.ttft_s = time.monotonic() - t0
            if o.finished:
                out.kind, out.e2e_s = "completed", time.monotonic() - t0

    try:
        await asyncio.wait_for(consume(), timeout)
    except (Unavailable, Rejected) as e:  # WorkerLost is an Unavailable
        out.kind, out.error = "failed", type(e).__name__
    except asyncio.TimeoutError:
        out.kind, out.error = "lost", "timeout"
    except Exception as e:
        out.kind, out.error = "lost", f"{type(e).__name__}: {e}"
    return out


async def uncached_prefill_s(llm: LLM, reqs: list[SampleRequest], salt: str = "") -> float:
    """Median TTFT of the workload's prompts with nothing cached (a fresh cache salt
    each), before any kill: what one uncached prefill of these prompts costs."""
    ttfts = []
    for i, req in enumerate(reqs):
        params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        t0 = time.monotonic()
        async for _ in llm.stream(req.prompt, params, cache_salt=f"uncached-{salt}{i}"):
            break
        ttfts.append(time.monotonic() - t0)
    return statistics.median(ttfts)


def cluster_trace(llm: LLM, moves: list[MoveRecord]) -> Trace:
    """The Conductor's placement times of the moved attempts and their decode workers'
    hand-off times (what the workers alive now still hold)."""
    off = time.time() - time.monotonic()
    try:
        history = llm.history([m.attempt_id for m in moves])
        placed = {h["request_id"]: float(h["placed_at"]) for h in history if "placed_at" in h}
    except Exception as e:  # a diagnostic: the breakdown goes on without it
        print(f"note: no placement times ({e})")
        placed = {}
    try:
        stats = llm.worker_stats()
        handoffs = {
            rid: row for s in stats.values() for rid, row in s.get("handoff_times", {}).items()
        }
    except Exception as e:
        print(f"note: no hand-off times ({e})")
        handoffs = {}
    return Trace(off, placed, handoffs)


WHOLE_TIMEOUT_S = 60.0
"""How long the run waits after its load for every killed worker to be back."""


def wait_for_workers(llm: LLM, n: int, timeout: float) -> bool:
    """Wait until the cluster has ``n`` mooncake workers again (the Nanny restarted the
    killed ones), then a second more; False when it did not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with llm._lock:
            ready = sum(1 for info in llm.workers.values() if info.get("roles"))
        if ready >= n:
            time.sleep(1.0)
            return True
        time.sleep(0.1)
    return False


MAX_BASELINE_LENGTHS = 20
"""At most this many prompt lengths get their own uncached prefill after the run."""


async def uncached_by_length(llm: LLM, reqs: list[SampleRequest]) -> dict[int, float]:
    """One uncached prefill of each prompt length among ``reqs`` (the moved requests'
    prompts, after the load and the kills: a trace's prompts differ in length, so each
    moved request is compared with a prefill of its own prompt): the median TTFT of up
    to three runs of such a prompt, a fresh cache salt each."""
    by_len: dict[int, list[SampleRequest]] = {}
    for r in reqs:
        by_len.setdefault(r.prompt_len, []).append(r)
    lengths = sorted(by_len)[:MAX_BASELINE_LENGTHS]
    reps = 3 if len(lengths) <= 3 else 1
    out = {}
    for n in lengths:
        same = by_len[n]
        runs = [same[i % len(same)] for i in range(reps)]
        out[n] = await uncached_prefill_s(llm, runs, f"len{n}")
    return out


def killer(
    llm: LLM,
    every: float,
    stop: threading.Event,
    rng: random.Random,
    log: list[Kill],
    roles: tuple[str, ...] = ("prefill", "decode"),
    target: str = "random",
    min_inflight: int = 0,
    keep_spare: bool = False,
) -> None:
    """Kill a worker process (of one of ``roles``; a random one, or with ``target``
    ``busiest`` the one with the most requests in flight, once it has ``min_inflight``)
    every ``every`` seconds until ``stop``. With ``keep_spare`` only a worker whose roles
    another live worker also has (waiting up to ``every`` s for the Nanny's restart)."""
    while not stop.wait(every):
        deadline = time.monotonic() + every
        while True:
            # The client's own membership view (kept current by the scheduler's joined/left
            # events): asking the workers (``client.run``) would wait on the one just killed.
            with llm._lock:
                workers = {a: dict(i) for a, i in llm.workers.items()}
                load = collections.Counter(w for ws in llm._placed.values() for w in ws)
            eligible = sorted(
                a
                for a, info in workers.items()
                if set(info.get("roles", [])) & set(roles) and info.get("worker_pid")
            )
            if keep_spare:
                # Only a worker whose role another live worker also has.
                eligible = [
                    a
                    for a in eligible
                    if all(
                        any(
                            r in workers[b].get("roles", [])
                            for b in workers
                            if b != a and workers[b].get("worker_pid")
                        )
                        for r in workers[a].get("roles", [])
                    )
                ]
                if not eligible and time.monotonic() < deadline:
                    if stop.wait(0.05):
                        return
                    continue
            if target == "busiest" and eligible:
                top = max(load[a] for a in eligible)
                eligible = [a for a in eligible if load[a] == top]
                if top < min_inflight and time.monotonic() < deadline:
                    if stop.wait(0.01):
                        return
                    continue
            break
        if not eligible:
            continue
        addr = rng.choice(eligible)
        info = workers[addr]
        try:
            os.kill(int(info["worker_pid"]), signal.SIGKILL)
            log.append(Kill(time.monotonic(), addr, "+".join(info.get("roles", ["?"])), load[addr]))
        except ProcessLookupError:
            pass


MIN_MOVES_FOR_MEDIAN = 10
"""Fewer completed moves than this and the run says its medians are rough."""

GAP_WINDOW_S = 1.0
"""The window of the token gaps compared around a kill (the selection-bias check)."""


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _kill_of(kills: list[Kill], m: MoveRecord) -> Kill | None:
    """The kill that made ``m``: the last kill of its lost worker before the stream acted."""
    before = [k for k in kills if k.worker == m.lost_worker and k.at <= m.noticed_at]
    return before[-1] if before else None


@dataclass(frozen=True)
class OwnPace:
    """What a move added to one resumed stream, against the stream's own pace before the
    move (the counterfactual: the request had gone on at that pace on its old worker)."""

    pace_s: float
    """The median gap between the request's tokens before the move (its whole stream's
    when fewer than two tokens came before it)."""
    from_before: bool
    """``pace_s`` is from the tokens before the move."""
    stall_s: float
    """The gap across the move less ``pace_s``."""
    after_s: float
    """The tokens after the first resumed one: their time less ``pace_s`` each (a
    slower batch on the new worker, the worker's restart, ...)."""
    post_gap_s: float | None
    """The median gap between the tokens after the move."""

    @property
    def extra_s(self) -> float:
        """Extra end-to-end time against the request's own pace: ``stall_s + after_s``."""
        return self.stall_s + self.after_s


def own_pace(times: list[float], first_after: float) -> OwnPace | None:
    """The move's cost to a stream whose outputs arrived at ``times`` (ascending) and
    whose first output after the move arrived at ``first_after`` (one of ``times``);
    None when no token came before it."""
    k = bisect.bisect_left(times, first_after)  # outputs before the move
    if k == 0 or k >= len(times):
        return None
    gaps = [b - a for a, b in itertools.pairwise(times)]
    before, after = gaps[: k - 1], gaps[k:]
    pace = statistics.median(before) if before else statistics.median(gaps)
    return OwnPace(
        pace_s=pace,
        from_before=bool(before),
        stall_s=gaps[k - 1] - pace,
        after_s=sum(after) - len(after) * pace,
        post_gap_s=_median(after),
    )


PROMPT_LEN_TOLERANCE = 0.25
"""Prompts within this fraction of each other's length count as the same for the extra
TTFT (a trace's prompts all differ)."""


def _similar_len(a: int, b: int) -> bool:
    return abs(a - b) <= PROMPT_LEN_TOLERANCE * max(a, b)


def _gaps_in(times: list[float], lo: float, hi: float) -> list[float]:
    inside = [t for t in times if lo <= t <= hi]
    return [b - a for a, b in itertools.pairwise(inside)]


@dataclass
class Trace:
    """Where the cluster saw each moved attempt, to split a move along its critical path
    (``time.time()``, one clock for the processes of one host)."""

    wall_offset: float
    """``time.time() - time.monotonic()`` in this process (MoveRecord times are monotonic)."""
    placed: dict[str, float]
    """Attempt id -> when the Conductor placed it (``LLM.history``'s ``placed_at``)."""
    handoffs: dict[str, dict[str, float]]
    """Attempt id -> its new decode worker's ``handoff_times`` (``fetch_start``,
    ``imported``), from the workers still alive after the run."""


def critical_path(m: MoveRecord, trace: Trace) -> dict[str, float | None]:
    """A move's early resume along its critical path: notice -> the Conductor placing
    it -> its new decode worker starting the fetch -> the blocks imported (and, with the
    same-host import, the request admitted) -> its first token at the client; and the
    placement's answer back to the client, off that path."""
    off = trace.wall_offset
    placed = trace.placed.get(m.attempt_id)
    h = trace.handoffs.get(m.attempt_id, {})
    fetch, imported = h.get("fetch_start"), h.get("imported")

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {
        "to_conductor_s": span(m.noticed_at + off, placed),
        "answer_back_s": span(placed, None if m.placed_at is None else m.placed_at + off),
        "conductor_to_fetch_s": span(placed, fetch),
        "fetch_s": span(fetch, imported),
        "imported_to_first_token_s": span(
            imported, None if m.first_token_at is None else m.first_token_at + off
        ),
    }


def breakdown(
    outcomes: list[Outcome],
    moves: list[MoveRecord],
    kills: list[Kill],
    uncached_by_len: dict[int, float] | None = None,
    trace: Trace | None = None,
) -> dict:
    """Per move, where its time went, and the extra time of each moved request (the
    module docstring defines each). ``uncached_by_len``: one uncached prefill by prompt
    length (each moved request's extra time is also given as a multiple of its own);
    ``trace``: the cluster's side of each move (its critical path)."""
    by_id = {o.request_id: o for o in outcomes}
    moved_ids = {m.request_id for m in moves}
    unmoved = [o for o in outcomes if o.kind == "completed" and o.request_id not in moved_ids]

    def in_flight(kill: Kill) -> list[Outcome]:
        return [u for u in unmoved if u.start <= kill.at <= u.start + (u.e2e_s or 0.0)]

    def baseline(o: Outcome, kill: Kill | None, attr: str) -> float | None:
        if attr == "ttft_s":  # a TTFT does not depend on the output length
            same = [u for u in unmoved if _similar_len(u.prompt_len, o.prompt_len)]
        else:
            same = [
                u for u in unmoved if (u.prompt_len, u.output_len) == (o.prompt_len, o.output_len)
            ]
        if kill is not None:
            during = [u for u in in_flight(kill) if u in same]
            if len(during) >= 3:
                same = during
        return _median([getattr(u, attr) for u in same if getattr(u, attr) is not None])

    rows = []
    for m in moves:
        o = by_id.get(m.request_id)
        if o is None or o.kind != "completed":
            continue
        k = _kill_of(kills, m)
        row: dict[str, object] = {
            "request_id": m.request_id,
            "resumed": m.resumed,
            "tokens_before": m.tokens_before,
            "prompt_len": o.prompt_len,
            "notice": m.notice,
            "path": m.transfer_path or "?",
            "fetched_blocks": m.fetched_blocks,
            "recomputed_tokens": m.recomputed_tokens,
        }

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        row["kill_to_left_event_s"] = span(k.at if k else None, m.left_at)
        row["kill_to_notice_s"] = span(k.at if k else None, m.noticed_at)
        row["place_s"] = span(m.noticed_at, m.placed_at)
        row["submit_s"] = span(m.placed_at, m.submitted_at)
        row["transfer_s"] = m.transfer_s
        # With the early resume the new decode worker starts at placement, not at the
        # graph's submission: the transfer and the rest count from there.
        to_first = span(m.placed_at if m.early else m.submitted_at, m.first_token_at)
        row["early"] = m.early
        row["submit_to_first_token_s"] = span(m.submitted_at, m.first_token_at)
        row["rest_to_first_token_s"] = (
            None if to_first is None or m.transfer_s is None else to_first - m.transfer_s
        )
        row["kill_to_first_token_s"] = span(k.at if k else None, m.first_token_at)
        if trace is not None and m.early:
            row.update(critical_path(m, trace))
        times = o.token_times or []
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if m.resumed and m.last_token_at is not None and m.first_token_at is not None:
            row["stall_s"] = (m.first_token_at - m.last_token_at) - (_median(gaps) or 0.0)
            pace = own_pace(times, m.first_token_at)
            if pace is not None:
                row["pace_s"] = pace.pace_s
                row["stall_own_pace_s"] = pace.stall_s
                row["after_move_own_pace_s"] = pace.after_s
                row["extra_e2e_own_pace_s"] = pace.extra_s
                row["post_gap_s"] = pace.post_gap_s
                if pace.from_before:
                    row["pre_gap_s"] = pace.pace_s
            if k is not None:
                # The selection-bias check: the token gaps of the unmoved requests in
                # flight at the same kill, just before it and just after the move.
                peers = in_flight(k)
                row["peer_pre_gap_s"] = _median(
                    [
                        g
                        for u in peers
                        for g in _gaps_in(u.token_times or [], k.at - GAP_WINDOW_S, k.at)
                    ]
                )
                row["peer_post_gap_s"] = _median(
                    [
                        g
                        for u in peers
                        for g in _gaps_in(
                            u.token_times or [], m.first_token_at, m.first_token_at + GAP_WINDOW_S
                        )
                    ]
                )
        base = baseline(o, k, "e2e_s")
        row["extra_e2e_s"] = None if base is None or o.e2e_s is None else o.e2e_s - base
        if not m.resumed:
            base = baseline(o, k, "ttft_s")
            row["extra_ttft_s"] = None if base is None or o.ttft_s is None else o.ttft_s - base
        if uncached_by_len and o.prompt_len in uncached_by_len:
            row["uncached_prefill_s"] = uncached_by_len[o.prompt_len]
        rows.append(row)

    def med(key: str) -> float | None:
        return _median([float(r[key]) for r in rows if r.get(key) is not None])  # type: ignore[arg-type]

    keys = (
        "kill_to_left_event_s",
        "kill_to_notice_s",
        "place_s",
        "submit_s",
        "transfer_s",
        "rest_to_first_token_s",
        "submit_to_first_token_s",
        "kill_to_first_token_s",
        "to_conductor_s",
        "answer_back_s",
        "conductor_to_fetch_s",
        "fetch_s",
        "imported_to_first_token_s",
        "recomputed_tokens",
        "stall_s",
        "stall_own_pace_s",
        "after_move_own_pace_s",
        "extra_e2e_own_pace_s",
        "extra_e2e_s",
        "extra_ttft_s",
        "pre_gap_s",
        "peer_pre_gap_s",
        "post_gap_s",
        "peer_post_gap_s",
        "uncached_prefill_s",
    )
    return {
        "moves": rows,
        "p50": {key: med(key) for key in keys},
        "ratio_p50": {
            key: _median(
                [
                    float(r[key]) / float(r["uncached_prefill_s"])  # type: ignore[arg-type]
                    for r in rows
                    if r.get(key) is not None and r.get("uncached_prefill_s")
                ]
            )
            for key in ("stall_s", "extra_e2e_own_pace_s", "extra_e2e_s", "extra_ttft_s")
        },
        "paths": dict(collections.Counter(str(r["path"]) for r in rows)),
        "notices": dict(collections.Counter(str(r["notice"]) for r in rows)),
        "early": sum(1 for r in rows if r.get("early")),
    }


def summarize(
    outcomes: list[Outcome],
    moves: dict[str, int],
    move_log: list[MoveRecord],
    kills: list[Kill],
    uncached: float,
    uncached_lens: dict[int, float],
    trace: Trace | None,
    whole: bool | None,
    t0: float,
    wall: float,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's result (what ``--json`` writes and ``--save-results`` records) and the
    breakdown of its moves."""
    counts = {
        kind: sum(o.kind == kind for o in outcomes) for kind in ("completed", "failed", "lost")
    }
    moved = [o for o in outcomes if moves.get(o.request_id) and o.kind == "completed"]
    still = [o for o in outcomes if not moves.get(o.request_id) and o.kind == "completed"]

    bd = breakdown(outcomes, move_log, kills, uncached_lens, trace)
    result = {
        "requests": len(outcomes),
        **counts,
        "completed_fraction": counts["completed"] / max(1, len(outcomes)),
        "moved": sum(1 for o in outcomes if moves.get(o.request_id)),
        "moved_completed": len(moved),
        "extra_ttft_p50_s": bd["p50"]["extra_ttft_s"],
        "extra_e2e_p50_s": bd["p50"]["extra_e2e_s"],
        "extra_e2e_own_pace_p50_s": bd["p50"]["extra_e2e_own_pace_s"],
        "stall_p50_s": bd["p50"]["stall_s"],
        "uncached_prefill_p50_s": uncached,
        # One uncached prefill of the moved requests' own prompts (median over them;
        # the workload's when none was measured): the baseline of the extra times.
        "moved_uncached_prefill_p50_s": bd["p50"]["uncached_prefill_s"] or uncached,
        "cluster_whole_for_baseline": whole,
        "ratio_to_own_prefill_p50": bd["ratio_p50"],
        "token_gap_p50_s": {
            "moved_before": bd["p50"]["pre_gap_s"],
            "unmoved_before_kill": bd["p50"]["peer_pre_gap_s"],
            "moved_after": bd["p50"]["post_gap_s"],
            "unmoved_after_move": bd["p50"]["peer_post_gap_s"],
        },
        "unmoved_e2e_p50_s": _median([o.e2e_s for o in still if o.e2e_s is not None]),
        "breakdown_p50": bd["p50"],
        "transfer_paths": bd["paths"],
        "notices": bd["notices"],
        "early_resumes": bd["early"],
        "move_rows": bd["moves"],
        "kills": [
            {"t_s": round(k.at - t0, 1), "roles": k.roles, "inflight": k.inflight} for k in kills
        ],
        "errors": sorted({o.error for o in outcomes if o.error}),
        "outcomes": [
            {
                "request_id": o.request_id,
                "kind": o.kind,
                "prompt_len": o.prompt_len,
                "output_len": o.output_len,
                "start_s": o.start - t0,
                "ttft_s": o.ttft_s,
                "e2e_s": o.e2e_s,
                "token_times_s": [t - t0 for t in o.token_times or []],
            }
            for o in outcomes
        ],
        "kill_times_s": [k.at - t0 for k in kills],
        "wall_s": wall,
        "args": vars(args),
    }
    return result, bd


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default=None, help="HF checkpoint directory (default: the built-in model)"
    )
    ap.add_argument(
        "--dataset", choices=("prefix-repetition", "mooncake-trace"), default="prefix-repetition"
    )
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second (Poisson)")
    ap.add_argument("--kill-every", type=float, default=10.0)
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument(
        "--kill-roles",
        default="prefill,decode",
        help="roles whose workers may be killed (decode: only decode workers, so a spare "
        "decode worker always remains)",
    )
    ap.add_argument(
        "--kill-target",
        choices=("random", "busiest"),
        default="random",
        help="busiest: the worker with the most requests in flight",
    )
    ap.add_argument(
        "--min-inflight",
        type=int,
        default=0,
        help="with --kill-target busiest: wait (up to --kill-every s) for this many",
    )
    ap.add_argument(
        "--keep-spare",
        action="store_true",
        help="kill only a worker whose role another live worker also has (a spare "
        "always remains: no request fails for want of a worker)",
    )
    ap.add_argument("--prefix-len", type=int, default=256)
    ap.add_argument("--suffix-len", type=int, default=64)
    ap.add_argument("--num-prefixes", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--length-scale", type=float, default=0.05, help="trace lengths scale")
    ap.add_argument("--max-input-len", type=int, default=1024)
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/chaos-<kill roles>.json for docs/performance.md",
    )
    args = ap.parse_args()

    reqs = workload(args)
    rng = random.Random(args.seed)
    kills: list[Kill] = []
    with LLM(
        args.model,
        prefill_workers=1,
        decode_workers=args.decode_workers,
        engine_config=EngineConfig(),
        dashboard_address=None,
    ) as llm:
        stop = threading.Event()
        k = threading.Thread(
            target=killer,
            args=(
                llm,
                args.kill_every,
                stop,
                rng,
                kills,
                tuple(args.kill_roles.split(",")),
                args.kill_target,
                args.min_inflight,
                args.keep_spare,
            ),
            daemon=True,
        )

        async def drive() -> list[Outcome]:
            tasks = []
            for i, r in enumerate(reqs):
                tasks.append(asyncio.create_task(run_one(llm, i, r, args.request_timeout)))
                await asyncio.sleep(rng.expovariate(args.rate))
            return list(await asyncio.gather(*tasks))

        uncached = asyncio.run(uncached_prefill_s(llm, reqs[:5]))
        t0 = time.monotonic()
        k.start()
        try:
            outcomes = asyncio.run(drive())
        finally:
            stop.set()
            k.join(timeout=5)
        wall = time.monotonic() - t0
        moves = dict(llm.moves)
        move_log = list(llm.move_log)
        trace = cluster_trace(llm, move_log)
        moved_reqs = [r for i, r in enumerate(reqs) if moves.get(f"chaos-{i}")]
        uncached_lens: dict[int, float] = {}
        whole = None
        if moved_reqs:
            # Not while the Nanny restarts the last worker killed (loading a model takes
            # the CPU a prefill needs: the baseline would come out slow).
            whole = wait_for_workers(llm, 1 + args.decode_workers, WHOLE_TIMEOUT_S)
            uncached_lens = asyncio.run(uncached_by_length(llm, moved_reqs))

    result, bd = summarize(
        outcomes, moves, move_log, kills, uncached, uncached_lens, trace, whole, t0, wall, args
    )
    kills_out = result["kills"]
    for key in (
        "requests",
        "completed",
        "failed",
        "lost",
        "moved",
        "moved_completed",
        "extra_ttft_p50_s",
        "extra_e2e_p50_s",
        "extra_e2e_own_pace_p50_s",
        "stall_p50_s",
        "uncached_prefill_p50_s",
        "moved_uncached_prefill_p50_s",
        "unmoved_e2e_p50_s",
        "transfer_paths",
        "notices",
        "early_resumes",
    ):
        print(f"{key:>22}: {_fmt(result[key])}")
    if len(bd["moves"]) < MIN_MOVES_FOR_MEDIAN:
        print(
            f"note: only {len(bd['moves'])} completed moves: the medians below are rough "
            "(a longer run, e.g. --num-prompts 400, gives more kills)"
        )
    kill_list = ", ".join(f"{d['roles']}@{d['t_s']}s({d['inflight']})" for d in kills_out)
    print(f"{'kills (in flight)':>22}: {kill_list}")
    print(f"{'errors':>22}: {result['errors']}")
    gaps = ", ".join(
        f"{k.replace('_', ' ')} {_fmt(v, 1000.0)}" for k, v in result["token_gap_p50_s"].items()
    )
    print(f"{'token gap p50 (ms)':>22}: {gaps}")
    print("breakdown of a move, p50 over the moved requests (ms; tokens):")
    for key, v in bd["p50"].items():
        print(f"{key:>26}: {_fmt(v, 1000.0 if key.endswith('_s') else 1.0)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.save_results:
        save_results(result, args)


def _fmt(v: object, scale: float = 1.0) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x, scale)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v * scale:.1f}" if scale != 1.0 else f"{v:.4g}"
    return str(v)


def save_results(
    result: dict[str, object], args: argparse.Namespace, results_dir: Path | None = None
) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import result_file as rf

    roles = args.kill_roles.replace(",", "+")
    n = int(result["requests"])  # type: ignore[call-overload]
    uncached = float(result["moved_uncached_prefill_p50_s"])  # type: ignore[arg-type]
    spare = "decode" in roles and "prefill" not in roles
    claims = [
        dict(
            rf.claim("requests lost (neither completed nor a clear error)", result["lost"], ""),
            target="0",
            met=result["lost"] == 0,
        ),
        rf.claim(
            "requests completed",
            result["completed"],  # type: ignore[arg-type]
            "",
            "requests",
            n,
            target="≥ 0.99" if spare else None,
        ),
        rf.claim("requests failed with a clear error", result["failed"], "", "requests", n),
    ]
    for key, label in (
        ("extra_ttft_p50_s", "extra TTFT of requests moved before their first token (p50)"),
        ("stall_p50_s", "stall of resumed streams (p50)"),
        (
            "extra_e2e_own_pace_p50_s",
            "extra end-to-end time of resumed requests, against their own pace (p50)",
        ),
        (
            "extra_e2e_p50_s",
            "extra end-to-end time of moved requests, against unmoved ones (p50)",
        ),
    ):
        value = result[key]
        if value is not None:
            claims.append(
                rf.claim(
                    label,
                    float(value),  # type: ignore[arg-type]
                    "s",
                    "one uncached prefill of their prompt (TTFT p50)",
                    uncached,
                    target="< 1.0",
                )
            )
    bd = result["breakdown_p50"]
    steps = ", ".join(
        f"{k.removesuffix('_s').replace('_', ' ')} {float(v) * 1000:.0f} ms"
        for k, v in bd.items()  # type: ignore[attr-defined]
        if v is not None
        and k.endswith("_s")
        and not k.startswith("extra")
        and "gap" not in k
        and "uncached" not in k
    )
    kills = ", ".join(f"{d['roles']}@{d['t_s']}s" for d in result["kills"])  # type: ignore[attr-defined]
    gap_text = ", ".join(
        f"{k.replace('_', ' ')} {_fmt(v, 1000.0)}"
        for k, v in result["token_gap_p50_s"].items()  # type: ignore[attr-defined]
    )
    trace = args.dataset == "mooncake-trace"
    return rf.save(
        # The trace-slice load is a result of its own, beside the prefix-repetition one.
        f"chaos-{roles}" + ("-trace" if trace else ""),
        f"Chaos: a {roles} worker killed every {args.kill_every:g} s"
        + (" (a slice of the conversation trace)" if trace else ""),
        claims,
        notes=(
            f"1 prefill + {args.decode_workers} decode workers, built-in model, "
            f"{args.dataset} load at {args.rate:g} req/s, "
            + (
                f"lengths x{args.length_scale:g}, prompts of at most {args.max_input_len} "
                f"tokens, at most {args.output_len} output tokens; "
                if trace
                else f"{args.output_len} output tokens; "
            )
            + f"{'a random' if args.kill_target == 'random' else 'the busiest'} {roles} worker "
            + f"killed{' (a spare kept)' if args.keep_spare else ''} with kill -9 every "
            f"{args.kill_every:g} s (the Nanny restarts it). Kills: {kills}. "
            f"Moved requests: {result['moved']} ({result['moved_completed']} completed); "
            f"KV of the resumed ones: {result['transfer_paths']}. A move, p50: {steps}. "
            f"Token gap p50 (ms): {gap_text}. "
            "Stall: the gap a move left in a stream less the stream's median token gap; "
            "extra end-to-end time against its own pace: its time after its last token "
            "before the move less its tokens since at its pace before the move; against "
            "unmoved ones: less the median of unmoved requests of the same shape in flight "
            "at the same kill (benchmarks/chaos.py says how each is measured). "
            f"Errors seen: {', '.join(result['errors']) or 'none'}."  # type: ignore[arg-type]
        ),
        results_dir=results_dir,
    )


if __name__ == "__main__":
    main()
