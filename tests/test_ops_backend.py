"""Backends are arguments: what ``convatlas.ops.backends()`` reports, how ``backend=`` is checked, and that no
environment variable changes which implementation runs (``TRITON_INTERPRET`` included: it only makes
``backend="triton"`` possible on CPU tensors).

References: the operators' own ``backend="torch"`` results and torchvision (equal answers on every backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from convatlas.nn import MultiScaleRoIAlign, RoIAlign, RoIPool
from convatlas.ops import backends, dynamic_conv, lightweight_conv
from convatlas.ops import boxes as B
from convatlas.ops.backend import BACKENDS, OP_BACKENDS, resolve
from convatlas.ops.kernels import triton_support
from convatlas.ops.roi import multi_scale_roi_align, roi_align, roi_pool

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "convatlas"


def test_report_covers_every_operator_and_says_why():
    reports = backends("cpu")
    assert [r.op for r in reports] == list(OP_BACKENDS)
    by_op = {r.op: r for r in reports}
    for r in reports:
        assert r.device == "cpu" and r.auto in r.available and r.reason
        assert set(r.available) | {name for name, _ in r.unavailable} == set(OP_BACKENDS[r.op])
        assert r.auto == resolve(r.op, "auto", "cpu")
        assert r.op in str(r) and f"auto -> {r.auto}" in str(r)
    # where the C kernels load, "auto" takes them on CPU for the operators that have them
    c_ops = ("nms", "batched_nms", "soft_nms", "roi_pool")
    assert {by_op[op].auto for op in c_ops} == ({"c"} if "c" in by_op["nms"].available else {"torch"})
    for op in ("roi_align", "multi_scale_roi_align", "lightweight_conv", "dynamic_conv"):
        assert by_op[op].auto == "torch"  # never Triton on CPU tensors
    if triton_support.installed() and not triton_support.interpreting():
        assert dict(by_op["roi_align"].unavailable)["triton"].startswith("the Triton kernels run CUDA tensors")
    assert BACKENDS == ("auto", "c", "torch", "triton")


def test_bad_backend_names_the_operator_and_the_choices():
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    with pytest.raises(ValueError, match=r"roi_align: backend must be one of \('auto', 'torch', 'triton'\), got 'c'"):
        roi_align(x, rois, 2, backend="c")
    with pytest.raises(ValueError, match=r"roi_pool: backend must be one of \('auto', 'c', 'torch'\), got 'cuda'"):
        roi_pool(x, rois, 2, backend="cuda")
    with pytest.raises(ValueError, match="dynamic_conv: backend must be one of"):
        dynamic_conv(torch.randn(1, 2, 5), torch.randn(1, 1, 3, 5), backend="C")
    if not triton_support.interpreting():
        with pytest.raises(ValueError, match=r"roi_align: backend='triton' cannot run here: .*not cpu"):
            roi_align(x, rois, 2, backend="triton")


def test_every_backend_gives_the_same_answer_as_torchvision():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(200, 2, generator=gen) * 80
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(200, 2, generator=gen) * 30], dim=1)
    scores = torch.rand(200, generator=gen)
    idxs = torch.randint(0, 3, (200,), generator=gen)
    x = torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    rois = torch.cat([torch.randint(0, 2, (9, 1), generator=gen).double(), boxes[:9].double() / 4], dim=1)
    for backend in ("auto", *backends("cpu")[0].available):  # reference: torchvision
        assert torch.equal(B.nms(boxes, scores, 0.5, backend=backend), torchvision.ops.nms(boxes, scores, 0.5))
        got = B.batched_nms(boxes, scores, idxs, 0.5, backend=backend)
        assert torch.equal(got, torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))
        torch.testing.assert_close(roi_pool(x, rois, 3, backend=backend), torchvision.ops.roi_pool(x, rois, 3))
        torch.testing.assert_close(RoIPool(3, backend=backend)(x, rois), torchvision.ops.roi_pool(x, rois, 3))
    for backend in ("auto", "torch"):
        ref = torchvision.ops.roi_align(x, rois, 3, 1.0, 2, True)
        torch.testing.assert_close(roi_align(x, rois, 3, 1.0, 2, True, backend=backend), ref)
        torch.testing.assert_close(RoIAlign(3, 1.0, 2, True, backend=backend)(x, rois), ref)
        feats = {"p2": x, "p3": x[:, :, ::2, ::2]}
        pooler = MultiScaleRoIAlign(["p2", "p3"], 3, 2, backend=backend)
        per_image = [rois[rois[:, 0] == i, 1:] * 4 for i in range(2)]
        ref = torchvision.ops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)(feats, per_image, [(48, 48)] * 2)
        torch.testing.assert_close(pooler(feats, per_image, [(48, 48)] * 2), ref)
        out = multi_scale_roi_align(list(feats.values()), per_image, 3, scales=[0.25, 0.125], sampling_ratio=2)
        torch.testing.assert_close(out, ref)
        w = torch.randn(3, 5, dtype=torch.float64)
        seq = torch.randn(2, 3, 9, dtype=torch.float64)
        torch.testing.assert_close(lightweight_conv(seq, w, backend=backend), lightweight_conv(seq, w, backend="torch"))


_REPORT = "import json; from convatlas.ops import backends; print(json.dumps([(r.op, r.auto) for r in backends()]))"


def test_no_environment_variable_changes_what_runs():
    """The variables that used to choose paths, and TRITON_INTERPRET, leave every "auto" choice as it is."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONVATLAS_", "TRITON_INTERPRET"))}
    clean["PYTHONPATH"] = str(ROOT / "src")

    def report(extra: dict[str, str]) -> list:
        result = subprocess.run(
            [sys.executable, "-c", _REPORT], env={**clean, **extra}, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    legacy = {
        "CONVATLAS_NMS_BACKEND": "torch",
        "CONVATLAS_ROI_POOL_BACKEND": "torch",
        "CONVATLAS_ROI_ALIGN_BACKEND": "torch",
        "CONVATLAS_NO_TRITON": "1",
        "TRITON_INTERPRET": "1",
    }
    assert report(legacy) == report({})


def test_operators_read_no_convatlas_variables():
    """No CONVATLAS_* variable in the operators; TRITON_INTERPRET is read in one place, to report the interpreter."""
    texts = {str(path.relative_to(SRC)): path.read_text() for path in (SRC / "ops").rglob("*.py")}
    assert [name for name, text in texts.items() if "CONVATLAS_" in text] == []
    assert [name for name, text in texts.items() if '"TRITON_INTERPRET"' in text] == ["ops/kernels/triton_support.py"]
