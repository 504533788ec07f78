"""CPU lists as Linux writes them (``"0-3,6"``) and the thread-binding settings that use
them (``EngineConfig.cpu_threads_bind``, ``$MOONCAKE_CPU_OMP_THREADS_BIND``); torch-free,
so configs validate without loading the engine."""

from __future__ import annotations

BIND_ENV = "MOONCAKE_CPU_OMP_THREADS_BIND"
"""Environment variable with the engine's thread binding (``EngineConfig.cpu_threads_bind``)."""


def parse_cpu_list(spec: str, field: str = "cpu_threads_bind") -> list[int]:
    """CPUs named by a Linux-style list: ``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``.

    Raises:
        ValueError: malformed, empty, negative, descending range or a CPU named twice;
            the message names ``field``.
    """
    cpus: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"{field}: {spec!r} is not a CPU list like '0-3' or '0,2'") from None
        if a < 0 or b < a:
            raise ValueError(f"{field}: bad CPU range {part.strip()!r} in {spec!r}")
        cpus.extend(range(a, b + 1))
    if len(set(cpus)) != len(cpus):
        raise ValueError(f"{field}: a CPU is named twice in {spec!r}")
    return cpus


def check_spec(spec: str, field: str = "cpu_threads_bind") -> None:
    """Raise ``ValueError`` naming ``field`` unless ``spec`` is ``auto``, ``none`` or a
    CPU list."""
    if spec not in ("auto", "none"):
        parse_cpu_list(spec, field)


def worker_slice(allowed: list[int], index: int, per_worker: int) -> str:
    """The CPU list worker ``index`` of a cluster on this machine pins its engine to:
    ``per_worker`` CPUs of ``allowed`` of its own, wrapping around when there are more
    workers than slices (a shared CPU is still better than one the OS moves threads to)."""
    start = (index * per_worker) % len(allowed)
    mine = (allowed[start:] + allowed[:start])[:per_worker]
    return ",".join(map(str, mine))


__all__ = ["BIND_ENV", "check_spec", "parse_cpu_list", "worker_slice"]
