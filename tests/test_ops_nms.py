"""NMS, batched NMS and soft-NMS against a slow greedy float64 loop and torchvision.ops, on both CPU back ends."""

import math

import pytest
import torch
import torchvision

from convatlas.ops import boxes as B
from convatlas.ops.backend import resolve
from convatlas.ops.kernels import nms as K
from convatlas.ops.kernels.native import library
from test_kernels_native import needs_c

BACKENDS = [pytest.param("c", marks=needs_c), "torch"]


def random_boxes(n: int, size: float = 200.0, scale: float = 0.25, dtype=torch.float32, gen=None) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size * scale + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def clustered_boxes(n: int, objects: int = 6, dtype=torch.float32) -> torch.Tensor:
    """Detector-like output: jittered copies of a few object boxes."""
    centres = random_boxes(objects, size=300.0, scale=0.3, dtype=torch.float64)
    pick = centres[torch.randint(0, objects, (n,))]
    size = (pick[:, 2:] - pick[:, :2]).repeat(1, 2)
    return (pick + torch.randn(n, 4, dtype=torch.float64) * 0.1 * size).to(dtype)


def slow_greedy(boxes: torch.Tensor, scores: torch.Tensor, thr: float, idxs=None) -> list[int]:
    """Reference: the greedy definition, a Python loop in float64 (ties: lower index first)."""
    b = boxes.double().tolist()
    s = scores.double().tolist()
    cls = [0] * len(b) if idxs is None else idxs.tolist()
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))
    kept: list[int] = []
    for i in order:
        p = b[i]
        suppressed = False
        for j in kept:
            q = b[j]
            if cls[i] != cls[j]:
                continue
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = w * h
            iou = inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
            if iou > thr:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("thr", [0.2, 0.5, 0.8])
def test_nms_equals_greedy_reference_and_torchvision(backend, thr):
    gen = torch.Generator().manual_seed(int(thr * 10))
    for boxes in (random_boxes(300, dtype=torch.float64, gen=gen), clustered_boxes(300, dtype=torch.float64)):
        scores = torch.rand(len(boxes), generator=gen, dtype=torch.float64)
        keep = K.nms(boxes, scores, thr, backend=backend)
        assert keep.dtype == torch.int64
        assert keep.tolist() == slow_greedy(boxes, scores, thr)  # reference: float64 greedy loop
        b32, s32 = boxes.float(), scores.float()
        assert torch.equal(K.nms(b32, s32, thr, backend=backend), torchvision.ops.nms(b32, s32, thr))


@needs_c
def test_public_nms_uses_the_c_kernel_when_it_builds():
    assert library() is not None, "a C compiler is available here, so the C kernels must build"
    assert resolve("nms", "auto", "cpu") == "c"
    boxes, scores = clustered_boxes(2000), torch.rand(2000)
    for backend in ("auto", "c", "torch"):  # reference: torchvision.ops.nms
        assert torch.equal(B.nms(boxes, scores, 0.5, backend=backend), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_just_above_threshold_is_suppressed_and_at_threshold_kept(backend):
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 2 / 4 = 0.5
    scores = torch.tensor([0.9, 0.8])
    assert K.nms(boxes, scores, 0.5, backend=backend).tolist() == [0, 1]  # not strictly greater: kept
    assert K.nms(boxes, scores, 0.4999, backend=backend).tolist() == [0]
    # float32 threshold rounding: 0.2 is not representable; IoU == float32(0.2) > 0.2 (double) must suppress
    iou32 = torch.tensor(0.2, dtype=torch.float32)
    assert float(iou32) > 0.2
    boxes = torch.tensor([[0.0, 0.0, 5.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU = 1/5 computed in float32
    assert K.nms(boxes, scores, 0.2, backend=backend).tolist() == torchvision.ops.nms(boxes, scores, 0.2).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_boxes_whose_area_overflows_fp16(backend):
    boxes = torch.tensor([[0, 0, 400, 400], [10, 10, 410, 410], [500, 0, 900, 400]], dtype=torch.float16)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float16)
    naive_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert torch.isinf(naive_area).all()  # computing in fp16 would give IoU = NaN and suppress nothing
    keep = B.nms(boxes, scores, 0.5, backend=backend)
    assert keep.tolist() == [0, 2] == slow_greedy(boxes, scores, 0.5)
    assert B.nms(boxes.bfloat16(), scores.bfloat16(), 0.5, backend=backend).tolist() == [0, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_index(backend):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 30], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.7, 0.7, 0.5])
    assert K.nms(boxes, scores, 0.5, backend=backend).tolist() == [2, 0, 4]
    idxs = torch.tensor([0, 1, 0, 0, 1])
    assert K.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist() == [2, 0, 1, 4]


def test_empty_inputs_return_empty_int64():
    for fn in (lambda b, s: B.nms(b, s, 0.5), lambda b, s: B.batched_nms(b, s, s.long(), 0.5)):
        keep = fn(torch.zeros(0, 4), torch.zeros(0))
        assert keep.shape == (0,) and keep.dtype == torch.int64
    idx, scores = B.soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert idx.shape == (0,) and idx.dtype == torch.int64 and scores.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_nonfinite_and_negative_threshold(backend):
    boxes = random_boxes(60, dtype=torch.float64)
    boxes[3] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero width
    boxes[7] = torch.tensor([9.0, 9.0, 2.0, 2.0])  # inverted
    scores = torch.rand(60, dtype=torch.float64)
    for thr in (0.3, -0.1, 0.0, 1.0):
        assert K.nms(boxes, scores, thr, backend=backend).tolist() == slow_greedy(boxes, scores, thr), thr
    boxes[11, 2] = float("nan")
    boxes[12, 0] = float("-inf")
    b32, s32 = boxes.float(), scores.float()
    assert torch.equal(K.nms(b32, s32, 0.4, backend=backend), torchvision.ops.nms(b32, s32, 0.4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_nms_equals_per_class_reference_and_torchvision(backend):
    gen = torch.Generator().manual_seed(3)
    # coordinates on a 1/8 grid so torchvision's coordinate-offset trick is exact too
    boxes = (clustered_boxes(400, dtype=torch.float64) * 8).round() / 8
    scores = torch.rand(400, generator=gen, dtype=torch.float64)
    idxs = torch.randint(0, 5, (400,), generator=gen)
    keep = K.batched_nms(boxes, scores, idxs, 0.5, backend=backend)
    expected = slow_greedy(boxes, scores, 0.5, idxs)  # reference: per-class float64 greedy loop
    assert sorted(keep.tolist()) == sorted(expected)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes.float(), scores.float(), idxs, 0.5))


def test_unknown_or_unavailable_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"nms: backend must be one of \('auto', 'c', 'torch'\), got 'gpu'"):
        B.nms(torch.zeros(1, 4), torch.zeros(1), 0.5, backend="gpu")
    with pytest.raises(ValueError, match="soft_nms: backend must be one of"):
        B.soft_nms(torch.zeros(1, 4), torch.zeros(1), backend="triton")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \(3, 5\)"):
        B.nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \[N\] with N = len\(boxes\) = 3, got \(2,\)"):
        B.nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(TypeError, match="boxes must be floating point"):
        B.nms(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5)
    with pytest.raises(TypeError, match="idxs must be an integer tensor"):
        B.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="method must be 'linear' or 'gaussian'"):
        B.soft_nms(torch.zeros(3, 4), torch.zeros(3), method="hard")


