"""The box and RoI operators and modules under ``torch.jit.script``: scripted, they give the eager results.

Every public operator is scripted and called from Python on random inputs; references, named in each test: the
eager operator (outputs and input gradients, through :func:`helpers.check_against`) and torchvision's operator where
one exists. Scripted code calls back into the operators' Python implementation, so ``torch.jit.save`` must fail with
a message naming the Python call, and errors of the implementation must reach the caller with their message.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

import convatlas.nn
from convatlas.nn import MultiScaleRoIAlign, RoIAlign, RoIPool
from convatlas.ops import boxes as B
from convatlas.ops.roi import multi_scale_roi_align, roi_align, roi_pool
from helpers import check_against
from test_kernels_native import needs_c

# torch 2.14 deprecates TorchScript (the warning is the point of none of these tests)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


def random_boxes(n: int, size: float, gen: torch.Generator, dtype=torch.float64) -> Tensor:
    """``n`` boxes (x1, y1, x2, y2) with corners in ``[0, size]`` and sides of 1 to ``size / 3``."""
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size * 0.7
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def random_rois(k: int, size: float, batch: int, gen: torch.Generator, dtype=torch.float64) -> Tensor:
    """``Tensor[K, 5]``: a batch index, then a box of :func:`random_boxes`."""
    index = torch.randint(0, batch, (k, 1), generator=gen).to(dtype)
    return torch.cat([index, random_boxes(k, size, gen, dtype)], dim=1)


def detections(gen: torch.Generator, n: int = 60) -> tuple[Tensor, Tensor, Tensor]:
    """Jittered copies of a few boxes with scores and three categories: NMS has something to suppress."""
    centres = random_boxes(6, 100.0, gen, torch.float32)
    boxes = centres[torch.randint(0, 6, (n,), generator=gen)] + torch.randn(n, 4, generator=gen) * 2
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes, torch.rand(n, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def script(fn):
    scripted = torch.jit.script(fn)
    assert isinstance(scripted, torch.jit.ScriptFunction | torch.jit.ScriptModule)
    return scripted


# --- box operators ----------------------------------------------------------------------------------------------


def test_box_area_iou_and_iou_max_scripted_match_eager_and_torchvision():
    """References: the eager operators (values and gradients) and torchvision.ops.box_area / box_iou."""
    gen = torch.Generator().manual_seed(0)
    a = random_boxes(17, 50.0, gen).requires_grad_()
    b = random_boxes(9, 50.0, gen).requires_grad_()
    area, iou, iou_max = script(B.box_area), script(B.box_iou), script(B.box_iou_max)
    check_against(area, B.box_area, [a])
    check_against(area, torchvision.ops.box_area, [a])
    check_against(iou, B.box_iou, [a, b])
    check_against(iou, torchvision.ops.box_iou, [a, b])
    check_against(lambda x, y: iou(x, y, "xyxy", 5), B.box_iou, [a, b])  # chunked: same matrix
    check_against(iou_max, B.box_iou_max, [a, b])
    values, indices = iou_max(a, b)
    ref_values, ref_indices = torchvision.ops.box_iou(a, b).max(dim=1)
    torch.testing.assert_close(values, ref_values)
    assert torch.equal(indices, ref_indices)
    ints = (random_boxes(8, 50.0, gen) * 4).long()  # integer boxes keep their eager dtype and value
    for ours, eager in ((area(ints), B.box_area(ints)), (iou(ints, ints, "xyxy"), B.box_iou(ints, ints))):
        assert ours.dtype == eager.dtype
        assert torch.equal(ours, eager)


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_scripted_matches_eager_and_torchvision(in_fmt, out_fmt):
    """References: eager box_convert (values, gradient, dtype of integer boxes) and torchvision.ops.box_convert."""
    gen = torch.Generator().manual_seed(1)
    boxes = random_boxes(11, 40.0, gen).requires_grad_()
    convert = script(B.box_convert)
    check_against(convert, B.box_convert, [boxes, in_fmt, out_fmt])
    check_against(convert, torchvision.ops.box_convert, [boxes, in_fmt, out_fmt])
    ints = boxes.detach().long()
    assert torch.equal(convert(ints, in_fmt, out_fmt), B.box_convert(ints, in_fmt, out_fmt))
    assert convert(ints, in_fmt, out_fmt).dtype == torchvision.ops.box_convert(ints, in_fmt, out_fmt).dtype


def test_clip_and_remove_small_boxes_scripted_match_eager_and_torchvision():
    """References: the eager operators and torchvision.ops.clip_boxes_to_image / remove_small_boxes."""
    gen = torch.Generator().manual_seed(2)
    boxes = (random_boxes(30, 120.0, gen) - 10).requires_grad_()
    clip, small = script(B.clip_boxes), script(B.remove_small_boxes)
    for size in ((90, 70), [64, 100]):
        check_against(clip, B.clip_boxes, [boxes, size])
        check_against(
            lambda b, s=size: clip(b, s), lambda b, s=size: torchvision.ops.clip_boxes_to_image(b, s), [boxes]
        )
    assert torch.equal(clip(boxes, torch.Size([90, 70])), B.clip_boxes(boxes, (90, 70)))
    for min_size in (5, 15.5):
        kept = small(boxes, min_size)
        assert torch.equal(kept, B.remove_small_boxes(boxes, min_size))
        assert torch.equal(kept, torchvision.ops.remove_small_boxes(boxes, min_size))


@pytest.mark.parametrize("weights", [None, (10.0, 10.0, 5.0, 5.0), [10, 10, 5, 5]])
def test_encode_decode_scripted_match_eager_and_box_coder(weights):
    """References: eager encode_boxes / decode_boxes and torchvision's BoxCoder (values and gradients); the weights
    may be left out, a tuple, or a list of ints (TorchScript converts them as eager code reads them)."""
    gen = torch.Generator().manual_seed(3)
    gt = random_boxes(20, 60.0, gen).requires_grad_()
    proposals = random_boxes(20, 60.0, gen).requires_grad_()
    deltas = (torch.randn(20, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    encode, decode = script(B.encode_boxes), script(B.decode_boxes)
    extra = () if weights is None else (weights,)
    coder = BoxCoder(tuple(float(w) for w in weights or (1, 1, 1, 1)))
    check_against(lambda g, p: encode(g, p, *extra), lambda g, p: B.encode_boxes(g, p, *extra), [gt, proposals])
    check_against(lambda g, p: encode(g, p, *extra), coder.encode_single, [gt, proposals])
    check_against(lambda d, p: decode(d, p, *extra), lambda d, p: B.decode_boxes(d, p, *extra), [deltas, proposals])
    check_against(lambda d, p: decode(d, p, *extra), coder.decode_single, [deltas, proposals])
    clamped = decode(deltas * 10, proposals, (1.0, 1.0, 1.0, 1.0), 1.5)  # clamp given positionally
    torch.testing.assert_close(clamped, B.decode_boxes(deltas * 10, proposals, clamp=1.5))


@pytest.mark.parametrize("backend", ["auto", "torch", pytest.param("c", marks=needs_c)])
def test_nms_and_batched_nms_scripted_match_eager_and_torchvision(backend):
    """References: eager nms / batched_nms on the same backend and torchvision.ops.nms / batched_nms (kept indices);
    the backend is passed by keyword, as eager callers do."""
    gen = torch.Generator().manual_seed(4)
    boxes, scores, idxs = detections(gen)
    nms, batched = script(B.nms), script(B.batched_nms)
    for threshold in (0.3, 0.5, 0.7):
        keep = nms(boxes, scores, threshold, backend=backend)
        assert torch.equal(keep, B.nms(boxes, scores, threshold, backend=backend))
        assert torch.equal(keep, torchvision.ops.nms(boxes, scores, threshold))
        assert 0 < len(keep) < len(boxes)
        keep = batched(boxes, scores, idxs, threshold, backend)
        assert torch.equal(keep, B.batched_nms(boxes, scores, idxs, threshold, backend=backend))
        assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idxs, threshold))
    empty = batched(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_scripted_matches_eager(method):
    """Reference: eager soft_nms (torchvision has none), keywords and positional arguments both."""
    gen = torch.Generator().manual_seed(5)
    boxes, scores, _ = detections(gen, 40)
    soft = script(B.soft_nms)
    keep, kept_scores = soft(boxes, scores, method, 0.5, 0.3, 0.05, "torch")
    ref_keep, ref_scores = B.soft_nms(
        boxes, scores, method=method, sigma=0.5, iou_threshold=0.3, score_threshold=0.05, backend="torch"
    )
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(kept_scores, ref_scores, rtol=0, atol=0)
    keep, kept_scores = soft(boxes, scores, method=method, score_threshold=0.2)
    ref_keep, ref_scores = B.soft_nms(boxes, scores, method=method, score_threshold=0.2)
    assert torch.equal(keep, ref_keep) and torch.equal(kept_scores, ref_scores)


# --- RoI operators ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_scripted_matches_eager_and_torchvision(aligned, sampling_ratio):
    """References: eager roi_align and torchvision.ops.roi_align, forward and input gradient, for boxes as
    Tensor[K, 5] and as a list of Tensor[L, 4], output sizes as an int, a tuple and a list."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 12, 10, generator=gen, dtype=torch.float64).requires_grad_()
    rois = random_rois(9, 40.0, 2, gen)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    scripted = script(roi_align)
    for boxes in (rois, per_image):
        for size in (3, (2, 4), [4, 3]):
            args = [x, boxes, size, 0.25, sampling_ratio, aligned]
            check_against(scripted, roi_align, args)
            check_against(scripted, torchvision.ops.roi_align, args, atol=1e-12)
    out = scripted(x, rois, 3, 0.25, sampling_ratio, aligned, backend="torch")
    torch.testing.assert_close(out, roi_align(x, rois, 3, 0.25, sampling_ratio, aligned, backend="torch"))


