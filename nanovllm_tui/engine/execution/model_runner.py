"""ModelRunner: builds the model and its paged KV cache, turns a scheduled batch into tensors, runs it, samples."""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from nanovllm_tui.engine.config import Config
from nanovllm_tui.engine.devices import resolve_device, resolve_dtype
from nanovllm_tui.engine.execution import kv_cache
from nanovllm_tui.engine.execution.cuda_graph import CUDAGraphRunner, capture_graphs
from nanovllm_tui.engine.execution.input_builder import InputBuilder
from nanovllm_tui.engine.execution.loader import load_model
from nanovllm_tui.engine.execution.step import StepInputs, StepItems, StepRunner
from nanovllm_tui.engine.sampling_params import SamplingParams
from nanovllm_tui.engine.scheduling.sequence import Sequence
from nanovllm_tui.kernels.backend import get_backend
from nanovllm_tui.kernels.metadata import AttentionMetadata
from nanovllm_tui.layers.attention import Attention
from nanovllm_tui.layers.compiled import compile_small_ops
from nanovllm_tui.layers.parallel_state import get_tp_rank, get_tp_size
from nanovllm_tui.layers.penalties import build_penalties
from nanovllm_tui.layers.sampler import Sampler
from nanovllm_tui.models import get_model_class


class ModelRunner(StepRunner):
    """One rank's model, KV cache, input builder, CUDA graphs and sampler; steps through StepRunner."""

    def __init__(self, config: Config, progress: Callable[[str, int, int, str], None] | None = None):
        """progress: hears the "load" and "cuda graphs" phases (LLMEngine's start-up progress)."""
        super().__init__(config.max_num_seqs)
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
        load_model(self.model, config.model, progress)
        self.model.eval()
        self.compiled = config.compile_small_ops and compile_small_ops(self.model, self.device, self.dtype)
        self.sampler = Sampler()
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.backend = get_backend(config.attention_backend, self.device, self.block_size)
        self.inputs = InputBuilder(self.device, self.block_size)
        self.cuda_graphs: CUDAGraphRunner | None = None
        # Each sampled row's generator for the last samplers list (a decode run passes the same list again).
        self._last_generators: tuple[list[Sequence], list[torch.Generator | None] | None] | None = None
        self.kv_cache = torch.tensor([])
        self.num_kvcache_blocks = self._allocate_kv_cache()
        self.cuda_graphs = capture_graphs(self.model, config, self.device, self.block_size, self.backend.name, progress)
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
        return kv_cache.block_bytes(self.attention_layers, self.block_size, self.dtype)

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
        self.kv_cache = kv_cache.unbind_kv_cache(self.attention_layers)
        torch.cuda.empty_cache()
        return max(peak, 0)

    def _bind_kv_cache(self, num_blocks: int) -> torch.Tensor:
        """Allocate a [2, layers, blocks, block_size, kv_heads, head_dim] cache and point every layer at it."""
        self.kv_cache = kv_cache.bind_kv_cache(
            self.attention_layers, self.backend, num_blocks, self.block_size, self.dtype, self.device
        )
        return self.kv_cache

    def _allocate_kv_cache(self) -> int:
        num_blocks = kv_cache.num_blocks(self.config, self.device, self._block_bytes(), self._measure_activation_peak)
        num_blocks = kv_cache.agree_on_blocks(num_blocks, self.device)
        try:
            self._bind_kv_cache(num_blocks)
        except (RuntimeError, MemoryError) as exc:
            raise ValueError(
                f"cannot allocate a KV cache of {num_blocks} blocks "
                f"({num_blocks * self._block_bytes() / 2**30:.2f} GiB): {kv_cache.first_line(exc)}; lower "
                "num_kvcache_blocks= / kv_cache_memory= / gpu_memory_utilization="
            ) from exc
        return num_blocks

    def memory_bytes(self) -> int:
        """This rank's memory: allocated bytes on CUDA, weights + KV cache on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        tensors = [*self.model.parameters(), self.kv_cache]
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())

    def rank_memory_bytes(self) -> list[int]:
        """memory_bytes, as the one rank's entry."""
        return [self.memory_bytes()]

    def shutdown(self) -> None:
        """Nothing to stop: one rank in this process (the Runner protocol's shutdown)."""

    # -- one step ------------------------------------------------------------------------------
    def prepare(self, items: StepItems, ahead: bool = False) -> StepInputs:
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
        # Penalties need the token counts and the torch path (neither the fused kernel nor its graph has them).
        penalized = any(s.sampling_params.penalized for s in b.samplers)
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
            penalty_rows=b.samplers if penalized else None,
            # The sampling graph runs what sample_device would (the fused sampler: seeds, no top-k / top-p).
            graph_sample=bool(b.graph_bucket)
            and not (b.use_top_k or b.use_top_p or penalized)
            and b.num_samples == b.num_rows
            and graphs is not None
            and graphs.can_sample(b.graph_bucket),
        )

    def _generators(self, samplers: list[Sequence]) -> list[torch.Generator | None] | None:
        """Each sampled row's torch.Generator, or None if no row has one; the same list again (a decode run)
        is not re-read."""
        last = self._last_generators
        if last is not None and last[0] is samplers:
            return last[1]
        rows = [s.generator for s in samplers]
        gens = None if all(g is None for g in rows) else rows
        self._last_generators = (samplers, gens)
        return gens

    @torch.inference_mode()
    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """The forward on every rank: hidden states, then logits of the rows to sample (None if none)."""
        if inputs.graph_bucket or inputs.graph_tokens:
            hidden = self._graphs().replay(inputs.graph_bucket, inputs.graph_tokens)
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
            penalties=None
            if inputs.penalty_rows is None
            else build_penalties(inputs.penalty_rows, logits.shape[1], logits.device),
        )

    def sample(self, logits: torch.Tensor, inputs: StepInputs) -> list[int]:
        """sample_device, read back to the host."""
        return self.sample_device(logits, inputs).tolist()

    def replay_sampled(self, bucket: int) -> torch.Tensor:
        """The decode and sampling graphs of `bucket` rows (a graph_sample step: graphs were captured)."""
        return self._graphs().replay_sampled(bucket)

    @property
    def copy_stream(self) -> torch.cuda.Stream | None:
        return self.inputs.stream

    def _graphs(self) -> CUDAGraphRunner:
        """The captured graphs, for a step whose inputs name a graph (the builder only does so when there are)."""
        if self.cuda_graphs is None:
            raise RuntimeError("a CUDA-graph step ran after the graphs were released")
        return self.cuda_graphs
