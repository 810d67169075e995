#!/usr/bin/env bash
# Issue 15's performance check in one call: `bench serve` against our HTTP server vs `bench online` in process, the
# same workload (bench's online default: 256 requests, prompt and output 100-1024 tokens), the same engine flags,
# 64 in flight (closed loop), Qwen3-0.6B architecture with random bf16 weights. Targets: HTTP output throughput
# >= 0.9x in process, ITL p50 within 10 %.
# Writes bench.log, server.log, http.json, inprocess.json to $OUT. Installs nothing: fastapi, uvicorn, httpx ...
# must be importable (PYTHONPATH is kept, with the repo put first).
#
#   bash scripts/bench_serve_gpu.sh            # on the GPU machine
#   SMALL=1 bash scripts/bench_serve_gpu.sh    # dry run on CPU: a tiny random Qwen3, a tiny workload
#
# Environment: OUT (default ./bench-out), CONFIG (default benchmarks/configs/qwen3-0.6b.json), CONCURRENCY (64),
# BLOCK (256, as scripts/bench_gpu.sh), WORKLOAD (workload flags, default none = the online default),
# ENGINE (extra engine flags for both runs), SERVE_FLAGS (flags for serve only, e.g. --engine-thread: the engine on
# a thread of the server, as bench online runs it, instead of a child process that ships its outputs every 15 ms),
# READY_TIMEOUT (seconds to wait for the server's engine, 900).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NANOVLLM_TUI_CACHE=${NANOVLLM_TUI_CACHE:-/tmp/nanovllm-tui-cache}
LOG="$OUT/bench.log"
SERVER_LOG="$OUT/server.log"
CONCURRENCY=${CONCURRENCY:-64}
READY_TIMEOUT=${READY_TIMEOUT:-900}
: > "$LOG"

if [ "${SMALL:-0}" = 1 ]; then  # the same steps in a minute on CPU: 2 layers, 2k vocab, 16 short requests
    CONFIG=${CONFIG:-$NANOVLLM_TUI_CACHE/qwen3-tiny-serve.json}
    mkdir -p "$NANOVLLM_TUI_CACHE"
    python3 - "$CONFIG" <<'EOF'
import json, sys
cfg = json.load(open("benchmarks/configs/qwen3-0.6b.json"))
cfg.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
           head_dim=16, vocab_size=2048, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
EOF
    BLOCK=${BLOCK:-16}
    ENGINE=${ENGINE:---device cpu --max-model-len 256 --num-kvcache-blocks 128 --torch-threads 1}
    WORKLOAD=${WORKLOAD:---num-requests 16 --prompt-len 16,64 --output-len 8,32 --max-token-id 2000}
fi
CONFIG=${CONFIG:-benchmarks/configs/qwen3-0.6b.json}
BLOCK=${BLOCK:-256}
ENGINE="--block-size $BLOCK ${ENGINE:-}"
WORKLOAD=${WORKLOAD:-}
RUN="--max-concurrency $CONCURRENCY --request-rate inf $WORKLOAD --no-progress"

say() { echo "== $*" | tee -a "$LOG"; }

{ date -u; git rev-parse HEAD 2>/dev/null
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, fastapi, uvicorn, httpx; print("torch", torch.__version__, "fastapi", fastapi.__version__,
"uvicorn", uvicorn.__version__, "httpx", httpx.__version__)'
} 2>&1 | tee -a "$LOG"

# serve needs a model dir: the one `bench --config` builds (and caches) for this config.
MODEL=$(python3 -c 'import sys; from nanovllm_tui.bench.model_source import random_model_dir; print(random_model_dir(sys.argv[1]))' "$CONFIG" 2>>"$LOG")
[ -n "$MODEL" ] || { say "could not build the model for $CONFIG (see above)"; exit 1; }
say "model $MODEL ($CONFIG); engine flags: $ENGINE"

# A background job of a script starts with SIGINT ignored, and serve stops on SIGTERM by raising SIGINT: give the
# server back the default SIGINT so SIGTERM stops it.
SERVE_FLAGS=${SERVE_FLAGS:-}
say "serve: python3 -m nanovllm_tui serve --headless --port 0 --model $MODEL $ENGINE $SERVE_FLAGS"
(trap - INT; exec python3 -m nanovllm_tui serve --headless --port 0 --model "$MODEL" $ENGINE $SERVE_FLAGS) > "$SERVER_LOG" 2>&1 &
SERVER=$!
stop_server() {  # SIGTERM, then SIGKILL if it has not exited within 60 s
    kill -0 "$SERVER" 2>/dev/null || return 0
    kill -TERM "$SERVER"
    for _ in $(seq 120); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$SERVER" 2>/dev/null && { say "serve ignored SIGTERM for 60 s: SIGKILL"; kill -KILL "$SERVER"; }
    wait "$SERVER" 2>/dev/null
    say "serve: exit $?"
}
trap stop_server EXIT

ready=0
for _ in $(seq $((READY_TIMEOUT * 2))); do
    grep -q "engine ready" "$SERVER_LOG" && { ready=1; break; }
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.5
done
URL=$(grep -o 'listening on http://[^ ]*' "$SERVER_LOG" | head -1 | cut -d' ' -f3)
if [ "$ready" != 1 ] || [ -z "$URL" ]; then
    say "serve did not become ready within ${READY_TIMEOUT} s; its log:"; tee -a "$LOG" < "$SERVER_LOG"; exit 1
fi
grep "engine ready" "$SERVER_LOG" | tee -a "$LOG"

say "http: python3 -m nanovllm_tui bench serve --url $URL $RUN --json $OUT/http.json"
python3 -m nanovllm_tui bench serve --url "$URL" $RUN --json "$OUT/http.json" 2>&1 | tee -a "$LOG"
http_rc=${PIPESTATUS[0]}
say "http: exit $http_rc, $(date -u +%T)"
stop_server
trap - EXIT

say "in process: python3 -m nanovllm_tui bench online --model $MODEL $ENGINE --policy mixed $RUN --json $OUT/inprocess.json"
python3 -m nanovllm_tui bench online --model "$MODEL" $ENGINE --policy mixed $RUN --json "$OUT/inprocess.json" 2>&1 | tee -a "$LOG"
local_rc=${PIPESTATUS[0]}
say "in process: exit $local_rc, $(date -u +%T)"

python3 - "$OUT/http.json" "$OUT/inprocess.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
http = json.load(open(sys.argv[1]))["serve"]
local = json.load(open(sys.argv[2]))["online"]["mixed"]
tput = http["output_tok_s"] / local["output_tok_s"]
itl = http["itl"]["p50"] / local["itl"]["p50"]
print(f"HTTP / in process: output throughput {http['output_tok_s']:,.1f} / {local['output_tok_s']:,.1f} tok/s = "
      f"{tput:.3f} (target >= 0.9: {'met' if tput >= 0.9 else 'MISSED'}); ITL p50 {http['itl']['p50']:.2f} / "
      f"{local['itl']['p50']:.2f} ms = {itl:.3f} (target within 10 %: {'met' if abs(itl - 1) <= 0.1 else 'MISSED'})")
print(f"TTFT p50 {http['ttft']['p50']:.2f} / {local['ttft']['p50']:.2f} ms; client CPU "
      f"{http['client_cpu_seconds']:.2f} s over {http['duration']:.2f} s; tokens per chunk {http['tokens_per_chunk']}")
EOF
[ "$http_rc" = 0 ] && [ "$local_rc" = 0 ]
