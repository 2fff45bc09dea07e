"""Triton kernels for CUDA serving (the `gpu` extra), each with its torch path kept as reference.

Only `dispatch` is imported by the model; it imports triton lazily, so nothing here is needed
on a CPU. The kernel modules import triton at import time. docs/gpu.md derives the math.
"""
