"""Every GPU comparison of the benchmarks and the CUDA-path correctness checks, in one run of at most 8 minutes.

Sections, in this order (the checks first: they matter most when GPU time is short):

- ``checks-ops``: ``nms``, ``batched_nms``, ``roi_align`` (every backend, the Triton kernel included, float32 and
  float64, forward and backward), ``roi_pool``, ``multi_scale_roi_align`` and ``roi_align`` under autocast, against
  ``torchvision.ops`` on the same device;
- ``checks-seqconv``: ``lightweight_conv`` and ``dynamic_conv`` on every backend (the Triton kernels on CUDA) against
  PyTorch references (a grouped ``conv1d``, fairseq's unfold), float64 and bfloat16, forward and both gradients;
- ``checks-models``: the zoo under bf16 autocast against timm's same network in float32 (weights loaded into ours),
  output and input gradient, judged against timm's own bf16 error; U-Net and the text models against themselves in
  float32;
- ``checks-detection``: Faster R-CNN on the device in float32 against the same model in float64 on the CPU:
  detections (eval), the proposals, the four losses and every parameter gradient of a training step (same proposals,
  same sampled anchors and RoIs);
- ``ops`` (``benchmarks/ops.py``): NMS, batched NMS, RoI align and RoI pool against torchvision;
- ``seqconv`` (``benchmarks/seqconv.py``): lightweight and dynamic convolution against grouped ``conv1d``, the
  memory floor and the unfold implementation, at the bf16 GPU target setting (B=32, C=1024, T=512, H=16, K=31);
- ``conv`` (``benchmarks/conv.py``): the reference convolution operators against ``torch.nn.functional``;
- ``models`` (``benchmarks/models.py``): the zoo against timm, inference and training, bf16 autocast, channels_last,
  batch 256 at 224x224, eager;
- ``detection``: Faster R-CNN against torchvision's ``FasterRCNN`` built by ``benchmarks/detection.py`` (same
  backbone, anchors, heads), training and inference images/s on generated 128 px scenes;
- ``train`` (``benchmarks/train.py``): zoo against timm in the training engine's loop with a DataLoader of JPEGs;
- ``seqconv-models`` (``benchmarks/seqconv.py``): sentence models' inference throughput against sequence length.

Each section runs in a worker process within its own time budget; cases left when the budget is spent are recorded
as skipped, a section that overruns is stopped, and an exception becomes an ``error`` row while the other sections
go on. A global deadline (``--time-limit``, 480 s) is checked between sections. Rows are written as they come: after
every section ``OUT/gpu.md`` (one Markdown table with the date, device and versions on top) and ``OUT/gpu.json``
(the raw numbers) are rewritten; ``OUT/rows.jsonl`` holds the rows so far and ``OUT/gpu.log`` everything the
sections printed.

    python benchmarks/gpu.py --out DIR               # on a machine with CUDA
    python benchmarks/gpu.py --dry-run --out DIR     # every section on the CPU at tiny sizes (CUDA-only checks skipped)

``benchmarks/gpu.sh DIR`` calls it with ``--out DIR`` (``$OUT`` without DIR). Speed-up = peer time / our time
(above 1.0: ours is faster). Exit status: 0 when no row failed, errored or timed out, 1 otherwise, 2 when nothing could
run (no CUDA without ``--dry-run``, existing results without ``--overwrite``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
SRC = BENCHMARKS.parent / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from convatlas.files import atomic_write_json, atomic_write_text, check_output_dir  # noqa: E402
from convatlas.utils import set_threads  # noqa: E402

OUTPUTS = ("gpu.md", "gpu.json", "rows.jsonl", "gpu.log")
TIME_LIMIT_S = 480.0  # the whole run, worker start and the last write included
RESERVE_S = 10.0  # kept for stopping a worker and writing the files at the end
GRACE_S = 15.0  # a section is stopped this long after its budget
MIN_SECTION_S = 5.0  # a section with less time than this left is skipped
WORKER_START_S = 120.0  # importing torch, timm and initialising CUDA


@dataclass
class Row:
    """One line of the table.

    ``result`` is ``ok`` (a timing), ``pass``/``fail`` (a check: ``error <= tol``), ``skipped: why``,
    ``error: why`` or ``timeout``. Timings give ``ours``/``peer`` in ``unit`` and ``speedup`` = peer time / our time.
    """

    case: str
    result: str
    ours: float | None = None
    peer: float | None = None
    unit: str = ""
    speedup: float | None = None
    error: float | None = None
    tol: float | None = None
    note: str = ""
    section: str = ""
    raw: dict = field(default_factory=dict)


def timing(case: str, ours_ms: float, peer_ms: float, note: str = "", raw: dict | None = None) -> Row:
    return Row(case, "ok", ours_ms, peer_ms, "ms", peer_ms / ours_ms, note=note, raw=raw or {})


def rate(case: str, ours: float, peer: float, unit: str, note: str = "", raw: dict | None = None) -> Row:
    return Row(case, "ok", ours, peer, unit, ours / peer, note=note, raw=raw or {})


# --- the worker: runs sections, one at a time, as the orchestrator asks ------------------------------------------


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (``bench_NAME``), loaded once."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


class Context:
    """What a section needs: the device, whether this is the dry run, and its time."""

    def __init__(self, device: str, dry: bool, budget_s: float):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dry = dry
        self.deadline = time.monotonic() + budget_s
        self.no_cuda = "CPU dry run" if torch.cuda.is_available() else "no CUDA"  # why CUDA-only checks are skipped

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def backends(self, op: str) -> list[tuple[str, str | None]]:
        """``(backend, why it cannot run or None)`` for each of ``op``'s backends on this device, auto's pick first."""
        from convatlas.ops import backends

        (report,) = [r for r in backends(self.device) if r.op == op]
        runnable = [report.auto, *(b for b in report.available if b != report.auto)]
        missing = [(b, self.no_cuda if b == "triton" and not self.cuda else why) for b, why in report.unavailable]
        return [(b, None) for b in runnable] + missing

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()


def cases(ctx: Context, items: Iterable[tuple[str, Callable[[], Iterable[Row]]]]) -> Iterator[Row]:
    """Run ``(case, function returning rows)`` pairs in order: each only while the section has time, an exception
    in one an ``error`` row (its traceback in the log). A CUDA error that leaves the device unusable ends the
    section (the orchestrator then starts a fresh worker)."""
    for name, run in items:
        if ctx.expired():
            yield Row(name, "skipped: section time budget spent")
            continue
        try:
            yield from run()
        except Exception as err:  # recorded, and the next case runs
            traceback.print_exc()
            yield Row(name, f"error: {type(err).__name__}: {first_line(err)}")
            ctx.sync()  # raises when the CUDA context is broken


def short(dtype) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(dtype).removeprefix("torch.")


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:300]


def configure(ctx: Context, *, checks: bool) -> None:
    """Checks compare float32 results: no TF32 and no autotuning. Timings run with PyTorch's defaults and cuDNN's
    autotuner (as benchmarks/models.py does)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not checks
    torch.backends.cudnn.benchmark = not checks
    torch.manual_seed(0)


