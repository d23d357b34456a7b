"""convatlas.ops.conv against torch.nn.functional (the reference for every test here unless it says otherwise).

Forward and input/weight/bias gradients in float64 to 1e-10 through ``check_against``, over random shapes and
hyperparameters; ``gradcheck``; the convolution matrix against the convolution it encodes; ``C^T`` against the
transposed convolution; and the gradient of a convolution with respect to its input against the transposed
convolution of the output gradient.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from convatlas import arithmetic
from convatlas.ops import (
    conv1d,
    conv2d,
    conv_matrix,
    conv_transpose1d,
    conv_transpose2d,
    depthwise_conv,
    pointwise_conv,
    separable_conv,
)
from convatlas.ops.conv import DENSE_LIMIT
from helpers import check_against

F64 = torch.float64


def _leaf(*shape, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).requires_grad_()


def _random_conv_case(rng: random.Random, nd: int) -> dict:
    """Random (valid) convolution arguments: shapes, groups, stride, padding (int, tuple or string), dilation."""
    groups = rng.choice([1, 1, 2, 3])
    c_in, c_out = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    kernel = tuple(rng.randint(1, 4) for _ in range(nd))
    dilation = tuple(rng.randint(1, 3) for _ in range(nd))
    padding_kind = rng.choice(["int", "tuple", "same", "valid"])
    stride = (1,) * nd if padding_kind == "same" else tuple(rng.randint(1, 3) for _ in range(nd))
    padding = {
        "int": rng.randint(0, 2),
        "tuple": tuple(rng.randint(0, 3) for _ in range(nd)),
        "same": "same",
        "valid": "valid",
    }[padding_kind]
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    size = tuple(s + rng.randint(0, 6) for s in span)  # always at least the dilated kernel
    return dict(
        x=(rng.randint(1, 2), c_in, *size),
        w=(c_out, c_in // groups, *kernel),
        bias=rng.random() < 0.7,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("seed", range(25))
def test_conv_matches_torch_forward_and_backward(nd, seed):
    case = _random_conv_case(random.Random(seed * 10 + nd), nd)
    ours, ref = (conv1d, F.conv1d) if nd == 1 else (conv2d, F.conv2d)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    bias = _leaf(case["w"][0]) if case["bias"] else None
    check_against(
        lambda x, w, b: ours(x, w, b, *args),
        lambda x, w, b: ref(x, w, b, *args),
        [_leaf(*case["x"]), _leaf(*case["w"]), bias],
    )


def test_conv_unbatched_and_float32():
    x, w = torch.randn(3, 9, 7), torch.randn(4, 3, 3, 2)
    torch.testing.assert_close(conv2d(x, w, None, 2, 1), F.conv2d(x, w, None, 2, 1), atol=1e-5, rtol=1e-5)
    x1, w1 = torch.randn(2, 10), torch.randn(5, 2, 3)
    torch.testing.assert_close(conv1d(x1, w1, padding="same"), F.conv1d(x1, w1, padding="same"), atol=1e-5, rtol=1e-5)


def _random_transpose_case(rng: random.Random, nd: int) -> dict:
    groups = rng.choice([1, 1, 2])
    c_in, c_out = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    kernel = tuple(rng.randint(1, 4) for _ in range(nd))
    stride = tuple(rng.randint(1, 3) for _ in range(nd))
    dilation = tuple(rng.randint(1, 3) for _ in range(nd))
    output_padding = tuple(rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation, strict=True))
    size = tuple(rng.randint(1, 5) for _ in range(nd))
    # Largest padding that still leaves an output of length >= 1 in every dimension.
    most = min(
        ((n - 1) * s + d * (k - 1) + o) // 2
        for n, s, d, k, o in zip(size, stride, dilation, kernel, output_padding, strict=True)
    )
    padding = rng.randint(0, max(0, min(most, 3)))
    return dict(
        x=(rng.randint(1, 2), c_in, *size),
        w=(c_in, c_out // groups, *kernel),
        bias=rng.random() < 0.7,
        args=(stride, padding, output_padding, groups, dilation),
    )


@pytest.mark.parametrize("method", ["col2im", "matrix"])
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("seed", range(15))
def test_conv_transpose_matches_torch_forward_and_backward(method, nd, seed):
    case = _random_transpose_case(random.Random(seed * 10 + nd), nd)
    ours, ref = (conv_transpose1d, F.conv_transpose1d) if nd == 1 else (conv_transpose2d, F.conv_transpose2d)
    bias = _leaf(case["w"][1] * case["args"][3]) if case["bias"] else None
    check_against(
        lambda x, w, b: ours(x, w, b, *case["args"], method=method),
        lambda x, w, b: ref(x, w, b, *case["args"]),
        [_leaf(*case["x"]), _leaf(*case["w"]), bias],
    )


def test_conv_transpose_output_padding_beyond_stride():
    # output_padding may reach dilation - 1 > stride - 1: the extra column gets real contributions.
    x, w = _leaf(1, 2, 4, 3), _leaf(2, 3, 3, 2)
    for method in ("col2im", "matrix"):
        check_against(
            lambda x, w, method=method: conv_transpose2d(x, w, None, 1, (0, 1), (2, 1), 1, (3, 2), method=method),
            lambda x, w: F.conv_transpose2d(x, w, None, 1, (0, 1), (2, 1), 1, (3, 2)),
            [x, w],
        )


def test_gradcheck():
    """Reference: finite differences (torch.autograd.gradcheck) in float64."""
    x, w, b = _leaf(1, 4, 5, 6), _leaf(2, 2, 3, 2), _leaf(2)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, (2, 1), "valid", (1, 2), 2), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: conv1d(x, w, b, 1, "same", 2, 2), (x[:, :, 0], w[:, :, 0], b))
    wt = _leaf(4, 1, 3, 2)
    for method in ("col2im", "matrix"):
        assert torch.autograd.gradcheck(
            lambda x, w, method=method: conv_transpose2d(x, w, None, 2, 1, 1, 2, 1, method=method), (x, wt)
        )
    assert torch.autograd.gradcheck(lambda w: conv_matrix(w, (4, 5), 1, 1), (w,))


@pytest.mark.parametrize(
    "weight_shape, size, stride, padding, dilation, groups",
    [
        ((3, 2, 3), 9, 2, 1, 1, 1),
        ((4, 1, 2), 7, 1, "same", 2, 2),
        ((2, 3, 3, 3), (6, 5), 1, 1, 1, 1),
        ((4, 1, 2, 3), (7, 6), (2, 1), (1, 0), (1, 2), 2),
        ((3, 3, 4, 4), (5, 5), 1, "same", 1, 1),
    ],
)
def test_conv_matrix_times_input_is_conv(weight_shape, size, stride, padding, dilation, groups):
    w = torch.randn(*weight_shape, dtype=F64)
    nd = w.dim() - 2
    x = torch.randn(w.shape[1] * groups, *((size,) if nd == 1 else size), dtype=F64)
    conv = conv1d if nd == 1 else conv2d
    y = conv(x, w, None, stride, padding, dilation, groups)
    matrix = conv_matrix(w, size, stride, padding, dilation, groups)
    assert not matrix.is_sparse and matrix.shape == (y.numel(), x.numel())
    torch.testing.assert_close(matrix @ x.flatten(), y.flatten(), atol=1e-12, rtol=0)
    reference = (F.conv1d if nd == 1 else F.conv2d)(x, w, None, stride, padding, dilation, groups)
    torch.testing.assert_close(y, reference, atol=1e-12, rtol=0)
    sparse = conv_matrix(w, size, stride, padding, dilation, groups, sparse=True)
    assert sparse.is_sparse
    torch.testing.assert_close(sparse.to_dense(), matrix, atol=0, rtol=0)
    # At most C_in/G * prod(k) nonzeros per row.
    assert int((matrix != 0).sum(1).max()) <= w[0].numel()


def test_conv_matrix_is_sparse_for_large_inputs():
    w = torch.randn(8, 8, 3, 3, dtype=F64)
    x = torch.randn(8, 40, 40, dtype=F64)
    matrix = conv_matrix(w, (40, 40), 1, 1)  # 12800 x 12800 would be 164M dense entries
    assert matrix.is_sparse and matrix._nnz() <= 12800 * 72
    y = torch.sparse.mm(matrix, x.reshape(-1, 1)).reshape(8, 40, 40)
    torch.testing.assert_close(y, F.conv2d(x[None], w, None, 1, 1)[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 0, 1, 1), (2, 1, 1, 2), (3, 2, 2, 1), (2, 0, 3, 2)])
def test_transposed_is_c_transpose_and_input_gradient(stride, padding, dilation, groups):
    """C^T y equals conv_transpose(y) with the same weight, and both equal d<conv(x), y>/dx (the adjoint)."""
    w = torch.randn(4, 4 // groups, 3, 2, dtype=F64)
    x = torch.randn(1, 4, 11, 9, dtype=F64, requires_grad=True)
    out = conv2d(x, w, None, stride, padding, dilation, groups)
    g = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, g)
    # Output padding that restores the input size the strided convolution lost.
    output_padding = tuple(
        n - arithmetic.conv_transpose_out(m, k, stride=stride, padding=padding, dilation=dilation)
        for n, m, k in zip(x.shape[2:], out.shape[2:], w.shape[2:], strict=True)
    )
    for method in ("col2im", "matrix"):
        z = conv_transpose2d(g, w, None, stride, padding, output_padding, groups, dilation, method=method)
        torch.testing.assert_close(z, grad_x, atol=1e-12, rtol=0)
    matrix = conv_matrix(w, x.shape[2:], stride, padding, dilation, groups)
    torch.testing.assert_close(matrix.T @ g.flatten(), grad_x.flatten(), atol=1e-12, rtol=0)


def test_pointwise_depthwise_separable():
    x = _leaf(2, 6, 7, 8)
    pw, pb = _leaf(5, 6, 1, 1), _leaf(5)
    check_against(lambda x, w, b: pointwise_conv(x, w, b), lambda x, w, b: F.conv2d(x, w, b), [x, pw, pb])
    check_against(
        lambda x, w: pointwise_conv(x, w.reshape(5, 6), stride=2), lambda x, w: F.conv2d(x, w, None, 2), [x, pw]
    )
    dw, db = _leaf(12, 1, 3, 3), _leaf(12)  # channel multiplier 2
    check_against(
        lambda x, w, b: depthwise_conv(x, w, b, stride=2, padding=1, dilation=1),
        lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 6),
        [x, dw, db],
    )
    pw2 = _leaf(4, 12, 1, 1)
    check_against(
        lambda x, d, p: separable_conv(x, d, p, stride=1, padding="same", dilation=2),
        lambda x, d, p: F.conv2d(F.conv2d(x, d, None, 1, "same", 2, 6), p),
        [x, dw, pw2],
    )
    x1, dw1 = _leaf(2, 3, 9), _leaf(3, 1, 4)
    check_against(
        lambda x, w: depthwise_conv(x, w, padding=2), lambda x, w: F.conv1d(x, w, None, 1, 2, 1, 3), [x1, dw1]
    )


@pytest.mark.parametrize(
    "call, error, words",
    [
        (
            lambda: conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 7, 3)),
            ValueError,
            ["conv2d", "dimension 0", "7", "4"],
        ),
        (lambda: conv2d(torch.zeros(1, 4, 8, 8), torch.zeros(2, 3, 3, 3)), ValueError, ["4 channels", "3"]),
        (lambda: conv2d(torch.zeros(1, 4, 8, 8), torch.zeros(3, 2, 3, 3), groups=2), ValueError, ["groups = 2", "3"]),
        (lambda: conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), stride=0), ValueError, ["stride", ">= 1"]),
        (
            lambda: conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), stride=2, padding="same"),
            ValueError,
            ["'same'", "stride 1"],
        ),
        (lambda: conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), padding="full"), ValueError, ["'full'"]),
        (lambda: conv1d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3)), ValueError, ["conv1d", "(1, 3, 8, 8)"]),
        (lambda: conv2d([1.0], torch.zeros(2, 3, 3, 3)), TypeError, ["input must be a Tensor"]),
        (
            lambda: conv_transpose2d(torch.zeros(1, 2, 3, 3), torch.zeros(2, 1, 3, 3), None, 2, 0, 2),
            ValueError,
            ["output_padding", "max(stride, dilation)"],
        ),
        (lambda: conv_transpose1d(torch.zeros(1, 2, 3), torch.zeros(2, 1, 3), method="fft"), ValueError, ["'fft'"]),
        (lambda: pointwise_conv(torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 3, 3)), ValueError, ["[C_out, C_in]"]),
        (lambda: depthwise_conv(torch.zeros(1, 3, 4, 4), torch.zeros(3, 2, 3, 3)), ValueError, ["C*m, 1"]),
        (
            lambda: conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 3, 3, dtype=F64)),
            TypeError,
            ["weight is torch.float64", "input is torch.float32"],
        ),
    ],
)
def test_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "shape, kernel, multiplier, stride, padding, dilation",
    [
        ((2, 3, 9, 8), (4, 2), 1, 1, "same", 1),  # asymmetric 'same'
        ((1, 4, 11, 10), (3, 3), 3, (2, 3), (1, 2), (2, 1)),
        ((2, 2, 13), (5,), 2, 3, 2, 2),  # 1-D
        ((1, 5, 6, 7), (1, 1), 1, 2, 0, 1),
    ],
)
def test_depthwise_shift_add_matches_grouped_conv(shape, kernel, multiplier, stride, padding, dilation):
    channels, nd = shape[1], len(shape) - 2
    x, w, b = _leaf(*shape), _leaf(channels * multiplier, 1, *kernel), _leaf(channels * multiplier)
    reference = F.conv1d if nd == 1 else F.conv2d
    check_against(
        lambda x, w, b: depthwise_conv(x, w, b, stride=stride, padding=padding, dilation=dilation),
        lambda x, w, b: reference(x, w, b, stride, padding, dilation, channels),
        [x, w, b],
    )


def test_conv_transpose_matrix_path_is_sparse_for_large_inputs():
    # 1 x 48 x 48 both ways: C^T would be 2304 x 2304 = 5.3M dense entries, above DENSE_LIMIT, so C is sparse COO.
    assert DENSE_LIMIT < 2304 * 2304
    check_against(
        lambda x, w: conv_transpose2d(x, w, None, 1, 1, method="matrix"),
        lambda x, w: F.conv_transpose2d(x, w, None, 1, 1),
        [_leaf(1, 1, 48, 48), _leaf(1, 1, 3, 3)],
    )
