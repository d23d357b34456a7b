"""Convolution from tensor primitives: im2col (``unfold``) and one matrix product, the convolution matrix ``C``, and
transposed convolution as multiplication by ``C^T`` or as its efficient col2im (``fold``) form.

These are reference operators: readable, exact to float64 round-off against ``torch.nn.functional`` (the tests check
forward and backward), and never calling ``F.conv*``. The four functions that PyTorch also has (:func:`conv1d`,
:func:`conv2d`, :func:`conv_transpose1d`, :func:`conv_transpose2d`) take the same arguments in the same order, so
one can be swapped for the other; everything new is keyword-only.

Convolution here is cross-correlation, as in every deep-learning library:
``y[o, i] = b[o] + sum_{c, a} w[o, c, a] x[g(o) C_in/G + c, i s - p + a d]`` for output channel ``o`` in group ``g(o)``.
Its matrix ``C`` (``vec(y) = C vec(x) + b``) is sparse and banded; the transposed convolution is
``vec(z) = C^T vec(y)``, which is also the gradient of the convolution with respect to its input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from convatlas import arithmetic
from convatlas.errors import InputTypeError

__all__ = [
    "conv1d",
    "conv2d",
    "conv_matrix",
    "conv_transpose1d",
    "conv_transpose2d",
    "depthwise_conv",
    "pointwise_conv",
    "separable_conv",
]

# Above this many entries (32 MiB of float64) conv_matrix builds a torch sparse COO matrix instead of a dense one.
DENSE_LIMIT = 1 << 22


# --------------------------------------------------------------------------------------------------------------------
# Argument checks


def _per_dim(value, nd: int, name: str, minimum: int, where: str) -> tuple[int, ...]:
    """An int or ``nd`` ints, each an integer ``>= minimum``."""
    values = (value,) * nd if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else (value,)
    if len(values) != nd:
        raise ValueError(f"{where}: {name} must be an int or {nd} ints, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputTypeError(f"{where}: {name} must contain integers, got {value!r}")
        if v < minimum:
            raise ValueError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return values


def _padding_pairs(
    padding, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], where: str
) -> tuple[tuple[int, int], ...]:
    """``(left, right)`` per spatial dimension from an int, per-dimension ints, ``"valid"`` or ``"same"``.

    ``"same"`` needs stride 1 (as in PyTorch) and pads ``d(k-1)`` in total, the odd zero on the right.
    """
    nd = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding != "same":
            raise ValueError(f"{where}: padding string must be 'valid' or 'same', got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError(f"{where}: padding='same' needs stride 1 (as in PyTorch), got stride {tuple(stride)}")
        pairs = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))
        return tuple(pairs)
    return tuple((p, p) for p in _per_dim(padding, nd, "padding", 0, where))


def _check_tensors(input: Tensor, weight: Tensor, bias: Tensor | None, nd: int, where: str) -> Tensor:
    """Validate ranks and return the input with a batch dimension."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise InputTypeError(f"{where}: {name} must be a Tensor, got {type(t).__name__}")
    if input.dim() not in (nd + 1, nd + 2):
        raise ValueError(
            f"{where}: input must be Tensor[N, C, {'L' if nd == 1 else 'H, W'}] or unbatched, got shape "
            f"{tuple(input.shape)}"
        )
    if weight.dim() != nd + 2:
        raise ValueError(f"{where}: weight must have {nd + 2} dimensions, got shape {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.dim() != 1):
        raise ValueError(f"{where}: bias must be a 1-D Tensor, got {getattr(bias, 'shape', bias)!r}")
    if not input.is_floating_point():
        raise InputTypeError(f"{where}: input must be floating point (as in torch.nn.functional), got {input.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != input.dtype or t.device != input.device):
            raise InputTypeError(
                f"{where}: {name} is {t.dtype} on {t.device} but input is {input.dtype} on {input.device}; "
                f"they must match"
            )
    return input if input.dim() == nd + 2 else input.unsqueeze(0)


def _check_groups(groups, c_in: int, c_out: int, per_group_in: int, where: str) -> int:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive integer, got {groups!r}")
    if c_out % groups:
        raise ValueError(f"{where}: groups = {groups} must divide the output channels {c_out}")
    if c_in != per_group_in * groups:
        raise ValueError(
            f"{where}: input has {c_in} channels but weight expects groups * weight.shape[1] = {groups} * "
            f"{per_group_in} = {per_group_in * groups}"
        )
    return groups


def _out_size(size, kernel, stride, pads, dilation, where: str) -> tuple[int, ...]:
    """Spatial output size by :func:`convatlas.arithmetic.conv_out`, naming the dimension on error."""
    out = []
    for i, (n, k, s, p, d) in enumerate(zip(size, kernel, stride, pads, dilation, strict=True)):
        try:
            out.append(arithmetic.conv_out(n, k, stride=s, padding=p, dilation=d))
        except ValueError as err:
            raise ValueError(f"{where}: spatial dimension {i}: {err}") from None
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------------
# Convolution: im2col + one matrix product


def _conv_nd(input, weight, bias, stride, padding, dilation, groups, nd: int, where: str) -> Tensor:
    x = _check_tensors(input, weight, bias, nd, where)
    c_out, per_group, *kernel = weight.shape
    groups = _check_groups(groups, x.shape[1], c_out, per_group, where)
    stride = _per_dim(stride, nd, "stride", 1, where)
    dilation = _per_dim(dilation, nd, "dilation", 1, where)
    pads = _padding_pairs(padding, kernel, stride, dilation, where)
    out_size = _out_size(x.shape[2:], kernel, stride, pads, dilation, where)
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(f"{where}: bias has {bias.shape[0]} entries, expected one per output channel ({c_out})")
    if nd == 1:  # a 1-D convolution is a 2-D one over a height of 1
        x, weight = x.unsqueeze(2), weight.unsqueeze(2)
        kernel, stride, dilation, pads = [1, *kernel], (1, *stride), (1, *dilation), ((0, 0), *pads)
    if all(left == right for left, right in pads):
        unfold_padding = tuple(left for left, _ in pads)
    else:  # asymmetric ('same' with an even dilated kernel): pad explicitly, last dimension first
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        unfold_padding = (0, 0)
    n = x.shape[0]
    cols = F.unfold(x, kernel, dilation=dilation, padding=unfold_padding, stride=stride)  # (N, C_in*kh*kw, L)
    cols = cols.view(n, groups, per_group * math.prod(kernel), cols.shape[-1])  # (N, G, C_in/G*kh*kw, L)
    w = weight.reshape(groups, c_out // groups, per_group * math.prod(kernel))  # (G, C_out/G, C_in/G*kh*kw)
    out = torch.matmul(w, cols)  # (N, G, C_out/G, L)
    out = out.reshape(n, c_out, *out_size)
    if bias is not None:
        out = out + bias.view(1, c_out, *([1] * nd))
    return out if input.dim() == nd + 2 else out.squeeze(0)


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """1-D convolution by im2col and one matrix product (same arguments as ``torch.nn.functional.conv1d``).

    Args:
        input (Tensor[N, C_in, L]): or unbatched ``Tensor[C_in, L]``.
        weight (Tensor[C_out, C_in / groups, k]): filters.
        bias (Tensor[C_out]): optional.
        stride: ``s >= 1``.
        padding: ``p >= 0`` on each side, ``"valid"`` (none) or ``"same"`` (stride 1 only; the odd zero on the right).
        dilation: ``d >= 1``.
        groups: ``G``, dividing ``C_in`` and ``C_out``.

    Returns:
        Tensor[N, C_out, L_out] with ``L_out = floor((L + 2p - d(k-1) - 1)/s) + 1``.
    """
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution by im2col and one matrix product (same arguments as ``torch.nn.functional.conv2d``).

    ``unfold`` gathers every ``C_in/G x kh x kw`` patch into a column, ``(N, C_in kh kw, L)``; one batched matrix
    product with the filters reshaped to ``(G, C_out/G, C_in/G kh kw)`` gives all outputs at once.

    Args:
        input (Tensor[N, C_in, H, W]): or unbatched ``Tensor[C_in, H, W]``.
        weight (Tensor[C_out, C_in / groups, kh, kw]): filters.
        bias (Tensor[C_out]): optional.
        stride: an int or ``(sh, sw)``.
        padding: an int, ``(ph, pw)``, ``"valid"`` or ``"same"`` (stride 1 only).
        dilation: an int or ``(dh, dw)``.
        groups: ``G``, dividing ``C_in`` and ``C_out``.

    Returns:
        Tensor[N, C_out, H_out, W_out], each length ``floor((L + 2p - d(k-1) - 1)/s) + 1``.
    """
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


# --------------------------------------------------------------------------------------------------------------------
# The convolution matrix


def _matrix_entries(
    weight: Tensor,
    input_size: tuple[int, ...],
    stride: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
    groups: int,
    keep: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
    """Row, column and value of every nonzero of C, for 1-D or 2-D weights.

    ``keep`` limits the output positions to the first ``keep[i]`` along each dimension (rows are numbered for that
    size); the transposed convolution uses it when its output padding adds a position the convolution would not have.
    """
    c_out, per_group, *kernel = weight.shape
    where = "conv_matrix"
    out_size = _out_size(input_size, kernel, stride, pads, dilation, where)
    if keep is not None:
        out_size = tuple(min(o, k) for o, k in zip(out_size, keep, strict=True))
    if len(kernel) == 1:  # treat 1-D as 2-D with a height of 1
        kernel, input_size, out_size = [1, *kernel], (1, *input_size), (1, *out_size)
        stride, pads, dilation = (1, *stride), ((0, 0), *pads), (1, *dilation)
    device = weight.device
    h, w = input_size
    ho, wo = out_size
    # Broadcast over (C_out, H_out, W_out, C_in/G, kh, kw).
    o = torch.arange(c_out, device=device).view(-1, 1, 1, 1, 1, 1)
    i = torch.arange(ho, device=device).view(1, -1, 1, 1, 1, 1)
    j = torch.arange(wo, device=device).view(1, 1, -1, 1, 1, 1)
    c = torch.arange(per_group, device=device).view(1, 1, 1, -1, 1, 1)
    a = torch.arange(kernel[0], device=device).view(1, 1, 1, 1, -1, 1)
    b = torch.arange(kernel[1], device=device).view(1, 1, 1, 1, 1, -1)
    y = i * stride[0] - pads[0][0] + a * dilation[0]  # input row seen by output (i, j) through tap (a, b)
    x = j * stride[1] - pads[1][0] + b * dilation[1]
    in_channel = (o // (c_out // groups)) * per_group + c
    shape = (c_out, ho, wo, per_group, kernel[0], kernel[1])
    inside = ((y >= 0) & (y < h) & (x >= 0) & (x < w)).expand(shape)
    rows = ((o * ho + i) * wo + j).expand(shape)[inside]
    cols = ((in_channel * h + y) * w + x).expand(shape)[inside]
    values = weight.reshape(c_out, 1, 1, per_group, kernel[0], kernel[1]).expand(shape)[inside]
    spatial_out = out_size[1:] if len(weight.shape) == 3 else out_size
    return rows, cols, values, spatial_out


def _assemble(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int], sparse: bool | None) -> Tensor:
    """A dense matrix (small) or a coalesced sparse COO matrix (large, or when asked)."""
    if sparse is None:
        sparse = shape[0] * shape[1] > DENSE_LIMIT
    if sparse:
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=True).coalesce()
    return values.new_zeros(shape).index_put((rows, cols), values)


def conv_matrix(
    weight: Tensor,
    input_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    sparse: bool | None = None,
) -> Tensor:
    """The matrix C of a convolution: ``conv(x).flatten() == C @ x.flatten()`` for one unbatched, bias-free input.

    Row ``(o, i, j)`` holds filter ``o`` placed at output position ``(i, j)``: ``C[(o,i,j), (c,y,x)] = w[o, c', a, b]``
    where ``y = i s - p + a d``, ``x = j s - p + b d`` and ``c = g(o) C_in/G + c'``; taps that fall in the padding are
    dropped (they multiply zeros). Each row therefore has at most ``C_in/G kh kw`` nonzeros. ``C^T`` is the transposed
    convolution, see :func:`conv_transpose2d` with ``method="matrix"``. Differentiable with respect to ``weight``.

    Args:
        weight (Tensor[C_out, C_in / groups, k] or Tensor[C_out, C_in / groups, kh, kw]): 1-D or 2-D filters.
        input_size: spatial input size, ``L`` or ``(H, W)``; the channel count is ``groups * weight.shape[1]``.
        stride, padding, dilation, groups: as in :func:`conv2d` (``"same"`` and ``"valid"`` included).
        sparse: ``True`` for a torch sparse COO matrix, ``False`` for dense, ``None`` for sparse only when the dense
            matrix would exceed ``DENSE_LIMIT`` entries.

    Returns:
        Tensor[C_out * prod(out_size), C_in * prod(input_size)], dense or sparse COO.
    """
    where = "conv_matrix"
    if not isinstance(weight, Tensor) or weight.dim() not in (3, 4):
        raise ValueError(
            f"{where}: weight must be Tensor[C_out, C_in/G, k] or [C_out, C_in/G, kh, kw], got "
            f"{tuple(getattr(weight, 'shape', ()))}"
        )
    nd = weight.dim() - 2
    size = _per_dim(input_size, nd, "input_size", 1, where)
    c_out, per_group, *kernel = weight.shape
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c_out % groups:
        raise ValueError(f"{where}: groups must be a positive integer dividing C_out = {c_out}, got {groups!r}")
    stride = _per_dim(stride, nd, "stride", 1, where)
    dilation = _per_dim(dilation, nd, "dilation", 1, where)
    pads = _padding_pairs(padding, kernel, stride, dilation, where)
    rows, cols, values, out_size = _matrix_entries(weight, size, stride, pads, dilation, groups)
    shape = (c_out * math.prod(out_size), per_group * groups * math.prod(size))
    return _assemble(rows, cols, values, shape, sparse)


# --------------------------------------------------------------------------------------------------------------------
# Transposed convolution: C^T, or col2im


def _conv_transpose_nd(
    input, weight, bias, stride, padding, output_padding, groups, dilation, nd: int, where: str, method: str
) -> Tensor:
    x = _check_tensors(input, weight, bias, nd, where)
    c_in, per_group_out, *kernel = weight.shape
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive integer, got {groups!r}")
    if x.shape[1] != c_in or c_in % groups:
        raise ValueError(
            f"{where}: input has {x.shape[1]} channels, weight.shape[0] = {c_in} (it must match and be divisible by "
            f"groups = {groups})"
        )
    c_out = per_group_out * groups
    stride = _per_dim(stride, nd, "stride", 1, where)
    padding = _per_dim(padding, nd, "padding", 0, where)
    output_padding = _per_dim(output_padding, nd, "output_padding", 0, where)
    dilation = _per_dim(dilation, nd, "dilation", 1, where)
    size = tuple(x.shape[2:])
    out_size = []
    for i in range(nd):
        try:
            out_size.append(
                arithmetic.conv_transpose_out(
                    size[i],
                    kernel[i],
                    stride=stride[i],
                    padding=padding[i],
                    output_padding=output_padding[i],
                    dilation=dilation[i],
                )
            )
        except ValueError as err:
            raise ValueError(f"{where}: spatial dimension {i}: {err}") from None
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(f"{where}: bias has {bias.shape[0]} entries, expected one per output channel ({c_out})")
    n = x.shape[0]
    if method == "col2im":
        out = _transpose_col2im(x, weight, stride, padding, output_padding, dilation, groups, nd)
    elif method == "matrix":
        pads = tuple((p, p) for p in padding)
        # C of the convolution that maps the transposed output back to the input size (weight read as conv weight).
        rows, cols, values, _ = _matrix_entries(weight, tuple(out_size), stride, pads, dilation, groups, keep=size)
        shape = (c_in * math.prod(size), c_out * math.prod(out_size))
        matrix = _assemble(rows, cols, values, shape, None)
        flat = x.reshape(n, -1)  # (N, C_in*H*W)
        out = torch.sparse.mm(matrix.t(), flat.t()).t() if matrix.is_sparse else flat @ matrix  # rows of C^T vec(x)
        out = out.reshape(n, c_out, *out_size)
    else:
        raise ValueError(f"{where}: method must be 'col2im' or 'matrix', got {method!r}")
    if bias is not None:
        out = out + bias.view(1, c_out, *([1] * nd))
    return out if input.dim() == nd + 2 else out.squeeze(0)


def _transpose_col2im(x, weight, stride, padding, output_padding, dilation, groups, nd) -> Tensor:
    """Scatter-add every input value times its filter into the full output with ``fold``, then crop the padding."""
    n, c_in, *size = x.shape
    _, per_group_out, *kernel = weight.shape
    c_out = per_group_out * groups
    taps = math.prod(kernel)
    w = weight.reshape(groups, c_in // groups, per_group_out * taps).transpose(1, 2)  # (G, C_out/G*K, C_in/G)
    cols = torch.matmul(w, x.reshape(n, groups, c_in // groups, math.prod(size)))  # (N, G, C_out/G*K, L)
    cols = cols.reshape(n, c_out * taps, math.prod(size))
    full = [(size[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]  # before cropping
    if nd == 1:
        full, kernel, dilation, stride = [1, *full], [1, *kernel], (1, *dilation), (1, *stride)
    out = F.fold(cols, full, kernel, dilation=dilation, stride=stride)  # (N, C_out, *full)
    if nd == 1:
        out = out.squeeze(2)
    # Remove p from each side, then add the output padding on the right (negative F.pad entries crop).
    crop = []
    for p, o in zip(reversed(padding), reversed(output_padding), strict=True):
        crop += [-p, o - p]
    return F.pad(out, crop)


def conv_transpose1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
    *,
    method: str = "col2im",
) -> Tensor:
    """1-D transposed convolution (same arguments as ``torch.nn.functional.conv_transpose1d``).

    Args:
        input (Tensor[N, C_in, L]): or unbatched ``Tensor[C_in, L]``.
        weight (Tensor[C_in, C_out / groups, k]): filters (note: input channels first).
        bias (Tensor[C_out]): optional.
        stride, padding, dilation: as for the convolution this one transposes.
        output_padding: ``0 <= o < max(s, d)``, added on the right.
        groups: ``G``.
        method: ``"col2im"`` (one matrix product then ``fold``) or ``"matrix"`` (``C^T`` of :func:`conv_matrix`).

    Returns:
        Tensor[N, C_out, L_out] with ``L_out = (L - 1)s - 2p + d(k-1) + o + 1``.
    """
    return _conv_transpose_nd(
        input, weight, bias, stride, padding, output_padding, groups, dilation, 1, "conv_transpose1d", method
    )


def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
    *,
    method: str = "col2im",
) -> Tensor:
    """2-D transposed convolution (same arguments as ``torch.nn.functional.conv_transpose2d``).

    It is the adjoint of :func:`conv2d` with the same weight: ``vec(z) = C^T vec(y)`` where ``C`` is the matrix of the
    convolution from the output size back to the input size. ``method="matrix"`` builds ``C`` and multiplies by its
    transpose; ``method="col2im"`` computes the same thing efficiently: one matrix product gives every input value
    times its whole filter, ``(N, C_out kh kw, H W)``, and ``fold`` (col2im) adds the overlapping patches.

    Args:
        input (Tensor[N, C_in, H, W]): or unbatched ``Tensor[C_in, H, W]``.
        weight (Tensor[C_in, C_out / groups, kh, kw]): filters (input channels first, as in PyTorch).
        bias (Tensor[C_out]): optional.
        stride, padding, dilation: an int or one per dimension.
        output_padding: ``0 <= o < max(s, d)`` per dimension, added on the bottom/right.
        groups: ``G``.
        method: ``"col2im"`` or ``"matrix"``.

    Returns:
        Tensor[N, C_out, H_out, W_out], each length ``(L - 1)s - 2p + d(k-1) + o + 1``.
    """
    return _conv_transpose_nd(
        input, weight, bias, stride, padding, output_padding, groups, dilation, 2, "conv_transpose2d", method
    )


# --------------------------------------------------------------------------------------------------------------------
# Pointwise, depthwise and depthwise-separable convolution


def pointwise_conv(input: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride: int = 1) -> Tensor:
    """Pointwise (1x1) convolution: a matrix product over channels at every position, ``y = W x + b``.

    Args:
        input (Tensor[N, C_in, *spatial]): any number of spatial dimensions.
        weight (Tensor[C_out, C_in] or Tensor[C_out, C_in, 1, ..., 1]): the channel-mixing matrix.
        bias (Tensor[C_out]): optional.
        stride: keep every ``stride``-th position along each spatial dimension (a strided 1x1 convolution).

    Returns:
        Tensor[N, C_out, *spatial'] with ``spatial' = ceil(spatial / stride)``.
    """
    where = "pointwise_conv"
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        raise InputTypeError(f"{where}: input and weight must be Tensors")
    if input.dim() < 2:
        raise ValueError(f"{where}: input must be Tensor[N, C, ...], got shape {tuple(input.shape)}")
    if weight.dim() < 2 or any(k != 1 for k in weight.shape[2:]):
        raise ValueError(
            f"{where}: weight must be Tensor[C_out, C_in] or [C_out, C_in, 1, ...], got {tuple(weight.shape)}"
        )
    c_out, c_in = weight.shape[:2]
    if input.shape[1] != c_in:
        raise ValueError(f"{where}: input has {input.shape[1]} channels, weight expects {c_in}")
    stride = _per_dim(stride, 1, "stride", 1, where)[0]
    if stride > 1:
        input = input[(slice(None), slice(None)) + (slice(None, None, stride),) * (input.dim() - 2)]
    n, _, *spatial = input.shape
    out = torch.matmul(weight.reshape(c_out, c_in), input.reshape(n, c_in, -1))  # (N, C_out, prod(spatial))
    out = out.reshape(n, c_out, *spatial)
    if bias is not None:
        out = out + bias.view(1, c_out, *([1] * len(spatial)))
    return out


def depthwise_conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Depthwise convolution: each input channel filtered on its own (``groups = C``), 1-D or 2-D.

    Computed by shift and add rather than im2col: for each kernel tap, a strided view of the padded input times that
    tap's weight per channel, summed over the taps, ``y[c, i] = b[c] + sum_a w[c, a] x_pad[c, i s + a d]``.

    Args:
        input (Tensor[N, C, L] or Tensor[N, C, H, W]): the input.
        weight (Tensor[C * m, 1, *kernel]): ``m`` filters per channel (the channel multiplier).
        bias (Tensor[C * m]): optional.
        stride, padding, dilation: as in :func:`conv2d`.

    Returns:
        Tensor[N, C * m, *spatial_out].
    """
    where = "depthwise_conv"
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        raise InputTypeError(f"{where}: input and weight must be Tensors")
    if weight.dim() < 3 or weight.shape[1] != 1:
        raise ValueError(f"{where}: weight must be Tensor[C*m, 1, *kernel], got {tuple(weight.shape)}")
    nd = weight.dim() - 2
    if nd not in (1, 2) or input.dim() != nd + 2:
        raise ValueError(
            f"{where}: input must be Tensor[N, C, L] or [N, C, H, W] matching the weight's {nd}-D kernel, "
            f"got {tuple(input.shape)}"
        )
    channels = input.shape[1]
    if weight.shape[0] % channels:
        raise ValueError(
            f"{where}: input has {channels} channels but weight has {weight.shape[0]} filters; it needs C*m filters "
            f"(a multiple of {channels})"
        )
    x = _check_tensors(input, weight, bias, nd, where)
    stride = _per_dim(stride, nd, "stride", 1, where)
    dilation = _per_dim(dilation, nd, "dilation", 1, where)
    kernel = tuple(weight.shape[2:])
    pads = _padding_pairs(padding, kernel, stride, dilation, where)
    out_size = _out_size(x.shape[2:], kernel, stride, pads, dilation, where)
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(
            f"{where}: bias has {bias.shape[0]} entries, expected one per output channel ({weight.shape[0]})"
        )
    multiplier = weight.shape[0] // channels
    if multiplier > 1:  # output channel c*m + j reads input channel c
        x = x.repeat_interleave(multiplier, dim=1)
    x = F.pad(x, [p for pair in reversed(pads) for p in pair])
    # Shift and add: one strided view of the padded input per kernel tap, scaled by that tap's per-channel weight.
    # For one filter per channel this is much lighter than im2col, which would copy every patch.
    out = None
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(a * d, a * d + s * (n - 1) + 1, s) for a, d, s, n in zip(tap, dilation, stride, out_size, strict=True)
        )
        view = x[(slice(None), slice(None), *window)]  # (N, C*m, *out_size), no copy
        tap_weight = weight[(slice(None), 0, *tap)].view(1, -1, *([1] * nd))  # (1, C*m, 1, ...)
        out = view * tap_weight if out is None else out.addcmul_(view, tap_weight)  # accumulate in place
    if bias is not None:
        out = out + bias.view(1, -1, *([1] * nd))
    return out


def separable_conv(
    input: Tensor,
    depthwise_weight: Tensor,
    pointwise_weight: Tensor,
    depthwise_bias: Tensor | None = None,
    pointwise_bias: Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Depthwise-separable convolution (Xception, MobileNet): :func:`depthwise_conv` then :func:`pointwise_conv`.

    Costs ``1/C_out + 1/(kh kw)`` of a full convolution (see :func:`convatlas.arithmetic.separable_ratio`).

    Args:
        input (Tensor[N, C_in, H, W]): or 1-D ``Tensor[N, C_in, L]``.
        depthwise_weight (Tensor[C_in * m, 1, *kernel]): per-channel filters.
        pointwise_weight (Tensor[C_out, C_in * m] or Tensor[C_out, C_in * m, 1, 1]): channel mixing.
        depthwise_bias (Tensor[C_in * m]), pointwise_bias (Tensor[C_out]): optional.
        stride, padding, dilation: of the depthwise step.

    Returns:
        Tensor[N, C_out, *spatial_out].
    """
    y = depthwise_conv(input, depthwise_weight, depthwise_bias, stride=stride, padding=padding, dilation=dilation)
    return pointwise_conv(y, pointwise_weight, pointwise_bias)
