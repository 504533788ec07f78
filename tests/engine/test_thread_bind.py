"""Pinning the engine's compute threads (``EngineConfig.cpu_threads_bind``,
``$MOONCAKE_CPU_OMP_THREADS_BIND``). Binding changes the calling process's threads, so
the engine runs in a child process here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mooncake.config import EngineConfig
from mooncake.cpu_list import BIND_ENV, parse_cpu_list, worker_slice

CHILD = r"""
import glob, json, sys
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
bind = sys.argv[2] if sys.argv[2] != "-" else None
e = LLMEngine(EngineConfig(model=sys.argv[1], cpu_threads_bind=bind, num_blocks=64))
main = open("/proc/self/status").read()
allowed = [l.split(":\t")[1] for l in main.splitlines() if l.startswith("Cpus_allowed_list")]
out = e.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
print(json.dumps({"main": allowed[0], "tokens": out[0].outputs[0].token_ids}))
"""


def test_parse_cpu_list() -> None:
    """Linux CPU lists: ranges and single CPUs; malformed ones name the field."""
    assert parse_cpu_list("0-3,6") == [0, 1, 2, 3, 6]
    assert parse_cpu_list("2") == [2]
    for bad in ["", "a", "3-1", "-1", "0,0", "1-2,2"]:
        with pytest.raises(ValueError, match="cpu_threads_bind"):
            parse_cpu_list(bad)


def test_config_rejects_bad_binding() -> None:
    """A bad binding fails when the config is built, naming the field."""
    with pytest.raises(ValueError, match="cpu_threads_bind"):
        EngineConfig(cpu_threads_bind="zero")
    EngineConfig(cpu_threads_bind="auto")
    EngineConfig(cpu_threads_bind="none")


def test_worker_slices_do_not_overlap_until_they_must() -> None:
    """Workers of an embedded cluster get disjoint slices while CPUs last, then wrap."""
    cpus = [0, 1, 2, 3]
    assert [worker_slice(cpus, i, 2) for i in range(2)] == ["0,1", "2,3"]
    assert [worker_slice(cpus, i, 1) for i in range(5)] == ["0", "1", "2", "3", "0"]
    assert worker_slice([0, 1], 1, 2) == "0,1"


def _child(tiny_llama: Path, bind: str | None, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_llama), bind or "-"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MOONCAKE_KERNEL_TUNE": "0", **env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_bound_engine_pins_its_thread_and_gives_the_same_tokens(tiny_llama: Path) -> None:
    """With a one-CPU binding the engine's calling thread may run on that CPU only, and
    greedy tokens equal an unbound engine's; the environment variable does the same."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    free = _child(tiny_llama, None, {})
    bound = _child(tiny_llama, str(cpu), {})
    by_env = _child(tiny_llama, None, {BIND_ENV: str(cpu)})
    assert bound["main"] == by_env["main"] == str(cpu)
    assert free["main"] != str(cpu) or len(os.sched_getaffinity(0)) == 1
    assert bound["tokens"] == free["tokens"] == by_env["tokens"]


@pytest.mark.slow
def test_binding_to_a_cpu_outside_the_process_fails(tiny_llama: Path) -> None:
    """A CPU this process may not use is a clear error, not a silent no-op."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_llama), "4095"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MOONCAKE_KERNEL_TUNE": "0"},
    )
    assert proc.returncode != 0
    assert "not available to this process" in proc.stderr
