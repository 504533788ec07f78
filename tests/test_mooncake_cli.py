"""The ``mooncake`` entry point: subcommands are registered and run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mooncake.cli import build_parser, main


def test_subcommands_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"generate", "worker", "sim"} <= set(sub.choices)


def test_generate_runs_default_model(capsys):
    """`mooncake generate` with no model runs the built-in random-weight model."""
    assert main(["generate", "--prompt", "hi", "--max-tokens", "4", "--seed", "1", "--temperature", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "4 tokens" in out


def test_bad_value_is_a_clean_error(capsys):
    assert main(["generate", "--prompt", "hi", "--max-tokens", "0"]) == 2
    assert "max_tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "mooncake.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("mooncake ")
