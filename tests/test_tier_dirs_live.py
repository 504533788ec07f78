"""A worker killed with ``kill -9`` leaves no tier directory behind: its restarted
successor removes it, and closing the cluster removes the cluster's root."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

import mooncake
from mooncake.store import tier_dirs
from mooncake.worker.config import WorkerConfig

pytestmark = pytest.mark.cluster


def _pids_in(root: Path) -> set[int]:
    """Pids named by the worker directories under every cluster root of ``root``."""
    return {
        int(d.name.rsplit(".", 1)[1])
        for c in root.glob("mooncake-*")
        for d in c.iterdir()
        if d.is_dir()
    }


def test_killed_worker_directory_removed(tiny_llama, shm_dir: Path) -> None:
    """kill -9 of the prefill worker after it published blocks to its host tier: once the
    Nanny's new worker runs, the directories are exactly the live workers' (the dead
    one's is gone); after ``close`` nothing of the cluster is left in the store root."""
    cfg = WorkerConfig(store_root=str(shm_dir))
    llm = mooncake.LLM(str(tiny_llama), worker_config=cfg, dashboard_address=None)
    try:
        rng = random.Random(0)
        llm.generate(
            [[rng.randrange(300) for _ in range(200)]],
            mooncake.SamplingParams(max_tokens=2),
            use_tqdm=False,
        )
        pids = llm.client.run(os.getpid)
        assert _pids_in(shm_dir) == set(pids.values())
        prefill = next(a for a, i in llm.workers.items() if "prefill" in i["roles"])
        dead = pids[prefill]
        dead_dir = next(
            d
            for c in shm_dir.glob("mooncake-*")
            for d in c.iterdir()
            if d.name.endswith(f".{dead}")
        )
        assert any((dead_dir / "host").iterdir())
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            live = set(llm.client.run(os.getpid, on_error="ignore").values())
            if len(live) == 2 and dead not in live and _pids_in(shm_dir) == live:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"tier directories {_pids_in(shm_dir)} never matched the live workers")
        assert not dead_dir.exists()
    finally:
        llm.close()
    assert not list(shm_dir.glob("mooncake-*"))
    assert tier_dirs.sweep(shm_dir) == []
