"""RoI align / RoI pool / the multi-scale pooler against torchvision.ops, slow float64 loops and gradcheck."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from convatlas.nn import MultiScaleRoIAlign, RoIAlign, RoIPool
from convatlas.ops.backend import resolve
from convatlas.ops.kernels import triton_support
from convatlas.ops.roi import assign_levels, boxes_to_rois, multi_scale_roi_align, roi_align, roi_pool
from helpers import check_against
from test_kernels_native import needs_c


@pytest.fixture(params=[pytest.param("c", marks=needs_c), "torch"])
def pool_backend(request):
    """Run a RoI pool test on the C kernel and on the vectorised PyTorch path."""
    if request.param == "c":
        assert resolve("roi_pool", "auto", "cpu") == "c", "a C compiler is available here, so the kernels must build"
    return request.param


@pytest.fixture(params=["sparse", "separable"])
def align_path(request, monkeypatch):
    """Run a RoI align test on both CPU paths: the sparse weight matrix and the dense separable contractions."""
    import convatlas.ops.roi as roi_module

    monkeypatch.setattr(roi_module, "_SPARSE_COST", 0.0 if request.param == "sparse" else math.inf)
    return request.param


def random_rois(k: int, batch: int, size: float, dtype=torch.float64, gen=None) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64) * size * 1.1 - 0.1 * size  # some start outside
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) * size * 0.7
    ids = torch.randint(0, batch, (k, 1), generator=gen).double()
    return torch.cat([ids, xy, xy + wh], dim=1).to(dtype)


def slow_bilinear(f, y: float, x: float) -> float:
    """torchvision's bilinear rule on one channel plane (a list of lists)."""
    h, w = len(f), len(f[0])
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (1 - ly) * (1 - lx) * f[y0][x0] + (1 - ly) * lx * f[y0][x1] + ly * (1 - lx) * f[y1][x0] + ly * lx * f[y1][x1]


def slow_roi_align(x, rois, out_size, scale, sampling_ratio, aligned):
    """Reference: Mask R-CNN's RoI align as a Python loop in float64."""
    ph, pw = out_size
    xs = x.double().tolist()
    out = torch.zeros(len(rois), x.shape[1], ph, pw, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy, ex, ey = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = ex - sx, ey - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for c in range(x.shape[1]):
            f = xs[int(b)][c]
            for i in range(ph):
                for j in range(pw):
                    acc = 0.0
                    for iy in range(max(gh, 0)):
                        yy = sy + i * rh / ph + (iy + 0.5) * rh / ph / gh
                        for ix in range(max(gw, 0)):
                            acc += slow_bilinear(f, yy, sx + j * rw / pw + (ix + 0.5) * rw / pw / gw)
                    out[k, c, i, j] = acc / count
    return out


def slow_roi_pool(x, rois, out_size, scale):
    """Reference: Fast R-CNN's RoI max pooling as a Python loop in float64 (C rounding: halves away from zero)."""
    ph, pw = out_size
    h, w = x.shape[-2:]
    xs = x.double().tolist()
    out = torch.zeros(len(rois), x.shape[1], ph, pw, dtype=torch.float64)

    def cround(v):
        return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)

    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy, ex, ey = cround(x1 * scale), cround(y1 * scale), cround(x2 * scale), cround(y2 * scale)
        rw, rh = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
        for i in range(ph):
            ys = min(max(math.floor(i * rh / ph) + sy, 0), h)
            ye = min(max(math.ceil((i + 1) * rh / ph) + sy, 0), h)
            for j in range(pw):
                xs0 = min(max(math.floor(j * rw / pw) + sx, 0), w)
                xe = min(max(math.ceil((j + 1) * rw / pw) + sx, 0), w)
                for c in range(x.shape[1]):
                    vals = [xs[int(b)][c][yy][xx] for yy in range(ys, ye) for xx in range(xs0, xe)]
                    out[k, c, i, j] = max(vals) if vals else 0.0
    return out


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_matches_torchvision_forward_and_backward(aligned, sampling_ratio, align_path):
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64, requires_grad=True)
    rois = random_rois(12, 2, 40.0)
    for scale in (0.25, 0.5):
        check_against(
            lambda inp, s=scale: roi_align(inp, rois, (3, 4), s, sampling_ratio, aligned),
            lambda inp, s=scale: torchvision.ops.roi_align(inp, rois, (3, 4), s, sampling_ratio, aligned),
            [x],
        )  # reference: torchvision.ops.roi_align


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_slow_float64_loop(aligned, align_path):
    x = torch.randn(2, 2, 7, 9, dtype=torch.float64)
    rois = random_rois(6, 2, 9.0)
    for sr in (-1, 3):
        ours = roi_align(x, rois, (2, 3), 1.0, sr, aligned)
        torch.testing.assert_close(ours, slow_roi_align(x, rois, (2, 3), 1.0, sr, aligned))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_roi_align_and_pool_dtypes_and_layouts(dtype, layout, pool_backend):
    base = torch.randn(2, 4, 10, 12, dtype=torch.float64)
    rois = random_rois(8, 2, 12.0).to(dtype)
    x = base.to(dtype)
    # reference on the same (rounded) values, in float64
    ref_align = slow_roi_align(x.double(), rois.double(), (3, 3), 1.0, -1, True)
    ref_pool = slow_roi_pool(x.double(), rois.double(), (3, 3), 1.0)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.stack([x, -x], dim=-1)[..., 0]  # a non-contiguous view with the same values
        assert not x.is_contiguous()
    tol = {torch.float16: 2e-3, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    ours = roi_align(x, rois, (3, 3), 1.0, -1, True)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.double(), ref_align, atol=tol * 4, rtol=tol)
    pooled = roi_pool(x, rois, (3, 3), 1.0, backend=pool_backend)
    assert pooled.dtype == dtype
    torch.testing.assert_close(pooled.double(), ref_pool, atol=tol, rtol=tol)


