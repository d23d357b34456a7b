"""Triton kernels. Each has a PyTorch path chosen at call time when Triton or CUDA is absent."""
