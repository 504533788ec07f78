"""The Python examples in README.md and docs/ run as written: saved as a script and run
with ``python example.py`` (the way users copy them), and an ``LLM`` created while a
spawned worker imports an unguarded script names the fix instead of failing inside
multiprocessing."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mooncake

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown file, in order."""
    return FENCE.findall(path.read_text())


def run_script(tmp_path: Path, code: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as ``python example.py`` in a fresh directory with this tree importable."""
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _readme_params() -> list[object]:
    params: list[object] = []
    for i, code in enumerate(python_blocks(ROOT / "README.md")):
        # A block that starts a cluster is a cluster test; one that runs a model in the
        # script's own process (seconds: torch, the default model) is slow: the fast lane
        # still compiles every block (test_doc_blocks_compile_and_guard_the_cluster).
        marks = (
            [pytest.mark.cluster]
            if "mooncake.LLM(" in code
            else [pytest.mark.slow]
            if "LLMEngine(" in code
            else []
        )
        params.append(pytest.param(code, id=f"README-{i}", marks=marks))
    return params


@pytest.mark.parametrize("code", _readme_params())
def test_readme_block_runs_as_script(tmp_path: Path, code: str) -> None:
    """Each Python block of the README, saved as a file and run with the interpreter,
    exits 0 and prints something."""
    proc = run_script(tmp_path, code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip()


def test_readme_has_python_examples() -> None:
    """The extraction above finds the README's examples (a changed fence would otherwise
    make the test pass vacuously)."""
    assert len(python_blocks(ROOT / "README.md")) >= 2


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_blocks_compile_and_guard_the_cluster(doc: Path) -> None:
    """Every Python block in README.md and docs/ is a complete script (it compiles), and
    one that starts an embedded cluster does so under ``if __name__ == "__main__":``."""
    for code in python_blocks(doc):
        compile(code, f"{doc.name} block", "exec")
        if "mooncake.LLM(" in code:
            guard = code.find('if __name__ == "__main__":')
            assert 0 <= guard < code.find("mooncake.LLM("), (
                f"{doc.name}: LLM created outside a __main__ guard"
            )


def test_llm_in_spawn_bootstrap_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``LLM`` constructed while this process is a spawned child importing the main
    module (multiprocessing's bootstrapping phase) raises before starting anything, and
    the message names the ``__main__`` guard."""
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match=r'if __name__ == "__main__":'):
        mooncake.LLM(model=None)


@pytest.mark.cluster
def test_unguarded_script_fails_with_the_fix(tmp_path: Path) -> None:
    """The README's example without its guard, run as a script: it fails fast (no hang)
    and both the workers' error and the parent's name the ``__main__`` guard."""
    code = (
        "import mooncake\n"
        "llm = mooncake.LLM(model=None)\n"
        "print(llm.generate(['Hi'])[0].outputs[0].text)\n"
    )
    proc = run_script(tmp_path, code, timeout=120)
    assert proc.returncode != 0
    assert "was created while a worker process was importing your main module" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].endswith('`if __name__ == "__main__":`.')
