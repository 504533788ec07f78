"""``mooncake cost-model``: save the cost model a running cluster's Conductor fitted.

The file feeds ``mooncake sim --cost-model FILE`` (docs/simulator.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mooncake.security import TLSFiles

DESCRIPTION = (
    "Ask a running cluster's scheduler for the cost model its Conductor fitted online "
    "(prefill time per FLOP, decode step time, transfer bandwidth, serving-path time per "
    "request, model shape) and write it as JSON for "
    "'mooncake sim --cost-model FILE'."
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "cost-model", help="export the cost model a live Conductor fitted", description=DESCRIPTION
    )
    p.add_argument(
        "--scheduler",
        required=True,
        help="address of the cluster's Dask scheduler (e.g. tcp://127.0.0.1:8786)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the scheduler (default 10)"
    )
    p.add_argument(
        "--tls-ca-file",
        default=None,
        help="CA certificate of the cluster (Dask mutual TLS; default: Dask's TLS config)",
    )
    p.add_argument("--tls-cert", default=None, help="this client's certificate")
    p.add_argument(
        "--tls-key", default=None, help="this client's private key (if not inside --tls-cert)"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a plain-TCP scheduler off the loopback"
    )
    p.set_defaults(func=run)


def fetch(
    address: str, timeout: float, tls: TLSFiles | None = None, insecure: bool = False
) -> dict[str, Any]:
    """The scheduler plugin's ``mooncake_cost_model`` answer (over TLS with ``tls`` or
    Dask's TLS config; plain TCP off the loopback only when ``insecure``)."""
    from distributed import Client

    from mooncake.security import check_address, client_security, uses_tls

    security = client_security(tls)
    check_address(address, uses_tls(address, security), insecure, "scheduler")
    with Client(address, timeout=timeout, security=security) as client:
        data: dict[str, Any] = client.sync(
            client.scheduler.mooncake_cost_model, callback_timeout=timeout
        )
    return data


def run(args: argparse.Namespace) -> int:
    try:
        from mooncake.security import TLSFiles

        data = fetch(
            args.scheduler,
            args.timeout,
            TLSFiles(args.tls_ca_file, args.tls_cert, args.tls_key),
            args.insecure,
        )
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
