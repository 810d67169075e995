"""Tensor parallelism: rank 0 runner, worker processes and the step channel between them."""
