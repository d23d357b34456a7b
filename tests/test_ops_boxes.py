"""Box operators against torchvision.ops, torchvision's BoxCoder and slow float64 loops."""

import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from convatlas.ops.boxes import (
    box_area,
    box_convert,
    box_iou,
    box_iou_max,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    remove_small_boxes,
)
from helpers import check_against


def random_boxes(n: int, size: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=torch.float64) * size
    wh = torch.rand(n, 2, dtype=torch.float64) * size / 4 + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def slow_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference: a Python loop in float64."""
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, p in enumerate(a.double().tolist()):
        for j, q in enumerate(b.double().tolist()):
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = w * h
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union
    return out


def test_box_area_matches_torchvision_and_int16_does_not_overflow():
    boxes = random_boxes(50)
    torch.testing.assert_close(box_area(boxes), torchvision.ops.box_area(boxes))  # reference: torchvision
    big = torch.tensor([[0, 0, 300, 300], [10, 20, 30, 60]], dtype=torch.int16)
    area = box_area(big)
    assert area.dtype == torch.int64
    assert area.tolist() == [90000, 800]  # 90000 does not fit int16


def test_box_area_fp16_computed_in_float32():
    boxes = torch.tensor([[0, 0, 400, 400]], dtype=torch.float16)
    assert torch.isinf((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).all()  # naive fp16 overflows
    assert box_area(boxes).tolist() == [160000.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_torchvision_and_slow_loop(dtype):
    a, b = random_boxes(30, dtype=dtype), random_boxes(20, dtype=dtype)
    ours = box_iou(a, b)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a, b))  # reference: torchvision
    torch.testing.assert_close(ours.double(), slow_iou(a, b), atol=1e-6, rtol=1e-5)  # reference: float64 loop


def test_box_iou_integer_boxes():
    a = torch.tensor([[0, 0, 300, 300], [100, 100, 400, 400]], dtype=torch.int16)
    ours = box_iou(a, a)
    assert ours.is_floating_point()
    torch.testing.assert_close(ours.double(), slow_iou(a, a), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a.long(), a.long()))


def test_box_iou_chunking_is_exact_and_gradients_match_torchvision():
    a = random_boxes(37, dtype=torch.float64).requires_grad_()
    b = random_boxes(11, dtype=torch.float64).requires_grad_()
    check_against(lambda x, y: box_iou(x, y, chunk_elems=50), torchvision.ops.box_iou, [a, b])


def test_box_iou_max_equals_full_matrix_max():
    a, b = random_boxes(300), random_boxes(70)
    full = torchvision.ops.box_iou(a, b).max(dim=1)  # reference: torchvision
    values, indices = box_iou_max(a, b, chunk_elems=700)
    torch.testing.assert_close(values, full.values)
    assert torch.equal(indices, full.indices)
    values, indices = box_iou_max(a[:0], b)
    assert values.shape == (0,) and indices.dtype == torch.int64
    with pytest.raises(ValueError, match="boxes2 must hold at least one box"):
        box_iou_max(a, b[:0])


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_convert_matches_torchvision_and_round_trips(fmt):
    boxes = random_boxes(40, dtype=torch.float64).view(2, 20, 4)
    ours = box_convert(boxes, "xyxy", fmt)
    torch.testing.assert_close(ours.view(-1, 4), torchvision.ops.box_convert(boxes.view(-1, 4), "xyxy", fmt))
    torch.testing.assert_close(box_convert(ours, fmt, "xyxy"), boxes)
    with pytest.raises(ValueError, match="out_fmt must be one of"):
        box_convert(boxes, "xyxy", "yxyx")


def test_clip_and_remove_small_match_torchvision():
    boxes = random_boxes(60, size=120.0) - 10
    torch.testing.assert_close(
        clip_boxes(boxes, (90, 70)), torchvision.ops.clip_boxes_to_image(boxes, (90, 70))
    )  # reference: torchvision, size = (height, width)
    assert torch.equal(remove_small_boxes(boxes, 15.0), torchvision.ops.remove_small_boxes(boxes, 15.0))
    with pytest.raises(ValueError, match="size must be"):
        clip_boxes(boxes, (90,))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_torchvision_box_coder(weights):
    gt = random_boxes(25, dtype=torch.float64).requires_grad_()
    proposals = random_boxes(25, dtype=torch.float64).requires_grad_()
    coder = BoxCoder(weights)  # reference: torchvision's R-CNN box coder
    check_against(lambda g, p: encode_boxes(g, p, weights), coder.encode_single, [gt, proposals])
    deltas = (torch.randn(25, 4, dtype=torch.float64) * 2).requires_grad_()
    check_against(
        lambda d, p: decode_boxes(d, p, weights),
        lambda d, p: coder.decode_single(d, p),
        [deltas, proposals],
    )


def test_encode_decode_round_trip_batched():
    gt = random_boxes(24, dtype=torch.float64).view(2, 3, 4, 4)
    proposals = random_boxes(24, dtype=torch.float64).view(2, 3, 4, 4)
    deltas = encode_boxes(gt, proposals, (10, 10, 5, 5))
    assert deltas.shape == (2, 3, 4, 4)
    torch.testing.assert_close(decode_boxes(deltas, proposals, (10, 10, 5, 5)), gt)


def test_encode_formula_on_a_hand_example():
    # proposal centre (5, 5), size 10 x 10; ground truth centre (7, 4), size 20 x 5
    deltas = encode_boxes(torch.tensor([[-3.0, 1.5, 17.0, 6.5]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(deltas, torch.tensor([[0.2, -0.1, math.log(2.0), math.log(0.5)]]))


def test_decode_clamps_exponent():
    proposal = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    box = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), proposal)
    # exp(log(1000/16)) * 16 = 1000 wide, centred on 8
    torch.testing.assert_close(box, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))


def test_bad_shapes_and_weights_raise():
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., 4\], got \(3, 5\)"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"boxes2 must have shape \[\.\.\., N, 4\], got \(4,\)"):
        box_iou(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"fmt must be one of \('xyxy', 'xywh', 'cxcywh'\), got 'xyxyxyxy'"):
        box_iou(torch.zeros(3, 4), torch.zeros(2, 4), "xyxyxyxy")
    with pytest.raises(TypeError, match="boxes must be a Tensor"):
        box_area([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="weights must be positive"):
        encode_boxes(torch.zeros(1, 4), torch.ones(1, 4), (1, 1, 0, 1))
    with pytest.raises(ValueError, match=r"deltas must have shape \[\.\.\., 4\]"):
        decode_boxes(torch.zeros(2, 3), torch.zeros(2, 4))
