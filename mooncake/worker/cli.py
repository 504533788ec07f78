"""``mooncake worker``: start a Dask worker with a mooncake role on an existing cluster.

It is ``dask worker`` with the role's resources and one process per GPU (each with its
own ``CUDA_VISIBLE_DEVICES``); the engine itself is installed by the client, which
registers the worker plugin when it connects.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="join a Dask cluster as a prefill/decode worker", description=__doc__)
    p.add_argument("scheduler", help="scheduler address, e.g. tcp://10.0.0.1:8786")
    p.add_argument("--role", choices=["prefill", "decode", "both"], required=True)
    p.add_argument("--nthreads", type=int, default=4, help="Dask threads per worker process")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one worker process per GPU (default: CPU worker)")
    p.add_argument("--name", default=None, help="worker name prefix")
    p.set_defaults(func=run)


def command(args: argparse.Namespace, gpu: str | None) -> list[str]:
    resources = "prefill=1 decode=1" if args.role == "both" else f"{args.role}=1"
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", args.scheduler, "--nthreads", str(args.nthreads), "--nworkers", "1", "--resources", resources]
    if args.name or gpu is not None:
        cmd += ["--name", f"{args.name or args.role}-{gpu if gpu is not None else 0}"]
    return cmd


def run(args: argparse.Namespace) -> int:
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else [None]
    procs = []
    for gpu in gpus:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        procs.append(subprocess.Popen(command(args, gpu), env=env))
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
