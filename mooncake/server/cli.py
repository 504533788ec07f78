"""``mooncake serve``: the OpenAI-compatible server on an embedded or remote cluster."""

from __future__ import annotations

import argparse
import os

from mooncake.server.config import ServerConfig


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server",
        description="Serve a model over an OpenAI-compatible HTTP API. With no arguments: the "
        "built-in default model (random weights) on an embedded cluster, offline.",
    )
    p.add_argument("--model", default=None, help="local Hugging Face model directory (default: built-in random-weight model)")
    p.add_argument("--served-model-name", nargs="+", default=None, help="name(s) clients use in 'model' (default: the model's name)")
    cluster = p.add_argument_group("cluster")
    cluster.add_argument("--prefill-workers", type=int, default=1, help="prefill workers of the embedded cluster")
    cluster.add_argument("--decode-workers", type=int, default=1, help="decode workers of the embedded cluster")
    cluster.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (instead of an embedded cluster)")
    cluster.add_argument("--mode", choices=["disaggregated", "colocated"], default="disaggregated", help="request graph")
    http = p.add_argument_group("http")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8000)
    http.add_argument("--api-key", default=os.environ.get("MOONCAKE_API_KEY"), help="require 'Authorization: Bearer KEY' (default: $MOONCAKE_API_KEY)")
    http.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    slo = p.add_argument_group("admission")
    slo.add_argument("--ttft-slo", type=float, default=None, metavar="S", help="TTFT SLO in seconds")
    slo.add_argument("--tbt-slo", type=float, default=None, metavar="S", help="time-between-tokens SLO in seconds")
    slo.add_argument("--admission", choices=["none", "early", "predictive"], default=None, help="admission policy (default: predictive with an SLO, else none)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    eng.add_argument("--device", default="cpu")
    eng.add_argument("--max-model-len", type=int, default=None)
    eng.add_argument("--max-num-seqs", type=int, default=64)
    eng.add_argument("--max-num-batched-tokens", type=int, default=2048)
    eng.add_argument("--block-size", type=int, default=16)
    eng.add_argument("--kv-cache-bytes", type=int, default=512 * 1024**2)
    eng.add_argument("--num-threads", type=int, default=None, help="torch threads per worker")
    eng.add_argument("--no-prefix-caching", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from mooncake.config import EngineConfig

    engine = EngineConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        kv_cache_bytes=args.kv_cache_bytes,
        num_threads=args.num_threads,
        enable_prefix_caching=not args.no_prefix_caching,
    )
    return ServerConfig(
        model=args.model,
        served_model_names=tuple(args.served_model_name or ()),
        prefill_workers=args.prefill_workers,
        decode_workers=args.decode_workers,
        scheduler=args.scheduler,
        mode=args.mode,
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        ttft_slo_s=args.ttft_slo,
        tbt_slo_s=args.tbt_slo,
        admission=args.admission,
        engine=engine,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from mooncake.server.app import create_app

    config = config_from_args(args)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.model is None:
        logging.getLogger("mooncake.server").warning("serving the built-in default model: RANDOM WEIGHTS, output is meaningless")
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0