def release(ctx: Context) -> None:
    import gc

    import torch

    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


# --- comparison helpers of the checks ----------------------------------------------------------------------------


def max_error(got, want) -> tuple[float, float, str]:
    """``(max |got - want|, max |want|, what differs in kind)`` over tensors or lists of tensors, in float64."""
    import torch

    got = list(got) if isinstance(got, list | tuple) else [got]
    want = list(want) if isinstance(want, list | tuple) else [want]
    if len(got) != len(want):
        return math.inf, 0.0, f"{len(got)} tensors, reference {len(want)}"
    err, scale = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        if g is None or w is None:  # an unused input: no gradient is a zero gradient
            if g is None and w is None:
                continue
            g, w = (torch.zeros_like(w) if g is None else g), (torch.zeros_like(g) if w is None else w)
        if g.shape != w.shape:
            return math.inf, scale, f"shape {tuple(g.shape)}, reference {tuple(w.shape)}"
        g, w = g.detach().double().cpu(), w.detach().double().cpu()
        if g.numel() == 0:
            continue
        if not torch.equal(torch.isfinite(g), torch.isfinite(w)):
            return math.inf, scale, "non-finite values where the reference has none (or the reverse)"
        finite = torch.isfinite(w)
        err = max(err, (g - w)[finite].abs().max().item() if finite.any() else 0.0)
        scale = max(scale, w[finite].abs().max().item() if finite.any() else 0.0)
    return err, scale, ""


def relative_l2(got: list, want: list) -> float:
    """``||got - want|| / ||want||`` over lists of tensors (None: no gradient, zeros), in float64; inf for NaN."""
    import torch

    pairs = [(g, w) for g, w in zip(got, want, strict=True) if w is not None or g is not None]
    g = torch.cat([(t if t is not None else torch.zeros_like(u)).detach().double().flatten().cpu() for t, u in pairs])
    w = torch.cat([(u if u is not None else torch.zeros_like(t)).detach().double().flatten().cpu() for t, u in pairs])
    if not torch.isfinite(g).all():
        return math.inf
    return ((g - w).norm() / w.norm().clamp(min=1e-300)).item()


def compare(case: str, got, want, *, atol: float, rtol: float, note: str = "") -> Row:
    """A check row: pass when ``max |got - want| <= atol + rtol * max |want|``."""
    err, scale, why = max_error(got, want)
    tol = atol + rtol * scale
    passed = not why and err <= tol
    return Row(case, "pass" if passed else "fail", error=err, tol=tol, note="; ".join(s for s in (why, note) if s))


def exact(case: str, got, want, note: str = "") -> Row:
    """A check row for index results: the number of positions that differ (and the length difference) must be 0."""
    got, want = got.tolist(), want.tolist()
    wrong = sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(got) - len(want))
    return Row(case, "pass" if wrong == 0 else "fail", error=float(wrong), tol=0.0, note=note)


def forward_backward(fn: Callable, inputs: list, wrt: list[int], seed: int = 0):
    """``fn(*inputs)`` and the gradients of ``<fn(*inputs), W>`` with respect to ``inputs[i]`` for ``i`` in ``wrt``,
    ``W`` a fixed random tensor (a random projection of the output, so every output element counts)."""
    import torch

    leaves = [x.detach().clone().requires_grad_(i in wrt) if isinstance(x, torch.Tensor) else x
              for i, x in enumerate(inputs)]  # fmt: skip
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device=out.device, dtype=torch.float32)
    grads = torch.autograd.grad((out.float() * w).sum(), [leaves[i] for i in wrt], allow_unused=True)
    return out.detach(), list(grads)


def random_rois(gen, n_images: int, k: int, width: float, height: float):
    """``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) inside a ``width x height`` image, sides 4 px up to half of it."""
    import torch

    xy = torch.rand(k, 2, generator=gen) * torch.tensor([width * 0.8, height * 0.8])
    wh = 4 + torch.rand(k, 2, generator=gen) * torch.tensor([width / 2, height / 2])
    return torch.cat([torch.randint(0, n_images, (k, 1), generator=gen).double(), xy, xy + wh], dim=1)


# --- sections: checks --------------------------------------------------------------------------------------------


