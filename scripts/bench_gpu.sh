#!/usr/bin/env bash
# Issue 6's GPU measurements in one call, Qwen3-0.6B architecture (random bf16 weights), default engine flags.
# Writes bench.log, offline.json, single.json, online.json, online-poisson.json and two StepStats traces to $OUT
# (7 files: the device tool brings back at most 8).
#
#   bash scripts/bench_gpu.sh                  # everything (not yet timed; transformers CB alone ~3 min at ~710 tok/s)
#   bash scripts/bench_gpu.sh single online    # only some parts: offline | single | online
#
# Environment: OUT (default ./bench-out), CONFIG (default benchmarks/configs/qwen3-0.6b.json), CONCURRENCY (64), BLOCK (256),
# EXTRA (flags put before each part's own, e.g. a small workload and --device cpu for a dry run on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NANOVLLM_TUI_CACHE=${NANOVLLM_TUI_CACHE:-/tmp/nanovllm-tui-cache}
CONFIG=${CONFIG:-benchmarks/configs/qwen3-0.6b.json}
CONCURRENCY=${CONCURRENCY:-64}
PARTS=${*:-offline single online}
LOG="$OUT/bench.log"

# nano-vllm's KV block size, as in every figure of benchmarks/RESULTS.md (the CLI's default is the app's 16;
# flash-attn needs a multiple of 256).
BLOCK=${BLOCK:-256}

bench() {  # bench NAME ARGS...: one `nanovllm-tui bench` run, its JSON to $OUT/NAME.json, output to the log
    local name=$1; shift
    echo "== $name: python3 -m nanovllm_tui.bench ${EXTRA:-} --block-size $BLOCK $* --config $CONFIG --json $OUT/$name.json" | tee -a "$LOG"
    python3 -m nanovllm_tui.bench ${EXTRA:-} --block-size "$BLOCK" "$@" --config "$CONFIG" --no-progress --json "$OUT/$name.json" 2>&1 | tee -a "$LOG"
    echo "== $name: exit ${PIPESTATUS[0]}, $(date -u +%T)" | tee -a "$LOG"
}

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee -a "$LOG"

for part in $PARTS; do
    case $part in
    offline)  # nano-vllm's workload (256 requests, 133,966 output tokens), ours then transformers CB, and the floor
        bench offline offline --compare transformers --trace "$OUT/offline-trace.jsonl" ;;
    single)   # one request: decode tok/s (the table's per-request decode rate)
        bench single offline --num-requests 1 --prompt-len 128 --output-len 1024 ;;
    online)   # CONCURRENCY in flight: closed loop (as vLLM's --max-concurrency), both policies on one engine ...
        bench online online --request-rate inf --max-concurrency "$CONCURRENCY" --policy mixed,prefill_first \
            --trace "$OUT/online-trace.jsonl"
        # ... then Poisson arrivals at the rate that keeps CONCURRENCY in flight by Little's law (rate = N / mean E2E)
        rate=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['online']['mixed']; \
print(round($CONCURRENCY / (r['e2e']['mean'] / 1000), 2))" "$OUT/online.json" 2>/dev/null || echo 16)
        bench online-poisson online --request-rate "$rate" --policy mixed,prefill_first ;;
    *) echo "unknown part $part (use offline, single, online)" | tee -a "$LOG" ;;
    esac
done
python3 scripts/bench_summary.py "$OUT"/*.json 2>&1 | tee -a "$LOG"
