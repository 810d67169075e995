"""Is there headroom under cuBLAS for the decode GEMMs? A plain autotuned Triton GEMM against F.linear at
Qwen3-0.6B's projection shapes and decode batch sizes (bf16, L2 flushed between runs, as in a real step).

    PYTHONPATH=. python3 benchmarks/gemm_probe.py
"""

from __future__ import annotations

import io
import itertools
import sys
from functools import partial

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.testing import do_bench

SHAPES = {"qkv": (4096, 1024), "o_proj": (1024, 2048), "gate_up": (6144, 1024), "down": (1024, 3072)}
BATCHES = (16, 64, 128, 256)


def _configs(splits: tuple[int, ...]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w, num_stages=s)
        for bm, bn, bk, sk, w, s in itertools.product((16, 64), (32, 64, 128), (64, 128), splits, (4,), (3, 4))
    ]


@triton.jit
def _linear_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """y[M, N] = x[M, K] @ w[N, K]^T; SPLIT_K > 1 adds partial sums into an fp32 y with atomics."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_per = K // SPLIT_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(pid_k * k_per, (pid_k + 1) * k_per, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :])
        acc = tl.dot(x, tl.trans(w), acc)
    ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
    if SPLIT_K == 1:
        tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=rm[:, None] < M)
    else:
        tl.atomic_add(ptrs, acc, mask=rm[:, None] < M)


# Whole-K tiles write bf16 directly; split-K adds fp32 partials with atomics (into a zeroed fp32 output).
_direct = triton.autotune(configs=_configs((1,)), key=["M", "N", "K"])(_linear_kernel)
_split = triton.autotune(configs=_configs((2, 4)), key=["M", "N", "K"], reset_to_zero=["y_ptr"])(_linear_kernel)


def triton_linear(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    M, K = x.shape
    N = w.shape[0]
    kernel = _direct if out.dtype == x.dtype else _split

    def grid(meta: dict) -> tuple[int, int, int]:
        return N // meta["BLOCK_N"], triton.cdiv(M, meta["BLOCK_M"]), meta["SPLIT_K"]

    kernel[grid](x, w, out, M, N, K, x.stride(0), w.stride(0), out.stride(0))
    return out


def main() -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(
        f"{'shape':>8} {'M':>5} {'cublas us':>10} {'direct us':>10} {'split us':>9} {'best':>6} "
        f"{'direct config':>44} {'max err':>9}"
    )
    totals = {m: [0.0, 0.0] for m in BATCHES}
    for (name, (n, k)), m in itertools.product(SHAPES.items(), BATCHES):
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        ref = F.linear(x, w)
        out16 = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        out32 = torch.zeros(m, n, dtype=torch.float32, device="cuda")
        triton_linear(x, w, out16)  # autotune both
        triton_linear(x, w, out32)
        err = float((triton_linear(x, w, out16).float() - ref.float()).abs().max())
        t_ref = do_bench(partial(F.linear, x, w), warmup=25, rep=100, return_mode="median")
        t_dir = do_bench(partial(triton_linear, x, w, out16), warmup=25, rep=100, return_mode="median")
        t_spl = do_bench(partial(triton_linear, x, w, out32), warmup=25, rep=100, return_mode="median")
        best = min(t_dir, t_spl)
        totals[m][0] += t_ref
        totals[m][1] += best
        cfg = _direct.best_config
        desc = f"{cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages}".replace("BLOCK_", "").replace("'", "")
        print(
            f"{name:>8} {m:>5} {t_ref * 1e3:>10.1f} {t_dir * 1e3:>10.1f} {t_spl * 1e3:>9.1f} "
            f"{best / t_ref:>6.2f} {desc:>44} {err:>9.2e}"
        )
    for m, (a, b) in totals.items():
        print(f"per layer, M={m}: cuBLAS {a * 1e3:.1f} us, best Triton {b * 1e3:.1f} us ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