def section_checks_ops(ctx: Context) -> Iterator[Row]:
    import torch
    import torchvision

    from convatlas.ops import boxes as B
    from convatlas.ops import roi as R

    configure(ctx, checks=True)
    ops = load_benchmark("ops")
    dev = ctx.device
    gen = torch.Generator().manual_seed(0)
    n_boxes = 300 if ctx.dry else 4000
    c, h, w, k = (4, 10, 12, 20) if ctx.dry else (64, 38, 50, 400)  # a stride-16 map of a 600 x 800 image
    tv = torchvision.ops

    def nms_case(dist, make, backend):
        boxes, scores = (t.to(dev) for t in make(n_boxes, gen))
        ref = tv.nms(boxes, scores, 0.5)
        keep = B.nms(boxes, scores, 0.5, backend=backend)
        yield exact(f"nms, {n_boxes} {dist} boxes [{backend}] vs torchvision", keep, ref, note=f"{len(ref)} kept")
        name = f"nms, float16 inputs [{backend}] vs torchvision on their float32 values"
        if not ctx.cuda:
            yield Row(name, f"skipped: {ctx.no_cuda}")
            return
        # half boxes: torchvision's reference on the same values in float32 (it subtracts corners in half)
        keep = B.nms(boxes.half(), scores.half(), 0.5, backend=backend)
        yield exact(name, keep, tv.nms(boxes.half().float(), scores.half().float(), 0.5))

    def batched_case(backend):
        boxes, scores = ops.clustered_boxes(n_boxes, gen)
        idxs = torch.randint(0, 80, (n_boxes,), generator=gen)
        boxes, scores, idxs = boxes.to(dev), scores.to(dev), idxs.to(dev)
        ref = set(tv.batched_nms(boxes, scores, idxs, 0.5).tolist())
        got = set(B.batched_nms(boxes, scores, idxs, 0.5, backend=backend).tolist())
        wrong = float(len(ref ^ got))  # the order of equal scores is unspecified in torchvision: compare kept sets
        yield Row(f"batched_nms, {n_boxes} boxes, 80 classes [{backend}] vs torchvision (kept set)",
                  "pass" if wrong == 0 else "fail", error=wrong, tol=0.0, note=f"{len(ref)} kept")  # fmt: skip

    def roi_align_case(backend, dtype, sampling, aligned, as_list):
        x = torch.randn(2, c, h, w, generator=gen, dtype=torch.float64).to(dev, dtype)
        rois = random_rois(gen, 2, k, w * 16, h * 16).to(dev, dtype)
        boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)] if as_list else rois
        args = (7, 1 / 16, sampling, aligned)
        ours = forward_backward(lambda x: R.roi_align(x, boxes, *args, backend=backend), [x], [0])
        ref = forward_backward(lambda x: tv.roi_align(x, boxes, *args), [x], [0])
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        name = f"roi_align {short(dtype)}, " + (
            "list of boxes" if as_list else f"sampling {sampling}, aligned {aligned}"
        )
        yield compare(f"{name} [{backend}] forward vs torchvision", ours[0], ref[0], atol=tol, rtol=tol)
        yield compare(f"{name} [{backend}] input gradient vs torchvision", ours[1], ref[1], atol=tol, rtol=tol)

    def roi_autocast_case(backend, x_dtype):
        # torchvision computes RoI align in float32 under autocast and returns the input's dtype
        amp = torch.float16 if ctx.cuda else torch.bfloat16
        x = torch.randn(2, c, h, w, generator=gen).to(dev, x_dtype)
        rois = random_rois(gen, 2, k, w * 16, h * 16).to(dev, torch.float32)
        with torch.autocast(dev.type, dtype=amp):
            ours = R.roi_align(x, rois, 7, 1 / 16, 2, True, backend=backend)
            ref = tv.roi_align(x, rois, 7, 1 / 16, 2, True)
        tol = 1e-5 if x_dtype == torch.float32 else 1e-2  # a low-precision output: one rounding
        row = compare(f"roi_align under {dev.type} autocast ({short(amp)}), {short(x_dtype)} input [{backend}] "
                      "vs torchvision", ours, ref, atol=tol, rtol=tol)  # fmt: skip
        if ours.dtype != ref.dtype:
            row.result, row.note = "fail", f"dtype {ours.dtype}, torchvision {ref.dtype}"
        yield row

    def roi_pool_case(backend):
        x = torch.randn(2, c, h, w, generator=gen).to(dev)
        rois = random_rois(gen, 2, k, w * 16, h * 16).to(dev, torch.float32)
        ours = forward_backward(lambda x: R.roi_pool(x, rois, 7, 1 / 16, backend=backend), [x], [0])
        ref = forward_backward(lambda x: tv.roi_pool(x, rois, 7, 1 / 16), [x], [0])
        yield compare(f"roi_pool [{backend}] forward vs torchvision", ours[0], ref[0], atol=1e-6, rtol=0)
        yield compare(f"roi_pool [{backend}] input gradient vs torchvision", ours[1], ref[1], atol=1e-5, rtol=1e-6)

    def multi_scale_case(backend):
        side = 64 if ctx.dry else 512
        feats = [torch.randn(2, c, side >> s, side >> s, generator=gen).to(dev) for s in (2, 3, 4, 5)]
        boxes = [random_rois(gen, 1, k // 2, side, side)[:, 1:].float().to(dev) for _ in range(2)]
        names = [f"p{s}" for s in (2, 3, 4, 5)]
        pooler = tv.MultiScaleRoIAlign(names, 7, 2)
        scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]

        def ours_fn(*f):
            return R.multi_scale_roi_align(list(f), boxes, 7, scales=scales, sampling_ratio=2, backend=backend)

        def ref_fn(*f):
            return pooler(dict(zip(names, f, strict=True)), boxes, [(side, side)] * 2)

        ours = forward_backward(ours_fn, feats, [0, 1, 2, 3])
        ref = forward_backward(ref_fn, feats, [0, 1, 2, 3])
        name = f"multi_scale_roi_align, 4 levels [{backend}]"
        yield compare(f"{name} forward vs torchvision MultiScaleRoIAlign", ours[0], ref[0], atol=1e-5, rtol=1e-5)
        yield compare(f"{name} gradients vs torchvision MultiScaleRoIAlign", ours[1], ref[1], atol=1e-5, rtol=1e-5)

    def skipped(name, why):
        return name, lambda: [Row(name, f"skipped: {why}")]

    def each_backend(op, name, make):
        for backend, why in ctx.backends(op):
            yield skipped(f"{name} [{backend}]", why) if why else (f"{name} [{backend}]", lambda b=backend: make(b))

    items = []
    for dist, make in (("uniform", ops.uniform_boxes), ("clustered", ops.clustered_boxes)):
        items += each_backend("nms", f"nms {dist}", lambda b, d=dist, m=make: nms_case(d, m, b))
    items += each_backend("batched_nms", "batched_nms", batched_case)
    for dtype in (torch.float32, torch.float64):
        for sampling, aligned in ((2, True), (-1, False)):
            make = functools.partial(roi_align_case, dtype=dtype, sampling=sampling, aligned=aligned, as_list=False)
            items += each_backend(
                "roi_align", f"roi_align {short(dtype)}, sampling {sampling}, aligned {aligned}", make
            )
    make = functools.partial(roi_align_case, dtype=torch.float32, sampling=2, aligned=True, as_list=True)
    items += each_backend("roi_align", "roi_align float32, list of boxes", make)
    for x_dtype in (torch.float32, torch.float16 if ctx.cuda else torch.bfloat16):
        make = functools.partial(roi_autocast_case, x_dtype=x_dtype)
        items += each_backend("roi_align", f"roi_align under autocast, {short(x_dtype)} input", make)
    items += each_backend("roi_pool", "roi_pool", roi_pool_case)
    items += each_backend("multi_scale_roi_align", "multi_scale_roi_align", multi_scale_case)
    yield from cases(ctx, items)


def section_checks_seqconv(ctx: Context) -> Iterator[Row]:
    import torch

    from convatlas.ops import dynamic_conv, lightweight_conv

    configure(ctx, checks=True)
    seq = load_benchmark("seqconv")  # its references: grouped conv1d and fairseq's unfold, in PyTorch
    dev = ctx.device
    gen = torch.Generator().manual_seed(0)

    def inputs(op, b, c, t, h, k, dtype):
        x = torch.randn(b, c, t, generator=gen, dtype=torch.float64)
        w = torch.randn(h, k, generator=gen, dtype=torch.float64) if op == "lightweight" else \
            torch.randn(b, h, k, t, generator=gen, dtype=torch.float64)  # fmt: skip
        return x.to(dev, dtype), w.to(dev, dtype)

    def case(op, backend, dtype, shape, pad):
        ours_fn = lightweight_conv if op == "lightweight" else dynamic_conv
        ref_fn = seq.grouped_conv1d if op == "lightweight" else seq.unfold_dynamic
        x, w = inputs(op, *shape, dtype)
        ours = forward_backward(lambda x, w: ours_fn(x, w, pad, backend=backend), [x, w], [0, 1])
        if dtype == torch.float64:
            ref, atol, rtol = forward_backward(lambda x, w: ref_fn(x, w, pad), [x, w], [0, 1]), 1e-10, 1e-10
        else:  # bf16 against the float32 reference on the same (bf16) values: a few roundings of bf16
            ref = forward_backward(lambda x, w: ref_fn(x, w, pad), [x.float(), w.float()], [0, 1])
            atol, rtol = 1e-2, 2e-2
        b, c, t, h, k = shape
        name = f"{op}_conv {short(dtype)} B={b} C={c} T={t} H={h} K={k} padding_l={pad} [{backend}]"
        ref_name = "grouped conv1d" if op == "lightweight" else "unfold"
        yield compare(f"{name} forward vs {ref_name}", ours[0], ref[0], atol=atol, rtol=rtol)
        yield compare(f"{name} gradient of x vs {ref_name}", ours[1][0], ref[1][0], atol=atol, rtol=rtol)
        yield compare(f"{name} gradient of weight vs {ref_name}", ours[1][1], ref[1][1], atol=atol, rtol=rtol)

    small = (2, 16, 100, 4, 7)  # T=100 spans two time tiles of the kernels
    big = (2, 32, 64, 4, 7) if ctx.dry else (8, 512, 512, 16, 31)
    items = []
    for op in ("lightweight", "dynamic"):
        for backend, why in ctx.backends(f"{op}_conv"):
            for dtype, shape, pad in ((torch.float64, small, 3), (torch.float64, small, 6), (torch.bfloat16, big, -1)):
                pad = shape[4] // 2 if pad < 0 else pad
                name = f"{op}_conv {short(dtype)} padding_l={pad} [{backend}]"
                if why:
                    items.append((name, lambda n=name, y=why: [Row(n, f"skipped: {y}")]))
                else:
                    items.append((name, lambda o=op, b=backend, d=dtype, s=shape, p=pad: case(o, b, d, s, p)))
    yield from cases(ctx, items)


def randomize_batch_norm(model, gen) -> None:
    """Random running statistics and affine parameters, so that a wrongly mapped statistic shows in a comparison."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                if m.affine:
                    m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def rounding_noise(model, gen):
    """A copy of ``model`` whose weights, and the output of each of its leaf modules at every call, are multiplied
    by ``1 + u * 2**-8``, ``u`` uniform in [-1, 1]: float32 arithmetic disturbed as much as one bf16 rounding."""
    import torch

    def disturb(t):
        return t * (1 + 2**-8 * (2 * torch.rand(t.shape, device=t.device, generator=gen) - 1)).to(t.dtype)

    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.copy_(disturb(p))
    for m in noisy.modules():
        if not any(True for _ in m.children()):
            m.register_forward_hook(
                lambda m, i, out: disturb(out) if torch.is_tensor(out) and out.is_floating_point() else None
            )
    return noisy


def section_checks_models(ctx: Context) -> Iterator[Row]:
    import timm
    import torch
    import torch.nn.functional as F

    from convatlas.models import create_model, load_weights

    configure(ctx, checks=True)
    TIMM_NAMES = load_benchmark("models").TIMM_NAMES
    TIMM_KWARGS = {name: {"bn_eps": 1e-3} for name in ("mobilenet_v3_small", "mobilenet_v3_large")}  # as ours (paper)
    dev = ctx.device
    gen = torch.Generator().manual_seed(0)

    def run(model, x, y, autocast: bool):
        """Output (float32), the gradient of the loss with respect to the input (None for tokens) and with respect to
        every parameter."""
        x = x.detach().clone().requires_grad_(x.is_floating_point())
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        out = out.float()
        if out.dim() == 4:  # a segmentation map, smaller than the input without padding: the labels' centre
            top, left = (y.shape[-2] - out.shape[-2]) // 2, (y.shape[-1] - out.shape[-1]) // 2
            y = y[:, top : top + out.shape[-2], left : left + out.shape[-1]]
        loss = F.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, [x, *params] if x.requires_grad else params, allow_unused=True)
        return out.detach(), grads[0] if x.requires_grad else None, grads[1:] if x.requires_grad else grads

    def timm_case(name):
        torch.manual_seed(0)
        size, batch = (64, 2) if ctx.dry else (224, 4)
        with torch.device(dev):
            theirs = timm.create_model(TIMM_NAMES[name], **TIMM_KWARGS.get(name, {}))
            ours = create_model(name)
        randomize_batch_norm(theirs, gen)
        load_weights(ours, theirs.state_dict(), source="timm")
        ours.eval()
        theirs.eval()
        x = torch.randn(batch, 3, size, size, generator=gen).to(dev)
        y = torch.randint(0, 1000, (batch,), generator=gen).to(dev)
        ref = run(theirs, x, y, autocast=False)
        ours32 = run(ours, x, y, autocast=False)
        ours16, theirs16 = run(ours, x, y, autocast=True), run(theirs, x, y, autocast=True)
        label = f"{name} vs timm {TIMM_NAMES[name]} ({batch} x 3 x {size} x {size}, eval)"
        yield compare(f"{label}: float32 output", ours32[0], ref[0], atol=1e-5, rtol=1e-4)
        for i, what in ((0, "output"), (1, "input gradient")):
            err_timm, scale, _ = max_error(theirs16[i], ref[i])
            # ours in bf16 must be as accurate as timm in bf16 (twice its error), or within 1e-3 of the scale
            row = compare(f"{label}: bf16 autocast {what}", ours16[i], ref[i], atol=0.0,
                          rtol=max(2 * err_timm / max(scale, 1e-30), 1e-3))  # fmt: skip
            row.note = f"timm's own bf16 error {err_timm:.2e}" + (f"; {row.note}" if row.note else "")
            yield row
        del ours, theirs
        release(ctx)

    def own_case(name, kwargs, make_input):
        torch.manual_seed(0)
        with torch.device(dev):
            model = create_model(name, **kwargs)
        randomize_batch_norm(model, gen)
        model.eval()
        # No peer says how far bf16 may move this network's results, so its own float32 sensitivity does: the same
        # model with every weight and every layer's output moved by up to one bf16 rounding (2**-8 relative). bf16
        # autocast may move the output and the parameter gradients at most twice as far (relative L2 error).
        noisy = rounding_noise(model, torch.Generator(device=dev).manual_seed(1))
        x, y = make_input()
        ref, got, moved = run(model, x, y, autocast=False), run(model, x, y, autocast=True), run(noisy, x, y, False)
        what = f"{name} under bf16 autocast vs itself in float32 ({' x '.join(map(str, x.shape))})"
        for label, pick in (("output", lambda r: [r[0]]), ("parameter gradients", lambda r: list(r[2]))):
            err, bound = relative_l2(pick(got), pick(ref)), relative_l2(pick(moved), pick(ref))
            note = f"float32 with weights and layer outputs moved by one bf16 rounding: {bound:.2e}"
            result = "pass" if err <= 2 * bound else "fail"
            yield Row(f"{what}: {label}, relative L2 error", result, error=err, tol=2 * bound, note=note)
        del model, noisy
        release(ctx)

    def tokens(batch, steps, vocab=1000):
        x = torch.randint(1, vocab, (batch, steps), generator=gen).to(dev)
        return x, torch.randint(0, 2, (batch,), generator=gen).to(dev)

    def image(batch, side, classes=2):
        x = torch.randn(batch, 1, side, side, generator=gen).to(dev)
        return x, torch.randint(0, classes, (batch, side, side), generator=gen).to(dev)

    names = ["mobilenet_v3_small"] if ctx.dry else list(TIMM_NAMES)
    steps = 32 if ctx.dry else 256
    text = dict(vocab_size=1000, num_classes=2)
    own = [
        ("lightconv_classifier", text, lambda: tokens(2 if ctx.dry else 8, steps)),
        ("dynamicconv_classifier", text, lambda: tokens(2 if ctx.dry else 8, steps)),
        ("unet", dict(widths=(4, 8, 16, 32, 64)) if ctx.dry else {}, lambda: image(1, 188 if ctx.dry else 572)),
    ]
    items = [(f"{n} vs timm", lambda n=n: timm_case(n)) for n in names]
    items += [(f"{n} bf16", lambda n=n, kw=kw, mk=mk: own_case(n, kw, mk)) for n, kw, mk in own]
    yield from cases(ctx, items)


def detector_setup(ctx: Context, batch: int):
    """Our Faster R-CNN as benchmarks/detection.py builds it (mobilenet_v3_small C4, 128 px scenes) and generated
    scenes: noise images with 1 to 4 boxes each (speed does not depend on the pixels; no dataset is needed)."""
    import argparse as _argparse

    import torch

    detection = load_benchmark("detection")
    args = _argparse.Namespace(backbone="mobilenet_v3_small", representation_size=256, seed=0, canvas=128)
    gen = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, args.canvas, args.canvas, generator=gen))
        n = int(torch.randint(1, 5, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * (args.canvas - 48)
        wh = 12 + torch.rand(n, 2, generator=gen) * 36
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": torch.randint(1, 11, (n,), generator=gen)})
    return detection, args, images, targets


def section_checks_detection(ctx: Context) -> Iterator[Row]:
    import torch

    from convatlas.ops.boxes import box_iou

    configure(ctx, checks=True)
    detection, args, images, targets = detector_setup(ctx, 2)
    gen = torch.Generator().manual_seed(3)
    model = detection.build_ours(args, 10)
    randomize_batch_norm(model, gen)
    with torch.no_grad():  # spread the class scores (an untrained head gives every class about 1/11)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.normal_(0, 0.05, generator=gen)
        predictor.bbox_pred.weight.normal_(0, 0.01, generator=gen)
    ref_model = copy.deepcopy(model).double()  # the reference: float64 on the CPU
    model = model.to(ctx.device)
    dev_images = [im.to(ctx.device) for im in images]
    dev_targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
    ref_images = [im.double() for im in images]
    ref_targets = [{"boxes": t["boxes"].double(), "labels": t["labels"]} for t in targets]
    where = f"{ctx.device.type} float32 vs CPU float64"

    def unmatched(got: list[dict], want: list[dict]) -> tuple[float, int]:
        """Share of the reference's boxes with no box of IoU > 0.999 on the device (and, where the dicts have them,
        the same label and a score within 1e-4)."""
        matched = total = 0
        for g, w in zip(got, want, strict=True):
            total += len(w["boxes"])
            if len(w["boxes"]) and len(g["boxes"]):
                g = {k: v.cpu() for k, v in g.items()}
                same = box_iou(w["boxes"], g["boxes"].double()) > 0.999
                if "labels" in w:
                    same &= w["labels"][:, None] == g["labels"][None, :]
                    same &= (w["scores"][:, None] - g["scores"].double()[None, :]).abs() < 1e-4
                matched += int(same.any(dim=1).sum())
        return 1 - matched / max(total, 1), total

    def detections():
        model.eval()
        ref_model.eval()
        with torch.no_grad():
            missed, total = unmatched(model(dev_images)[1], ref_model(ref_images)[1])
        name = f"faster_rcnn eval detections, {where} (share without an equal box, label and score)"
        yield Row(name, "pass" if missed <= 0.01 else "fail", error=missed, tol=0.01, note=f"{total} reference boxes")

    def training():
        """FasterRCNN.forward's steps one by one, so that both heads get the reference's proposals: a near tie in
        the proposals' scores may reorder them on another device, and the RoIs sampled from them would differ."""
        model.train()
        ref_model.train()
        sides = {}
        for side, m, ims, tgs in (
            ("got", model, dev_images, dev_targets),
            ("want", ref_model, ref_images, ref_targets),
        ):
            torch.manual_seed(5)  # anchors and RoIs are sampled on the CPU: the same seed gives the same samples
            batch, sizes, tgs = m.prepare(ims, tgs)
            features = m.backbone(batch)
            proposals, rpn_losses = m.rpn(features, m.backbone.strides, sizes, tgs)
            sides[side] = (features, sizes, tgs, proposals, rpn_losses)
        missed, total = unmatched(*([{"boxes": p} for p in sides[side][3]] for side in ("got", "want")))
        name = f"faster_rcnn training proposals, {where} (share without an equal box)"
        yield Row(name, "pass" if missed <= 0.01 else "fail", error=missed, tol=0.01, note=f"{total} reference boxes")
        losses = {}
        for side, m in (("got", model), ("want", ref_model)):
            features, sizes, tgs, _, rpn_losses = sides[side]
            proposals = [p.to(features[0]) for p in sides["want"][3]]
            torch.manual_seed(6)
            _, head_losses = m.roi_heads(features, proposals, sizes, tgs, detect=False)
            losses[side] = {**rpn_losses, **head_losses}
        names = sorted(losses["want"])
        yield compare(f"faster_rcnn training losses ({', '.join(names)}), {where}", [losses["got"][n] for n in names],
                      [losses["want"][n] for n in names], atol=1e-6, rtol=1e-4)  # fmt: skip
        sum(losses["got"].values()).backward()
        sum(losses["want"].values()).backward()
        pairs = [(p.grad, q.grad) for p, q in zip(model.parameters(), ref_model.parameters(), strict=True)]
        yield compare(f"faster_rcnn parameter gradients ({len(pairs)} tensors), {where}", [p for p, _ in pairs],
                      [q for _, q in pairs], atol=1e-6, rtol=1e-4)  # fmt: skip

    yield from cases(ctx, [("faster_rcnn eval", detections), ("faster_rcnn training step", training)])