def test_roi_align_scripted_under_cpu_autocast_keeps_torchvisions_dtype():
    """References: eager roi_align and torchvision.ops.roi_align under the same torch.autocast("cpu") (computed in
    float32, returned in the input's bfloat16)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 16, 16, generator=gen).bfloat16()
    rois = random_rois(12, 60.0, 2, gen, torch.float32)
    scripted = script(roi_align)
    with torch.autocast("cpu"):
        out = scripted(x, rois, 3, 0.25, 2, True)
        assert (
            out.dtype
            == roi_align(x, rois, 3, 0.25, 2, True).dtype
            == torchvision.ops.roi_align(x, rois, 3, 0.25, 2, True).dtype
        )
        torch.testing.assert_close(out, roi_align(x, rois, 3, 0.25, 2, True), rtol=0, atol=0)
        ref = torchvision.ops.roi_align(x, rois, 3, 0.25, 2, True)
        torch.testing.assert_close(out.float(), ref.float(), atol=8e-3, rtol=8e-3)  # bfloat16 output: one rounding


@pytest.mark.parametrize("backend", ["auto", "torch", pytest.param("c", marks=needs_c)])
def test_roi_pool_scripted_matches_eager_and_torchvision(backend):
    """References: eager roi_pool and torchvision.ops.roi_pool, forward and input gradient."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 12, 10, generator=gen, dtype=torch.float64).requires_grad_()
    rois = random_rois(9, 40.0, 2, gen)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    scripted = script(roi_pool)
    for boxes in (rois, per_image):
        for size in (3, (2, 4)):
            check_against(lambda *a: scripted(*a, backend=backend), roi_pool, [x, boxes, size, 0.25])
            check_against(lambda *a: scripted(*a, backend=backend), torchvision.ops.roi_pool, [x, boxes, size, 0.25])


