"""Where each output token's time goes in `mooncake serve`, across every process.

Starts `mooncake serve` (the same checkpoint and load as ``serve_compare.sh``: llama-57m,
prefix repetition 4 x 256 + 64 tokens, 32 output tokens, Poisson arrivals), drives it at
each rate with `mooncake bench serve`, and meanwhile samples the server's whole process
tree with py-spy (``--subprocesses``; a thread is sampled only while it runs): the
server process (HTTP, the cluster client, the embedded scheduler and its Conductor),
each Dask worker process and each engine process. Every sample is put in one category
by the innermost frame that names one (torch frames are skipped, so a torch op counts
for the code that called it):

    forward pass        the model's forward (model, model runner, native kernels)
    sampling            the sampler
    engine bookkeeping  the engine's scheduler, KV cache manager, sequences, step loop
    engine channel      worker <-> engine process messages (both ends)
    token stream        tokens from the engine processes to the client's port
    detokenize          incremental detokenization
    conductor           placement and admission in the scheduler
    HTTP/SSE            the OpenAI server (starlette, uvicorn, mooncake.server)
    Dask messaging      distributed, tornado, msgpack
    event loop          asyncio's own work
    other               anything else that runs
    waiting             running samples whose innermost frame waits (select, poll, locks)

and reported as CPU milliseconds per output token (samples / sampling rate / output
tokens of the run), per process kind, with each category's share of the busy time.
py-spy samples Python threads only: the engine's OpenMP worker threads are not
counted, its main thread is (it runs its share of every op). py-spy itself costs CPU on
a 2-core machine, so read the shares, not the latency of the run it was taken on.

    pip install py-spy   # not a dependency of mooncake
    python benchmarks/serve_profile.py [--modes colocated,disaggregated] [--rates 1,3]
        [--n 60] [--save-results]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import save

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench-model"

# (category, path fragments): the first fragment found in a frame's file names its category.
RULES: list[tuple[str, tuple[str, ...]]] = [
    (
        "forward pass",
        (
            "mooncake/engine/model.py",
            "mooncake/engine/model_runner.py",
            "mooncake/engine/native.py",
            "mooncake/engine/attention",
            "mooncake/engine/linear",
        ),
    ),
    ("sampling", ("mooncake/engine/sampler.py",)),
    ("token stream", ("mooncake/worker/token_stream.py",)),
    (
        "engine channel",
        (
            "mooncake/worker/channel.py",
            "mooncake/worker/engine_client.py",
            "mooncake/worker/engine_loop.py",
        ),
    ),
    ("engine bookkeeping", ("mooncake/engine/",)),
    ("detokenize", ("mooncake/tokenizer.py", "tokenizers/")),
    ("conductor", ("mooncake/conductor/",)),
    ("HTTP/SSE", ("mooncake/server/", "starlette/", "uvicorn/", "h11/", "httptools/", "anyio/")),
    ("Dask messaging", ("distributed/", "tornado/", "msgpack/", "dask/")),
    ("event loop", ("asyncio/", "selectors.py")),
    ("other", ("mooncake/",)),
]
SKIP = ("torch/",)  # a torch op counts for its caller
WAITS = {
    "select",
    "poll",
    "epoll",
    "sleep",
    "wait",
    "acquire",
    "_wait_for_tstate_lock",
    "recv",
    "recv_into",
    "accept",
    "get",
    "read",
    "readinto",
    "_recv",
    "wait_for",
    "_worker",
}
CATEGORIES = [c for c, _ in RULES] + ["waiting"]
PROCESS = re.compile(r'^process \d+:"')
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*):\d+\)$")


def process_kind(cmdline: str) -> str:
    """The kind of process a py-spy ``process PID:"cmdline"`` frame names."""
    if "engine_process" in cmdline:
        return "engine"
    if "spawn_main" in cmdline:
        return "worker"
    if "resource_tracker" in cmdline:
        return "other"
    return "server"


def categorize(frames: list[str]) -> str:
    """The category of one sample (frames root first)."""
    leaf = FRAME.match(frames[-1]) if frames else None
    if leaf is not None and leaf.group("func").rsplit(".", 1)[-1] in WAITS:
        return "waiting"
    for frame in reversed(frames):
        m = FRAME.match(frame)
        if m is None:
            continue
        path = m.group("file").replace("\\", "/")
        if any(s in path for s in SKIP):
            continue
        for category, fragments in RULES:
            if any(f in path for f in fragments):
                return category
    return "other"


def parse(raw: str) -> dict[str, collections.Counter[str]]:
    """py-spy raw output -> samples per category per process kind."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        procs = [p for p in parts if PROCESS.match(p)]
        frames = [p for p in parts if not PROCESS.match(p)]
        kind = process_kind(procs[-1]) if procs else "server"
        out[kind][categorize(frames)] += int(count)
    return out


