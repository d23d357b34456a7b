"""The operators keep torchvision's contract: autocast, torch.fx leaves, empty and integer inputs, and the inputs that
used to give silent wrong answers (a NaN box in soft-NMS, int64 scores above 2**24, integer centres in box_convert,
a box of side 1e9 in roi_align).

References, named in each test: torchvision.ops (same inputs, same autocast), the eager model for traced graphs, and
slow float64 loops where torchvision has no answer.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from convatlas.nn import MultiScaleRoIAlign, RoIAlign, RoIPool
from convatlas.ops import boxes as B
from convatlas.ops.roi import multi_scale_roi_align, roi_align, roi_pool
from helpers import check_against
from test_kernels_native import needs_c

ROOT = Path(__file__).parent.parent


@pytest.fixture(params=["sparse", "separable"])
def align_path(request, monkeypatch):
    """Both PyTorch paths of roi_align: the sparse weight matrix and the dense separable contractions."""
    import convatlas.ops.roi as roi_module

    monkeypatch.setattr(roi_module, "_SPARSE_COST", 0.0 if request.param == "sparse" else math.inf)
    return request.param


def rois_on(size: float, k: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=gen) * size * 1.1 - 0.1 * size
    wh = torch.rand(k, 2, generator=gen) * size * 0.7
    return torch.cat([torch.randint(0, batch, (k, 1), generator=gen).float(), xy, xy + wh], dim=1)


# --- autocast ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_under_cpu_autocast_is_float32_with_torchvisions_dtype(x_dtype, aligned, align_path):
    """Under torch.autocast("cpu") the products must not run in bfloat16 (they crashed or lost 7.9e-3);
    reference: torchvision.ops.roi_align under the same autocast (it computes in float32)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 20, 24, generator=gen).to(x_dtype)
    rois = rois_on(90.0, 30, 2, gen)
    with torch.autocast("cpu"):
        for ratio in (-1, 2):
            ours = roi_align(x, rois, (5, 4), 0.25, ratio, aligned)
            ref = torchvision.ops.roi_align(x, rois, (5, 4), 0.25, ratio, aligned)
            assert ours.dtype == ref.dtype == x_dtype
            tol = 1e-5 if x_dtype == torch.float32 else 8e-3  # bfloat16 output: one rounding
            torch.testing.assert_close(ours.float(), ref.float(), atol=tol, rtol=tol)
            assert ours.dtype == RoIAlign((5, 4), 0.25, ratio, aligned)(x, rois).dtype


def test_multi_scale_pooler_and_roi_pool_under_cpu_autocast():
    """References: torchvision's MultiScaleRoIAlign and roi_pool under the same autocast."""
    gen = torch.Generator().manual_seed(1)
    feats = {f"p{i}": torch.randn(2, 3, 64 >> (i - 2), 48 >> (i - 2), generator=gen) for i in range(2, 5)}
    boxes = [rois_on(200.0, 7, 1, gen)[:, 1:].abs() for _ in range(2)]
    boxes = [torch.cat([b[:, :2], b[:, :2] + b[:, 2:] + 4], dim=1) for b in boxes]
    shapes = [(256, 192), (250, 190)]
    with torch.autocast("cpu"):
        ours = MultiScaleRoIAlign(list(feats), 4, 2)(feats, boxes, shapes)
        ref = torchvision.ops.MultiScaleRoIAlign(list(feats), 4, 2)(feats, boxes, shapes)
        assert ours.dtype == ref.dtype == torch.float32
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        x = feats["p2"]
        rois = torch.cat([torch.zeros(7, 1), boxes[0] / 4], dim=1)
        torch.testing.assert_close(roi_pool(x, rois, 3), torchvision.ops.roi_pool(x, rois, 3))
        torch.testing.assert_close(
            multi_scale_roi_align(list(feats.values()), boxes, 4, scales=[0.25, 0.125, 0.0625], sampling_ratio=2),
            ref,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nms_and_box_ops_under_cpu_autocast(dtype):
    """References: torchvision on the same values given as float32, under the same autocast (for float16/bfloat16
    boxes torchvision subtracts corners in the boxes' dtype before upcasting: 0.992 for the IoU of a box with itself;
    ours computes everything in float32, so it equals torchvision on float32 boxes)."""
    gen = torch.Generator().manual_seed(2)
    boxes = torch.rand(300, 2, generator=gen) * 100
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(300, 2, generator=gen) * 40], dim=1).to(dtype)
    scores = torch.rand(300, generator=gen).to(dtype)
    with torch.autocast("cpu"):
        keep = B.nms(boxes, scores, 0.5)
        assert torch.equal(keep, B.nms(boxes.float(), scores.float(), 0.5))
        assert torch.equal(keep, torchvision.ops.nms(boxes.float(), scores.float(), 0.5))
        iou = B.box_iou(boxes, boxes)
        ref = torchvision.ops.box_iou(boxes.float(), boxes.float())
        assert iou.dtype == torchvision.ops.box_iou(boxes, boxes).dtype == torch.float32
        torch.testing.assert_close(iou, ref)
        assert torch.equal(iou.diagonal(), torch.ones(300))
        torch.testing.assert_close(B.box_area(boxes), torchvision.ops.box_area(boxes))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
