"""GPU benchmark of the Triton attention kernels: decode bandwidth vs a device copy, prefill time vs SDPA flash."""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from nanovllm_tui.kernels import decode_splits, triton_decode, triton_prefill

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-0.6B
DTYPE = torch.bfloat16
DECODE_CASES = [(256, 1024, 256), (256, 1024, 16), (16, 8192, 256), (16, 8192, 16)]  # (batch, context, block)


def bench_ms(fn, rep: int = 200) -> float:
    """Median time in ms; do_bench flushes L2 between runs, so decode reads really come from HBM."""
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, counting bytes read plus written, in GB/s."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


def decode_case(batch: int, context: int | list[int], block_size: int, table_tokens: int = 0):
    """q, caches and shuffled block tables for `batch` sequences of `context` tokens each (or of the listed
    lengths); tables are at least table_tokens wide (a CUDA graph's tables span max_model_len)."""
    lens = context if isinstance(context, list) else [context] * batch
    need = [triton.cdiv(c, block_size) for c in lens]
    width = max(max(need), triton.cdiv(table_tokens, block_size))
    num_blocks = sum(need)
    shape = (num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, dtype=DTYPE, device="cuda")
    v_cache = torch.randn(shape, dtype=DTYPE, device="cuda")
    perm = torch.randperm(num_blocks, device="cuda").to(torch.int32)
    tables = torch.zeros(batch, width, dtype=torch.int32, device="cuda")
    used = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[used : used + n]
        used += n
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    return q, k_cache, v_cache, ctx, tables


def decode_bytes(batch: int, context: int | list[int]) -> int:
    """K and V actually read plus q read and out written."""
    tokens = sum(context) if isinstance(context, list) else batch * context
    kv = 2 * tokens * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
    return kv + 2 * batch * NUM_HEADS * HEAD_DIM * DTYPE.itemsize


def run_decode(copy_gbs: float) -> None:
    print(
        f"\nDecode attention (bf16, Hq={NUM_HEADS}, Hkv={NUM_KV_HEADS}, D={HEAD_DIM}); copy bandwidth {copy_gbs:.0f} GB/s"
    )
    print(f"{'batch':>6} {'context':>8} {'block':>6} {'splits':>6} {'time us':>9} {'GB/s':>7} {'of copy':>8}")
    for batch, context, block_size in DECODE_CASES:
        q, k_cache, v_cache, ctx, tables = decode_case(batch, context, block_size)
        splits = decode_splits.choose_num_splits(
            batch, NUM_KV_HEADS, tables.shape[1], block_size, decode_splits.num_sms(0)
        )
        ms = bench_ms(partial(triton_decode.paged_decode_attention, q, k_cache, v_cache, ctx, tables, HEAD_DIM**-0.5))
        gbs = decode_bytes(batch, context) / ms / 1e6
        print(
            f"{batch:>6} {context:>8} {block_size:>6} {splits:>6} {ms * 1e3:>9.1f} {gbs:>7.0f} {gbs / copy_gbs:>8.1%}"
        )
        del q, k_cache, v_cache


def split_sweep(copy_gbs: float) -> None:
    """Fraction of copy bandwidth for each (batch, splits) on ragged contexts (to pick the split rule)."""
    import random

    rng = random.Random(1)
    counts = (1, 2, 3, 4, 6, 8, 12, 16)
    print("\nSplit sweep: ragged contexts in [100, 2048], tables 4096 wide, block 256, min split 256 tokens")
    print(f"{'batch':>6} " + " ".join(f"{c:>6}" for c in counts))
    for batch in (256, 192, 128, 96, 64, 48, 32, 16, 8, 4, 1):
        lens = [rng.randint(100, 2048) for _ in range(batch)]
        q, k_cache, v_cache, ctx, tables = decode_case(batch, lens, 256, table_tokens=4096)
        row = []
        for splits in counts:
            attend = partial(triton_decode.paged_decode_attention, q, k_cache, v_cache, ctx, tables, 0.1)
            ms = bench_ms(partial(attend, num_splits=splits), rep=50)
            row.append(decode_bytes(batch, lens) / ms / 1e6 / copy_gbs)
        print(f"{batch:>6} " + " ".join(f"{r:>6.1%}" for r in row))
        del q, k_cache, v_cache


