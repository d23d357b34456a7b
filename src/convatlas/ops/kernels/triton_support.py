"""Triton, when it is installed: one import and one interpreter test shared by the kernel modules.

Triton decides whether ``@triton.jit`` functions are compiled for a GPU or run by its interpreter (on CPU tensors)
from ``TRITON_INTERPRET`` when the kernels are defined, that is when the kernel modules are imported; the value seen
then is the one :func:`interpreting` reports. Nothing here chooses a backend: the operators run the Triton kernels
when their ``backend`` argument says so (see :mod:`convatlas.ops.backend`).
"""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only builds of torch come without Triton
    triton = None
    tl = None

__all__ = ["installed", "interpreting", "tl", "triton"]

_INTERPRETING = triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"


def installed() -> bool:
    """Whether Triton imports."""
    return triton is not None


def interpreting() -> bool:
    """Whether the kernels were defined under Triton's interpreter (``TRITON_INTERPRET=1`` at import): they then run
    on CPU tensors, for testing, and cannot run on a GPU."""
    return _INTERPRETING