def test_roi_ops_under_cuda_autocast(x_dtype):
    """Reference: torchvision under torch.autocast("cuda"): computed in float32, returned in the input's dtype."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 20, 24, generator=gen).to(x_dtype).cuda()
    rois = rois_on(90.0, 30, 2, gen).cuda()
    with torch.autocast("cuda"):
        for backend in ("auto", "torch"):
            ours = roi_align(x, rois, 5, 0.25, 2, True, backend=backend)
            ref = torchvision.ops.roi_align(x, rois, 5, 0.25, 2, True)
            assert ours.dtype == ref.dtype == x_dtype
            torch.testing.assert_close(ours.float(), ref.float(), atol=4e-3, rtol=4e-3)
        keep = B.nms(rois[:, 1:].half(), torch.rand(30, device="cuda").half(), 0.5)
        assert keep.dtype == torch.int64 and keep.is_cuda


# --- torch.fx -----------------------------------------------------------------------------------------------------


class Detector(nn.Module):
    """A small two-stage shape: a conv backbone, then RoI align, RoI pool and the FPN pooler on fixed boxes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.align = RoIAlign(3, 0.5, 2, True)
        self.pool = RoIPool(2, 0.5)
        self.pyramid = MultiScaleRoIAlign(["p1", "p2"], 3, 2)

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]):
        p1 = self.stem(images)
        p2 = self.down(p1)
        aligned = self.align(p1, boxes)
        pooled = self.pool(p1, boxes)
        pyramid = self.pyramid({"p1": p1, "p2": p2}, boxes, [(16, 16), (16, 16)])
        return aligned.flatten(1).sum(1) + pooled.flatten(1).sum(1) + pyramid.flatten(1).sum(1)


def test_modules_are_single_nodes_for_symbolic_trace_and_create_feature_extractor():
    """torchvision's feature extractor does not know our classes: they must be leaves by themselves.
    Reference: the eager model on the same inputs."""
    model = Detector().eval()
    images = torch.randn(2, 3, 16, 16)
    boxes = [torch.tensor([[1.0, 2.0, 12.0, 14.0], [0.0, 0.0, 6.0, 5.0]]), torch.tensor([[3.0, 3.0, 15.0, 9.0]])]
    graph = torch.fx.symbolic_trace(model)
    calls = [n.target.__name__ for n in graph.graph.nodes if n.op == "call_function"]
    assert {"roi_align", "roi_pool", "_pool_named_levels"} <= set(calls)
    torch.testing.assert_close(graph(images, boxes), model(images, boxes))
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert [n for n in eval_nodes if n.startswith("align")] == ["align.roi_align"]  # one node, not its insides
    extractor = create_feature_extractor(model, return_nodes={"align.roi_align": "aligned", "pool.roi_pool": "pooled"})
    out = extractor(images, boxes)
    torch.testing.assert_close(out["aligned"], model.align(model.stem(images), boxes))
    torch.testing.assert_close(out["pooled"], model.pool(model.stem(images), boxes))


