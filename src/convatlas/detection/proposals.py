"""Selective search: class-agnostic object proposals by hierarchical grouping (Uijlings et al., IJCV 2013).

Each *strategy* starts from a graph-based over-segmentation (Felzenszwalb and Huttenlocher 2004, through
scikit-image) of the image in one colour space and greedily merges the two most similar adjacent regions until one
region is left; every region ever formed is a proposal. Similarity is a sum of up to four measures in ``[0, 1]``:

- colour: intersection of L1-normalised 25-bin histograms per colour channel;
- texture: intersection of 10-bin histograms of Gaussian derivatives (sigma 1) in 8 orientations per channel;
- size: ``1 - (size_i + size_j) / size(image)``, so small regions merge first;
- fill: ``1 - (size(BB_ij) - size_i - size_j) / size(image)``, so regions that fill each other's gaps merge first.

Diversification runs several strategies (colour spaces, thresholds ``k``, similarity sets); the results are ranked
as in the paper: a region's position in its hierarchy (1 = the last merge) times a random number in ``[0, 1]``,
ascending, duplicates dropped. The random numbers come from ``seed``, so results repeat.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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
    return np.clip(array, 0.0, 1.0)


def _convert(rgb: np.ndarray, space: str) -> np.ndarray:
    """The image in ``space``, every channel scaled to [0, 1], shape ``(H, W, C)``."""
    from skimage import color

    if space == "rgb":
        return rgb
    if space in ("hsv", "h"):
        hsv = color.rgb2hsv(rgb)
        return hsv if space == "hsv" else hsv[:, :, :1]
    if space == "lab":
        lab = color.rgb2lab(rgb)
        return np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128.0) / 255.0, (lab[..., 2] + 128.0) / 255.0], axis=2)
    intensity = rgb.mean(axis=2, keepdims=True)
    if space == "i":
        return intensity
    total = rgb.sum(axis=2, keepdims=True) + 1e-12  # rgI: normalised r and g, plus intensity
    return np.concatenate([rgb[:, :, :2] / total, intensity], axis=2)


def _pixel_bins(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel histogram bins of one colour image ``(H, W, C)`` in [0, 1].

    Returns:
        colour ``int64 (H*W, C)``: the bin of each channel, offset so that channel ``c`` uses bins
        ``[c*25, (c+1)*25)``; texture ``int64 (H*W, C*8)``: the same for the 10-bin histogram of the Gaussian
        derivative in each of 8 orientations of each channel.
    """
    from scipy import ndimage

    h, w, c = image.shape
    colour = np.minimum((image * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1).reshape(h * w, c)
    colour += np.arange(c) * COLOUR_BINS
    texture = []
    for ch in range(c):
        dy = ndimage.gaussian_filter(image[:, :, ch], sigma=1.0, order=(1, 0))
        dx = ndimage.gaussian_filter(image[:, :, ch], sigma=1.0, order=(0, 1))
        for angle in np.arange(ORIENTATIONS // 2) * np.pi / (ORIENTATIONS // 2):
            d = np.cos(angle) * dx + np.sin(angle) * dy  # the directional derivative; its two signs are 2 orientations
            for response in (np.maximum(d, 0.0), np.maximum(-d, 0.0)):
                top = response.max()
                scaled = response / top if top > 0 else response
                texture.append(np.minimum((scaled * TEXTURE_BINS).astype(np.int64), TEXTURE_BINS - 1).ravel())
    texture = np.stack(texture, axis=1)
    texture += np.arange(texture.shape[1]) * TEXTURE_BINS
    return colour, texture


def _region_histograms(labels: np.ndarray, bins: np.ndarray, n: int, width: int) -> np.ndarray:
    """L1-normalised histograms ``(n, width)`` of the pixels of each of ``n`` regions, from per-pixel ``bins``."""
    index = (labels[:, None] * width + bins).ravel()
    hist = np.bincount(index, minlength=n * width).reshape(n, width).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def _adjacent_pairs(labels: np.ndarray, n: int) -> np.ndarray:
    """The ``(P, 2)`` pairs ``i < j`` of regions that touch (4-connectivity) in the label map ``(H, W)``."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
        pairs.append(lo.astype(np.int64) * n + hi)
    codes = np.unique(np.concatenate(pairs))
    return np.stack([codes // n, codes % n], axis=1)


@dataclass
class _Regions:
    """The initial regions of one segmentation: label map, sizes, boxes, colour and texture histograms."""

    labels: np.ndarray
    size: np.ndarray
    boxes: np.ndarray
    colour: np.ndarray
    texture: np.ndarray


def _initial_regions(labels: np.ndarray, colour_bins: np.ndarray, texture_bins: np.ndarray) -> _Regions:
    from scipy import ndimage

    flat = labels.ravel().astype(np.int64)
    n = int(flat.max()) + 1
    boxes = np.zeros((n, 4))
    for r, (rows, cols) in enumerate(ndimage.find_objects(labels + 1)):
        boxes[r] = (cols.start, rows.start, cols.stop, rows.stop)  # exclusive right/bottom: one pixel is 1 wide
    return _Regions(
        labels=labels,
        size=np.bincount(flat, minlength=n).astype(np.float64),
        boxes=boxes,
        colour=_region_histograms(flat, colour_bins, n, colour_bins.shape[1] * COLOUR_BINS),
        texture=_region_histograms(flat, texture_bins, n, texture_bins.shape[1] * TEXTURE_BINS),
    )


def _group(regions: _Regions, similarities: tuple[str, ...]) -> np.ndarray:
    """Hierarchical grouping of one segmentation; returns the boxes ``(R, 4)`` of all regions in creation order."""
    labels = regions.labels
    h, w = labels.shape
    n = len(regions.size)
    total = 2 * n - 1
    image_size = float(h * w)
    use_colour, use_texture = "colour" in similarities, "texture" in similarities
    use_size, use_fill = "size" in similarities, "fill" in similarities

    def grow(initial: np.ndarray) -> np.ndarray:  # room for the n - 1 merged regions after the n initial ones
        return np.concatenate([initial, np.zeros((total - n, *initial.shape[1:]))])

    size, boxes = grow(regions.size), grow(regions.boxes)
    colour = grow(regions.colour) if use_colour else None
    texture = grow(regions.texture) if use_texture else None

    def similarity(i: int, others: np.ndarray) -> np.ndarray:
        s = np.zeros(len(others))
        if use_colour:
            s += np.minimum(colour[i], colour[others]).sum(axis=1)
        if use_texture:
            s += np.minimum(texture[i], texture[others]).sum(axis=1)
        if use_size:
            s += 1.0 - (size[i] + size[others]) / image_size
        if use_fill:
            bw = np.maximum(boxes[i, 2], boxes[others, 2]) - np.minimum(boxes[i, 0], boxes[others, 0])
            bh = np.maximum(boxes[i, 3], boxes[others, 3]) - np.minimum(boxes[i, 1], boxes[others, 1])
            s += 1.0 - (bw * bh - size[i] - size[others]) / image_size
        return s

    neighbours: list[set[int]] = [set() for _ in range(total)]
    heap = []
    pairs = _adjacent_pairs(labels, n)
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
        a, b = size[i], size[j]
        size[t] = a + b
        boxes[t, :2] = np.minimum(boxes[i, :2], boxes[j, :2])
        boxes[t, 2:] = np.maximum(boxes[i, 2:], boxes[j, 2:])
        if use_colour:
            colour[t] = (a * colour[i] + b * colour[j]) / (a + b)
        if use_texture:
            texture[t] = (a * texture[i] + b * texture[j]) / (a + b)
        alive[i] = alive[j] = False
        alive[t] = True
        around = (neighbours[i] | neighbours[j]) - {i, j}
        for m in around:
            neighbours[m].difference_update((i, j))
            neighbours[m].add(t)
        neighbours[t] = around
        if around:
            others = np.fromiter(around, dtype=np.int64, count=len(around))
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
    from skimage.segmentation import felzenszwalb

    rgb = _to_hwc_float(image)
    rng = np.random.default_rng(seed)
    converted: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    segmentations: dict[tuple[str, float], _Regions] = {}
    all_boxes, all_keys = [], []
    for strategy in strategies:
        if strategy.colour_space not in converted:
            space = _convert(rgb, strategy.colour_space)
            converted[strategy.colour_space] = (space, *_pixel_bins(space))
        space, colour_bins, texture_bins = converted[strategy.colour_space]
        key = (strategy.colour_space, strategy.k)
        if key not in segmentations:  # strategies differing only in their similarities share the segmentation
            labels = felzenszwalb(
                space.astype(np.float32), scale=strategy.k, sigma=sigma, min_size=int(strategy.k), channel_axis=-1
            )
            segmentations[key] = _initial_regions(labels, colour_bins, texture_bins)
        boxes = _group(segmentations[key], strategy.similarities)
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