def _get(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()
        return int(r.status)


def start_server(mode: str, ckpt: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "mooncake.cli", "serve", "--model", str(ckpt)]
    cmd += ["--served-model-name", NAME, "--port", str(port), "--mode", mode]
    cmd += ["--max-model-len", "2048", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mooncake serve exited: {log.read_text()[-2000:]}")
        try:
            if _get(f"http://127.0.0.1:{port}/health", timeout=2) == 200:
                prompt = {"model": NAME, "prompt": [20, 21, 22], "max_tokens": 4}
                _get(f"http://127.0.0.1:{port}/v1/completions", prompt)  # warm-up
                return proc
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("mooncake serve did not become healthy within 600 s")


def profile_rate(
    server: subprocess.Popen[bytes], port: int, rate: float, n: int, rate_hz: int, work: Path
) -> tuple[dict[str, collections.Counter[str]], dict[str, Any]]:
    raw = work / f"spy-{rate}.txt"
    spy = subprocess.Popen(
        ["py-spy", "record", "-p", str(server.pid), "--subprocesses"]
        + ["--format", "raw", "-r", str(rate_hz), "-o", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches to every process of the tree
    result = work / f"bench-{rate}.json"
    bench = [sys.executable, "-m", "mooncake.cli", "bench", "serve"]
    bench += ["--base-url", f"http://127.0.0.1:{port}", "--model", NAME]
    bench += ["--dataset-name", "prefix-repetition", "--num-prompts", str(n)]
    bench += ["--prefix-repetition-prefix-len", "256", "--prefix-repetition-suffix-len", "64"]
    bench += ["--prefix-repetition-num-prefixes", "4", "--prefix-repetition-output-len", "32"]
    bench += ["--vocab-size", "32000", "--seed", "1", "--request-rate", str(rate)]
    bench += ["--save-result", "--result-dir", str(work), "--result-filename", result.name]
    bench += ["--disable-tqdm"]
    subprocess.run(bench, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=n / rate + 300)
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    return parse(raw.read_text()), json.loads(result.read_text())


def table(
    samples: dict[str, collections.Counter[str]], tokens: int, rate_hz: int
) -> list[dict[str, Any]]:
    """Rows (category, ms per token per process kind and in all, share of busy time)."""
    kinds = ["server", "worker", "engine"]
    busy = sum(c for k in samples.values() for cat, c in k.items() if cat != "waiting")
    rows = []
    for cat in CATEGORIES:
        per = {
            k: 1000.0 * samples.get(k, collections.Counter())[cat] / rate_hz / tokens for k in kinds
        }
        total = sum(per.values())
        count = sum(samples.get(k, collections.Counter())[cat] for k in kinds)
        rows.append(
            {
                "category": cat,
                **per,
                "all": total,
                "share": None if cat == "waiting" or not busy else count / busy,
            }
        )
    return rows


GROUPS = {
    "forward pass": ("forward pass",),
    "Dask messaging and event loops": ("Dask messaging", "event loop"),
    "everything else": (
        "sampling",
        "token stream",
        "engine channel",
        "engine bookkeeping",
        "detokenize",
        "conductor",
        "HTTP/SSE",
        "other",
    ),
}
"""How the results page groups the categories (the printed table has each one)."""


def grouped_claims(
    run: str, rows: list[dict[str, Any]], bench: dict[str, Any]
) -> list[dict[str, Any]]:
    """The results page's rows of one run: CPU ms per output token of each group of
    :data:`GROUPS`, with its share of all busy samples as the ratio."""
    by = {r["category"]: r for r in rows}
    out = []
    for group, cats in GROUPS.items():
        value = round(sum(by[c]["all"] for c in cats), 2)
        share = round(sum(by[c]["share"] or 0.0 for c in cats), 3)
        tpot = round(bench["p50_tpot_ms"], 1)
        out.append(
            {
                "claim": f"{run}: {group}",
                "value": value,
                "unit": "CPU ms/token",
                "baseline": "TPOT p50",
                "baseline_value": tpot,
                "ratio": share,
                "target": None,
                "note": "ratio: share of all processes' busy samples",
                "row": f"{run} (TPOT p50 {tpot:g} ms)",
                "col": group,
                "cell": f"{value:g} CPU ms/token ({share:.0%} of busy samples)",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="colocated,disaggregated")
    ap.add_argument("--rates", default="1,3")
    ap.add_argument("--n", type=int, default=60, help="requests per rate")
    ap.add_argument("--sample-rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--port", type=int, default=8310)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / ".bench/checkpoints/llama-57m")
    ap.add_argument("--raw-dir", type=Path, default=None, help="keep py-spy's raw stacks here")
    ap.add_argument("--save-results", action="store_true")
    args = ap.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    if not args.checkpoint.is_dir():
        subprocess.run(
            [sys.executable, "benchmarks/checkpoints.py", args.checkpoint.name],
            cwd=ROOT,
            check=True,
        )
    rates = [float(r) for r in args.rates.split(",")]
    claims: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.raw_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for mode in args.modes.split(","):
            server = start_server(mode, args.checkpoint, args.port, work / f"server-{mode}.log")
            try:
                for rate in rates:
                    samples, bench = profile_rate(
                        server, args.port, rate, args.n, args.sample_rate, work
                    )
                    tokens = int(bench["total_output_tokens"]) or 1
                    rows = table(samples, tokens, args.sample_rate)
                    runs[f"{mode}@{rate:g}"] = {"rows": rows, "tpot_p50_ms": bench["p50_tpot_ms"]}
                    print(
                        f"\n{mode}, {rate:g} req/s: {tokens} output tokens, TPOT p50 "
                        f"{bench['p50_tpot_ms']:.1f} ms, TTFT p50 {bench['p50_ttft_ms']:.1f} ms"
                    )
                    print(
                        f"{'CPU ms per output token':<22}{'server':>9}{'worker':>9}{'engine':>9}"
                        f"{'all':>9}{'share':>8}"
                    )
                    for r in rows:
                        share = "" if r["share"] is None else f"{100 * r['share']:.0f}%"
                        print(
                            f"{r['category']:<22}{r['server']:>9.2f}{r['worker']:>9.2f}"
                            f"{r['engine']:>9.2f}{r['all']:>9.2f}{share:>8}"
                        )
                    claims += grouped_claims(f"{mode}, {rate:g} req/s", rows, bench)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()
    if args.save_results:
        save(
            "serve-profile",
            "Where a token's time goes in mooncake serve",
            claims,
            notes=(
                "py-spy across the server's process tree during `mooncake bench serve` "
                "(prefix repetition 4x256+64, 32 output tokens): CPU milliseconds per "
                "output token by category, summed over the server, worker and engine "
                "processes; ratio = the category's share of all busy samples. Categories: "
                "this script's docstring. py-spy itself uses CPU on this 2-core machine."
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
