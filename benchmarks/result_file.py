"""The results a benchmark saves for docs/performance.md.

A benchmark run with ``--save-results`` writes ``benchmarks/results/<name>.json``: what
was claimed (each figure with its baseline and their ratio), the exact command, the
machine it ran on and when. ``benchmarks/report.py`` renders every file there into
docs/performance.md, so rerunning a benchmark and then the report refreshes the page;
earlier results live in git history.

File format (one JSON object):

    name      file stem, and the order key of its section (see report.SECTIONS)
    title     section heading
    command   the command line, as run from the repository root
    date      UTC date and time of the run
    commit    ``git rev-parse --short HEAD`` of the tree measured (may be null)
    machine   {"cpu", "cores", "memory_gib", "load_avg", "notes"}
    claims    list of {"claim", "value", "unit", "baseline", "baseline_value", "ratio",
              "target", "note"}: ``value`` the figure, ``ratio`` the figure against its
              baseline (``value / baseline_value`` unless the benchmark says otherwise),
              ``target`` a condition on the ratio ("≥ 1.0") or null; optional ``met``
              (bool) where the target is not a condition on the ratio; optional
              ``row`` and ``col`` (strings): the claims that have both render as one
              table of rows x columns (a sweep) after the others, a cell per claim (its text
              ``cell`` where the claim gives one, e.g. when its ratio is a share)
    notes     free text shown under the table (how to read it)
    series    optional {plot title: {label: [[x, y], ...]}} drawn as a figure
    ...       a benchmark may add its own keys (``extra``), e.g. the data behind a
              figure of its own page; the report ignores them
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("MOONCAKE_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
"""Where ``--save-results`` writes (``MOONCAKE_BENCH_RESULTS`` moves it, e.g. for a trial run)."""


def cpu_model() -> str:
    """The CPU's model name and its widest vector extension (``/proc/cpuinfo``)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
        [],
    )
    vec = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return f"{model} ({vec})" if vec else model


def machine(notes: str = "") -> dict[str, Any]:
    """The machine a benchmark runs on, as recorded with its results."""
    mem = None
    try:
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = round(kb / 2**20)
    except (OSError, StopIteration):
        pass
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "load_avg": load,
        "notes": notes,
    }


def commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command() -> str:
    """This process's command line, relative to the repository root where possible."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return "python " + shlex.join(argv)


def claim(
    what: str,
    value: float | None,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One claimed figure; ``ratio`` defaults to ``value / baseline_value``."""
    if ratio is None and value is not None and baseline_value:
        ratio = value / baseline_value
    return {
        "claim": what,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": target,
        "note": note,
    }


def save(
    name: str,
    title: str,
    claims: list[dict[str, Any]],
    *,
    notes: str = "",
    machine_notes: str = "",
    series: dict[str, Any] | None = None,
    results_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.json`` for this run and return its path."""
    doc = {
        "name": name,
        "title": title,
        "command": command(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(machine_notes),
        "claims": claims,
        "notes": notes,
    }
    if series:
        doc["series"] = series
    for key, value in (extra or {}).items():
        doc.setdefault(key, value)
    out = (results_dir or RESULTS_DIR) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"results saved to {out} (render them: python benchmarks/report.py)")
    return out
