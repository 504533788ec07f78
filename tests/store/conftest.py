from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm) for a host tier."""
    d = Path(tempfile.mkdtemp(prefix="mooncake-test-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host_dir(shm_dir: Path) -> str:
    return str(shm_dir / "host")


@pytest.fixture
def ssd_dir(tmp_path: Path) -> str:
    return str(tmp_path / "ssd")
