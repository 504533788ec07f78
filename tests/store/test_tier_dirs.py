"""Tier directories: one root per cluster, one directory per worker process holding its
pid; a dead process's directory is removed by the next claim or sweep, a live one's never."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from mooncake.store import tier_dirs


def _claim_in_child(root: Path, cluster: str, worker: str) -> tuple[subprocess.Popen[str], Path]:
    """A separate process claims a directory and waits (until killed)."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from mooncake.store import tier_dirs
        d = tier_dirs.claim({str(root)!r}, {cluster!r}, {worker!r})
        (d / "host").mkdir()
        (d / "host" / "data.mdb").write_bytes(b"x" * 4096)
        print(d, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "child did not claim a directory"
    return proc, Path(line)


def test_layout_and_owner(tmp_path: Path) -> None:
    """The directory sits under the cluster's root, is named after the worker and pid, and
    its owner file holds this process's pid."""
    d = tier_dirs.claim(tmp_path, "tcp://127.0.0.1:8786", "prefill-0")
    assert d.parent == tier_dirs.cluster_root(tmp_path, "tcp://127.0.0.1:8786")
    assert d.parent.name == "mooncake-tcp___127.0.0.1_8786"
    assert d.name == f"prefill-0.{os.getpid()}"
    assert (d / "owner").read_text().split()[0] == str(os.getpid())
    tier_dirs.release(d)
    assert not d.exists() and not d.parent.exists()


def test_killed_process_directory_removed_at_next_claim(tmp_path: Path) -> None:
    """A process killed with SIGKILL leaves its directory; the next claim (a restarted
    worker) removes it, and leaves a live process's directory alone."""
    live, live_dir = _claim_in_child(tmp_path, "c1", "decode-0")
    dead, dead_dir = _claim_in_child(tmp_path, "c1", "prefill-0")
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        assert (dead_dir / "host" / "data.mdb").exists()
        mine = tier_dirs.claim(tmp_path, "c1", "prefill-0")
        assert not dead_dir.exists()
        assert live_dir.exists() and mine.exists()
    finally:
        live.kill()
        live.wait(10)


def test_sweep_removes_stale_clusters_only(tmp_path: Path) -> None:
    """A sweep at start-up removes another cluster's directories whose processes are gone
    (and that cluster's empty root), never directories it does not own (no owner file)."""
    dead, dead_dir = _claim_in_child(tmp_path, "old-cluster", "w")
    dead.kill()
    dead.wait(10)
    foreign = tmp_path / "mooncake-old-cluster" / "not-ours"
    foreign.mkdir()
    other = tmp_path / "mooncake-unrelated-dir"
    other.mkdir()
    removed = tier_dirs.sweep(tmp_path)
    assert removed == [dead_dir]
    assert foreign.exists() and other.exists()
    dead2, _ = _claim_in_child(tmp_path, "old-cluster", "w2")
    dead2.kill()
    dead2.wait(10)
    foreign.rmdir()
    tier_dirs.sweep(tmp_path)
    assert not (tmp_path / "mooncake-old-cluster").exists()


def test_reused_pid_is_not_its_owner(tmp_path: Path) -> None:
    """An owner file whose pid now runs a different process (another start time) is stale."""
    d = tier_dirs.cluster_root(tmp_path, "c") / "w.1"
    d.mkdir(parents=True)
    (d / "owner").write_text(f"{os.getpid()} 1\n")  # this pid, but not this process's start
    assert tier_dirs.sweep(tmp_path) == [d]


def test_remove_cluster(tmp_path: Path) -> None:
    """Closing a cluster removes its whole root, live or not."""
    d = tier_dirs.claim(tmp_path, "c", "w")
    tier_dirs.remove_cluster(tmp_path, "c")
    assert not d.parent.exists()