def test_roi_pool_matches_torchvision_and_slow_loop(pool_backend):
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64, requires_grad=True)
    rois = random_rois(15, 2, 48.0)
    for scale in (0.25, 0.3):
        check_against(
            lambda inp, s=scale: roi_pool(inp, rois, (4, 3), s, backend=pool_backend),
            lambda inp, s=scale: torchvision.ops.roi_pool(inp, rois, (4, 3), s),
            [x],
        )  # reference: torchvision.ops.roi_pool (forward and the argmax gradient)
        torch.testing.assert_close(
            roi_pool(x, rois, (4, 3), scale, backend=pool_backend), slow_roi_pool(x.detach(), rois, (4, 3), scale)
        )


def test_roi_pool_rounds_halves_away_from_zero(pool_backend):
    x = torch.arange(36, dtype=torch.float64).view(1, 1, 6, 6)
    rois = torch.tensor([[0, 0.5, 0.5, 2.5, 2.5]], dtype=torch.float64)  # rounds to cells 1..3 (torch.round: 0..2)
    ours = roi_pool(x, rois, 1, 1.0, backend=pool_backend)
    assert ours.item() == torchvision.ops.roi_pool(x, rois, 1, 1.0).item() == x[0, 0, 3, 3].item()


def test_gradcheck_roi_align_and_roi_pool(pool_backend):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.1, 3.9], [0, 1.2, -0.5, 5.5, 4.4]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda inp: roi_align(inp, rois, (2, 2), 1.0, 2, True), (x,))
    assert torch.autograd.gradcheck(lambda inp: roi_align(inp, rois, (3, 2), 0.8, -1, False), (x,))
    assert torch.autograd.gradcheck(lambda inp: roi_pool(inp, rois, (2, 3), 1.0, backend=pool_backend), (x,))
    assert torch.autograd.gradgradcheck(lambda inp: roi_pool(inp, rois, (2, 3), 1.0, backend=pool_backend), (x,))


def test_list_of_boxes_equals_tensor_form():
    x = torch.randn(3, 2, 8, 8)
    per_image = [torch.rand(4, 2) * 10 for _ in range(3)]
    per_image = [torch.cat([b, b + 5], dim=1) for b in per_image]
    per_image[1] = per_image[1][:0]  # an image without boxes
    rois = boxes_to_rois(per_image)
    assert rois.shape == (8, 5) and rois[:4, 0].eq(0).all() and rois[4:, 0].eq(2).all()
    torch.testing.assert_close(roi_align(x, per_image, 3, 0.5), roi_align(x, rois, 3, 0.5))
    torch.testing.assert_close(roi_pool(x, per_image, 3, 0.5), torchvision.ops.roi_pool(x, per_image, 3, 0.5))
    assert roi_align(x, torch.zeros(0, 5), 3).shape == (0, 2, 3, 3)


