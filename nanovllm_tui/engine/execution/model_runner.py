"""ModelRunner: builds the model and its paged KV cache, turns a scheduled batch into tensors, runs it, samples."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.devices import resolve_device, resolve_dtype
from nanovllm_tui.engine.execution.cuda_graph import GRAPH_BACKENDS, MIXED_GRAPH_BACKENDS, CUDAGraphRunner, SampleFn
from nanovllm_tui.engine.execution.input_builder import InputBuilder
from nanovllm_tui.engine.execution.loader import load_model
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.kernels.backend import get_backend
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.layers.compiled import compile_small_ops
from nanovllm_tui.layers.parallel_state import get_tp_rank, get_tp_size
from nanovllm_tui.layers.sampler import Sampler, fused_sampler
from nanovllm_tui.models import get_model_class

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
    seeds: torch.Tensor | None = None  # int64 [samples]: per-row Philox keys for the fused CUDA sampler
    offsets: torch.Tensor | None = None  # int64 [samples]: per-row Philox counters (token positions)
    all_greedy: bool = False  # decided on the host, so sampling needs no device read
    graph_bucket: int = 0  # > 0: inputs sit in that CUDA graph's static buffers; replay it
    graph_tokens: int = 0  # > 0: a mixed batch in the mixed graph of this many tokens; replay it
    num_rows: int = 0  # real rows (a graph bucket pads past them)
    graph_sample: bool = False  # a decode graph bucket whose sampling graph samples every row (see launch)


@dataclass
class PendingStep:
    """A launched step: its items (and their row order), and its sampled tokens on their way to the host."""

    items: list[tuple[Sequence, int]]
    ordered: list[tuple[Sequence, int]]
    tokens: torch.Tensor | None  # device, one per sampled row in row order; -1 = non-finite logits
    host: torch.Tensor | None = None  # pinned copy (CUDA), valid once `ready` has happened
    ready: torch.cuda.Event | None = None


class ModelRunner:
    def __init__(self, config: Config):
        self.config = config
        hf = config.hf_config
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and get_tp_size() > 1:  # one GPU per tensor-parallel rank
            self.device = torch.device("cuda", get_tp_rank())
            torch.cuda.set_device(self.device)
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
        self.compiled = config.compile_small_ops and compile_small_ops(self.model, self.device, self.dtype)
        self.sampler = Sampler()
        self.attention_layers = [m for m in self.model.modules() if m.__class__.__name__ == "Attention"]
        self.backend = get_backend(config.attention_backend, self.device, self.block_size)
        self.inputs = InputBuilder(self.device, self.block_size)
        self.cuda_graphs: CUDAGraphRunner | None = None
        self.num_kvcache_blocks = self._allocate_kv_cache()
        self.cuda_graphs = self._capture_cuda_graphs()
        self._warm_up_sampler()

    @torch.inference_mode()
    def _warm_up_sampler(self) -> None:
        """Run the sampler once on one row and on a full batch, so each of its kernel variants (one split
        per row, or several) is compiled now rather than on the first step of that size."""
        if self.device.type != "cuda":
            return
        vocab = self.config.hf_config.vocab_size
        for rows in sorted({1, self.config.max_num_seqs}):
            logits = torch.zeros(rows, vocab, dtype=self.dtype, device=self.device)
            ids = torch.zeros(rows, dtype=torch.int64, device=self.device)
            self.sampler(logits, torch.ones(rows, device=self.device), None, None, seeds=ids, offsets=ids)
        torch.cuda.synchronize(self.device)

    def _capture_cuda_graphs(self) -> CUDAGraphRunner | None:
        """Decode graphs on CUDA with a capturable backend, unless enforce_eager; after the KV cache exists."""
        cfg = self.config
        if cfg.enforce_eager or self.device.type != "cuda" or self.backend.name not in GRAPH_BACKENDS:
            return None
        mixed_tokens = cfg.max_num_batched_tokens if self.backend.name in MIXED_GRAPH_BACKENDS else 0
        graphs = CUDAGraphRunner(
            self.model,
            self.device,
            cfg.max_num_seqs,
            cfg.max_model_len,
            self.block_size,
            mixed_tokens,
            self._graph_sampler(),
        )
        graphs.capture()
        return graphs

    def _graph_sampler(self) -> SampleFn | None:
        """What the sampling graphs capture: LM head + the fused sampler, exactly as execute + sample_device
        run them for a decode batch without top-k / top-p; None (no sampling graphs) where the fused sampler
        is unavailable, or with tensor parallelism (the LM head's gather would need every rank to replay)."""
        fused = fused_sampler()
        if fused is None or get_tp_size() > 1:
            return None
        model = self.model

        def sample(
            hidden: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor, offsets: torch.Tensor
        ) -> torch.Tensor:
            return fused(model.compute_logits(hidden), temperatures, seeds, offsets)

        return sample

    def release_cuda_graphs(self) -> None:
        """Drop the captured graphs and their memory pool (before a tensor-parallel group is destroyed:
        graphs that captured NCCL collectives keep the communicator busy)."""
        if self.cuda_graphs is None:
            return
        self.cuda_graphs = None
        self.inputs = InputBuilder(self.device, self.block_size)  # its views may point into the graphs' buffers
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

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
                raise ValueError(
                    f"kv_cache_memory={cfg.kv_cache_memory} bytes holds no block of {block_bytes} bytes; "
                    "raise --kv-cache-memory or lower --block-size"
                )
            return num
        if self.device.type == "cuda":
            peak = self._measure_activation_peak()
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free
            budget = int(total * cfg.gpu_memory_utilization) - used - peak
            num = budget // block_bytes
            if num < 1:
                raise ValueError(
                    f"no GPU memory left for the KV cache at gpu_memory_utilization="
                    f"{cfg.gpu_memory_utilization}; raise --gpu-memory-utilization"
                )
            return num
        return max(1, DEFAULT_CPU_KV_CACHE_BYTES // block_bytes)

    def _measure_activation_peak(self) -> int:
        """Peak memory of a max-size prefill forward plus sampling max_num_seqs rows, measured on a scratch cache."""
        cfg = self.config
        tokens = cfg.max_num_batched_tokens
        seq_len = min(cfg.max_model_len, tokens)
        num_seqs = max(1, min(tokens // seq_len, cfg.max_num_seqs))
        blocks_per_seq = -(-seq_len // self.block_size)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        scratch = self._bind_kv_cache(num_seqs * blocks_per_seq)
        scratch_bytes = scratch.numel() * scratch.element_size()
        sp = SamplingParams(temperature=1.0, top_k=50, top_p=0.9)  # the sampler's most memory-hungry path
        seqs = []
        for i in range(num_seqs):
            seq = Sequence([0] * seq_len, sp)
            seq.block_table = list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))
            seqs.append(seq)
        with torch.inference_mode():
            inputs = self.prepare([(seq, seq_len) for seq in seqs])
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
            rows = hidden[:1].expand(cfg.max_num_seqs, -1).contiguous()
            logits = self.model.compute_logits(rows)
            if logits is not None:
                ones = torch.ones(cfg.max_num_seqs, device=self.device)
                self.sampler(logits, ones, torch.full_like(ones, 50, dtype=torch.int64), ones * 0.9)
            del hidden, rows, logits
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base - scratch_bytes
        del scratch
        self.kv_cache = torch.tensor([])
        for layer in self.attention_layers:
            layer.k_cache = layer.v_cache = self.kv_cache
        torch.cuda.empty_cache()
        return max(peak, 0)

    def _bind_kv_cache(self, num_blocks: int) -> torch.Tensor:
        """Allocate a [2, layers, blocks, block_size, kv_heads, head_dim] cache and point every layer at it."""
        attn = self.attention_layers[0]
        shape = (2, len(self.attention_layers), num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.attention_layers):
            layer.k_cache, layer.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
            layer.backend = self.backend
        return self.kv_cache

    def _allocate_kv_cache(self) -> int:
        num_blocks = self._num_blocks()
        if get_tp_size() > 1:  # every rank must hold the same blocks: agree on the smallest count
            agreed = torch.tensor([num_blocks], device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            num_blocks = int(agreed.item())
        try:
            self._bind_kv_cache(num_blocks)
        except (RuntimeError, MemoryError) as exc:
            raise ValueError(
                f"cannot allocate a KV cache of {num_blocks} blocks "
                f"({num_blocks * self._block_bytes() / 2**30:.2f} GiB): {_first_line(exc)}; lower "
                "--num-kvcache-blocks / --kv-cache-memory / --gpu-memory-utilization"
            ) from exc
        return num_blocks

    def memory_bytes(self) -> int:
        """This rank's memory: allocated bytes on CUDA, weights + KV cache on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        tensors = [*self.model.parameters(), self.kv_cache]
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())

    # -- one step ------------------------------------------------------------------------------
    def prepare(self, items: list[tuple[Sequence, int]], ahead: bool = False) -> StepInputs:
        """Flatten (sequence, num tokens) pairs into input ids, positions, attention metadata and sampling rows.

        ahead: decode rows one token past each sequence's host state (pipelined decoding; ids left for the caller).
        """
        b = self.inputs.build(items, self.cuda_graphs, ahead)
        t = b.tensors
        meta = AttentionMetadata(
            slot_mapping=t["slot_mapping"],
            context_lens=t["context_lens"],
            block_tables=t["block_tables"],
            cu_seqlens_q=t["cu_seqlens_q"],
            max_seqlen_q=b.max_seqlen_q,
            max_seqlen_k=b.max_seqlen_k,
            is_decode=b.is_decode,
            num_decode_rows=b.num_decode_rows,
            graph_rows=b.layout.rows if b.graph_tokens else 0,
            num_decode_dev=t["num_decode"] if b.graph_tokens else None,
        )
        gens = self._generators(b.samplers)
        graphs = self.cuda_graphs
        return StepInputs(
            input_ids=t["input_ids"],
            positions=t["positions"],
            meta=meta,
            sample_rows=t["sample_rows"],
            temperatures=t["temperatures"],
            top_ks=t["top_ks"] if b.use_top_k else None,
            top_ps=t["top_ps"] if b.use_top_p else None,
            generators=gens,
            seeds=t["seeds"],
            offsets=t["offsets"],
            all_greedy=b.all_greedy,
            graph_bucket=b.graph_bucket,
            graph_tokens=b.graph_tokens,
            num_rows=b.num_rows,
            # The sampling graph runs what sample_device would (the fused sampler: seeds, no top-k / top-p).
            graph_sample=bool(b.graph_bucket)
            and not (b.use_top_k or b.use_top_p)
            and b.num_samples == b.num_rows
            and graphs.can_sample(b.graph_bucket),
        )

    def _generators(self, samplers: list[Sequence]) -> list[torch.Generator | None] | None:
        """Each sampled row's torch.Generator, or None if no row has one; the same list again (a decode run)
        is not re-read."""
        last = self.__dict__.get("_last_generators")
        if last is not None and last[0] is samplers:
            return last[1]
        gens = [s.generator for s in samplers]
        if all(g is None for g in gens):
            gens = None
        self._last_generators = (samplers, gens)
        return gens

    @torch.inference_mode()
    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """The forward on every rank: hidden states, then logits of the rows to sample (None if none)."""
        if inputs.graph_bucket or inputs.graph_tokens:
            hidden = self.cuda_graphs.replay(inputs.graph_bucket, inputs.graph_tokens)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        num_samples = inputs.sample_rows.numel()
        if num_samples == 0:
            return None
        # Decode steps sample every row in order: a slice instead of a gather.
        rows = (
            hidden[:num_samples]
            if inputs.meta.is_decode and num_samples == inputs.num_rows
            else hidden[inputs.sample_rows]
        )
        return self.model.compute_logits(rows)

    @torch.inference_mode()
    def sample_device(self, logits: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """One token per sampled row, on the device; -1 where the logits were not finite (that request fails)."""
        # With seeds the sampler flags non-finite rows itself (inside the fused kernel on CUDA: no extra pass).
        return self.sampler(
            logits,
            inputs.temperatures,
            inputs.top_ks,
            inputs.top_ps,
            inputs.generators,
            all_greedy=inputs.all_greedy,
            seeds=inputs.seeds,
            offsets=inputs.offsets,
        )

    def sample(self, logits: torch.Tensor, inputs: StepInputs) -> list[int]:
        """sample_device, read back to the host."""
        return self.sample_device(logits, inputs).tolist()

    def _host_tokens(self, n: int) -> torch.Tensor:
        """Pinned host room for one step's sampled tokens; two alternate (at most two steps are in flight)."""
        bufs = self.__dict__.setdefault("_pinned_tokens", [])
        if not bufs or bufs[0].numel() < n:
            size = max(n, self.config.max_num_seqs)
            bufs[:] = [torch.empty(size, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        bufs.reverse()
        return bufs[0]

    def launch(
        self, items: list[tuple[Sequence, int]], after: PendingStep | None = None, keep: list[int] | None = None
    ) -> PendingStep:
        """Start one step without waiting for it: prepare, forward, sample; the tokens come back in collect().

        after: the decode step still in flight whose sampled tokens are this step's input ids (pipelined
        decoding: the items are `after`'s rows, or those at `keep`, each one token further on).
        """
        ordered = _decodes_first(items) if after is None else items
        inputs = self.prepare(ordered, ahead=after is not None)
        if after is not None:
            src = after.tokens
            if keep is not None:
                src = src[torch.tensor(keep, dtype=torch.int64).to(src.device, non_blocking=True)]
            with torch.inference_mode():
                inputs.input_ids[: len(ordered)].copy_(src.clamp(min=0))  # -1 rows fail; any valid id will do
        if inputs.graph_sample:  # two graph replays: forward, then LM head + sampler
            tokens = self.cuda_graphs.replay_sampled(inputs.graph_bucket)[: inputs.num_rows]
        else:
            logits = self.execute(inputs)
            tokens = self.sample_device(logits, inputs) if logits is not None else None
        host = ready = None
        if tokens is not None and tokens.is_cuda:
            host = self._host_tokens(tokens.numel())
            host[: tokens.numel()].copy_(tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.inputs.stream)
        return PendingStep(items, ordered, tokens, host, ready)

    def collect(self, step: PendingStep) -> list[int | None]:
        """Wait for a launched step's tokens: one per item whose tokens are now all computed, else None."""
        if step.tokens is None:
            sampled = []
        elif step.ready is not None:
            step.ready.synchronize()
            sampled = step.host[: step.tokens.numel()].tolist()
        else:
            sampled = step.tokens.tolist()
        ordered, items = step.ordered, step.items
        if len(sampled) == len(ordered):  # every row sampled (decode steps)
            if ordered is items:
                return sampled
            by_seq = {id(seq): tok for (seq, _), tok in zip(ordered, sampled)}
            return [by_seq[id(seq)] for seq, _ in items]
        it = iter(sampled)
        by_seq = {id(seq): (next(it) if seq.num_computed_tokens + n == seq.num_tokens else None) for seq, n in ordered}
        return [by_seq[id(seq)] for seq, _ in items]

    def run(self, items: list[tuple[Sequence, int]]) -> list[int | None]:
        """One step: a sampled token for each item whose tokens are now all computed, else None."""
        return self.collect(self.launch(items))


def _decodes_first(items: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
    """The items with one-query rows moved to the front (stable), or `items` itself if they already are:
    attention backends send those leading rows of a mixed batch to their decode kernel."""
    seen_multi = False
    for _, n in items:
        if n != 1:
            seen_multi = True
        elif seen_multi:
            return [it for it in items if it[1] == 1] + [it for it in items if it[1] != 1]
    return items


def _first_line(exc: BaseException) -> str:
    """An allocator's error on one line (CUDA OOM messages span several), so the ValueError stays one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
