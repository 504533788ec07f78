"""The worker's modules import without a circle: the plugin never pulls in the task
functions (the tasks import the plugin)."""

from __future__ import annotations

import subprocess
import sys


def test_plugin_does_not_import_tasks() -> None:
    """In a fresh interpreter, importing the plugin leaves the task module unloaded."""
    code = (
        "import sys, mooncake.worker.plugin\n"
        "assert 'mooncake.worker.tasks' not in sys.modules, 'plugin imported tasks'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
