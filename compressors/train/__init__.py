"""Training: the loops, the ADMM fine-tuner, the baseline compressors (masked, AGP, magnitude, L1 filter)."""