def pyramid(gen: torch.Generator, dtype=torch.float64) -> tuple[dict[str, Tensor], list[Tensor], list[tuple[int, int]]]:
    """Three levels of a stride-4 .. stride-16 pyramid over 128 x 96 images, and boxes of many sizes per image."""
    feats = {f"p{i}": torch.randn(2, 3, 128 >> i, 96 >> i, generator=gen, dtype=dtype) for i in range(2, 5)}
    boxes = [random_boxes(7, 90.0, gen, dtype) * torch.tensor([1.0, 1.3, 1.0, 1.3], dtype=dtype) for _ in range(2)]
    return feats, boxes, [(128, 96), (120, 90)]


def test_multi_scale_roi_align_scripted_matches_eager():
    """Reference: eager multi_scale_roi_align (scales given by position, as TorchScript allows), values and gradient
    of every level."""
    gen = torch.Generator().manual_seed(9)
    feats, boxes, _ = pyramid(gen)
    levels = [f.requires_grad_() for f in feats.values()]
    scripted = script(multi_scale_roi_align)
    scales = [0.25, 0.125, 0.0625]

    def ours(*maps):
        return scripted(list(maps), boxes, 3, scales, 2)

    def eager(*maps):
        return multi_scale_roi_align(list(maps), boxes, 3, scales=scales, sampling_ratio=2)

    check_against(ours, eager, levels)