# --- sections: timings -------------------------------------------------------------------------------------------


def section_ops(ctx: Context) -> Iterator[Row]:
    configure(ctx, checks=False)
    ops = load_benchmark("ops")
    dev = ctx.device.type
    ops.budget_ms = ops.QUICK_BUDGET_MS if ctx.dry else 200.0
    repeats = 1 if ctx.dry else 7
    sizes, batched = ([200, 1000], 500) if ctx.dry else ([1000, 5000, 20000], 5000)

    def rows(results):
        for r in results:
            notes = [f"{k} {r[k]:.1e}" if isinstance(r[k], float) else f"{k} {r[k]}"
                     for k in ("kept", "same kept set", "max abs diff") if k in r]  # fmt: skip
            case = f"{r['op']}, {r['case']} [{r['backend']}] {r['pass']} vs torchvision"
            yield timing(case, r["ours_ms"], r["torchvision_ms"], note=", ".join(notes), raw=r)

    items = [(f"nms {n}", lambda n=n: rows(ops.bench_nms(dev, [n], repeats))) for n in sizes]
    items.append(("batched_nms", lambda: rows(ops.bench_batched_nms(dev, batched, repeats))))
    items.append(("roi_align and roi_pool", lambda: rows(ops.bench_roi(dev, repeats, ctx.dry))))
    yield from cases(ctx, items)


