"""``mooncake`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# Each entry adds one subcommand to the parser; modules are imported lazily so that
# `mooncake --help` stays fast and a subcommand's heavy imports load only when used.
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("mooncake.generate_cli", "add_parser"),
    ("mooncake.worker.cli", "add_parser"),
    ("mooncake.sim.cli", "add_parser"),
    ("mooncake.cost_model_cli", "add_parser"),
    ("mooncake.server.cli", "add_parser"),
    ("mooncake.bench.cli", "add_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mooncake", description="KVCache-centric, disaggregated LLM serving on Dask."
    )
    from mooncake import __version__

    parser.add_argument("--version", action="version", version=f"mooncake {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for module, fn in _SUBCOMMANDS:
        add: Callable[[argparse._SubParsersAction], None] = getattr(  # type: ignore[type-arg]
            importlib.import_module(module), fn
        )
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValueError as e:
        print(f"mooncake {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
