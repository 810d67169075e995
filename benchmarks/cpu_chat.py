"""SmolLM2-135M on CPU: our engine vs transformers `generate`, same prompts, same run.

    python benchmarks/cpu_chat.py [--requests 16] [--max-tokens 128] [--threads N]

Prints a table: 16 concurrent chat requests (ours: continuous batching; transformers: one padded
batch), then single-stream decode. Two modes: "fixed" generates exactly --max-tokens tokens per request
(EOS ignored, the same work for both); "chat" stops each answer at EOS as a chat does, and counts only
the tokens up to and including EOS (transformers keeps computing padded rows until the longest answer ends).
"""

from __future__ import annotations

import argparse
import time

import torch

QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "How do airplanes fly?",
    "Give me three tips for learning Python.",
    "What is a black hole?",
    "Summarize the plot of Hamlet.",
    "Why is the sky blue?",
    "How does a CPU cache work?",
    "What are prime numbers?",
    "Describe a cat to someone who has never seen one.",
    "What is machine learning?",
    "How do vaccines work?",
    "Write a short story opening about a robot.",
    "What causes the seasons?",
    "Explain recursion with an example.",
]


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def run_ours(llm, prompts: list[list[int]], max_tokens: int, chat: bool = False) -> tuple[int, float]:
    from nanovllm_tui.engine import SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=not chat)
    start = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    return sum(len(o["token_ids"]) for o in outs), time.perf_counter() - start


def run_hf(model, prompts: list[list[int]], max_tokens: int, pad_id: int, chat: bool = False) -> tuple[int, float]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=None if chat else max_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    elapsed = time.perf_counter() - start
    if not chat:
        return (out.shape[1] - width) * len(prompts), elapsed
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    useful = 0
    for row in out[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in eos]
        useful += ends[0] + 1 if ends else len(row)
    return useful, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--mode", choices=("fixed", "chat", "both"), default="both")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--model", default=None, help="model dir (default: the demo model)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from nanovllm_tui.engine import LLM
    from nanovllm_tui.engine.demo_model import ensure_demo_model

    model_dir = args.model or str(ensure_demo_model())
    llm = LLM(model_dir, device="cpu", kvcache_block_size=16, max_model_len=1024)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = hf.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    prompts = chat_prompts(llm.tokenizer, args.requests)
    run_ours(llm, prompts[:2], 4)  # warm-up both
    run_hf(hf, prompts[:2], 4, pad)

    rows = []
    modes = ("fixed", "chat") if args.mode == "both" else (args.mode,)
    for mode in modes:
        for label, batch in ((f"{args.requests} concurrent", prompts), ("single stream", prompts[:1])):
            ours_tok, ours_s = run_ours(llm, batch, args.max_tokens, chat=mode == "chat")
            hf_tok, hf_s = run_hf(hf, batch, args.max_tokens, pad, chat=mode == "chat")
            rows.append((f"{mode}: {label}", ours_tok, ours_s, hf_tok, hf_s))
    print(f"model {model_dir}, torch threads {torch.get_num_threads()}, {args.max_tokens} new tokens per request")
    print(
        f"{'workload':<24}{'ours tok':>9}{'ours s':>9}{'ours tok/s':>11}{'hf tok':>8}{'hf s':>8}{'hf tok/s':>10}{'ratio':>7}"
    )
    for label, ot, os_, ht, hs in rows:
        print(
            f"{label:<24}{ot:>9}{os_:>9.2f}{ot / os_:>11.1f}{ht:>8}{hs:>8.2f}{ht / hs:>10.1f}{(ot / os_) / (ht / hs):>7.2f}"
        )


if __name__ == "__main__":
    main()