# --- modules ----------------------------------------------------------------------------------------------------


def test_roi_modules_scripted_match_eager_and_torchvision_modules():
    """References: the eager modules and torchvision.ops.RoIAlign / RoIPool with the same hyperparameters (an int
    spatial scale and a list output size included: the typed attributes convert them)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 12, 10, generator=gen, dtype=torch.float64).requires_grad_()
    rois = random_rois(8, 10.0, 2, gen)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    pairs = [
        (RoIAlign(3, 0.5, 2, True), torchvision.ops.RoIAlign(3, 0.5, 2, True)),
        (RoIAlign([2, 3], 1, -1), torchvision.ops.RoIAlign([2, 3], 1, -1)),
        (RoIPool((3, 2), 0.5), torchvision.ops.RoIPool((3, 2), 0.5)),
        (RoIPool(2, 1), torchvision.ops.RoIPool(2, 1)),
    ]
    for ours, ref in pairs:
        scripted = script(ours)
        assert scripted.original_name == type(ours).__name__
        for boxes in (rois, per_image):
            check_against(scripted, ours, [x, boxes])
            check_against(scripted, ref, [x, boxes], atol=1e-12)


def test_multi_scale_module_scripted_matches_eager_and_torchvision():
    """References: the eager MultiScaleRoIAlign and torchvision.ops.MultiScaleRoIAlign on the same pyramid."""
    gen = torch.Generator().manual_seed(11)
    feats, boxes, shapes = pyramid(gen)
    ours = MultiScaleRoIAlign(["p2", "p3", "p4"], (3, 4), 2)
    scripted = script(ours)
    ref = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4"], (3, 4), 2)
    out = scripted(feats, boxes, shapes)
    torch.testing.assert_close(out, ours(feats, boxes, shapes), rtol=0, atol=0)
    torch.testing.assert_close(out, ref(feats, boxes, shapes))
    one_level = MultiScaleRoIAlign(["p3"], 2, -1, aligned=True)
    torch.testing.assert_close(script(one_level)(feats, boxes, shapes), one_level(feats, boxes, shapes))


class TwoStageHead(nn.Module):
    """A small detector: a conv backbone with two levels, NMS on the given proposals, RoI align, RoI pool and the
    FPN pooler on the kept boxes, then a linear classifier on the pooled features."""

    def __init__(self, align: nn.Module, pool: nn.Module, pyramid: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.align, self.pool, self.pyramid = align, pool, pyramid
        self.classify = nn.Linear(4 * 9 + 4 * 4 + 4 * 9, 5)

    def forward(self, images: Tensor, proposals: list[Tensor], scores: list[Tensor]) -> Tensor:
        p1 = torch.relu(self.stem(images))
        p2 = torch.relu(self.down(p1))
        kept = [boxes[B.nms(boxes, s, 0.6)] for boxes, s in zip(proposals, scores)]  # noqa: B905 (TorchScript)
        shapes = [(images.shape[-2], images.shape[-1]) for _ in kept]
        features = [
            self.align(p1, kept).flatten(1),
            self.pool(p2, kept).flatten(1),
            self.pyramid({"p1": p1, "p2": p2}, kept, shapes).flatten(1),
        ]
        return self.classify(torch.cat(features, dim=1))


def make_head(ops) -> TwoStageHead:
    torch.manual_seed(0)
    align, pool, pyr = ops.RoIAlign(3, 1.0, 2, True), ops.RoIPool(2, 0.5), ops.MultiScaleRoIAlign(["p1", "p2"], 3, 2)
    return TwoStageHead(align, pool, pyr).double()


def test_model_containing_roi_align_scripted_as_a_whole():
    """The whole model is scripted; references: the same model in eager mode (outputs and every parameter's
    gradient) and the same model built with torchvision's RoIAlign, RoIPool and MultiScaleRoIAlign."""
    gen = torch.Generator().manual_seed(12)
    images = torch.randn(2, 3, 24, 32, generator=gen, dtype=torch.float64)
    proposals = [random_boxes(12, 24.0, gen), random_boxes(9, 24.0, gen)]
    scores = [torch.rand(12, generator=gen, dtype=torch.float64), torch.rand(9, generator=gen, dtype=torch.float64)]
    model = make_head(convatlas.nn)
    scripted = script(model)
    out, ref = scripted(images, proposals, scores), model(images, proposals, scores)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), list(scripted.parameters()))
    ref_grads = torch.autograd.grad((ref * weights).sum(), list(model.parameters()))
    for name, g, r in zip([n for n, _ in model.named_parameters()], grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, msg=lambda m, name=name: f"gradient of {name}: {m}")
    torchvision_model = make_head(torchvision.ops)
    torch.testing.assert_close(out, torchvision_model(images, proposals, scores))


