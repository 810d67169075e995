"""ModelRunner: builds the model and its paged KV cache, turns a scheduled batch into tensors, runs it, samples."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import Config
from engine.loader import load_model
from engine.sequence import Sequence
from kernels.backend import get_backend
from kernels.metadata import AttentionMetadata
from layers.sampler import Sampler
from models import get_model_class

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


@dataclass
class StepInputs:
    """Everything one forward and its sampling need, as tensors on the model's device."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor
    temperatures: torch.Tensor
    top_ks: torch.Tensor | None = None
    top_ps: torch.Tensor | None = None
    generators: list[torch.Generator | None] | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"device {name!r} is not supported; use auto, cpu or cuda")
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device, hf_config) -> torch.dtype:
    if name is None:
        if device.type == "cpu":
            return torch.float32
        cfg = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(cfg, str):
            cfg = getattr(torch, cfg, None)
        return cfg if cfg in (torch.float16, torch.bfloat16) else torch.bfloat16
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
              "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not supported; use float32, bfloat16 or float16")
    return dtypes[name]


class ModelRunner:
    def __init__(self, config: Config):
        self.config = config
        hf = config.hf_config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device, hf)
        self.block_size = config.kvcache_block_size
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = get_model_class(hf)(hf)
        finally:
            torch.set_default_dtype(default_dtype)
        load_model(self.model, config.model)
        self.model.eval()
        self.sampler = Sampler()
        self.attention_layers = [m for m in self.model.modules() if m.__class__.__name__ == "Attention"]
        self.backend = get_backend(config.attention_backend, self.device, self.block_size)
        self.num_kvcache_blocks = self._allocate_kv_cache()

    # -- KV cache ----------------------------------------------------------------------------
    def _block_bytes(self) -> int:
        attn = self.attention_layers[0]
        per_token = 2 * len(self.attention_layers) * attn.num_kv_heads * attn.head_dim
        return per_token * self.block_size * self.dtype.itemsize

    def _num_blocks(self) -> int:
        cfg = self.config
        block_bytes = self._block_bytes()
        if cfg.num_kvcache_blocks is not None:
            return cfg.num_kvcache_blocks
        if cfg.kv_cache_memory is not None:
            num = cfg.kv_cache_memory // block_bytes
            if num < 1:
                raise ValueError(f"kv_cache_memory={cfg.kv_cache_memory} bytes holds no block of {block_bytes} bytes; "
                                 "raise --kv-cache-memory or lower --block-size")
            return num
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            budget = int(total * cfg.gpu_memory_utilization) - used - self._activation_reserve()
            num = budget // block_bytes
            if num < 1:
                raise ValueError(f"no GPU memory left for the KV cache at gpu_memory_utilization="
                                 f"{cfg.gpu_memory_utilization}; raise --gpu-memory-utilization")
            return num
        return max(1, DEFAULT_CPU_KV_CACHE_BYTES // block_bytes)

    def _activation_reserve(self) -> int:
        """Rough peak activation memory of one full-budget forward (logits dominate for big vocabularies)."""
        hf = self.config.hf_config
        tokens = self.config.max_num_batched_tokens
        per_token = (hf.hidden_size * 6 + hf.intermediate_size * 3) * self.dtype.itemsize
        logits = self.config.max_num_seqs * hf.vocab_size * 4 * 3
        return tokens * per_token + logits + (512 << 20)

    def _allocate_kv_cache(self) -> int:
        num_blocks = self._num_blocks()
        attn = self.attention_layers[0]
        shape = (2, len(self.attention_layers), num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        try:
            self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        except (RuntimeError, MemoryError) as exc:
            raise ValueError(f"cannot allocate a KV cache of {num_blocks} blocks "
                             f"({num_blocks * self._block_bytes() / 2**30:.2f} GiB): {exc}; lower "
                             "--num-kvcache-blocks / --kv-cache-memory / --gpu-memory-utilization") from exc
        for i, layer in enumerate(self.attention_layers):
            layer.k_cache, layer.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
            layer.backend = self.backend
        return num_blocks

    # -- one step ------------------------------------------------------------------------------
    def _tensor(self, data: list, dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(data, dtype=dtype)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def prepare(self, items: list[tuple[Sequence, int]]) -> StepInputs:
        """Flatten (sequence, num tokens) pairs into input ids, positions, attention metadata and sampling rows."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_q = [0]
        context_lens: list[int] = []
        sample_rows: list[int] = []
        samplers: list[Sequence] = []
        for seq, n in items:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            cu_q.append(cu_q[-1] + n)
            context_lens.append(end)
            if end == seq.num_tokens:
                sample_rows.append(cu_q[-1] - 1)
                samplers.append(seq)
        width = max(len(seq.block_table) for seq, _ in items)
        tables = [seq.block_table + [-1] * (width - len(seq.block_table)) for seq, _ in items]
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots, torch.int64),
            context_lens=self._tensor(context_lens, torch.int32),
            block_tables=self._tensor(tables, torch.int32),
            cu_seqlens_q=self._tensor(cu_q, torch.int32),
            max_seqlen_q=max(n for _, n in items),
            max_seqlen_k=max(context_lens),
            is_decode=all(n == 1 for _, n in items),
        )
        sp = [s.sampling_params for s in samplers]
        return StepInputs(
            input_ids=self._tensor(input_ids, torch.int64), positions=self._tensor(positions, torch.int64),
            meta=meta, sample_rows=self._tensor(sample_rows, torch.int64),
            temperatures=self._tensor([p.temperature for p in sp], torch.float32),
            top_ks=self._tensor([p.top_k for p in sp], torch.int64) if any(p.top_k != -1 for p in sp) else None,
            top_ps=self._tensor([p.top_p for p in sp], torch.float32) if any(p.top_p < 1 for p in sp) else None,
            generators=[s.generator for s in samplers] if any(s.generator is not None for s in samplers) else None,
        )

    @torch.inference_mode()
    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """The forward on every rank: hidden states, then logits of the rows to sample (None if none)."""
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if inputs.sample_rows.numel() == 0:
            return None
        return self.model.compute_logits(hidden[inputs.sample_rows])

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, inputs: StepInputs) -> list[int]:
        """One token per sampled row; -1 where the logits were not finite (that request must fail)."""
        tokens = self.sampler(logits, inputs.temperatures, inputs.top_ks, inputs.top_ps, inputs.generators)
        finite = torch.isfinite(logits).all(dim=-1)
        return torch.where(finite, tokens, torch.full_like(tokens, -1)).tolist()

    def run(self, items: list[tuple[Sequence, int]]) -> list[int | None]:
        """One step: a sampled token for each item whose tokens are now all computed, else None."""
        inputs = self.prepare(items)
        logits = self.execute(inputs)
        tokens = iter(self.sample(logits, inputs) if logits is not None else [])
        return [next(tokens) if seq.num_computed_tokens + n == seq.num_tokens else None for seq, n in items]