def section_seqconv(ctx: Context) -> Iterator[Row]:
    configure(ctx, checks=False)
    seq = load_benchmark("seqconv")
    seq.min_time_s = seq.QUICK_MIN_TIME if ctx.dry else 0.2
    dtype, shape, _, _ = seq.settings(ctx.device, ctx.dry)
    where = f"{short(dtype)} " + " ".join(f"{k.upper()}={v}" for k, v in shape.items())

    def rows():
        for r in seq.bench_ops(ctx.device, dtype, **shape):
            case = f"{r['op']}_conv {where} [{r['backend']}] {r['pass']} vs {r['vs']}"
            yield timing(case, r["ours_ms"], r["theirs_ms"], raw=r)

    yield from cases(ctx, [("lightweight and dynamic convolution", rows)])


def section_seqconv_models(ctx: Context) -> Iterator[Row]:
    configure(ctx, checks=False)
    seq = load_benchmark("seqconv")
    seq.min_time_s = seq.QUICK_MIN_TIME if ctx.dry else 0.2
    dtype, _, lengths, budget = seq.settings(ctx.device, ctx.dry)

    def rows(steps):
        for r in seq.bench_models(ctx.device, [steps], budget, dtype):
            yield Row(f"{r['model']} inference, T={steps}, batch {r['batch']}, {short(dtype)}", "ok",
                      ours=r["tokens_per_s"], unit="tokens/s", raw=r)  # fmt: skip

    yield from cases(ctx, [(f"T={t}", lambda t=t: rows(t)) for t in lengths])