def test_user_scripted_postprocess_calls_the_operators():
    """A user's own scripted function chaining the box operators; reference: the same function run eagerly."""

    def postprocess(deltas: Tensor, anchors: Tensor, scores: Tensor, labels: Tensor, size: list[int]) -> Tensor:
        boxes = B.clip_boxes(B.decode_boxes(deltas, anchors, (10.0, 10.0, 5.0, 5.0)), size)
        keep = B.remove_small_boxes(boxes, 2.0)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = B.batched_nms(boxes, scores, labels, 0.5)
        return B.box_convert(boxes[keep], "xyxy", "cxcywh")

    gen = torch.Generator().manual_seed(13)
    anchors, scores, labels = detections(gen, 80)
    deltas = torch.randn(80, 4, generator=gen)
    scripted = script(postprocess)
    out = scripted(deltas, anchors, scores, labels, [90, 110])
    assert len(out) > 0
    torch.testing.assert_close(out, postprocess(deltas, anchors, scores, labels, [90, 110]), rtol=0, atol=0)


# --- what scripting cannot do -----------------------------------------------------------------------------------


def test_saving_a_scripted_model_names_the_python_call(tmp_path):
    """torch.jit.save cannot serialise the Python implementation the compiled code calls; it must say which call."""
    path = tmp_path / "model.pt"
    for module, name in ((RoIAlign(3, 0.5), "_roi_align"), (RoIPool(2), "_roi_pool")):
        with pytest.raises(RuntimeError, match=f"Could not export Python function call '{name}'"):
            torch.jit.save(torch.jit.script(module), str(path))
    with pytest.raises(RuntimeError, match="Could not export Python function call '_nms'"):
        torch.jit.script(B.nms).save(str(path))


def test_bad_input_in_a_scripted_call_carries_the_eager_message():
    """The ValueError of the Python implementation reaches the caller of the scripted function as TorchScript's
    RuntimeError with the same message; an argument of the wrong type is refused by TorchScript itself."""
    x = torch.randn(1, 2, 8, 8)
    scripted_align, scripted_convert = script(roi_align), script(B.box_convert)
    with pytest.raises(ValueError, match=r"must have shape \[K, 5\]") as eager:
        roi_align(x, torch.zeros(1, 4), 2)
    with pytest.raises(RuntimeError, match=r"ValueError: .*must have shape \[K, 5\]") as compiled:
        scripted_align(x, torch.zeros(1, 4), 2)
    assert str(eager.value) in str(compiled.value)
    with pytest.raises(RuntimeError, match="ValueError: in_fmt must be one of"):
        scripted_convert(torch.zeros(1, 4), "xy", "xyxy")
    with pytest.raises(RuntimeError, match="Expected a value of type"):
        scripted_align(x, (torch.zeros(1, 4),), 2)  # a tuple of boxes: eager code takes it, TorchScript does not
