"""Pin the engine's compute threads to CPUs, one thread per CPU.

torch runs each op on an OpenMP pool; unpinned, the kernel scheduler migrates those
threads and, on a small box shared with the server, the scheduler and the workers, puts
two of them on one core while the other runs someone else's thread. Every parallel
region then waits for its descheduled thread. Pinning thread t to CPU t (as vLLM's CPU
build does with ``VLLM_CPU_OMP_THREADS_BIND``) keeps each thread's caches warm and its
share of the work on a core of its own.

``MOONCAKE_CPU_OMP_THREADS_BIND`` (or ``EngineConfig.cpu_threads_bind``) takes a CPU list
(``"0-3"``, ``"0,2,4-5"``), ``"auto"`` (the slice of CPUs a cluster gave this worker in the
environment variable, else the CPUs this process may run on, as many as the engine has
threads) or ``"none"``. A cluster started by :class:`mooncake.LLM` with
binding on gives each worker's engine its own slice of the machine's CPUs through the
environment variable.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch

from mooncake import native_build
from mooncake.cpu_list import BIND_ENV, check_spec, parse_cpu_list

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "thread_bind.c"


def cpus_for(spec: str, threads: int) -> list[int] | None:
    """The CPUs to pin ``threads`` threads to under ``spec``, or ``None`` for no binding.

    Raises:
        ValueError: a CPU this process may not run on.
    """
    if spec == "none":
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "auto":
        given = os.environ.get(BIND_ENV, "")
        if given not in ("", "auto", "none"):  # the slice a cluster gave this worker
            return cpus_for(given, threads)
        return allowed[: max(1, min(threads, len(allowed)))]
    cpus = parse_cpu_list(spec)
    outside = [c for c in cpus if c not in allowed]
    if outside:
        raise ValueError(f"cpu_threads_bind: CPUs {outside} are not available to this process")
    return cpus


class _Binder:
    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.fn = lib.mc_bind_omp_threads
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.fn.restype = ctypes.c_int


_LIB = native_build.LoadOnce(
    SOURCE, ["-O2", "-fopenmp", "-fPIC", "-shared"], _Binder, what="thread binding"
)


def bind_threads(cpus: list[int]) -> list[int]:
    """Set torch's pool to ``len(cpus)`` threads and pin thread t to ``cpus[t]``.

    Returns the CPU each thread ran on right after binding (-1 where it failed). Without a
    C compiler the whole process is restricted to ``cpus`` instead (threads may still
    move between them)."""
    torch.set_num_threads(len(cpus))
    binder = _LIB.get()
    if binder is None:
        os.sched_setaffinity(0, cpus)
        return list(cpus)
    want = (ctypes.c_int * len(cpus))(*cpus)
    got = (ctypes.c_int * len(cpus))()
    failed = binder.fn(ctypes.addressof(want), len(cpus), ctypes.addressof(got))
    if failed:
        log.warning("thread binding: %d of %d threads could not be pinned", failed, len(cpus))
    return list(got)


def apply(spec: str | None, threads: int | None) -> list[int] | None:
    """Bind the engine's threads as ``spec`` (else ``$MOONCAKE_CPU_OMP_THREADS_BIND``)
    says; ``threads`` is the engine's configured thread count (``None``: torch's).

    Returns:
        The CPUs thread t was pinned to, t = 0, 1, ...; ``None`` when not bound or when
        a thread could not be pinned (core lending needs every thread pinned)."""
    spec = spec or os.environ.get(BIND_ENV) or "none"
    check_spec(spec, BIND_ENV if spec == os.environ.get(BIND_ENV) else "cpu_threads_bind")
    cpus = cpus_for(spec, threads or torch.get_num_threads())
    if cpus is None:
        return None
    got = bind_threads(cpus)
    log.info("engine threads pinned to CPUs %s", got)
    return None if -1 in got else cpus


__all__ = ["BIND_ENV", "apply", "bind_threads", "cpus_for"]