def section_conv(ctx: Context) -> Iterator[Row]:
    configure(ctx, checks=False)
    conv = load_benchmark("conv")

    def rows():
        for r in conv.run([ctx.device.type], ctx.dry, 3 if ctx.dry else 10):
            case = f"{r['case']} {r['pass']} vs torch.nn.functional (float32)"
            yield timing(case, r["ours_ms"], r["torch_ms"], raw=r)

    yield from cases(ctx, [("convolution operators", rows)])


def section_models(ctx: Context) -> Iterator[Row]:
    configure(ctx, checks=False)
    models = load_benchmark("models")
    if ctx.dry:
        argv = ["--models", "mobilenet_v3_small", "--batch", "2", "--size", "64", "--warmup", "1", "--iters", "1",
                "--rounds", "1"]  # fmt: skip
    else:
        argv = ["--warmup", "3", "--iters", "5", "--rounds", "3"]
    args = models.parse_args([*argv, "--device", ctx.device.type])
    precision = "bf16 autocast" if args.amp else "float32"
    setting = f"batch {args.batch}, {args.size}x{args.size}, {precision}, channels_last"

    def rows(name):
        for r in models.bench_model(name, args, ctx.device):
            yield rate(f"{name} vs timm {r['timm']}, {r['mode']} ({setting})", r["ours"], r["peer"], "img/s",
                       note=r["check"], raw=r)  # fmt: skip
        release(ctx)

    yield from cases(ctx, [(f"{name} vs timm", lambda n=name: rows(n)) for name in args.models])


