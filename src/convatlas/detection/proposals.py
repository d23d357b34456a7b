"""Selective search: class-agnostic object proposals by hierarchical grouping (Uijlings et al., IJCV 2013).

Each *strategy* starts from a graph-based over-segmentation (Felzenszwalb and Huttenlocher 2004, see
:mod:`convatlas.detection.segmentation`) of the image in one colour space and greedily merges the two most similar
adjacent regions (4-connectivity) until one region is left; every region ever formed is a proposal. Similarity is a
sum of up to four measures in ``[0, 1]``:

- colour: intersection of L1-normalised 25-bin histograms per colour channel;
- texture: intersection of 10-bin histograms of Gaussian derivatives (sigma 1) in 8 orientations per channel;
- size: ``1 - (size_i + size_j) / size(image)``, so small regions merge first;
- fill: ``1 - (size(BB_ij) - size_i - size_j) / size(image)``, so regions that fill each other's gaps merge first.

Diversification runs several strategies (colour spaces, thresholds ``k``, similarity sets); the results are ranked
as in the paper: a region's position in its hierarchy (1 = the last merge) times a random number in ``[0, 1]``,
ascending, duplicates dropped. The random numbers come from ``seed``, so results repeat.

Speed: the work that is shared is done once per image: per colour space, one conversion, one sorted pixel graph
and one set of per-pixel histogram bins; per ``(colour space, k)``, one segmentation and one set of region
statistics, shared by the strategies that differ only in their similarities. The segmentation's union-find loop,
the region statistics and the grouping loop run in C (:mod:`convatlas.detection._ss_native`); ``backend="python"``
runs NumPy, scikit-image's segmentation and a Python grouping loop instead, with the same result (up to the order
of equal edge weights, see :mod:`convatlas.detection.segmentation`). Histograms are
kept as integer counts, so merging two regions adds counts exactly and the intersection of two L1-normalised
histograms, ``sum_b min(c_i[b] / n_i, c_j[b] / n_j)``, is ``sum_b min(c_i[b] n_j, c_j[b] n_i) / (n_i n_j)``: an
exact integer sum and one division, the same number on both paths.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from convatlas.detection.segmentation import EdgeGraph, edge_graph, felzenszwalb, native_library

COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8
SIMILARITIES = ("colour", "texture", "size", "fill")
COLOUR_SPACES = ("hsv", "lab", "rgi", "h", "i", "rgb")


@dataclass(frozen=True)
class Strategy:
    """One grouping strategy of selective search.

    Attributes:
        colour_space: one of ``COLOUR_SPACES``; the segmentation and the histograms both use it.
        k: the threshold ``k`` of the graph-based segmentation (larger: fewer, larger initial regions); the minimum
            initial region size is ``k`` pixels too, as in the authors' code.
        similarities: a non-empty subset of ``("colour", "texture", "size", "fill")``, summed with equal weights.
    """

    colour_space: str
    k: float
    similarities: tuple[str, ...]

    def __post_init__(self):
        if self.colour_space not in COLOUR_SPACES:
            raise ValueError(f"Strategy: colour_space must be one of {COLOUR_SPACES}, got {self.colour_space!r}")
        if not self.k > 0:
            raise ValueError(f"Strategy: k must be > 0, got {self.k}")
        bad = [s for s in self.similarities if s not in SIMILARITIES]
        if bad or not self.similarities:
            raise ValueError(f"Strategy: similarities must be a non-empty subset of {SIMILARITIES}, got {bad or '()'}")


_CTSF = ("colour", "texture", "size", "fill")
_TSF = ("texture", "size", "fill")
MODES: dict[str, tuple[Strategy, ...]] = {
    # The paper's "single strategy": HSV, k = 100, all four similarities.
    "single": (Strategy("hsv", 100, _CTSF),),
    # The paper's "fast" mode: HSV and Lab, k in {50, 100}, C+T+S+F and T+S+F (8 strategies).
    "fast": tuple(Strategy(c, k, s) for c in ("hsv", "lab") for k in (50, 100) for s in (_CTSF, _TSF)),
    # The paper's "quality" mode: five colour spaces, four thresholds, four similarity sets (80 strategies).
    "quality": tuple(
        Strategy(c, k, s)
        for c in ("hsv", "lab", "rgi", "h", "i")
        for k in (50, 100, 150, 300)
        for s in (_CTSF, _TSF, ("fill",), ("size",))
    ),
}


def _to_hwc_float(image) -> np.ndarray:
    """``Tensor[C, H, W]`` (float in [0, 1] or uint8) or an ``(H, W[, C])`` array -> ``float64 (H, W, 3)`` in [0, 1]."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"selective_search: image must be Tensor[C, H, W], C in (1, 3), got {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3):
            raise ValueError(f"selective_search: image array must be (H, W) or (H, W, 1|3), got {array.shape}")
    array = array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"selective_search: image must be at least 2x2 pixels, got {array.shape[0]}x{array.shape[1]}")
    if not np.isfinite(array).all():
        raise ValueError(f"selective_search: image has {int((~np.isfinite(array)).sum())} non-finite values (NaN/inf)")
    return np.clip(array, 0.0, 1.0)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """HSV with every channel in [0, 1] (hue 0 for grey pixels), as :func:`skimage.color.rgb2hsv` computes it."""
    value = rgb.max(axis=2)
    delta = value - rgb.min(axis=2)
    grey = delta == 0
    safe = np.where(grey, 1.0, delta)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(b == value, 4.0 + (r - g) / safe, 0.0)
    hue = np.where(g == value, 2.0 + (b - r) / safe, hue)
    hue = np.where(r == value, (g - b) / safe, hue)
    hue = np.where(grey, 0.0, (hue / 6.0) % 1.0)
    saturation = np.where(grey, 0.0, delta / np.where(value == 0, 1.0, value))
    return np.stack([hue, saturation, value], axis=2)