def test_functions_are_leaves_wherever_they_are_imported():
    """A model calling the operators through its own imports (no torch.fx.wrap in its module); reference: eager."""

    class Head(nn.Module):
        def forward(self, x, boxes, scores):
            keep = B.nms(boxes, scores, 0.5)
            rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
            return roi_align(x, rois[keep], 2), B.box_iou(boxes, boxes)

    x, scores = torch.randn(1, 2, 8, 8), torch.tensor([0.9, 0.8, 0.3])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.5, 0.5, 4.0, 4.0], [4.0, 4.0, 7.0, 7.0]])
    graph = torch.fx.symbolic_trace(Head())
    targets = [n.target.__name__ for n in graph.graph.nodes if n.op == "call_function"]
    assert {"nms", "roi_align", "box_iou"} <= set(targets)
    for a, b in zip(graph(x, boxes, scores), Head()(x, boxes, scores), strict=True):
        torch.testing.assert_close(a, b)


# --- empty and integer inputs ---------------------------------------------------------------------------------------


def test_empty_inputs_give_torchvisions_empty_results():
    """Reference: torchvision.ops on the same empty inputs."""
    empty = torch.empty((0,), dtype=torch.int64)
    for got in (B.batched_nms(empty, None, None, None), torchvision.ops.batched_nms(empty, None, None, None)):
        assert got.shape == (0,) and got.dtype == torch.int64
    assert B.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)
    assert B.nms(torch.zeros(0, 4), torch.zeros(0), 0.5, backend="torch").shape == (0,)
    x = torch.randn(2, 3, 8, 8)
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
        for ours, ref in ((roi_align, torchvision.ops.roi_align), (roi_pool, torchvision.ops.roi_pool)):
            assert ours(x, boxes, 2).shape == ref(x, boxes, 2).shape == (0, 3, 2, 2)
    assert (
        B.box_iou(torch.zeros(0, 4), torch.rand(3, 4)).shape
        == torchvision.ops.box_iou(torch.zeros(0, 4), torch.rand(3, 4)).shape
    )
    assert B.box_convert(torch.zeros(0, 4), "xyxy", "cxcywh").shape == (0, 4)
    assert MultiScaleRoIAlign(["a"], 2, 2)({"a": x}, [torch.zeros(0, 4)] * 2, [(32, 32)] * 2).shape == (0, 3, 2, 2)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_box_convert_of_integer_boxes_matches_torchvision(dtype):
    """Centres of integer boxes are not truncated (2.5, not 2); reference: torchvision.ops.box_convert, values and
    dtype, every pair of formats."""
    boxes = torch.tensor([[0, 0, 5, 4], [1, 1, 4, 4], [2, 3, 9, 6]], dtype=dtype)
    for a in ("xyxy", "xywh", "cxcywh"):
        for b in ("xyxy", "xywh", "cxcywh"):
            ours, ref = B.box_convert(boxes, a, b), torchvision.ops.box_convert(boxes, a, b)
            assert ours.dtype == ref.dtype, (a, b)
            assert torch.equal(ours, ref), (a, b)
    assert B.box_convert(boxes, "xyxy", "cxcywh")[0].tolist() == [2.5, 2.0, 5.0, 4.0]


def test_integer_boxes_in_area_iou_and_roi_ops():
    """References: torchvision's box_area/box_iou on the same integer boxes (our areas are int64, so int32 boxes
    of 50,000 px do not overflow), and torchvision's RoI ops on the same boxes as float."""
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 50, 50], [20, 30, 90, 80]], dtype=torch.int32)
    assert B.box_area(boxes).tolist() == torchvision.ops.box_area(boxes).tolist()
    torch.testing.assert_close(B.box_iou(boxes, boxes), torchvision.ops.box_iou(boxes, boxes))
    for fmt in ("xywh", "cxcywh"):
        converted = torchvision.ops.box_convert(boxes.double(), "xyxy", fmt)
        torch.testing.assert_close(
            B.box_iou(converted, converted, fmt), torchvision.ops.box_iou(converted, converted, fmt=fmt)
        )
    big = torch.tensor([[0, 0, 50000, 50000]], dtype=torch.int32)
    assert B.box_area(big).item() == 2_500_000_000
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    rois = torch.tensor([[0, 1, 2, 12, 9], [0, 0, 0, 15, 15]], dtype=torch.int64)
    torch.testing.assert_close(roi_align(x, rois, 3), torchvision.ops.roi_align(x, rois.double(), 3))
    torch.testing.assert_close(roi_pool(x, rois, 3), torchvision.ops.roi_pool(x, rois.double(), 3))


