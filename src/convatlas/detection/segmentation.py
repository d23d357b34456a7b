"""Graph-based image segmentation (Felzenszwalb and Huttenlocher, IJCV 2004), the initial regions of selective search.

Every pixel is a node; every pixel is joined to its right, lower, lower-right and upper-right neighbours (8-connected)
by an edge weighted with the Euclidean distance of their colours after Gaussian smoothing. Edges are taken in order
of increasing weight; an edge joins two regions ``C1, C2`` when ``w < min(Int(C1) + k/|C1|, Int(C2) + k/|C2|)``,
``Int`` being the largest edge weight inside a region (the last one that grew it). A second pass over the same edges
joins any region smaller than ``min_size`` pixels to its neighbour.

The conventions are scikit-image's (:func:`skimage.segmentation.felzenszwalb`, which the tests compare against label
for label): channels in ``[0, 1]`` and ``k`` on the 0..255 scale (the threshold is ``k / 255``), reflected borders
for the smoothing, thresholds rounded to float32. The weights and their order are computed here once per image
(:func:`edge_graph`), so several thresholds ``k`` on one image share them; the union-find loop runs in C
(:mod:`convatlas.detection._ss_native`), or in scikit-image when the C kernel is unavailable. Our sort is stable
(equal weights in edge order) and scikit-image's is not, so where two edges have exactly the same non-zero weight
the two paths may take them in another order and, rarely, segment differently; on the VOC image, scikit-image's
sample images and the fashion-scenes images they agree label for label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EdgeGraph:
    """The 8-connected pixel graph of one image and the order of its edges by weight.

    Edges are numbered as scikit-image numbers them: all ``(y, x+1)-(y, x)`` edges in raster order, then
    ``(y+1, x)-(y, x)``, ``(y+1, x+1)-(y, x)`` and ``(y, x+1)-(y+1, x)``.

    Attributes:
        image: the ``float64 (H, W, C)`` image it was built from (before smoothing).
        sigma: the Gaussian smoothing applied before the weights were measured.
        weights: ``float64 (E,)`` the Euclidean colour distance across each edge, ``E = 4HW - 3H - 3W + 2``.
        order: ``int64 (E,)`` edge numbers by increasing weight, equal weights by edge number (a stable sort).
    """

    image: np.ndarray
    sigma: float
    weights: np.ndarray
    order: np.ndarray


def edge_graph(image: np.ndarray, sigma: float = 0.8, *, backend: str = "auto") -> EdgeGraph:
    """The 8-connected graph of ``image`` (``(H, W, C)``, channels in [0, 1], H and W >= 2) smoothed with ``sigma``.

    The sort is a radix sort in C, or NumPy's stable sort (``backend="python"``): the same order.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"edge_graph: image must be (H, W, C) with H, W >= 2, got {image.shape}")
    smooth = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect", truncate=4.0)

    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum((a - b) * (a - b), axis=-1)).ravel()

    weights = np.concatenate(
        [
            distance(smooth[:, 1:], smooth[:, :-1]),
            distance(smooth[1:, :], smooth[:-1, :]),
            distance(smooth[1:, 1:], smooth[:-1, :-1]),
            distance(smooth[1:, :-1], smooth[:-1, 1:]),
        ]
    )
    lib = native_library(backend, "edge_graph")
    if lib is None:
        order = np.argsort(weights, kind="stable")
    else:
        order = np.empty(len(weights), dtype=np.int64)
        if lib.ss_argsort_f64(len(weights), weights.ctypes.data, order.ctypes.data) < 0:
            raise MemoryError(f"edge_graph: out of memory sorting {len(weights)} edges")
    return EdgeGraph(image=image, sigma=sigma, weights=weights, order=order)


def felzenszwalb(
    image: np.ndarray | EdgeGraph, k: float, *, sigma: float = 0.8, min_size: int | None = None, backend: str = "auto"
) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation of one image.

    Args:
        image: ``(H, W, C)`` with channels in ``[0, 1]``, or its :func:`edge_graph` (then ``sigma`` is the graph's).
        k: the threshold (larger: fewer, larger regions), on the 0..255 scale as in the paper.
        sigma: Gaussian smoothing before the edge weights are measured.
        min_size: regions smaller than this many pixels are joined to a neighbour (default ``k``, as selective
            search's authors do).
        backend: ``"auto"`` (C when it can be built), ``"c"`` or ``"python"`` (scikit-image's loop).

    Returns:
        ``int64 (H, W)`` labels ``0..R-1``, numbered by the first pixel of each region in raster order.
    """
    if not k > 0:
        raise ValueError(f"felzenszwalb: k must be > 0, got {k}")
    min_size = int(k) if min_size is None else int(min_size)
    graph = image if isinstance(image, EdgeGraph) else edge_graph(image, sigma, backend=backend)
    h, w = graph.image.shape[:2]
    edges = 4 * h * w - 3 * h - 3 * w + 2
    if h * w >= 2**31:
        raise ValueError(f"felzenszwalb: image must have fewer than 2**31 pixels, got {h}x{w}")
    for name, array, dtype in (("weights", graph.weights, np.float64), ("order", graph.order, np.int64)):
        if array.dtype != dtype or array.shape != (edges,) or not array.flags.c_contiguous:
            raise ValueError(
                f"felzenszwalb: graph.{name} must be contiguous {np.dtype(dtype)} of shape ({edges},) for a {h}x{w} "
                f"image, got {array.dtype} {array.shape}; build the graph with edge_graph()"
            )
    if edges and not (graph.order.min() >= 0 and graph.order.max() < edges):
        raise ValueError(f"felzenszwalb: graph.order must hold edge numbers in [0, {edges}); use edge_graph()")
    lib = native_library(backend, "felzenszwalb")
    if lib is None:
        from skimage.segmentation import felzenszwalb as reference

        labels = reference(graph.image, scale=k, sigma=graph.sigma, min_size=min_size, channel_axis=-1)
        return labels.astype(np.int64)
    labels = np.empty(h * w, dtype=np.int64)
    count = lib.ss_felzenszwalb(
        h, w, len(graph.order), graph.order.ctypes.data, graph.weights.ctypes.data, k / 255.0, min_size,
        labels.ctypes.data,
    )  # fmt: skip
    if count < 0:
        raise MemoryError(f"felzenszwalb: out of memory for a {h}x{w} image")
    return labels.reshape(h, w)


BACKENDS = ("auto", "c", "python")


def native_library(backend: str, caller: str):
    """The C kernels for ``backend`` (``"auto"``, ``"c"``, ``"python"``), or ``None`` for the Python path.

    Raises:
        ValueError: an unknown backend.
        RuntimeError: ``"c"`` was asked for and the kernels cannot be built on this machine.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{caller}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "python":
        return None
    from convatlas.detection._ss_native import library

    lib = library()
    if lib is None and backend == "c":
        raise RuntimeError(f'{caller}: backend="c" but the C kernel cannot be built here (see the warning above)')
    return lib