# sRGB (D65) to CIE XYZ, and the D65 white point: the constants of the CIE Lab conversion
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB, as :func:`skimage.color.rgb2lab` computes it: L in [0, 100], a and b about +-128."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lightness, a, b = 116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=2)


def _convert(rgb: np.ndarray, space: str) -> np.ndarray:
    """The image in ``space``, every channel scaled to [0, 1], shape ``(H, W, C)``."""
    if space == "rgb":
        return rgb
    if space in ("hsv", "h"):
        hsv = _rgb_to_hsv(rgb)
        return hsv if space == "hsv" else hsv[:, :, :1]
    if space == "lab":
        lab = _rgb_to_lab(rgb)
        return np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128.0) / 255.0, (lab[..., 2] + 128.0) / 255.0], axis=2)
    intensity = rgb.mean(axis=2, keepdims=True)
    if space == "i":
        return intensity
    total = rgb.sum(axis=2, keepdims=True) + 1e-12  # rgI: normalised r and g, plus intensity
    return np.concatenate([rgb[:, :, :2] / total, intensity], axis=2)


def _pixel_codes(image: np.ndarray) -> np.ndarray:
    """Per-pixel histogram bins of one colour image ``(H, W, C)`` in [0, 1], as ``int32 (9C, H*W)``.

    Row ``c < C`` is the colour bin of channel ``c``, offset to ``[25c, 25(c+1))``. Then, for each channel and each
    of 8 orientations, the texture bin: the Gaussian derivative (sigma 1) in that orientation, its positive part
    scaled by its largest value over the image into 10 bins, offset to its own 10 bins after the ``25C`` colour bins.
    """
    from scipy import ndimage

    h, w, c = image.shape
    codes = np.empty((c * (1 + ORIENTATIONS), h * w), dtype=np.int32)
    flat = image.reshape(h * w, c)
    for ch in range(c):
        codes[ch] = np.minimum(flat[:, ch] * COLOUR_BINS, COLOUR_BINS - 1).astype(np.int32) + ch * COLOUR_BINS
    row = c
    for ch in range(c):
        channel = np.ascontiguousarray(image[:, :, ch], dtype=np.float32)
        dy = ndimage.gaussian_filter(channel, sigma=1.0, order=(1, 0)).ravel()
        dx = ndimage.gaussian_filter(channel, sigma=1.0, order=(0, 1)).ravel()
        for angle in np.arange(ORIENTATIONS // 2) * np.pi / (ORIENTATIONS // 2):
            d = np.float32(np.cos(angle)) * dx + np.float32(np.sin(angle)) * dy  # the derivative in this direction
            for sign in (1.0, -1.0):  # its two signs are two of the 8 orientations
                top = sign * (d.max() if sign > 0 else d.min())
                offset = c * COLOUR_BINS + (row - c) * TEXTURE_BINS
                if top > 0:
                    scaled = np.clip(d * np.float32(sign * TEXTURE_BINS / top), 0, TEXTURE_BINS - 1)
                    codes[row] = scaled.astype(np.int32) + offset
                else:
                    codes[row] = offset
                row += 1
    return codes


@dataclass
class _Regions:
    """The initial regions of one segmentation.

    Attributes:
        labels: ``int64 (H, W)`` region of each pixel, ``0..n-1``.
        channels: colour channels ``C`` of the colour space; the counts have ``25C`` colour then ``80C`` texture bins.
        size: ``int64 (n,)`` pixels per region.
        boxes: ``float64 (n, 4)`` ``(x1, y1, x2, y2)``, right and bottom exclusive (one pixel is 1 wide).
        counts: ``int64 (n, 105C)`` histogram counts (colour, then texture); the paper's L1-normalised histograms are
            the colour part over ``C * size`` and the texture part over ``8C * size``.
        pairs: ``int64 (P, 2)`` the pairs ``i < j`` of regions that touch (4-connectivity), sorted.
    """

    labels: np.ndarray
    channels: int
    size: np.ndarray
    boxes: np.ndarray
    counts: np.ndarray
    pairs: np.ndarray


def _initial_regions(labels: np.ndarray, codes: np.ndarray, channels: int, lib=None) -> _Regions:
    """Sizes, boxes, histogram counts and adjacency of the regions of ``labels`` (C kernel if ``lib``, else NumPy)."""
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    h, w = labels.shape
    n = int(labels.max()) + 1
    bins = channels * (COLOUR_BINS + ORIENTATIONS * TEXTURE_BINS)
    if lib is not None:
        size, boxes = np.empty(n, dtype=np.int64), np.empty((n, 4))
        counts = np.empty((n, bins), dtype=np.int64)
        lib.ss_region_stats(
            h, w, labels.ctypes.data, n, len(codes), codes.ctypes.data, bins, size.ctypes.data, boxes.ctypes.data,
            counts.ctypes.data,
        )  # fmt: skip
        pairs = np.empty((2 * h * w, 2), dtype=np.int64)
        count = lib.ss_adjacent_pairs(h, w, labels.ctypes.data, n, pairs.ctypes.data)
        if count < 0:
            raise MemoryError(f"selective_search: out of memory for a {h}x{w} image")
        return _Regions(labels, channels, size, boxes, counts, pairs[:count].copy())
    from scipy import ndimage

    flat = labels.ravel()
    size = np.bincount(flat, minlength=n)
    counts = np.bincount((flat[None, :] * bins + codes).ravel(), minlength=n * bins).reshape(n, bins)
    objects = ndimage.find_objects(labels + 1)
    boxes = np.array([(c.start, r.start, c.stop, r.stop) for r, c in objects], dtype=np.float64)
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        pairs.append(np.minimum(a[differ], b[differ]) * n + np.maximum(a[differ], b[differ]))
    unique = np.unique(np.concatenate(pairs))
    return _Regions(labels, channels, size, boxes, counts, np.stack([unique // n, unique % n], axis=1))


_FLAGS = {"colour": 1, "texture": 2, "size": 4, "fill": 8}


def _group(regions: _Regions, similarities: tuple[str, ...], lib=None) -> np.ndarray:
    """Hierarchical grouping of one segmentation; returns the boxes ``(2n - 1, 4)`` of all regions in creation order.

    With ``lib`` the C kernel runs; without, :func:`_group_python`, the same loop in Python.
    """
    if lib is None:
        return _group_python(regions, similarities)
    n, bins = regions.counts.shape
    h, w = regions.labels.shape
    boxes = np.empty((max(2 * n - 1, 1), 4))
    count = lib.ss_group(
        n, bins, COLOUR_BINS * regions.channels, regions.channels, ORIENTATIONS * regions.channels,
        regions.counts.ctypes.data, regions.size.ctypes.data, regions.boxes.ctypes.data, len(regions.pairs),
        regions.pairs.ctypes.data, sum(_FLAGS[s] for s in similarities), float(h * w), boxes.ctypes.data,
    )  # fmt: skip
    if count < 0:
        raise MemoryError(f"selective_search: out of memory grouping {n} regions")
    return boxes[:count]


def _group_python(regions: _Regions, similarities: tuple[str, ...]) -> np.ndarray:
    """The greedy grouping loop in Python: merge the most similar adjacent pair (ties: the smaller ``(i, j)``)
    until one region is left; a priority queue holds the pairs, stale ones are skipped when popped."""
    h, w = regions.labels.shape
    n, bins = regions.counts.shape
    total = max(2 * n - 1, 1)
    image_size = float(h * w)
    colour_bins = COLOUR_BINS * regions.channels
    use = {name: name in similarities for name in SIMILARITIES}
    size = np.zeros(total, dtype=np.int64)
    size[:n] = regions.size
    boxes = np.zeros((total, 4))
    boxes[:n] = regions.boxes
    counts = np.zeros((total, bins), dtype=np.int64)
    counts[:n] = regions.counts

    def intersection(i: int, others: np.ndarray, lo: int, hi: int, channels: int) -> np.ndarray:
        # sum_b min(c_i[b] / (channels s_i), c_j[b] / (channels s_j)), from integer products (exact) and one division
        num = np.minimum(counts[i, lo:hi] * size[others, None], counts[others, lo:hi] * size[i]).sum(axis=1)
        return num.astype(np.float64) / ((channels * float(size[i])) * size[others].astype(np.float64))

    def similarity(i: int, others: np.ndarray) -> np.ndarray:
        s = np.zeros(len(others))
        si, so = float(size[i]), size[others].astype(np.float64)
        if use["colour"]:
            s += intersection(i, others, 0, colour_bins, regions.channels)
        if use["texture"]:
            s += intersection(i, others, colour_bins, bins, ORIENTATIONS * regions.channels)
        if use["size"]:
            s += 1.0 - (si + so) / image_size
        if use["fill"]:
            bw = np.maximum(boxes[i, 2], boxes[others, 2]) - np.minimum(boxes[i, 0], boxes[others, 0])
            bh = np.maximum(boxes[i, 3], boxes[others, 3]) - np.minimum(boxes[i, 1], boxes[others, 1])
            s += 1.0 - (bw * bh - si - so) / image_size
        return s

    neighbours: list[set[int]] = [set() for _ in range(total)]
    heap = []
    pairs = regions.pairs
    for i, j in pairs.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))  # pairs are sorted by their first region
    for i in range(n):
        later = pairs[starts[i] : starts[i + 1], 1]
        if len(later):
            heap.extend(zip((-similarity(i, later)).tolist(), [i] * len(later), later.tolist(), strict=True))
    heapq.heapify(heap)
    alive = np.zeros(total, dtype=bool)
    alive[:n] = True
    t = n
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue  # a stale entry: one of the two was merged already
        size[t] = size[i] + size[j]
        boxes[t, :2] = np.minimum(boxes[i, :2], boxes[j, :2])
        boxes[t, 2:] = np.maximum(boxes[i, 2:], boxes[j, 2:])
        counts[t] = counts[i] + counts[j]
        alive[i] = alive[j] = False
        alive[t] = True
        around = (neighbours[i] | neighbours[j]) - {i, j}
        for m in around:
            neighbours[m].difference_update((i, j))
            neighbours[m].add(t)
        neighbours[t] = around
        if around:
            others = np.fromiter(sorted(around), dtype=np.int64, count=len(around))
            for s, m in zip((-similarity(t, others)).tolist(), others.tolist(), strict=True):
                heapq.heappush(heap, (s, m, t))
        t += 1
    return boxes[:t]


def selective_search(
    image,
    *,
    mode: str = "fast",
    strategies: tuple[Strategy, ...] | None = None,
    sigma: float = 0.8,
    seed: int = 0,
    min_box_size: float = 1.0,
    max_proposals: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Selective search proposals for one image, best ranked first.

    Args:
        image (Tensor[C, H, W]): C in (1, 3), float in [0, 1] or uint8; an ``(H, W[, C])`` uint8/float array works too.
        mode: ``"single"``, ``"fast"`` or ``"quality"`` (the paper's three settings); ignored if ``strategies`` given.
        strategies: explicit strategies to diversify over.
        sigma: Gaussian smoothing of the graph-based segmentation (the paper's 0.8).
        seed: seed of the random ranking, so results repeat.
        min_box_size: drop boxes narrower or shorter than this, in pixels.
        max_proposals: keep at most this many (the best ranked).
        backend: ``"auto"`` (the C kernels when they can be built, else Python), ``"c"`` or ``"python"``
            (NumPy, scikit-image's segmentation and a Python grouping loop). Both give the same proposals.

    Returns:
        Tensor[K, 4]: float32 ``(x1, y1, x2, y2)`` boxes in pixels, ``0 <= x1 < x2 <= W``, unique, in rank order.
    """
    if strategies is None:
        if mode not in MODES:
            raise ValueError(f"selective_search: mode must be one of {tuple(MODES)}, got {mode!r}")
        strategies = MODES[mode]
    if not strategies:
        raise ValueError("selective_search: strategies must not be empty")
    if max_proposals is not None and max_proposals < 1:
        raise ValueError(f"selective_search: max_proposals must be >= 1, got {max_proposals}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"selective_search: seed must be an int >= 0, got {seed!r}")
    lib = native_library(backend, "selective_search")
    rgb = _to_hwc_float(image)
    rng = np.random.default_rng(seed)
    converted: dict[str, tuple[EdgeGraph, np.ndarray]] = {}
    segmentations: dict[tuple[str, float], _Regions] = {}
    all_boxes, all_keys = [], []
    for strategy in strategies:
        space_name = strategy.colour_space
        if space_name not in converted:  # one colour conversion, pixel graph and per-pixel bins per colour space
            space = _convert(rgb, space_name)
            graph = edge_graph(space.astype(np.float32).astype(np.float64), sigma, backend=backend)
            converted[space_name] = (graph, _pixel_codes(space))
        graph, codes = converted[space_name]
        key = (space_name, strategy.k)
        if key not in segmentations:  # strategies differing only in their similarities share the segmentation
            labels = felzenszwalb(graph, strategy.k, min_size=int(strategy.k), backend=backend)
            segmentations[key] = _initial_regions(labels, codes, len(codes) // 9, lib)
        boxes = _group(segmentations[key], strategy.similarities, lib)
        position = np.arange(len(boxes), 0, -1, dtype=np.float64)  # 1 = the last merge (the whole hierarchy's top)
        all_boxes.append(boxes)
        all_keys.append(position * rng.random(len(boxes)))
    boxes = np.concatenate(all_boxes)
    order = np.argsort(np.concatenate(all_keys), kind="stable")
    boxes = boxes[order]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
    boxes = boxes[keep]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return torch.from_numpy(boxes.astype(np.float32))
