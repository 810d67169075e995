"""Model building blocks with vLLM's names; tensor-parallel aware through per-parameter weight loaders."""
