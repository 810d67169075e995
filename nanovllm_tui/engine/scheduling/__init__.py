"""Scheduling: which requests run each step (Scheduler), their KV blocks (BlockManager), request state (Sequence)."""
