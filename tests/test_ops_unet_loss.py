"""U-Net's weighted loss (Ronneberger et al. 2015, eq. 1 and 2) against a slow float64 per-pixel loop, and the
weighted cross-entropy against PyTorch's cross_entropy (forward and backward)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from convatlas.ops.unet_loss import (
    SIGMA,
    W0,
    border_distances,
    class_balance_weights,
    unet_weight_map,
    weighted_cross_entropy,
)
from helpers import check_against


def _cells():
    """A 14x18 label image: two cells touching, one close by, one far (ids not consecutive)."""
    labels = torch.zeros(14, 18, dtype=torch.int64)
    labels[2:6, 2:6] = 3
    labels[2:6, 6:9] = 7  # touches cell 3
    labels[8:12, 3:7] = 4  # 2 px below both
    labels[9:12, 14:17] = 9
    return labels


def _slow_weight_map(labels, w0, sigma, class_weights):
    """The paper's formula pixel by pixel: distances to every pixel of every cell by a loop, in float64."""
    h, w = labels.shape
    cells = {}
    for i in labels.unique().tolist():
        if i:
            cells[i] = [(y, x) for y in range(h) for x in range(w) if labels[y, x] == i]
    out = torch.zeros(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            fg = int(labels[y, x] > 0)
            value = class_weights[fg]
            if not fg and len(cells) >= 2:
                distances = sorted(min(math.hypot(y - cy, x - cx) for cy, cx in pixels) for pixels in cells.values())
                d1, d2 = distances[0], distances[1]
                value += w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
            out[y, x] = value
    return out


def test_paper_constants_are_pinned():
    # "In our experiments we set w0 = 10 and sigma ~ 5 pixels."
    assert (W0, SIGMA) == (10.0, 5.0)
    params = inspect.signature(unet_weight_map).parameters
    assert params["w0"].default == 10.0 and params["sigma"].default == 5.0


def test_weight_map_equals_the_slow_float64_loop():
    labels = _cells()
    class_weights = class_balance_weights((labels > 0).long(), 2, ignore_index=None)
    ours = unet_weight_map(labels)
    ref = _slow_weight_map(labels, 10.0, 5.0, class_weights.tolist())
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-6)
    other = unet_weight_map(labels, w0=3.0, sigma=2.0, class_weights=(0.5, 2.0))
    torch.testing.assert_close(other.double(), _slow_weight_map(labels, 3.0, 2.0, [0.5, 2.0]), atol=1e-5, rtol=1e-6)
    # the gap between the close cells weighs most
    assert ours[6:8, 3:7].min() > ours[0, 10] and ours.max() == ours[labels == 0].max()


def test_border_distances_and_fewer_than_two_cells():
    labels = _cells()
    d1, d2 = border_distances(labels)
    assert d1[3, 3] == 0 and d1[6, 4] == 1 and d2[6, 4] == 2  # below cell 3: cell 3 at 1 px, cell 4 at 2 px
    one = torch.zeros(6, 6, dtype=torch.int64)
    one[1:3, 1:3] = 1
    weights = unet_weight_map(one, class_weights=(1.0, 1.0))
    assert torch.equal(weights, torch.ones(6, 6))  # no second cell: no border term
    assert torch.isinf(border_distances(torch.zeros(3, 3, dtype=torch.int64))[0]).all()


def test_class_balance_weights_by_hand():
    mask = torch.tensor([[0, 0, 0, 1], [0, 0, 255, 1]])
    w = class_balance_weights(mask, 2)  # 5 background, 2 foreground, 1 ignored: N = 7
    torch.testing.assert_close(w, torch.tensor([7 / (2 * 5), 7 / (2 * 2)], dtype=torch.float64))
    assert class_balance_weights(torch.zeros(2, 2, dtype=torch.int64), 2).tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="mask values must be in 0..1"):
        class_balance_weights(torch.tensor([[0, 2]]), 2)


def test_weighted_cross_entropy_without_weights_is_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6), generator=gen)
    target[0, 0, :3] = 255
    check_against(lambda x: weighted_cross_entropy(x, target), lambda x: F.cross_entropy(x, target, ignore_index=255),
                  [logits])  # fmt: skip


def test_weighted_cross_entropy_against_a_float64_loop():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 6, 7), generator=gen)  # larger: cropped centrally to 4x5
    target[1, 2, 2] = 255
    weight = torch.rand(2, 6, 7, generator=gen, dtype=torch.float64) * 5

    def slow(x):
        total, count = 0, 0
        for n in range(2):
            for y in range(4):
                for xx in range(5):
                    t = int(target[n, y + 1, xx + 1])
                    if t == 255:
                        continue
                    logp = x[n, :, y, xx] - torch.logsumexp(x[n, :, y, xx], 0)
                    total = total - weight[n, y + 1, xx + 1] * logp[t]
                    count += 1
        return total / count

    check_against(lambda x: weighted_cross_entropy(x, target, weight), slow, [logits])
    per_pixel = weighted_cross_entropy(logits, target, weight, reduction="none")
    assert per_pixel.shape == (2, 4, 5) and per_pixel[1, 1, 1] == 0  # the ignored pixel, at (2, 2) before the crop
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weight, reduction="sum"), per_pixel.sum())


def test_weighted_cross_entropy_bad_shapes():
    logits = torch.zeros(1, 2, 6, 6)
    with pytest.raises(ValueError, match="logits 6x6 are larger than the target 4x4"):
        weighted_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"weight \(1, 6, 5\) must match target \(1, 6, 6\)"):
        weighted_cross_entropy(logits, torch.zeros(1, 6, 6, dtype=torch.int64), torch.ones(1, 6, 5))