def test_batched_box_area_and_iou_match_torchvision():
    """Leading dimensions, as torchvision's box_area/box_iou take them; reference: torchvision."""
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(2, 5, 4, generator=gen)
    a[..., 2:] += a[..., :2]
    b = torch.rand(1, 3, 4, generator=gen)
    b[..., 2:] += b[..., :2]
    torch.testing.assert_close(B.box_area(a), torchvision.ops.box_area(a))
    torch.testing.assert_close(B.box_iou(a, b, chunk_elems=4), torchvision.ops.box_iou(a, b))


# --- silent wrong answers -------------------------------------------------------------------------------------------


def slow_soft_nms_nan_safe(boxes, scores, sigma, score_thr):
    """Reference: Gaussian soft-NMS as a float64 loop in which a NaN IoU is no overlap (as NMS's ``IoU > t``)."""
    b, s = boxes.double().tolist(), scores.double().tolist()
    alive = [i for i in range(len(b)) if s[i] >= score_thr]
    keep = []
    while alive:
        m = max(alive, key=lambda i: (s[i], -i))
        keep.append((m, s[m]))
        alive.remove(m)
        p = b[m]
        for i in alive:
            q = b[i]
            inter = max(0.0, min(p[2], q[2]) - max(p[0], q[0])) * max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            iou = inter / union if union != 0 and not math.isnan(inter / union if union else 0.0) else 0.0
            iou = 0.0 if math.isnan(iou) else iou
            s[i] *= math.exp(-iou * iou / sigma)
        alive = [i for i in alive if s[i] >= score_thr]
    return keep


@pytest.mark.parametrize("backend", [pytest.param("c", marks=needs_c), "torch"])
@pytest.mark.parametrize("nan_first", [True, False])
def test_soft_nms_with_a_nan_box_keeps_the_other_boxes(backend, nan_first):
    """One NaN box used to decay every other box to NaN and drop it; now it overlaps nothing, as in nms.
    References: nms on the same boxes, and a float64 loop."""
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 11], [40, 40, 50, 50.0]], dtype=torch.float64)
    boxes[1, 0] = float("nan")
    scores = torch.tensor([0.9, 0.95 if nan_first else 0.5, 0.8, 0.7], dtype=torch.float64)
    keep, kept_scores = B.soft_nms(boxes, scores, backend=backend)
    assert sorted(keep.tolist()) == [0, 1, 2, 3]
    ref = slow_soft_nms_nan_safe(boxes, scores, 0.5, 0.001)
    assert keep.tolist() == [i for i, _ in ref]
    torch.testing.assert_close(kept_scores, torch.tensor([v for _, v in ref], dtype=torch.float64))
    assert kept_scores[keep.tolist().index(3)].item() == 0.7  # far from everything: not decayed at all
    assert set(B.nms(boxes, scores, 0.3).tolist()) == {0, 1, 3}  # nms keeps the NaN box and the far one too


