#!/usr/bin/env bash
# Side by side: `vllm serve` (vLLM CPU build) and `mooncake serve`, same checkpoint, same
# load, same machine, each driven by `mooncake bench serve` (and, for the prefix load, by
# `vllm bench serve` too), at each offered rate of a sweep.
#
#   benchmarks/serve_compare.sh [vllm|mooncake|mooncake-colocated]...   (default: vllm mooncake)
#   RATES="1 2 3 4 6" benchmarks/serve_compare.sh vllm mooncake-colocated mooncake
#   DATASET=trace RATES="1 2" benchmarks/serve_compare.sh ...
#   python benchmarks/serve_report.py .bench/serve --plot goodput.png
#
# Each side's server starts once and serves every rate in turn (a warm-up request first);
# results go to $OUT/<side>-r<rate>-<client>.json.
#
# Loads (DATASET): `prefix` (default): NPREFIX shared prefixes of PREFIX tokens + SUFFIX
# random tokens, OUTLEN output tokens, Poisson arrivals at each rate. `trace`: the first N
# requests of a FAST'25 trace (TRACE; lengths x LENGTH_SCALE, default 1/32 so a 512-token
# trace block is one 16-token KV block), the trace's own arrival pattern stretched so
# its mean rate is the sweep's rate. Only `mooncake bench serve` replays a trace.
#
# Environment: CKPT (checkpoint dir, default the llama-57m benchmark checkpoint),
# VLLM_PY (vLLM venv python), PY (mooncake venv python), OUT (results dir), RATES (or
# RATE), N (prompts), PREFIX, SUFFIX, NPREFIX, OUTLEN, GOODPUT, VLLM_CLIENT (0: skip the
# vLLM client), VLLM_CLIENT_RATES (the rates it also drives; default all), MOONCAKE_ARGS (extra `mooncake serve` flags), DATASET, TRACE,
# LENGTH_SCALE.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-/work/vllm-venv/bin/python}
CKPT=${CKPT:-.bench/checkpoints/llama-57m}
OUT=${OUT:-.bench/serve}
RATES=${RATES:-${RATE:-2}}
N=${N:-60}
PREFIX=${PREFIX:-256}
SUFFIX=${SUFFIX:-64}
NPREFIX=${NPREFIX:-4}
OUTLEN=${OUTLEN:-32}
GOODPUT=${GOODPUT:-"ttft:1000 tpot:100"}
MAXLEN=${MAXLEN:-2048}
PORT=${PORT:-8300}
DATASET=${DATASET:-prefix}
TRACE=${TRACE:-${MOONCAKE_TRACES:-traces}/conversation_trace.jsonl}  # the FAST'25 trace: docs/paper-reproduction.md
LENGTH_SCALE=${LENGTH_SCALE:-0.03125}
VLLM_CLIENT=${VLLM_CLIENT:-1}
NAME=bench-model
mkdir -p "$OUT"
SIDES=("$@"); [ ${#SIDES[@]} -eq 0 ] && SIDES=(vllm mooncake)
[ -d "$CKPT" ] || "$PY" benchmarks/checkpoints.py "$(basename "$CKPT")" > /dev/null

trace_time_scale() {  # $1: rate -> the factor that gives the first N trace requests that mean rate
    "$PY" - "$TRACE" "$N" "$1" << 'PYEOF'
import json, sys
path, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(path) as f:
    ts = [json.loads(line)["timestamp"] for _, line in zip(range(n), f)]
span_s = (max(ts) - min(ts)) / 1000
print(f"{(n / rate) / span_s if span_s > 0 else 1.0:.6f}")
PYEOF
}

SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2> /dev/null; wait' EXIT

start_server() {  # $1: side; sets SERVER_PID
    if curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; then
        echo "port $PORT is already serving; stop that server first" >&2
        return 1
    fi
    case "$1" in
    vllm)
        VLLM_TARGET_DEVICE=cpu VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_KVCACHE_SPACE=${VLLM_KV_GIB:-2} \
            "$VLLM_PY" benchmarks/vllm_cli.py serve "$CKPT" --served-model-name "$NAME" --port "$PORT" \
            --dtype float32 --max-model-len "$MAXLEN" --enable-prefix-caching > "$OUT/server-vllm.log" 2>&1 &
        ;;
    mooncake | mooncake-colocated)
        # shellcheck disable=SC2086
        local mode=disaggregated; [ "$1" = mooncake-colocated ] && mode=colocated
        "$PY" -m mooncake.cli serve --model "$CKPT" --served-model-name "$NAME" --port "$PORT" \
            --mode "$mode" --max-model-len "$MAXLEN" --log-level warning ${MOONCAKE_ARGS:-} > "$OUT/server-$1.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && return 0
        kill -0 "$SERVER_PID" 2> /dev/null || { tail -20 "$OUT/server-$1.log"; return 1; }
        sleep 1
    done
    return 1
}

