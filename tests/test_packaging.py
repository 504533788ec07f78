"""Packaging: every package is listed in setup.cfg, and graphs/ ships as mooncake.graphs."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}


def test_every_package_listed():
    """A new subpackage under mooncake/ must be added to setup.cfg or it would not ship."""
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mooncake").rglob("__init__.py")
    }
    assert found | {"mooncake.graphs"} == _listed()


@pytest.mark.slow
def test_wheel_contains_graphs(tmp_path):
    """The built wheel holds mooncake/graphs/__init__.py."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mooncake/graphs/__init__.py" in names
    assert "mooncake/engine/model.py" in names
    assert "mooncake/engine/csrc/cpu_kernels.c" in names
    assert "mooncake/store/csrc/block_records.c" in names


def test_client_and_server_do_not_load_torch():
    """Importing the client and the server (what a serving front end loads) leaves torch out."""
    code = "import sys, mooncake, mooncake.client, mooncake.server; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_the_client_imports_the_graph_builders():
    """``graphs/`` is a layer between the client and the worker. import-linter checks its
    own imports (as the root package ``graphs``) but cannot see ``mooncake.graphs``, the
    name it is installed under, so this checks the other direction: no module of the
    package but the client (and the CLI above it) imports the graph builders."""
    import re

    pattern = re.compile(
        r"^\s*(from mooncake\.graphs\b|import mooncake\.graphs\b|from mooncake import graphs\b)",
        re.M,
    )
    allowed = {ROOT / "mooncake" / "client.py", ROOT / "mooncake" / "cli.py"}
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "mooncake").rglob("*.py")
        if p not in allowed and pattern.search(p.read_text())
    ]
    assert offenders == []
