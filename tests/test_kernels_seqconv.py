"""The Triton kernels of lightweight/dynamic convolution, run on CPU by Triton's interpreter (TRITON_INTERPRET=1).

References: the PyTorch path of ``convatlas.ops`` (itself checked against a float64 loop in test_ops_seqconv.py) and,
for one case, that loop directly; forward and gradients in x and in the kernel. Sizes are tiny (the interpreter is
slow) but T=70 spans two time tiles of 64 so the tile edges are exercised.

Triton reads TRITON_INTERPRET when it is imported, and the suite has imported it long before this file runs, so
``test_kernels_under_interpreter`` re-runs this file in a fresh pytest process with the variable set; there the
kernel tests run and here they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convatlas.ops.kernels import seqconv as kernels
from convatlas.ops.kernels import triton_support
from convatlas.ops.seqconv import _dynamic_torch, _lightweight_torch, dynamic_conv, lightweight_conv
from helpers import check_against
from test_ops_seqconv import loop_dynamic

INTERPRETING = triton_support.interpreting()
interpreted = pytest.mark.skipif(not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child process")


@pytest.mark.skipif(not triton_support.installed(), reason="Triton is not installed")
@pytest.mark.skipif(INTERPRETING, reason="this is the child process")
def test_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(here)]
    result = subprocess.run(cmd, cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout[-2000:]


@interpreted
@pytest.mark.parametrize(("taps", "padding_l"), [(5, 2), (5, 4), (5, 0), (3, 1), (1, 0)])
def test_lightweight_kernel_equals_pytorch_path(taps, padding_l):
    x = torch.randn(2, 6, 70, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(3, taps, dtype=torch.float64), -1).requires_grad_()
    check_against(
        lambda x, w: kernels.lightweight_conv_triton(x, w, padding_l),
        lambda x, w: _lightweight_torch(x, w, padding_l),
        [x, w],
    )


@interpreted
@pytest.mark.parametrize(("taps", "padding_l"), [(5, 2), (5, 4), (5, 0), (3, 1)])
def test_dynamic_kernel_equals_pytorch_path(taps, padding_l):
    x = torch.randn(2, 6, 70, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, taps, 70, dtype=torch.float64, requires_grad=True)
    check_against(
        lambda x, w: kernels.dynamic_conv_triton(x, w, padding_l),
        lambda x, w: _dynamic_torch(x, w, padding_l),
        [x, w],
    )


@interpreted
def test_dynamic_kernel_equals_loop():
    x = torch.randn(1, 4, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 3, 9, dtype=torch.float64, requires_grad=True)
    check_against(
        lambda x, w: kernels.dynamic_conv_triton(x, w, 2),
        lambda x, w: loop_dynamic(x, w, 2, weight_softmax=False),
        [x, w],
    )


@interpreted
def test_float32_kernels():
    x = torch.randn(2, 8, 20, requires_grad=True)
    w = torch.randn(4, 7).softmax(-1).requires_grad_()
    check_against(
        lambda x, w: kernels.lightweight_conv_triton(x, w, 6),
        lambda x, w: _lightweight_torch(x, w, 6),
        [x, w],
        atol=1e-5,
        rtol=1e-5,
    )
    wd = torch.randn(2, 4, 7, 20, requires_grad=True)
    check_against(
        lambda x, w: kernels.dynamic_conv_triton(x, w, 3),
        lambda x, w: _dynamic_torch(x, w, 3),
        [x, wd],
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.skipif(not triton_support.installed() or INTERPRETING, reason="needs Triton, outside the interpreter")
def test_cpu_tensors_without_interpreter_are_refused():
    with pytest.raises(ValueError, match="need CUDA tensors"):
        kernels.lightweight_conv_triton(torch.randn(1, 2, 3), torch.randn(1, 3), 1)
    with pytest.raises(ValueError, match=r"lightweight_conv: backend='triton' cannot run here: .*TRITON_INTERPRET"):
        lightweight_conv(torch.randn(1, 2, 3), torch.randn(1, 3), backend="triton")


@interpreted
def test_ops_run_the_kernels_only_when_asked():
    """Under the interpreter, backend="triton" runs the kernels on CPU tensors and "auto" keeps the PyTorch path;
    reference: the PyTorch path (backend="torch")."""
    calls = []
    for name in ("_LightweightConv", "_DynamicConv"):
        fn = getattr(kernels, name)
        apply = fn.apply
        fn.apply = lambda *a, apply=apply: calls.append(1) or apply(*a)
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    w_lw, w_dyn = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, 3, 9, dtype=torch.float64)
    for op, w in ((lightweight_conv, w_lw), (dynamic_conv, w_dyn)):
        ref = op(x, w, backend="torch")
        torch.testing.assert_close(op(x, w, backend="triton"), ref)
        torch.testing.assert_close(op(x, w), ref)
    assert len(calls) == 2


@interpreted
def test_dtype_mismatch_is_refused():
    with pytest.raises(TypeError, match="weight dtype torch.float32 must equal x dtype torch.float64"):
        kernels.dynamic_conv_triton(torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 1, 3, 3), 1)
