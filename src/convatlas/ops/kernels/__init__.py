"""Kernels behind the operators: C (``csrc/``, :mod:`~convatlas.ops.kernels.native`) and Triton.

Each operator picks one by its ``backend`` argument (:mod:`convatlas.ops.backend`) and has a PyTorch path for
every device.
"""