def section_detection(ctx: Context) -> Iterator[Row]:
    import statistics

    import torch
    from torch import nn

    configure(ctx, checks=False)
    batch = 2 if ctx.dry else 16
    warmup, steps = (1, 2) if ctx.dry else (5, 30)
    detection, args, images, targets = detector_setup(ctx, batch)
    images = [im.to(ctx.device) for im in images]
    targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
    models = {"ours": detection.build_ours(args, 10), "torchvision": detection.build_torchvision(args, 10)[0]}
    models = {k: m.to(ctx.device) for k, m in models.items()}
    setting = f"mobilenet_v3_small C4, batch {batch} of {args.canvas} px generated scenes, float32"

    def train_step(name):
        model = models[name]
        model.train()
        losses = model(images, targets, detect=False)[0] if name == "ours" else model(images, targets)
        optimizers[name].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizers[name].step()

    @torch.no_grad()
    def infer(name):
        models[name].eval()
        models[name](images)

    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4) for k, m in models.items()}

    def timed(step):
        """Median seconds per call of each side, the sides alternating call by call after ``warmup`` calls each."""
        times = {k: [] for k in models}
        for i in range(warmup + steps):
            for name in models:
                ctx.sync()
                start = time.perf_counter()
                step(name)
                ctx.sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
        return {k: statistics.median(v) for k, v in times.items()}

    def rows(what, step):
        t = timed(step)
        note = f"median of {steps} steps after {warmup}, alternating"
        yield rate(f"faster_rcnn {what} vs torchvision FasterRCNN ({setting})", batch / t["ours"],
                   batch / t["torchvision"], "img/s", note=note)  # fmt: skip

    yield from cases(
        ctx,
        [
            (what, functools.partial(rows, what, step))
            for what, step in (("training", train_step), ("inference", infer))
        ],
    )


def section_train(ctx: Context) -> Iterator[Row]:
    configure(ctx, checks=False)
    train = load_benchmark("train")
    from convatlas.data.fashion_mnist import find_fashion_mnist

    steps, batch, size, workers = (2, 4, 32, 0) if ctx.dry else (20, 128, 224, 8)
    sources = ["imagefolder"]
    try:
        find_fashion_mnist()
        sources.insert(0, "fashion-mnist")
        missing = []
    except FileNotFoundError as err:
        missing = [Row("fashion-mnist: zoo vs timm in the training loop", f"skipped: {first_line(err)}")]

    def rows():
        yield from missing
        pairs = train.PAIRS[:1] if ctx.dry else train.PAIRS
        for r in train.run(ctx.device, steps=steps, batch=batch, size=size, workers=workers, sources=sources,
                           pairs=pairs):  # fmt: skip
            case = f"{r['model']} vs timm {r['timm']}, training loop on {r['source']} (batch {batch}, {steps} steps)"
            yield rate(case, r["ours"], r["peer"], "img/s", raw=r)
            if ctx.expired():
                yield Row("remaining model pairs", "skipped: section time budget spent")
                return

    yield from cases(ctx, [("training loop", rows)])


@dataclass(frozen=True)
class Section:
    name: str
    budget_s: float  # on the GPU; the dry run's tiny sizes end long before
    run: Callable[[Context], Iterator[Row]]


