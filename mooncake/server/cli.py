"""``mooncake serve``: the OpenAI-compatible server on an embedded or remote cluster."""

from __future__ import annotations

import argparse
import os

from mooncake.server.config import ADMISSIONS, DEFAULT_TTFT_SLO_S, ServerConfig


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server",
        description="Serve a model over an OpenAI-compatible HTTP API. With no arguments: the "
        "built-in default model (random weights) on an embedded cluster, offline.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="local Hugging Face model directory (default: built-in random-weight model)",
    )
    p.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="name(s) clients use in 'model' (default: the model's name)",
    )
    cluster = p.add_argument_group("cluster")
    cluster.add_argument(
        "--prefill-workers", type=int, default=1, help="prefill workers of the embedded cluster"
    )
    cluster.add_argument(
        "--decode-workers", type=int, default=1, help="decode workers of the embedded cluster"
    )
    cluster.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler (instead of an embedded cluster)",
    )
    cluster.add_argument(
        "--mode",
        choices=["disaggregated", "colocated"],
        default="disaggregated",
        help="request graph",
    )
    cluster.add_argument(
        "--stream-kv",
        action="store_true",
        help="stream each request's KV to its decode worker chunk by chunk while prefill "
        "runs (disaggregated mode; docs/cluster.md)",
    )
    cluster.add_argument(
        "--cpu-core-lending",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="CPU engines borrow the cores of engines on this host that have no work, "
        "and give them back at their next step once the owner has work (default: off; "
        "docs/cluster.md)",
    )
    cluster.add_argument(
        "--dashboard-address",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help=(
            "Dask dashboard of the embedded cluster (default: "
            "loopback, a free port; ':8787' exposes it; 'none': off)"
        ),
    )
    sec = p.add_argument_group("cluster security (docs/security.md)")
    sec.add_argument(
        "--tls-ca-file",
        default=None,
        help=(
            "CA certificate to join --scheduler over TLS "
            "(default: Dask's distributed.comm.tls config)"
        ),
    )
    sec.add_argument("--tls-cert", default=None, help="this client's certificate for --scheduler")
    sec.add_argument(
        "--tls-key", default=None, help="this client's private key (if not inside --tls-cert)"
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        help=(
            "allow a plain-TCP --scheduler off the loopback; "
            "embedded cluster: plain TCP on loopback instead of TLS"
        ),
    )
    http = p.add_argument_group("http")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8000)
    http.add_argument(
        "--api-key",
        default=os.environ.get("MOONCAKE_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $MOONCAKE_API_KEY)",
    )
    http.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    http.add_argument(
        "--max-body-bytes", type=int, default=8 * 1024**2, help="largest request body (413 beyond)"
    )
    http.add_argument(
        "--max-prompts-per-request",
        type=int,
        default=32,
        help="most prompts in one /v1/completions request",
    )
    http.add_argument(
        "--max-prompt-chars",
        type=int,
        default=None,
        help=(
            "longest text prompt before tokenization (default: "
            "max_model_len x the longest vocabulary entry)"
        ),
    )
    slo = p.add_argument_group("admission")
    slo.add_argument(
        "--ttft-slo",
        type=float,
        default=None,
        metavar="S",
        help=f"TTFT SLO in seconds (default {DEFAULT_TTFT_SLO_S:g})",
    )
    slo.add_argument(
        "--tbt-slo",
        type=float,
        default=None,
        metavar="S",
        help="time-between-tokens SLO in seconds",
    )
    slo.add_argument(
        "--admission",
        choices=list(ADMISSIONS),
        default=None,
        help=(
            "admission policy (default: predictive with an SLO given, "
            "else ttft against the default TTFT SLO; none: admit all)"
        ),
    )
    eng = p.add_argument_group("engine")
    eng.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    eng.add_argument("--device", default="cpu")
    eng.add_argument("--max-model-len", type=int, default=None)
    eng.add_argument("--max-num-seqs", type=int, default=64)
    eng.add_argument("--max-num-batched-tokens", type=int, default=2048)
    eng.add_argument("--block-size", type=int, default=16)
    eng.add_argument("--kv-cache-bytes", type=int, default=512 * 1024**2)
    eng.add_argument("--num-threads", type=int, default=None, help="torch threads per worker")
    eng.add_argument(
        "--cpu-threads-bind",
        default=None,
        metavar="auto|none|CPUS",
        help=(
            "pin each engine's compute threads one per CPU: auto (the embedded cluster "
            "gives each worker its own slice of the CPUs), none, or a CPU list like 0-3 "
            "(default: $MOONCAKE_CPU_OMP_THREADS_BIND, else auto for the embedded "
            "cluster and none for the workers of --scheduler)"
        ),
    )
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
        cpu_threads_bind=args.cpu_threads_bind,
        enable_prefix_caching=not args.no_prefix_caching,
    )
    return ServerConfig(
        model=args.model,
        served_model_names=tuple(args.served_model_name or ()),
        prefill_workers=args.prefill_workers,
        decode_workers=args.decode_workers,
        scheduler=args.scheduler,
        mode=args.mode,
        stream_kv=args.stream_kv,
        cpu_core_lending=args.cpu_core_lending,
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        ttft_slo_s=args.ttft_slo,
        tbt_slo_s=args.tbt_slo,
        admission=args.admission,
        dashboard_address=None if args.dashboard_address == "none" else args.dashboard_address,
        tls_ca_file=args.tls_ca_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        max_body_bytes=args.max_body_bytes,
        max_prompts_per_request=args.max_prompts_per_request,
        max_prompt_chars=args.max_prompt_chars,
        engine=engine,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from mooncake.server.app import create_app

    config = config_from_args(args)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.model is None:
        logging.getLogger("mooncake.server").warning(
            "serving the built-in default model: RANDOM WEIGHTS, output is meaningless"
        )
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0
