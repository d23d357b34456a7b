"""The C kernels of selective search: graph-based segmentation, region statistics, hierarchical grouping.

Plain C99 (no Python or PyTorch headers), called through :mod:`ctypes` and part of the project's one C library
(:mod:`convatlas.ops.kernels.native`, source ``ops/kernels/csrc/selective_search.c``); when it cannot be built or
trusted, :func:`library` returns ``None`` and the NumPy/Python path of each caller runs instead. Each kernel
computes exactly what its NumPy/Python counterpart computes (the tests compare them), so the choice of path never
changes the proposals:

- ``ss_felzenszwalb``: the union-find loop of Felzenszwalb and Huttenlocher over edges already sorted by weight,
  with scikit-image's conventions (strict ``w < min(Int + k / |C|)`` with the thresholds rounded to float32, then
  the ``min_size`` pass over the same edges); labels are numbered by the first pixel of each region in raster order.
- ``ss_region_stats``: per-region pixel counts, bounding boxes and integer histogram counts.
- ``ss_adjacent_pairs``: the sorted, unique pairs ``i < j`` of regions that touch (4-connectivity).
- ``ss_group``: the greedy merge loop with a binary heap ordered by ``(-similarity, i, j)``. Histogram
  intersections are computed on integer counts (``sum_b min(c_i[b] s_j, c_j[b] s_i)``, exact) and divided once, so
  the float result does not depend on the order of summation.
"""

from __future__ import annotations

import ctypes

from convatlas.ops.kernels import native


def library() -> ctypes.CDLL | None:
    """The selective-search kernels (the project's C library), built on first use; ``None`` when unavailable."""
    return native.library()
