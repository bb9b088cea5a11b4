"""Time: the one timing loop, the dense engines, the budget and ratio, whole-model timing and the per-layer latency table."""
