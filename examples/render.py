"""Execute ``examples/batch_inference.ipynb`` in place, keeping its outputs (the plots a
reader sees on GitHub): ``python examples/render.py``.

Runs the notebook's defaults (the built-in model, 400 prompts) unless its environment
variables say otherwise (``MOONCAKE_MODEL``, ``MOONCAKE_NB_PROMPTS``,
``MOONCAKE_NB_MODE``). The saved file has no per-cell timing metadata, and this refuses
to save outputs that name a local path or this machine's host name. The test
(``tests/examples/test_batch_notebook.py``) executes a fresh copy and never writes
the file.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "batch_inference.ipynb"

LOCAL = re.compile(r"(?<![\w.])/(home|root|tmp|work|Users|var|opt|srv|mnt)/")
"""An absolute path of the machine that ran the notebook."""


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")
"""A Python warning's first line (``path:line: XWarning: ...``; the next line is source)."""
LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
"""A logging line stamped with this run's clock."""


def settle(text: str) -> str:
    """What a terminal shows of ``text``: a progress bar redrawn with carriage returns
    keeps its last state; colour and erase escapes go."""
    lines = []
    for line in ANSI.sub("", text).split("\n"):
        parts = [p for p in line.split("\r") if p]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def quiet_stderr(text: str) -> str:
    """``text`` without warnings (they name the files of the installation that ran it)
    and log lines (stamped with its clock)."""
    out: list[str] = []
    skip_source = False
    for line in text.split("\n"):
        if skip_source and line.startswith(" "):
            skip_source = False
            continue
        skip_source = bool(WARNING.match(line))
        if not skip_source and not LOG.match(line):
            out.append(line)
    return "\n".join(out)


def tidy(nb: nbformat.NotebookNode) -> None:
    """Each cell's consecutive stream outputs as one settled text (not hundreds of
    progress bar redraws), without warnings, log lines or per-cell timing metadata."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        outputs: list[nbformat.NotebookNode] = []
        for out in cell.outputs:
            if out.output_type == "stream" and outputs and outputs[-1].get("name") == out.name:
                outputs[-1].text += out.text
            else:
                outputs.append(out)
        for out in outputs:
            if out.output_type == "stream":
                text = settle(out.text)
                out.text = quiet_stderr(text) if out.name == "stderr" else text
        cell.outputs = [o for o in outputs if o.output_type != "stream" or o.text.strip()]


def local_traces(nb: nbformat.NotebookNode) -> list[str]:
    """The outputs' lines that name a local path or this machine's host name."""
    host = re.compile(rf"\b{re.escape(socket.gethostname())}\b")
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts = [out.get("text", "")]
            texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
            texts += out.get("traceback", [])
            for text in texts:
                for line in "".join(text).splitlines():
                    if LOCAL.search(line) or host.search(line):
                        found.append(line)
    return found


def main() -> int:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=1200,
        kernel_name="python3",
        record_timing=False,  # no timestamps of the machine that ran it
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()
    tidy(nb)
    leaks = local_traces(nb)
    if leaks:
        print("not saved: the outputs name this machine:", *leaks, sep="\n  ", file=sys.stderr)
        return 1
    nbformat.write(nb, NOTEBOOK)
    print(f"{NOTEBOOK.relative_to(ROOT)}: {NOTEBOOK.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
