"""Where workers keep their tier files, and who removes what a dead worker left.

Layout, under a store root (``/dev/shm`` for host tiers, ``ssd_root`` for SSD tiers)::

    <root>/mooncake-<cluster>/          one per cluster (its scheduler's address)
        <worker>.<pid>/                 one per worker process
            owner                       "<pid> <start time>" of that process
            host/ or ssd/               the tier's LMDB files

A worker killed with ``kill -9`` cannot clean up after itself, and a host tier can hold
gigabytes of tmpfs (memory). So every worker, when it claims its directory, sweeps the
store root: a directory whose owner process is gone (its pid no longer runs, or now
runs a different process: the start time differs) is removed, and so is a cluster root
that this leaves empty. The process that closes a cluster removes its root (``remove_cluster``).
Directories without an ``owner`` file are never touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

OWNER_FILE = "owner"
CLUSTER_PREFIX = "mooncake-"


def safe_name(name: str) -> str:
    """``name`` with anything but ``[A-Za-z0-9_.-]`` replaced, usable as a path part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def cluster_root(root: str | os.PathLike[str], cluster: str) -> Path:
    """The directory of ``cluster`` (e.g. its scheduler's address) under ``root``."""
    return Path(root) / f"{CLUSTER_PREFIX}{safe_name(cluster)}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field
    22), or None when no such process runs. Off Linux: "0" when the pid runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    # The command name (field 2) is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(d: Path) -> bool | None:
    """Whether the process that owns ``d`` still runs; None: ``d`` has no owner file."""
    try:
        pid_s, start = (d / OWNER_FILE).read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    now = _start_time(pid)
    return now is not None and (now == start or now == "0" or start == "0")


def claim(root: str | os.PathLike[str], cluster: str, worker: str) -> Path:
    """Sweep ``root`` of dead workers' directories, then make this process's directory
    for ``worker`` in ``cluster`` (with its owner file) and return it."""
    sweep(root)
    pid = os.getpid()
    d = cluster_root(root, cluster) / f"{safe_name(worker)}.{pid}"
    for attempt in range(3):
        try:
            d.mkdir(parents=True, exist_ok=True)
            break
        except FileNotFoundError:  # another worker's sweep removed the empty cluster root
            if attempt == 2:
                raise
    (d / OWNER_FILE).write_text(f"{pid} {_start_time(pid) or '0'}\n")
    return d


def sweep(root: str | os.PathLike[str]) -> list[Path]:
    """Remove every worker directory under ``root``'s cluster roots whose owner is gone,
    and a cluster root that this leaves empty. Returns the worker directories removed."""
    removed: list[Path] = []
    base = Path(root)
    try:
        clusters = [c for c in base.iterdir() if c.name.startswith(CLUSTER_PREFIX) and c.is_dir()]
    except OSError:
        return removed
    for c in clusters:
        try:
            entries = list(c.iterdir())
        except OSError:
            continue
        stale = [d for d in entries if d.is_dir() and _owner_alive(d) is False]
        for d in stale:
            logger.info("removing %s: its worker process is gone", d)
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        if stale:
            _remove_if_empty(c)
    return removed


def release(d: str | os.PathLike[str]) -> None:
    """Remove a worker's own directory (at its orderly shutdown), and its cluster root
    when that is empty now."""
    p = Path(d)
    shutil.rmtree(p, ignore_errors=True)
    _remove_if_empty(p.parent)


def remove_cluster(root: str | os.PathLike[str], cluster: str) -> None:
    """Remove ``cluster``'s root and everything under it (once all its workers stopped)."""
    shutil.rmtree(cluster_root(root, cluster), ignore_errors=True)


def _remove_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:  # not empty (or already gone)
        pass


__all__ = ["claim", "cluster_root", "release", "remove_cluster", "safe_name", "sweep"]