def run_prefill(block_size: int, rep: int = 200) -> None:
    batch, seqlen = 16, 1024
    num_blocks = batch * seqlen // block_size
    k = torch.randn(batch, seqlen, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    v = torch.randn_like(k)
    q = torch.randn(batch, seqlen, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    # Paged copy of the same keys: sequence b owns blocks b*n..(b+1)*n-1, in shuffled physical order.
    perm = torch.randperm(num_blocks, device="cuda")
    tables = perm.to(torch.int32).view(batch, -1)
    k_cache = torch.empty(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    v_cache = torch.empty_like(k_cache)
    k_cache[perm] = k.view(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
    v_cache[perm] = v.view(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device="cuda")
    ctx = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
    q_flat = q.view(-1, NUM_HEADS, HEAD_DIM)
    scale = HEAD_DIM**-0.5

    def ours() -> torch.Tensor:
        return triton_prefill.paged_prefill_attention(q_flat, k_cache, v_cache, cu, ctx, tables, scale, seqlen)

    group = NUM_HEADS // NUM_KV_HEADS
    qt = q.transpose(1, 2)
    kt = k.repeat_interleave(group, dim=2).transpose(1, 2)
    vt = v.repeat_interleave(group, dim=2).transpose(1, 2)

    def sdpa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)

    err = (ours().view(batch, seqlen, NUM_HEADS, HEAD_DIM).float() - sdpa().transpose(1, 2).float()).abs().max()
    t_ours, t_sdpa = bench_ms(ours, rep), bench_ms(sdpa, rep)
    flops = 4 * batch * NUM_HEADS * seqlen * seqlen / 2 * HEAD_DIM
    print(
        f"{block_size:>6} {t_ours * 1e3:>10.1f} {t_sdpa * 1e3:>10.1f} {t_ours / t_sdpa:>7.2f}x "
        f"{flops / t_ours / 1e9:>8.0f} {flops / t_sdpa / 1e9:>8.0f} {float(err):>9.2e}"
    )


def _fixed_prefill(block_m: int, block_n: int, warps: int, stages: int) -> Callable[..., tuple[int, int, int, int]]:
    """A prefill `_config` chooser that always answers these settings (for the sweep)."""

    def config(*_: object) -> tuple[int, int, int, int]:
        return block_m, block_n, warps, stages

    return config


def _fixed_decode(block_n: int, warps: int, stages: int) -> Callable[..., tuple[int, int, int]]:
    """A decode `_config` chooser that always answers these settings (for the sweep)."""

    def config(*_: object) -> tuple[int, int, int]:
        return block_n, warps, stages

    return config


def sweep(copy_gbs: float, seconds: float) -> None:
    """Try tile/warp/stage/split settings for both kernels (to tune the defaults), prefill first, within `seconds`."""
    deadline = time.monotonic() + seconds
    print("\nPrefill sweep (block 256): BLOCK_M BLOCK_N warps stages -> row as above")
    default_prefill = triton_prefill._config
    for block_m, block_n, warps, stages in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3)):
        if time.monotonic() > deadline:
            break
        triton_prefill._config = _fixed_prefill(block_m, block_n, warps, stages)
        print(f"  {block_m} {block_n} {warps} {stages}:", end=" ")
        try:
            run_prefill(256, rep=50)
        except Exception as exc:  # out of shared memory etc.
            print(type(exc).__name__)
    triton_prefill._config = default_prefill

    print("\nDecode sweep: batch context block | BLOCK_N warps stages splits -> us, fraction of copy")
    default_decode = triton_decode._config
    for batch, context, block_size in DECODE_CASES:
        q, k_cache, v_cache, ctx, tables = decode_case(batch, context, block_size)
        base = decode_splits.choose_num_splits(
            batch, NUM_KV_HEADS, tables.shape[1], block_size, decode_splits.num_sms(0)
        )
        for block_n, warps, stages, splits in itertools.product(
            (32, 64, 128), (4,), (2, 3, 4), sorted({base, 2 * base})
        ):
            if time.monotonic() > deadline:
                break
            triton_decode._config = _fixed_decode(block_n, warps, stages)
            fn = partial(triton_decode.paged_decode_attention, q, k_cache, v_cache, ctx, tables, 0.1, num_splits=splits)
            try:
                ms = bench_ms(fn, rep=40)
            except Exception as exc:
                print(f"  {batch} {context} {block_size} | {block_n} {warps} {stages} {splits} -> {type(exc).__name__}")
                continue
            frac = decode_bytes(batch, context) / ms / 1e6 / copy_gbs
            print(
                f"  {batch} {context} {block_size} | {block_n} {warps} {stages} {splits} -> {ms * 1e3:.1f} {frac:.1%}"
            )
        del q, k_cache, v_cache
    triton_decode._config = default_decode


def main() -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # stream through tee even if the run is cut short
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sweep", type=float, default=0.0, metavar="SECONDS", help="also try other kernel settings for up to SECONDS"
    )
    parser.add_argument("--split-sweep", action="store_true", help="only the decode split-count sweep")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    copy_gbs = copy_bandwidth()
    if args.split_sweep:
        split_sweep(copy_gbs)
        return
    run_decode(copy_gbs)
    print("\nPrefill attention: 16 x 1024-token prompts, paged, no prefix, vs SDPA flash (causal, same data)")
    print(f"{'block':>6} {'triton us':>10} {'sdpa us':>10} {'ratio':>8} {'TFLOP/s':>8} {'sdpa':>8} {'max err':>9}")
    for block_size in (256, 16):
        run_prefill(block_size)
    if args.sweep:
        sweep(copy_gbs, args.sweep)


if __name__ == "__main__":
    main()
