"""Attention kernels: a plain-torch reference (any device) and Triton kernels (CUDA), behind one backend interface."""