def slow_soft_nms(boxes, scores, method, sigma, thr, score_thr):
    """Reference: Bodla et al.'s Algorithm 1 as a Python loop in float64."""
    b = boxes.double().tolist()
    s = scores.double().tolist()
    alive = [i for i in range(len(b)) if s[i] >= score_thr]
    keep, kept_scores = [], []
    while alive:
        m = max(alive, key=lambda i: (s[i], -i))
        keep.append(m)
        kept_scores.append(s[m])
        alive.remove(m)
        p = b[m]
        for i in alive:
            q = b[i]
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = w * h
            iou = inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
            if method == "linear":
                s[i] *= (1 - iou) if iou > thr else 1.0
            else:
                s[i] *= math.exp(-iou * iou / sigma)
        alive = [i for i in alive if s[i] >= score_thr]
    return keep, kept_scores


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_equals_reference(method, backend):
    boxes = clustered_boxes(80, objects=4, dtype=torch.float64)
    scores = torch.rand(80, dtype=torch.float64)
    keep, new_scores = B.soft_nms(
        boxes, scores, method=method, sigma=0.5, iou_threshold=0.3, score_threshold=0.05, backend=backend
    )
    ref_keep, ref_scores = slow_soft_nms(boxes, scores, method, 0.5, 0.3, 0.05)
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(new_scores, torch.tensor(ref_scores, dtype=torch.float64))
    assert len(keep) < 80  # some scores decayed below the threshold


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_nms_equals_cpu():
    boxes, scores = clustered_boxes(5000), torch.rand(5000)
    idxs = torch.randint(0, 3, (5000,))
    expected = B.nms(boxes, scores, 0.5)
    expected_batched = B.batched_nms(boxes, scores, idxs, 0.5)
    for backend in ("c", "torch"):  # the C kernel on the host (default) and blocked PyTorch on the device
        keep = B.nms(boxes.cuda(), scores.cuda(), 0.5, backend=backend)
        assert keep.is_cuda and torch.equal(keep.cpu(), expected)
        got = B.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5, backend=backend).cpu()
        assert torch.equal(got, expected_batched)
        soft = B.soft_nms(boxes[:300].cuda(), scores[:300].cuda(), backend=backend)
        assert all(t.is_cuda for t in soft)
        ref = B.soft_nms(boxes[:300], scores[:300], backend="c")
        assert soft[0].cpu().tolist() == ref[0].tolist()
        torch.testing.assert_close(soft[1].cpu(), ref[1])
    assert B.nms(boxes.cuda(), scores.cuda(), 0.5).is_cuda


@needs_c
def test_c_radix_argsort_equals_stable_torch_sort():
    cases = [
        torch.rand(3000),
        torch.randint(0, 5, (700,)).float(),  # many ties: index order must be kept
        torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 0.5, -0.0]),  # -0.0 ties with 0.0
        torch.randn(900).half(),
        torch.zeros(0),
    ]
    for scores in cases:
        assert torch.equal(K._order(scores, "c"), torch.sort(scores, descending=True, stable=True).indices)


@needs_c
def test_soft_nms_c_and_pytorch_paths_agree_in_float32():
    boxes, scores = clustered_boxes(400, objects=8), torch.rand(400)
    for method in ("linear", "gaussian"):
        keep_c, scores_c = B.soft_nms(boxes, scores, method=method, score_threshold=0.01, backend="c")
        keep_t, scores_t = B.soft_nms(boxes, scores, method=method, score_threshold=0.01, backend="torch")
        assert scores_c.dtype == scores_t.dtype == torch.float32
        assert keep_c.tolist() == keep_t.tolist()
        torch.testing.assert_close(scores_c, scores_t)
