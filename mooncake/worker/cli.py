"""``mooncake worker``: start a Dask worker with a mooncake role on an existing cluster.

It is ``dask worker`` with the role's resources and one process per GPU (each with its
own ``CUDA_VISIBLE_DEVICES``); the engine itself is installed by the client, which
registers the worker plugin when it connects.

A worker joining a scheduler off the loopback must use TLS (``--tls-ca-file``,
``--tls-cert``, ``--tls-key``, or Dask's ``distributed.comm.tls`` config) unless
``--insecure`` is given: Dask's comms carry pickles (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from mooncake.dask_defaults import quiet_env


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "worker", help="join a Dask cluster as a prefill/decode worker", description=__doc__
    )
    p.add_argument("scheduler", help="scheduler address, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--role", choices=["prefill", "decode", "both"], required=True)
    p.add_argument("--nthreads", type=int, default=4, help="Dask threads per worker process")
    p.add_argument(
        "--gpus",
        default=None,
        help="comma-separated GPU ids: one worker process per GPU (default: CPU worker)",
    )
    p.add_argument("--name", default=None, help="worker name prefix")
    p.add_argument(
        "--tls-ca-file", default=None, help="CA certificate of the cluster (Dask mutual TLS)"
    )
    p.add_argument("--tls-cert", default=None, help="this worker's certificate")
    p.add_argument(
        "--tls-key", default=None, help="this worker's private key (if not inside --tls-cert)"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a plain-TCP scheduler off the loopback"
    )
    p.set_defaults(func=run)


def command(args: argparse.Namespace, gpu: str | None) -> list[str]:
    resources = "prefill=1 decode=1" if args.role == "both" else f"{args.role}=1"
    cmd = [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        args.scheduler,
        "--nthreads",
        str(args.nthreads),
        "--nworkers",
        "1",
        "--resources",
        resources,
    ]
    if args.name or gpu is not None:
        cmd += ["--name", f"{args.name or args.role}-{gpu if gpu is not None else 0}"]
    for flag, value in (
        ("--tls-ca-file", args.tls_ca_file),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
    ):
        if value is not None:
            cmd += [flag, value]
    return cmd


def check_security(args: argparse.Namespace) -> None:
    """Refuse (``ValueError``) a scheduler off the loopback without TLS unless ``--insecure``."""
    from mooncake.security import TLSFiles, check_address, client_security, uses_tls

    tls = TLSFiles(args.tls_ca_file, args.tls_cert, args.tls_key)
    check_address(
        args.scheduler, uses_tls(args.scheduler, client_security(tls)), args.insecure, "scheduler"
    )


def run(args: argparse.Namespace) -> int:
    check_security(args)
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else [None]
    procs = []
    for gpu in gpus:
        # Dask's housekeeping made rarer (mooncake.dask_defaults), unless configured.
        env = {**quiet_env(), **os.environ}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        procs.append(subprocess.Popen(command(args, gpu), env=env))
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
