"""The native path: C kernels (built per ISA), the compiled runtime, the lean plan and its numpy-only loader, the optional CUDA path."""