@pytest.mark.parametrize("backend", [pytest.param("c", marks=needs_c), "torch"])
def test_nms_orders_int64_scores_above_2_pow_24_exactly(backend):
    """2**24 + 1 and 2**24 are one float32: the higher score must still win. Reference: the greedy definition on
    the exact integers (box 1 has the higher score, so it suppresses box 0)."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([2**24, 2**24 + 1, 2**40], dtype=torch.int64)
    assert float(scores[0].float()) == float(scores[1].float())
    assert B.nms(boxes, scores, 0.5, backend=backend).tolist() == [2, 1]
    assert B.batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), 0.5, backend=backend).tolist() == [2, 1]
    keep, kept = B.soft_nms(boxes, scores, backend=backend)
    assert keep.tolist()[:2] == [2, 1] and kept.dtype == torch.float64 and kept[1].item() == 2**24 + 1


def slow_roi_align_from_origin(x, box, out, size, ratio=-1):
    """Reference for boxes that start at the origin: torchvision's formula as a float64 loop over each bin's samples
    that stops once they have left the map (positions grow with the sample index), divided by all g_h * g_w."""
    c, h, w = x.shape
    ph, pw = out
    x1, y1, x2, y2 = box
    bh, bw = max(y2 - y1, 1.0) / ph, max(x2 - x1, 1.0) / pw
    gh = ratio if ratio > 0 else math.ceil(bh)
    gw = ratio if ratio > 0 else math.ceil(bw)

    def samples(start, bin_size, g, limit):
        pts, j = [], 0
        while j < g:
            p = start + (j + 0.5) * bin_size / g
            if p > limit:
                break
            if p >= -1:
                pts.append(p)
            j += 1
        return pts

    def corners(p, limit):
        p = max(p, 0.0)
        lo = int(p)
        if lo >= limit - 1:
            return [(limit - 1, 1.0)]
        return [(lo, 1 - (p - lo)), (lo + 1, p - lo)]

    result = torch.zeros(c, ph, pw, dtype=torch.float64)
    for i in range(ph):
        for j in range(pw):
            acc = torch.zeros(c, dtype=torch.float64)
            for y in samples(y1 + i * bh, bh, gh, h):
                for xx in samples(x1 + j * bw, bw, gw, w):
                    for yi, wy in corners(y, h):
                        for xi, wx in corners(xx, w):
                            acc += wy * wx * x[:, yi, xi].double()
            result[:, i, j] = acc / (gh * gw)
    return result


def test_roi_align_on_a_box_of_side_1e9_is_bounded_and_exact(align_path):
    """Adaptive sampling puts about 1.4e8 x 1.4e8 samples in each bin; only those on the map are evaluated.
    Reference: a float64 loop over the samples that can touch the map (dividing by all of them)."""
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    for box in ([0.0, 0.0, 1e9, 1e9], [0.0, 0.0, 3e4, 12.5]):
        rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
        ours = roi_align(x, rois, (3, 2), 1.0, -1, False)
        ref = slow_roi_align_from_origin(x[0], box, (3, 2), (6, 7))
        torch.testing.assert_close(ours[0], ref, rtol=1e-9, atol=0.0)
        assert ours.abs().max() > 0
    # float32 as well, against torchvision where it is quick: a box of side 3,000 on a 6 x 7 map (g = 1,500)
    x32 = x.float().requires_grad_()
    rois = torch.tensor([[0.0, -2.0, 1.0, 3000.0, 2990.0]])
    check_against(
        lambda inp: roi_align(inp, rois, (2, 2), 1.0, -1, False),
        lambda inp: torchvision.ops.roi_align(inp, rois, (2, 2), 1.0, -1, False),
        [x32],
        atol=1e-9,
        rtol=1e-4,
    )


_HUGE_BOX = """
import resource, torch
from convatlas.ops.roi import roi_align
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = torch.randn(2, 16, 50, 68)
rois = torch.tensor([[0, 0, 0, 1e9, 1e9], [1, -1e9, -1e9, 1e9, 1e9], [0, 10, 10, 200, 300.0]])
for backend_case in range(2):
    out = roi_align(x, rois, 7, 1 / 16, -1, bool(backend_case))
    out.sum()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_roi_align_on_huge_boxes_does_not_allocate_gigabytes():
    """Measured in a fresh process: the peak resident memory grows by well under 1 GB (it used to need ~24 GB)."""
    result = subprocess.run([sys.executable, "-c", _HUGE_BOX], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) < 1024  # MiB


def test_roi_align_refuses_what_it_cannot_bound_and_non_finite_boxes():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"roi_align: box 0 would evaluate up to \d+ samples per bin"):
        roi_align(x, torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]]), 2, 1.0, 10**9)
    with pytest.raises(ValueError, match=r"roi_align: box coordinates must be finite, got box 1 = \[0.0, nan"):
        roi_align(x, torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0], [0.0, 0.0, float("nan"), 4.0, 4.0]]), 2)
    with pytest.raises(ValueError, match="roi_pool: box coordinates must be finite"):
        roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, float("inf"), 8.0]]), 2)