def test_multi_scale_pooler_matches_torchvision():
    feats = {f"p{i}": torch.randn(2, 3, 128 >> (i - 2), 96 >> (i - 2), dtype=torch.float64) for i in range(2, 6)}
    boxes = [torch.tensor([[0, 0, 20, 20], [10, 10, 300, 250], [5, 5, 100, 90.0]], dtype=torch.float64)]
    boxes.append(torch.tensor([[30, 30, 350, 380], [1, 2, 3, 4], [50, 60, 170, 150]], dtype=torch.float64))
    shapes = [(512, 384), (500, 380)]
    ours = MultiScaleRoIAlign(list(feats), 5, 2)(feats, boxes, shapes)
    ref = torchvision.ops.MultiScaleRoIAlign(list(feats), 5, 2)(feats, boxes, shapes)  # reference: torchvision
    torch.testing.assert_close(ours, ref)


def test_assign_levels_follows_fpn_equation():
    # k = floor(4 + log2(sqrt(wh) / 224)) clamped to [2, 5]: 224 -> 4, 112 -> 3, 448 -> 5, 10 -> 2, 2000 -> 5
    sides = torch.tensor([224.0, 112.0, 448.0, 10.0, 2000.0, 223.0])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), sides, sides], dim=1)
    assert (assign_levels(boxes, 2, 5) + 2).tolist() == [4, 3, 5, 2, 5, 3]


def test_modules_are_thin_wrappers():
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0]])
    torch.testing.assert_close(RoIAlign(2, 0.5, 2, True)(x, rois), roi_align(x, rois, 2, 0.5, 2, True))
    torch.testing.assert_close(RoIPool((2, 3), 0.5)(x, rois), roi_pool(x, rois, (2, 3), 0.5))
    assert "aligned=True" in repr(RoIAlign(2, 0.5, 2, True))


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"roi_align: box batch indices must lie in \[0, 1\].*got \[0, 2\]"):
        roi_align(x, torch.tensor([[2, 0, 0, 4, 4.0], [0, 0, 0, 1, 1]]), 2)
    with pytest.raises(ValueError, match=r"boxes as a Tensor must have shape \[K, 5\]"):
        roi_pool(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\] must have shape \[L, 4\]"):
        roi_align(x, [torch.zeros(1, 4), torch.zeros(2, 5)], 2)
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        roi_align(x, torch.zeros(1, 5), (0, 2))
    with pytest.raises(ValueError, match=r"roi_pool: input must have shape \[N, C, H, W\]"):
        roi_pool(x[0], torch.zeros(1, 5), 2)
    with pytest.raises(ValueError, match="spatial_scale must be > 0"):
        roi_align(x, torch.zeros(1, 5), 2, spatial_scale=0.0)
    with pytest.raises(ValueError, match="scales must halve"):
        multi_scale_roi_align([x, x], [torch.zeros(1, 4)], 2, scales=[0.25, 0.0625])


def test_roi_pool_ties_send_the_gradient_to_the_first_maximum(pool_backend):
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64).clamp(min=0).requires_grad_()  # ReLU-like: many tied zeros
    x.data[0, 1] = 1.0  # a constant channel: every bin is one big tie
    rois = random_rois(10, 1, 9.0)
    check_against(
        lambda inp: roi_pool(inp, rois, (3, 2), 1.0, backend=pool_backend),
        lambda inp: torchvision.ops.roi_pool(inp, rois, (3, 2), 1.0),
        [x],
    )  # reference: torchvision (argmax = first strict maximum in row-major order)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_roi_ops_equal_cpu():
    x = torch.randn(2, 8, 20, 24)
    rois = random_rois(30, 2, 80.0, dtype=torch.float32)
    for fn, args in ((roi_align, (5, 0.25, 2, True)), (roi_pool, (5, 0.25))):
        torch.testing.assert_close(fn(x.cuda(), rois.cuda(), *args).cpu(), fn(x, rois, *args), atol=1e-5, rtol=1e-5)


