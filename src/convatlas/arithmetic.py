"""Convolution arithmetic in closed form: output lengths, "same" padding, receptive fields, parameter and MAC counts.

Pure Python (no torch import), so shapes can be planned without building a network. The formulas follow
Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016), and Araujo et al., "Computing
receptive fields of convolutional neural networks" (Distill, 2019); the parameter counts follow Chollet, "Xception"
(2017) and Howard et al., "MobileNets" (2017). Every function works on one spatial dimension at a time unless it
says otherwise; the symbols are ``L`` (input length), ``k`` (kernel), ``s`` (stride), ``p`` (padding on each side),
``d`` (dilation) and ``o`` (output padding of a transposed convolution).

Hyperparameters are keyword-only: ``conv_out(224, 7, stride=2, padding=3)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from convatlas.errors import InputTypeError

__all__ = [
    "RF",
    "conv_macs",
    "conv_out",
    "conv_out_shape",
    "conv_params",
    "conv_transpose_out",
    "depthwise_macs",
    "depthwise_params",
    "parse_layers",
    "pointwise_macs",
    "pointwise_params",
    "pool_out",
    "receptive_field",
    "same_padding",
    "separable_macs",
    "separable_params",
    "separable_ratio",
]


# --------------------------------------------------------------------------------------------------------------------
# Argument checks


def _int(name: str, value, minimum: int, where: str) -> int:
    """``value`` as an int ``>= minimum``; an InputTypeError (a TypeError) for non-integers, a ValueError naming the
    rule otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{where}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def _pair(name: str, value, where: str) -> tuple[int, int]:
    """Padding as ``(left, right)``: an int ``p`` means ``(p, p)``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{where}: {name} must be an int or a (left, right) pair, got {tuple(value)!r}")
        return _int(f"{name}[0]", value[0], 0, where), _int(f"{name}[1]", value[1], 0, where)
    value = _int(name, value, 0, where)
    return value, value


def _pad_text(left: int, right: int) -> tuple[str, str]:
    """The padding term of a formula and its value, ``("2p", "2*3")`` or ``("pl + pr", "1 + 2")``."""
    if left == right:
        return "2p", f"2*{left}"
    return "pl + pr", f"{left} + {right}"


# --------------------------------------------------------------------------------------------------------------------
# Output lengths


def conv_out(
    length: int, kernel: int, *, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1
) -> int:
    """Output length of a convolution.

    ``L_out = floor((L + 2p - d(k-1) - 1) / s) + 1``: the dilated kernel spans ``d(k-1) + 1`` inputs and slides
    over the padded input in steps of ``s``. With ``d = 1`` this is ``floor((L + 2p - k) / s + 1)``.

    Args:
        length: input length ``L >= 1``.
        kernel: kernel size ``k >= 1``.
        stride: step ``s >= 1``.
        padding: zeros on each side ``p >= 0``, or an asymmetric ``(left, right)`` pair (then ``2p`` reads
            ``left + right``).
        dilation: spacing between kernel taps ``d >= 1``.

    Returns:
        The output length, at least 1.

    Raises:
        ValueError: when the dilated kernel is longer than the padded input (the length would be zero or negative).
    """
    where = "conv_out"
    _int("length", length, 1, where)
    _int("kernel", kernel, 1, where)
    _int("stride", stride, 1, where)
    _int("dilation", dilation, 1, where)
    left, right = _pair("padding", padding, where)
    span = dilation * (kernel - 1) + 1
    padded = length + left + right
    if span > padded:
        pad_sym, pad_num = _pad_text(left, right)
        raise ValueError(
            f"{where}: the dilated kernel d(k-1)+1 = {dilation}*({kernel}-1)+1 = {span} is longer than the padded "
            f"input L + {pad_sym} = {length} + {pad_num} = {padded}; the output length "
            f"floor((L + {pad_sym} - d(k-1) - 1)/s) + 1 = floor(({padded} - {span})/{stride}) + 1 would be "
            f"{(padded - span) // stride + 1} (it must be >= 1)"
        )
    return (padded - span) // stride + 1


def conv_out_shape(
    size: Sequence[int],
    kernel: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
    """:func:`conv_out` applied to each spatial dimension of ``size``.

    Args:
        size: spatial input size, e.g. ``(H, W)``.
        kernel, stride, dilation: an int for every dimension or one value per dimension.
        padding: an int for every dimension, or one entry per dimension, each an int or a ``(left, right)`` pair.

    Returns:
        The spatial output size, one length per dimension.
    """
    size = tuple(size)
    n = len(size)

    def per_dim(name: str, value) -> tuple:
        if isinstance(value, int):
            return (value,) * n
        value = tuple(value)
        if len(value) != n:
            raise ValueError(f"conv_out_shape: {name} needs one value per dimension of size {size}, got {value!r}")
        return value

    ks, ss, ps, ds = (
        per_dim("kernel", kernel),
        per_dim("stride", stride),
        per_dim("padding", padding),
        per_dim("dilation", dilation),
    )
    return tuple(conv_out(size[i], ks[i], stride=ss[i], padding=ps[i], dilation=ds[i]) for i in range(n))


def pool_out(
    length: int,
    kernel: int,
    *,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of max or average pooling (PyTorch's rule).

    ``L_out = floor((L + 2p - d(k-1) - 1) / s) + 1``, or with ``ceil_mode`` the ceiling instead of the floor, and
    then one less if the last window would start in the right padding, i.e. if ``(L_out - 1) s >= L + p``
    (every window must start inside the input or the left padding). Padding may be at most half the kernel,
    ``p <= k // 2``, so that every window sees at least one real input.

    Args:
        length: input length ``L >= 1``.
        kernel: window size ``k >= 1``.
        stride: step ``s >= 1``; ``None`` means ``s = k`` as in PyTorch.
        padding: implicit padding on each side, ``0 <= p <= k // 2``.
        dilation: spacing between window taps (max pooling only; average pooling has ``d = 1``).
        ceil_mode: round up instead of down.

    Returns:
        The output length, at least 1.
    """
    where = "pool_out"
    _int("length", length, 1, where)
    _int("kernel", kernel, 1, where)
    stride = kernel if stride is None else _int("stride", stride, 1, where)
    _int("padding", padding, 0, where)
    _int("dilation", dilation, 1, where)
    if padding > kernel // 2:
        raise ValueError(
            f"{where}: padding must be at most half the kernel, p <= k // 2 = {kernel // 2}, got p = {padding}"
        )
    span = dilation * (kernel - 1) + 1
    padded = length + 2 * padding
    numerator = padded - span
    if ceil_mode:
        out = -(-numerator // stride) + 1  # ceil for any sign
        if (out - 1) * stride >= length + padding:  # the last window would start in the right padding
            out -= 1
        rule = f"ceil(({padded} - {span})/{stride}) + 1"
    else:
        out = numerator // stride + 1
        rule = f"floor(({padded} - {span})/{stride}) + 1"
    if out < 1:
        raise ValueError(
            f"{where}: the window d(k-1)+1 = {span} is longer than the padded input L + 2p = {length} + 2*{padding} "
            f"= {padded}; the output length {rule} = {out} must be >= 1"
        )
    return out


def conv_transpose_out(
    length: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """Output length of a transposed convolution (the gradient of :func:`conv_out`'s convolution).

    ``L_out = (L - 1) s - 2p + d(k-1) + o + 1``. A convolution maps several input lengths to the same output length
    when ``s > 1``; the output padding ``o`` (added on the right only) picks one of them, so ``0 <= o < max(s, d)``.

    Args:
        length: input length ``L >= 1``.
        kernel: kernel size ``k >= 1``.
        stride: ``s >= 1``.
        padding: ``p >= 0``, removed from each side of the full output.
        output_padding: ``0 <= o < max(s, d)``, added to the right.
        dilation: ``d >= 1``.

    Returns:
        The output length, at least 1.
    """
    where = "conv_transpose_out"
    _int("length", length, 1, where)
    _int("kernel", kernel, 1, where)
    _int("stride", stride, 1, where)
    _int("padding", padding, 0, where)
    _int("output_padding", output_padding, 0, where)
    _int("dilation", dilation, 1, where)
    if output_padding >= max(stride, dilation):
        raise ValueError(
            f"{where}: output_padding must be smaller than max(stride, dilation) = max({stride}, {dilation}) = "
            f"{max(stride, dilation)}, got {output_padding}"
        )
    out = (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    if out < 1:
        raise ValueError(
            f"{where}: output length (L - 1)s - 2p + d(k-1) + o + 1 = ({length} - 1)*{stride} - 2*{padding} + "
            f"{dilation}*({kernel} - 1) + {output_padding} + 1 = {out} must be >= 1 (padding {padding} is too large)"
        )
    return out


def same_padding(kernel: int, *, dilation: int = 1) -> int | tuple[int, int]:
    """Padding that keeps the length at stride 1 (PyTorch's ``padding="same"``).

    The dilated kernel removes ``d(k-1)`` positions, so that much padding is needed in total. When it is even
    (always for odd kernels, ``k = 2p + 1``) each side gets ``p = d(k-1)/2`` and the int ``p`` is returned. When it is
    odd (even kernels with odd dilation) the padding cannot be symmetric: the pair ``(left, right)`` with
    ``left = floor(d(k-1)/2)`` and ``right = left + 1`` is returned, the extra zero going to the right as in PyTorch.

    Args:
        kernel: kernel size ``k >= 1``.
        dilation: ``d >= 1``.

    Returns:
        ``p`` (symmetric) or ``(left, right)`` (asymmetric).
    """
    _int("kernel", kernel, 1, "same_padding")
    _int("dilation", dilation, 1, "same_padding")
    total = dilation * (kernel - 1)
    if total % 2 == 0:
        return total // 2
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------------------------------------
# Receptive fields


@dataclass(frozen=True)
class RF:
    """Receptive field after a layer, in input coordinates (pixel ``i`` has its centre at ``i``).

    Attributes:
        size: how many input positions one output sees, ``r``.
        jump: distance in the input between neighbouring outputs, the product of the strides.
        start: centre of the first output's field (negative when it lies in the padding; ``.5`` for even fields).
    """

    size: int | tuple[int, ...]
    jump: int | tuple[int, ...]
    start: float | tuple[float, ...]


def _layer_entries(layer, index: int) -> list:
    """``(kernel, stride, padding, dilation)`` of one layer, defaults filled in."""
    if isinstance(layer, int) and not isinstance(layer, bool):
        layer = (layer,)
    if not isinstance(layer, Sequence) or isinstance(layer, str) or not 1 <= len(layer) <= 4:
        raise ValueError(
            f"receptive_field: layer {index} must be kernel or (kernel, stride[, padding[, dilation]]), got {layer!r}"
        )
    entries = list(layer) + [1, 0, 1][len(layer) - 1 :]
    return entries


def receptive_field(layers: Sequence) -> list[RF]:
    """Cumulative receptive field after each layer of a chain of convolutions and poolings.

    With ``k'_l = d_l (k_l - 1) + 1`` the dilated kernel of layer ``l`` (1-based):

    - ``size:  r_l = r_{l-1} + (k'_l - 1) j_{l-1}``, i.e. the closed form ``r = sum_l (k'_l - 1) prod_{i<l} s_i + 1``;
    - ``jump:  j_l = j_{l-1} s_l``, the product of the strides;
    - ``start: c_l = c_{l-1} + ((k'_l - 1)/2 - p_l) j_{l-1}``, the centre of the first output's field,

    starting from ``r_0 = 1``, ``j_0 = 1``, ``c_0 = 0``. Output ``i`` of layer ``l`` then sees the inputs
    ``c_l + i j_l +- (r_l - 1)/2`` (the span; dilated kernels leave holes inside it).

    Args:
        layers: one entry per layer, ``(kernel, stride, padding, dilation)`` with trailing entries optional
            (defaults 1, 0, 1) or a bare kernel int. Each entry is an int or a per-dimension tuple, e.g.
            ``((7, 7), 2, 3)``; a tuple anywhere makes every result per-dimension.

    Returns:
        ``RF(size, jump, start)`` after each layer; per-dimension tuples when any entry was a tuple.
    """
    parsed = [_layer_entries(layer, i) for i, layer in enumerate(layers)]
    if not parsed:
        raise ValueError("receptive_field: layers is empty; give at least one (kernel, stride, padding, dilation)")
    dims = {len(v) for entries in parsed for v in entries if isinstance(v, Sequence) and not isinstance(v, str)}
    if len(dims) > 1:
        raise ValueError(f"receptive_field: per-dimension tuples disagree in length: {sorted(dims)}")
    tupled = bool(dims)
    n = dims.pop() if tupled else 1
    names = ("kernel", "stride", "padding", "dilation")
    minimums = (1, 1, 0, 1)
    per_dim = []
    for i, entries in enumerate(parsed):
        row = []
        for name, minimum, value in zip(names, minimums, entries, strict=True):
            values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * n
            row.append(tuple(_int(f"layer {i} {name}", v, minimum, "receptive_field") for v in values))
        per_dim.append(row)
    size, jump, start = [1] * n, [1] * n, [0.0] * n
    result = []
    for kernels, strides, paddings, dilations in per_dim:
        for a in range(n):
            span = dilations[a] * (kernels[a] - 1) + 1
            start[a] = start[a] + ((span - 1) / 2 - paddings[a]) * jump[a]
            size[a] = size[a] + (span - 1) * jump[a]
            jump[a] = jump[a] * strides[a]
        if tupled:
            result.append(RF(tuple(size), tuple(jump), tuple(start)))
        else:
            result.append(RF(size[0], jump[0], start[0]))
    return result


def parse_layers(text: str) -> list[tuple[int, ...]]:
    """Parse ``"7/2/3, 3/2/1, 3/1/1"`` (``kernel/stride/padding[/dilation]`` per layer) into tuples of ints.

    Args:
        text: layers separated by commas, fields by slashes; stride, padding and dilation are optional.

    Returns:
        One ``(kernel, stride, padding, dilation)``-prefix tuple per layer, for :func:`receptive_field`.
    """
    layers = []
    for i, chunk in enumerate(text.split(",")):
        fields = [f.strip() for f in chunk.strip().split("/")]
        if not 1 <= len(fields) <= 4 or not fields[0]:
            raise ValueError(f"layer {i} ({chunk.strip()!r}) must be kernel[/stride[/padding[/dilation]]]")
        try:
            layers.append(tuple(int(f) for f in fields))
        except ValueError:
            raise ValueError(f"layer {i} ({chunk.strip()!r}): every field must be an integer") from None
    return layers


# --------------------------------------------------------------------------------------------------------------------
# Parameter and multiply-accumulate counts


def _kernel_area(kernel, where: str) -> int:
    """``prod(k)`` for an int or per-dimension kernel."""
    if isinstance(kernel, Sequence) and not isinstance(kernel, str):
        if not kernel:
            raise ValueError(f"{where}: kernel must not be empty")
        return math.prod(_int(f"kernel[{i}]", k, 1, where) for i, k in enumerate(kernel))
    return _int("kernel", kernel, 1, where)


def _positions(out_size, where: str) -> int:
    """Number of output positions ``prod(out_size)``."""
    if isinstance(out_size, Sequence) and not isinstance(out_size, str):
        return math.prod(_int(f"out_size[{i}]", v, 1, where) for i, v in enumerate(out_size))
    return _int("out_size", out_size, 1, where)


def _check_groups(c_in: int, c_out: int, groups: int, where: str) -> None:
    _int("c_in", c_in, 1, where)
    _int("c_out", c_out, 1, where)
    _int("groups", groups, 1, where)
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"{where}: groups must divide both channel counts, got c_in = {c_in}, c_out = {c_out}, groups = {groups} "
            f"(c_in % groups = {c_in % groups}, c_out % groups = {c_out % groups})"
        )


def conv_params(c_in: int, c_out: int, kernel: int | Sequence[int], *, groups: int = 1, bias: bool = True) -> int:
    """Number of parameters of a convolution: ``C_out (C_in / g) prod(k) + C_out`` (the bias term when ``bias``).

    Each of the ``C_out`` filters sees ``C_in / g`` input channels over the kernel window; ``g = 1`` gives the
    familiar ``C_in C_out k^2`` (+ bias).

    Args:
        c_in: input channels.
        c_out: output channels.
        kernel: kernel size, one per spatial dimension (``(3, 3)`` for a 3x3 kernel); an int ``k`` is a 1-D
            kernel of ``k`` taps.
        groups: ``g``, dividing both channel counts.
        bias: count one bias per output channel.
    """
    _check_groups(c_in, c_out, groups, "conv_params")
    area = _kernel_area(kernel, "conv_params")
    return c_out * (c_in // groups) * area + (c_out if bias else 0)


def conv_macs(
    c_in: int, c_out: int, kernel: int | Sequence[int], out_size: int | Sequence[int], *, groups: int = 1
) -> int:
    """Multiply-accumulates of one convolution on one sample: ``prod(out_size) C_out (C_in / g) prod(k)``.

    Every output value is a dot product of length ``(C_in / g) prod(k)``. Bias additions are not counted.

    Args:
        c_in, c_out, kernel, groups: as in :func:`conv_params`.
        out_size: spatial output size (an int or one per dimension), e.g. from :func:`conv_out`.
    """
    _check_groups(c_in, c_out, groups, "conv_macs")
    return _positions(out_size, "conv_macs") * c_out * (c_in // groups) * _kernel_area(kernel, "conv_macs")


def depthwise_params(channels: int, kernel: int | Sequence[int], *, multiplier: int = 1, bias: bool = True) -> int:
    """Parameters of a depthwise convolution (``groups = C``): ``C m prod(k) + C m`` with channel multiplier ``m``."""
    _int("multiplier", multiplier, 1, "depthwise_params")
    return conv_params(channels, channels * multiplier, kernel, groups=channels, bias=bias)


def pointwise_params(c_in: int, c_out: int, *, bias: bool = True) -> int:
    """Parameters of a pointwise (1x1) convolution: ``C_in C_out + C_out``."""
    return conv_params(c_in, c_out, 1, bias=bias)


def separable_params(c_in: int, c_out: int, kernel: int | Sequence[int], *, bias: bool = True) -> int:
    """Parameters of a depthwise-separable convolution: depthwise ``C_in prod(k)`` plus pointwise ``C_in C_out``.

    With ``bias`` each of the two convolutions has its own bias (``C_in`` and ``C_out`` terms).
    """
    return depthwise_params(c_in, kernel, bias=bias) + pointwise_params(c_in, c_out, bias=bias)


def depthwise_macs(
    channels: int, kernel: int | Sequence[int], out_size: int | Sequence[int], *, multiplier: int = 1
) -> int:
    """Multiply-accumulates of a depthwise convolution: ``prod(out_size) C m prod(k)``."""
    _int("multiplier", multiplier, 1, "depthwise_macs")
    return conv_macs(channels, channels * multiplier, kernel, out_size, groups=channels)


def pointwise_macs(c_in: int, c_out: int, out_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of a pointwise (1x1) convolution: ``prod(out_size) C_in C_out``."""
    return conv_macs(c_in, c_out, 1, out_size)


def separable_macs(c_in: int, c_out: int, kernel: int | Sequence[int], out_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of a depthwise-separable convolution: ``prod(out_size) C_in (prod(k) + C_out)``.

    The depthwise part runs at the output resolution (it carries the stride), as does the pointwise part.
    """
    return depthwise_macs(c_in, kernel, out_size) + pointwise_macs(c_in, c_out, out_size)


def separable_ratio(c_out: int, kernel: int | Sequence[int]) -> float:
    """Cost of a depthwise-separable convolution relative to a full one: ``1 / C_out + 1 / prod(k)``.

    ``(C_in k^2 + C_in C_out) / (C_in C_out k^2) = 1/C_out + 1/k^2`` (MobileNets, eq. 5): the ratio of the MAC counts
    at equal output size, and of the parameter counts without bias. For a 3x3 kernel, ``kernel=(3, 3)``, it
    approaches 1/9; an int ``k`` is a 1-D kernel (``1/C_out + 1/k``).
    """
    _int("c_out", c_out, 1, "separable_ratio")
    return 1 / c_out + 1 / _kernel_area(kernel, "separable_ratio")
