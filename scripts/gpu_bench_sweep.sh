#!/usr/bin/env bash
# The mixed_prefill_tokens sweep behind SERVING_MIXED_PREFILL_TOKENS (benchmarks/RESULTS.md, session 3): offline
# throughput with no cap, then the closed-loop online workload (64 in flight) at several caps. Logs under $OUT.
#   bash scripts/gpu_bench_sweep.sh [CAP ...]        (default caps: 256 512 768)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 NANOVLLM_TUI_CACHE=${NANOVLLM_TUI_CACHE:-/tmp/nvt}
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
C=benchmarks/configs/qwen3-0.6b.json
B=256  # nano-vllm's block size, as the sweep in RESULTS.md (the CLI's default is the app's 16)
python3 -m nanovllm_tui.bench offline --no-progress --config $C --block-size $B --json $OUT/offline.json 2>&1 \
    | grep -v "Writing model\|Loading" | tail -8 | tee -a $OUT/bench.log
for cap in ${*:-256 512 768}; do
  echo "== online, --mixed-prefill-tokens $cap" | tee -a $OUT/bench.log
  python3 -m nanovllm_tui.bench online --no-progress --config $C --block-size $B --request-rate inf --max-concurrency 64 \
      --policy mixed --mixed-prefill-tokens $cap --trace $OUT/trace-$cap.jsonl --json $OUT/online-$cap.json 2>&1 \
      | grep -v "Writing model\|Loading" | tail -9 | tee -a $OUT/bench.log
  python3 - "$OUT/trace-$cap.jsonl" <<'PY' | tee -a $OUT/bench.log
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])]
slow = sorted(steps, key=lambda s: -s["duration"])[:5]
print("slowest steps:", [(round(s["duration"] * 1e3, 1), s["num_prefill_tokens"], s["num_decode_tokens"]) for s in slow])
PY
  rm -f $OUT/trace-$cap.jsonl
done
