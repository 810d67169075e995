"""Model execution: build the model and KV cache, turn a scheduled batch into tensors, run it (eager or CUDA graphs)."""
