"""Probe: TP=2 with CUDA graphs on a small random Qwen3, twice in one process, timing every lifecycle stage.

NCCL_NVLS_ENABLE=0 PYTHONPATH=. python3 scripts/tp_graph_probe.py     (needs 2 GPUs)
"""

import faulthandler
import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, ".")
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


if __name__ == "__main__":
    faulthandler.dump_traceback_later(float(os.environ.get("PROBE_DUMP_S", "80")), exit=True)
    from nanovllm_tui.bench.random_model import make_random_model
    from nanovllm_tui.engine import LLM, SamplingParams

    d = make_random_model(tempfile.mkdtemp(), device="cuda", num_hidden_layers=4)
    P = [list(range(100, 180)), [7, 8, 9, 10, 11], list(range(5000, 5300)), [42] * 33]
    G = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kw = dict(dtype="float32", kvcache_block_size=16, max_model_len=1024, num_kvcache_blocks=512, max_num_seqs=8)
    ref = LLM(str(d), enforce_eager=True, **kw)
    r = [o["token_ids"] for o in ref.generate(P, G, use_tqdm=False)]
    del ref
    for attempt in (1, 2):
        say(f"TP=2 graphs, engine {attempt}: building")
        llm = LLM(str(d), tensor_parallel_size=2, **kw)
        say(f"built; graphs {llm.model_runner.cuda_graphs is not None}")
        out = [o["token_ids"] for o in llm.generate(P, G, use_tqdm=False)]
        say(f"generated; equal to TP=1 eager: {out == r}")
        llm.shutdown()
        say("shutdown returned")
        del llm
        gc.collect()
        say("collected")
    say("exiting")
