"""Blocks, projection, masks and ties, ADMM, baselines, accounting, runtime kernels and latency."""