def test_roi_align_split_into_several_sparse_matrices(monkeypatch):
    import convatlas.ops.roi as roi_module

    monkeypatch.setattr(roi_module, "_SPARSE_NNZ", 300)  # forces a flush every box or two
    monkeypatch.setattr(roi_module, "_SPARSE_COST", 0.0)  # the sparse path
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    rois = random_rois(9, 2, 16.0)
    check_against(
        lambda inp: roi_align(inp, rois, (3, 2), 1.0, -1, False),
        lambda inp: torchvision.ops.roi_align(inp, rois, (3, 2), 1.0, -1, False),
        [x],
    )  # reference: torchvision.ops.roi_align


def test_roi_align_separable_path_on_a_detector_head_call(monkeypatch):
    """The call a Faster R-CNN head makes (small stride-16 map, many boxes from a list, sampling 2, aligned, float32,
    unsorted images, some boxes off the map) takes the separable path and matches torchvision.ops.roi_align."""
    import convatlas.ops.roi as roi_module

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 8, 8, 8, generator=gen, requires_grad=True)
    boxes = [random_rois(n, 1, 140.0, torch.float32, gen)[:, 1:] for n in (40, 0, 25)]
    calls = []
    separable = roi_module._roi_align_separable
    monkeypatch.setattr(roi_module, "_roi_align_separable", lambda *a: calls.append(1) or separable(*a))
    for aligned in (True, False):
        ours = roi_align(x, boxes, 7, 1 / 16, 2, aligned)
        ref = torchvision.ops.roi_align(x, boxes, 7, 1 / 16, 2, aligned)  # reference: torchvision.ops.roi_align
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        grad = torch.randn(ref.shape, generator=gen)
        (g_ours,) = torch.autograd.grad(ours, x, grad)
        (g_ref,) = torch.autograd.grad(ref, x, grad)
        torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=1e-5)
    assert len(calls) == 2, "the detector-head call must take the separable path"
    rois = boxes_to_rois(boxes)[torch.randperm(65, generator=gen)]  # boxes of different images interleaved
    torch.testing.assert_close(
        roi_align(x, rois, (7, 5), 1 / 16, -1, True), torchvision.ops.roi_align(x, rois, (7, 5), 1 / 16, -1, True),
        atol=1e-5, rtol=1e-5,
    )  # fmt: skip


_TRITON_CHECK = """
import sys, torch, torchvision
sys.path.insert(0, "tests")
from helpers import check_against
from convatlas.ops.kernels import roi_align_triton as kernels, triton_support
from convatlas.ops.roi import roi_align

assert triton_support.interpreting()
calls = []
apply = kernels._RoIAlignTriton.apply
kernels._RoIAlignTriton.apply = lambda *args: (calls.append(1), apply(*args))[1]
gen = torch.Generator().manual_seed(0)
for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=dtype).requires_grad_()
    xy = torch.rand(6, 2, generator=gen, dtype=dtype) * 44 - 4
    wh = torch.rand(6, 2, generator=gen, dtype=dtype) * 25
    rois = torch.cat([torch.randint(0, 2, (6, 1), generator=gen).to(dtype), xy, xy + wh], dim=1)
    rois[0] = torch.tensor([1, -300.0, 2.0, 900.0, 30.0])  # most of its samples lie off the map: windows skip them
    for ratio, aligned, scale in ((-1, False, 0.25), (2, True, 0.3), (0, True, 0.2)):
        check_against(
            lambda inp: roi_align(inp, rois, (2, 3), scale, ratio, aligned, backend="triton"),
            lambda inp: torchvision.ops.roi_align(inp, rois, (2, 3), scale, ratio, aligned),
            [x], atol=atol, rtol=atol,
        )
assert len(calls) == 6, calls  # every case went through the kernels
roi_align(x, rois, (2, 3), 0.25)  # "auto" on CPU: the PyTorch path, even under the interpreter
assert len(calls) == 6, calls
print("triton roi_align ok")
"""


def test_triton_roi_align_under_interpreter_matches_torchvision():
    # Triton reads TRITON_INTERPRET when it is imported, so the kernels run in a fresh process; reference: torchvision
    if not triton_support.installed():
        pytest.skip("Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "triton roi_align ok" in result.stdout
