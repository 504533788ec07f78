"""``mooncake cost-model``: save the cost model a running cluster's Conductor fitted.

The file feeds ``mooncake sim --cost-model FILE`` (docs/simulator.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Ask a running cluster's scheduler for the cost model its Conductor fitted online "
    "(prefill time per FLOP, transfer bandwidth, model shape) and write it as JSON for "
    "'mooncake sim --cost-model FILE'."
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cost-model", help="export the cost model a live Conductor fitted", description=DESCRIPTION)
    p.add_argument("--scheduler", required=True, help="address of the cluster's Dask scheduler (e.g. tcp://127.0.0.1:8786)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the scheduler (default 10)")
    p.set_defaults(func=run)


def fetch(address: str, timeout: float) -> dict[str, Any]:
    """The scheduler plugin's ``mooncake_cost_model`` answer."""
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        data: dict[str, Any] = client.sync(client.scheduler.mooncake_cost_model, callback_timeout=timeout)
    return data


def run(args: argparse.Namespace) -> int:
    try:
        data = fetch(args.scheduler, args.timeout)
    except (OSError, TimeoutError) as e:
        print(f"mooncake cost-model: error: cannot reach {args.scheduler}: {e}", file=sys.stderr)
        return 2
    if "error" in data:
        print(f"mooncake cost-model: error: {data['error']}", file=sys.stderr)
        return 2
    text = json.dumps(data, indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return 0