SECTIONS = (
    Section("checks-ops", 40, section_checks_ops),
    Section("checks-seqconv", 30, section_checks_seqconv),
    Section("checks-models", 60, section_checks_models),
    Section("checks-detection", 25, section_checks_detection),
    Section("ops", 50, section_ops),
    Section("seqconv", 35, section_seqconv),
    Section("conv", 15, section_conv),
    Section("models", 100, section_models),
    Section("detection", 30, section_detection),
    Section("train", 35, section_train),
    Section("seqconv-models", 20, section_seqconv_models),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


def environment(device: str) -> dict:
    """Date, machine and versions for the table's header (read in the worker, where torch is imported)."""
    import torch
    import torchvision

    from convatlas.ops import backends

    def version(name):
        try:
            return __import__(name).__version__
        except ImportError:
            return "not installed"

    cuda = device == "cuda"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": version("triton"),
        "timm": version("timm"),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "n/a",
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "backends": [str(r) for r in backends(device)],
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["multiprocessors"] = props.multi_processor_count
    return env


def worker(args: argparse.Namespace) -> int:
    """Answer the orchestrator on the original stdout; everything printed goes to stderr (the log)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import torch

    set_threads(args.threads)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        proto.write(json.dumps({"fatal": "no CUDA device is available (use --dry-run to run on the CPU)"}) + "\n")
        return 2
    proto.write(json.dumps({"ready": environment(device)}) + "\n")
    sections = {s.name: s for s in SECTIONS}
    rows_path = Path(args.out) / "rows.jsonl"
    for line in sys.stdin:
        order = json.loads(line)
        section = sections[order["section"]]
        print(f"\n===== {section.name} (budget {order['budget']:.0f} s) =====", flush=True)
        ctx = Context(device, args.dry_run, order["budget"])
        start = time.monotonic()
        status = "done"
        try:
            for row in section.run(ctx):
                row.section = section.name
                with open(rows_path, "a") as f:
                    f.write(json.dumps(asdict(row), allow_nan=True) + "\n")
                print(f"  {row.result}: {row.case}", flush=True)
        except Exception as err:
            traceback.print_exc()
            status = f"error: {type(err).__name__}: {first_line(err)}"
        else:
            release(ctx)
        sys.stdout.flush()
        proto.write(json.dumps({"section": section.name, "status": status, "wall_s": time.monotonic() - start}) + "\n")
    return 0


# --- the orchestrator --------------------------------------------------------------------------------------------


class Worker:
    """A worker process and its answers, each awaited with a timeout."""

    def __init__(self, command: list[str], log):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                     start_new_session=True)  # fmt: skip
        self.buffer = b""
        self.ended = False  # its output closed: it exited (or is exiting)

    def send(self, message: dict) -> None:
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict | None:
        """The next message, or None when the worker neither answered in ``timeout`` seconds nor is alive."""
        end = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self.ended = True
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def stop(self, *, kill: bool = False) -> int:
        """End the worker: close its input and give it 5 s to exit (none with ``kill``), then kill its process
        group (it and the processes it started). Returns its exit code."""
        if not kill:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.proc.poll() is None:  # still running, so its process id is still its own
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.proc.returncode


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}" if abs(value) >= 1e-3 else f"{value:.1e}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    env, rows = report["environment"], report["rows"]
    title = "CPU dry run (tiny sizes: timings mean nothing)" if report["dry_run"] else "GPU run"
    lines = [f"# benchmarks/gpu.py: {title}", ""]
    if env:
        extra = f", {env['gpu_memory_gib']} GiB, {env['multiprocessors']} SMs" if "gpu_memory_gib" in env else ""
        lines += [
            f"Date {env['date']}; device: {env['device']}{extra}; CUDA {env['cuda']}, cuDNN {env['cudnn']}; "
            f"torch {env['torch']}, torchvision {env['torchvision']}, Triton {env['triton']}, timm {env['timm']}; "
            f"Python {env['python']}; {env['cpu_cores']} CPU cores, {env['torch_threads']} torch threads.",
            "",
        ]
    counts = {}
    for r in rows:
        key = r["result"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    lines += [
        f"Wall time {report['wall_s']:.0f} s of {report['time_limit_s']:.0f} s"
        + ("" if report["finished"] else " (still running)")
        + "; rows: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + ".",
        "Speed-up = peer time / our time (above 1.0: ours is faster). A check passes when its max error <= tolerance.",
        "",
        "| section | case | ours | peer | speed-up | result | max error | tolerance | note |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        ours = fmt(r["ours"]) + (unit if r["ours"] is not None else "")
        peer = fmt(r["peer"]) + (unit if r["peer"] is not None else "")
        cells = [r["section"], r["case"], ours, peer, fmt(r["speedup"]), r["result"], fmt(r["error"]), fmt(r["tol"]),
                 r["note"]]  # fmt: skip
        lines.append("| " + " | ".join(cell(str(c)) for c in cells) + " |")
    lines += ["", "Sections: " + "; ".join(f"{s['name']} {s['status']} ({s['wall_s']:.0f} s of {s['budget_s']:.0f})"
                                           for s in report["sections"]) + "."]  # fmt: skip
    if env:
        lines += ["", "Backends (what `auto` picks):", ""] + [f"- {b}" for b in env["backends"]]
    return "\n".join(lines) + "\n"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off when a worker was stopped
            continue
    return rows


def orchestrate(args: argparse.Namespace, worker_command: list[str]) -> int:
    start = time.monotonic()
    out = Path(args.out)
    hard_end = start + args.time_limit - RESERVE_S
    report = {"dry_run": args.dry_run, "command": " ".join(sys.argv), "time_limit_s": args.time_limit,
              "environment": {}, "sections": [], "rows": [], "finished": False, "wall_s": 0.0}  # fmt: skip
    rows_path = out / "rows.jsonl"
    extra_rows: list[dict] = []  # rows the orchestrator adds: timeouts, crashes, skipped sections

    def note(section: str, case: str, result: str) -> None:
        extra_rows.append(asdict(Row(case, result, section=section)))

    def write() -> None:
        order = {name: i for i, name in enumerate(SECTION_NAMES)}
        rows = read_rows(rows_path) + extra_rows
        report["rows"] = sorted(rows, key=lambda r: order.get(r["section"], len(order)))  # stable: keeps row order
        report["wall_s"] = time.monotonic() - start
        atomic_write_json(out / "gpu.json", json.loads(json.dumps(report), parse_constant=lambda c: None))
        atomic_write_text(out / "gpu.md", markdown(report))

    log = open(out / "gpu.log", "ab")  # noqa: SIM115 (the workers write to it until the end)
    current: Worker | None = None

    def start_worker() -> Worker:
        w = Worker(worker_command, log)
        hello = w.receive(min(WORKER_START_S, max(hard_end - time.monotonic(), 0)))
        if hello is None or "ready" not in hello:
            code = w.stop(kill=True)
            raise RuntimeError(
                (hello or {}).get("fatal") or f"the worker did not start (exit code {code}; see gpu.log)"
            )
        report["environment"] = hello["ready"]
        return w

    selected = [s for s in SECTIONS if not args.sections or s.name in args.sections]
    status = 0
    try:
        for section in selected:
            left = hard_end - time.monotonic()
            record = {"name": section.name, "budget_s": section.budget_s, "wall_s": 0.0, "status": "not run"}
            report["sections"].append(record)
            if left < MIN_SECTION_S:
                record["status"] = "skipped: global deadline"
                note(section.name, "(whole section)", "skipped: global deadline (--time-limit) reached")
                write()
                continue
            if current is None:
                current = start_worker()
                left = hard_end - time.monotonic()
            budget = min(section.budget_s, max(left - GRACE_S, MIN_SECTION_S))
            print(f"{section.name}: budget {budget:.0f} s ({left:.0f} s left)", flush=True)
            t0 = time.monotonic()
            current.send({"section": section.name, "budget": budget})
            answer = current.receive(min(budget + GRACE_S, max(hard_end - t0, 0)))
            record["wall_s"] = time.monotonic() - t0
            if answer is None:
                crashed = current.ended
                code = current.stop(kill=not crashed)
                current = None
                if crashed:
                    why = f"error: the worker exited with code {code} (see gpu.log)"
                else:
                    why = f"timeout: stopped after {record['wall_s']:.0f} s (budget {budget:.0f} s)"
                record["status"] = why
                note(section.name, "(rest of the section)", why)
            else:
                record["status"] = answer["status"]
                if answer["status"] != "done":
                    note(section.name, "(section)", answer["status"])
                    current.stop()  # a fresh process (and CUDA context) for the next section
                    current = None
            write()
    except RuntimeError as err:  # the worker could not start: nothing can run
        print(f"gpu.py: {err}", file=sys.stderr)
        report["sections"][-1]["status"] = f"error: {err}"
        note(report["sections"][-1]["name"], "(worker start)", f"error: {err}")
        status = 2
    finally:
        if current is not None:
            current.stop()
        log.close()
        report["finished"] = True
        write()
    if status:
        return status
    rows = report["rows"]
    bad = [r for r in rows if r["result"].startswith(("fail", "error", "timeout"))]
    for r in bad:
        numbers = r["error"] is not None and r["tol"] is not None
        print(f"{r['section']}: {r['case']}: {r['result']}"
              + (f" (max error {r['error']:.3g}, tolerance {r['tol']:.3g})" if numbers else ""))  # fmt: skip
    print(f"wrote {out / 'gpu.md'} and {out / 'gpu.json'}: {len(rows)} rows, {len(bad)} failed, errors or timeouts; "
          f"{report['wall_s']:.0f} s")  # fmt: skip
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu.md, gpu.json, rows.jsonl and gpu.log")
    parser.add_argument("--overwrite", action="store_true", help="replace those files if the folder has them")
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    parser.add_argument("--sections", nargs="+", choices=SECTION_NAMES, help="run only these (default: all)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds for the whole run (480)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: every usable core)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.time_limit < MIN_SECTION_S + RESERVE_S:
        parser.error(f"--time-limit: at least {MIN_SECTION_S + RESERVE_S:.0f} s, got {args.time_limit:g}")
    out = check_output_dir(args.out, "--out", create=True)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        parser.error(f"--out {out}: already holds {', '.join(existing)}; pass --overwrite to replace them")
    for name in existing:
        (out / name).unlink()
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--out", str(out), "--threads",
               str(args.threads)] + (["--dry-run"] if args.dry_run else [])  # fmt: skip
    return orchestrate(args, command)


if __name__ == "__main__":
    sys.exit(main())
