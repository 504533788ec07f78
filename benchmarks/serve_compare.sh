#!/usr/bin/env bash
# Side by side: `vllm serve` (vLLM CPU build) and `mooncake serve`, same checkpoint, same
# load, same machine, each driven by `mooncake bench serve` and by `vllm bench serve`.
#
#   benchmarks/serve_compare.sh [vllm|mooncake|mooncake-colocated]...   (default: vllm mooncake)
#
# Environment: CKPT (checkpoint dir, default the llama-57m benchmark checkpoint),
# VLLM_PY (vLLM venv python), PY (mooncake venv python), OUT (results dir),
# RATE, N (prompts), PREFIX, SUFFIX, NPREFIX, OUTLEN, GOODPUT, MOONCAKE_ARGS (extra
# `mooncake serve` flags).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-/work/vllm-venv/bin/python}
CKPT=${CKPT:-.bench/checkpoints/llama-57m}
OUT=${OUT:-.bench/serve}
RATE=${RATE:-2}
N=${N:-60}
PREFIX=${PREFIX:-256}
SUFFIX=${SUFFIX:-64}
NPREFIX=${NPREFIX:-4}
OUTLEN=${OUTLEN:-32}
GOODPUT=${GOODPUT:-"ttft:1000 tpot:100"}
MAXLEN=${MAXLEN:-2048}
PORT=${PORT:-8300}
NAME=bench-model
mkdir -p "$OUT"
SIDES=("$@"); [ ${#SIDES[@]} -eq 0 ] && SIDES=(vllm mooncake)

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
    # Warm-up (not measured): one request per prefix length class.
    curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d "{\"model\": \"$NAME\", \"prompt\": [20, 21, 22], \"max_tokens\": 4}" > /dev/null
    # shellcheck disable=SC2086
    "$PY" -m mooncake.cli bench serve --base-url "http://127.0.0.1:$PORT" --model "$NAME" --label "$side-mooncake-bench" \
        --dataset-name prefix-repetition --num-prompts "$N" --prefix-repetition-prefix-len "$PREFIX" \
        --prefix-repetition-suffix-len "$SUFFIX" --prefix-repetition-num-prefixes "$NPREFIX" \
        --prefix-repetition-output-len "$OUTLEN" --vocab-size 32000 --seed 1 --request-rate "$RATE" \
        --goodput $GOODPUT --save-result --result-dir "$OUT" --result-filename "$side-mooncake-bench.json" --disable-tqdm \
        | tee "$OUT/$side-mooncake-bench.txt"
    # shellcheck disable=SC2086
    "$VLLM_PY" benchmarks/vllm_cli.py bench serve --backend openai --base-url "http://127.0.0.1:$PORT" \
        --model "$CKPT" --served-model-name "$NAME" --dataset-name prefix_repetition --num-prompts "$N" \
        --prefix-repetition-prefix-len "$PREFIX" --prefix-repetition-suffix-len "$SUFFIX" \
        --prefix-repetition-num-prefixes "$NPREFIX" --prefix-repetition-output-len "$OUTLEN" --seed 2 \
        --request-rate "$RATE" --ignore-eos --goodput $GOODPUT --save-result --result-dir "$OUT" \
        --result-filename "$side-vllm-bench.json" --disable-tqdm > "$OUT/$side-vllm-bench.log" 2>&1 || true
    sed -n '/Serving Benchmark Result/,/^==*$/p' "$OUT/$side-vllm-bench.log" | tee "$OUT/$side-vllm-bench.txt"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=
done