for side in "${SIDES[@]}"; do
    echo "=== $side ==="
    start_server "$side"
    # Warm-up (not measured).
    curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d "{\"model\": \"$NAME\", \"prompt\": [20, 21, 22], \"max_tokens\": 4}" > /dev/null
    for rate in $RATES; do
        tag="$side-r$rate"
        echo "--- $tag ($DATASET) ---"
        if [ "$DATASET" = trace ]; then
            # shellcheck disable=SC2086
            "$PY" -m mooncake.cli bench serve --base-url "http://127.0.0.1:$PORT" --model "$NAME" --label "$tag-mooncake-bench" \
                --dataset-name mooncake-trace --trace-path "$TRACE" --num-prompts "$N" --length-scale "$LENGTH_SCALE" \
                --time-scale "$(trace_time_scale "$rate")" --max-input-len $((MAXLEN / 2)) --vocab-size 32000 --seed 1 \
                --goodput $GOODPUT --save-result --result-dir "$OUT" --result-filename "$tag-mooncake-bench.json" --disable-tqdm \
                | tee "$OUT/$tag-mooncake-bench.txt"
            continue
        fi
        # shellcheck disable=SC2086
        "$PY" -m mooncake.cli bench serve --base-url "http://127.0.0.1:$PORT" --model "$NAME" --label "$tag-mooncake-bench" \
            --dataset-name prefix-repetition --num-prompts "$N" --prefix-repetition-prefix-len "$PREFIX" \
            --prefix-repetition-suffix-len "$SUFFIX" --prefix-repetition-num-prefixes "$NPREFIX" \
            --prefix-repetition-output-len "$OUTLEN" --vocab-size 32000 --seed 1 --request-rate "$rate" \
            --goodput $GOODPUT --save-result --result-dir "$OUT" --result-filename "$tag-mooncake-bench.json" --disable-tqdm \
            | tee "$OUT/$tag-mooncake-bench.txt"
        [ "$VLLM_CLIENT" = 1 ] || continue
        case " ${VLLM_CLIENT_RATES:-$RATES} " in *" $rate "*) ;; *) continue ;; esac
        # shellcheck disable=SC2086
        "$VLLM_PY" benchmarks/vllm_cli.py bench serve --backend openai --base-url "http://127.0.0.1:$PORT" \
            --model "$CKPT" --served-model-name "$NAME" --dataset-name prefix_repetition --num-prompts "$N" \
            --prefix-repetition-prefix-len "$PREFIX" --prefix-repetition-suffix-len "$SUFFIX" \
            --prefix-repetition-num-prefixes "$NPREFIX" --prefix-repetition-output-len "$OUTLEN" --seed 2 \
            --request-rate "$rate" --ignore-eos --goodput $GOODPUT --save-result --result-dir "$OUT" \
            --result-filename "$tag-vllm-bench.json" --disable-tqdm > "$OUT/$tag-vllm-bench.log" 2>&1 || true
        sed -n '/Serving Benchmark Result/,/^==*$/p' "$OUT/$tag-vllm-bench.log" | tee "$OUT/$tag-vllm-bench.txt"
    done
    kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=
done
