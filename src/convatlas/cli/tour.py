"""``convatlas tour``: a short, checked tour of the foundation.

1. The arithmetic of a real network (torchvision's AlexNet or VGG-16 feature extractor): each layer's output size and
   cumulative receptive field from :mod:`convatlas.arithmetic`, next to the size PyTorch produces.
2. The convolution matrix of a tiny 1-D convolution: ``conv(x) == C @ x`` and ``conv_transpose(y) == C^T @ y``.
3. The savings of depthwise-separable convolution (Xception, MobileNet) in parameters and multiply-accumulates.

Every number printed is computed twice (closed form and PyTorch, or two operators) and the tour fails if they differ.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from convatlas import arithmetic
from convatlas.cli import parse_int
from convatlas.ops import conv1d, conv_matrix, conv_transpose1d

# The largest image side the tour checks: PyTorch's shapes (on the meta device) stay far inside int64 up to it.
MAX_SIZE = 65536


def _table(rows: list[list[str]], left: int = 1) -> str:
    """Right-aligned columns, the first ``left`` left-aligned."""
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _pair(value) -> int:
    """The one value of a square kernel/stride/padding (the tour's networks use square ones)."""
    return value[0] if isinstance(value, tuple) else value


def network_arithmetic(name: str, size: int) -> str:
    """Per-layer output sizes and receptive fields of a torchvision feature extractor, checked against PyTorch."""
    import torchvision

    builders = {"alexnet": torchvision.models.alexnet, "vgg16": torchvision.models.vgg16}
    if name not in builders:
        raise ValueError(f"--network must be one of {sorted(builders)}, got {name!r}")
    with torch.device("meta"):  # shapes only: no memory, no weights
        features = builders[name]().features
        x = torch.empty(1, 3, size, size)
    rows = [["layer", "k/s/p", "output", "PyTorch", "RF size", "jump", "start", "params"]]
    layers: list[tuple[int, int, int, int]] = []
    length, total_params = size, 0
    for index, module in enumerate(features):
        if isinstance(module, nn.ReLU):
            continue
        k, s, p, d = (_pair(getattr(module, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
        try:
            if isinstance(module, nn.Conv2d):
                length = arithmetic.conv_out(length, k, stride=s, padding=p, dilation=d)
            else:
                length = arithmetic.pool_out(length, k, stride=s, padding=p, dilation=d, ceil_mode=module.ceil_mode)
        except ValueError as err:
            raise ValueError(
                f"{name} layer {index} ({type(module).__name__} {k}/{s}/{p}) on a {size}x{size} image: {err}"
            ) from None
        if isinstance(module, nn.Conv2d):
            params = arithmetic.conv_params(module.in_channels, module.out_channels, (k, k))
            if params != sum(t.numel() for t in module.parameters()):
                raise RuntimeError(f"layer {index}: conv_params gives {params:,}, PyTorch counts otherwise")
            total_params += params
            label = f"{index}: conv {module.in_channels}->{module.out_channels}"
        else:
            params = 0
            label = f"{index}: max pool"
        x = module(x)  # after our arithmetic, so a too-small image is reported by conv_out/pool_out in words
        if (length, length) != tuple(x.shape[2:]):
            raise RuntimeError(f"layer {index}: arithmetic gives {length}, PyTorch {tuple(x.shape[2:])}")
        layers.append((k, s, p, d))
        rf = arithmetic.receptive_field(layers)[-1]
        rows.append(
            [
                label,
                f"{k}/{s}/{p}",
                f"{length}x{length}",
                "x".join(map(str, x.shape[2:])),
                str(rf.size),
                str(rf.jump),
                f"{rf.start:g}",
                f"{params:,}",
            ]
        )
    text = _table(rows)
    return (
        f"{name} features on a {size}x{size} image\n"
        f"output = floor((L + 2p - d(k-1) - 1)/s) + 1; receptive field r = sum_l (k_l - 1) prod_(i<l) s_i + 1\n"
        f"{text}\n"
        f"every output size equals PyTorch's; {total_params:,} convolution parameters"
    )


def conv_matrix_demo() -> str:
    """The matrix of a tiny 1-D convolution, and its transpose as the transposed convolution."""
    w = torch.tensor([[[1.0, 2.0, -1.0]]], dtype=torch.float64)  # (C_out=1, C_in=1, k=3)
    x = torch.arange(1.0, 6.0, dtype=torch.float64)  # length 5
    stride, padding = 2, 1
    c = conv_matrix(w, 5, stride, padding)  # (3, 5)
    y = conv1d(x[None], w, None, stride, padding)[0]
    cx = c @ x
    if not torch.equal(y, cx) or not torch.equal(y, F.conv1d(x[None, None], w, None, stride, padding)[0, 0]):
        raise RuntimeError("conv1d, C @ x and torch's conv1d disagree")
    g = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    z = conv_transpose1d(g[None], w, None, stride, padding)[0]
    ctg = c.T @ g
    if not torch.equal(z, ctg):
        raise RuntimeError("conv_transpose1d and C^T @ y disagree")

    def vec(t: torch.Tensor) -> str:
        return "[" + ", ".join(f"{v:g}" for v in t.flatten().tolist()) + "]"

    matrix = "\n".join("    " + "  ".join(f"{v:>2g}" for v in row) for row in c.tolist())
    return (
        f"the convolution matrix: w = {vec(w)}, stride {stride}, padding {padding}, on x = {vec(x)}\n"
        f"C (3 x 5: one row per output, the filter shifted by the stride, taps in the padding dropped):\n{matrix}\n"
        f"  conv1d(x)              = {vec(y)}\n"
        f"  C @ x                  = {vec(cx)}\n"
        f"  conv_transpose1d(g), g = {vec(g)}: {vec(z)}\n"
        f"  C^T @ g                = {vec(ctg)}\n"
        f"the transposed convolution multiplies by C^T: it is the gradient of the convolution with respect to x"
    )


def separable_savings() -> str:
    """Parameters and MACs of full against depthwise-separable 3x3 convolutions at real layer sizes."""
    layers = [
        ("MobileNet v1, 32->64 at 112", 32, 64, 112),
        ("MobileNet v1, 512->512 at 14", 512, 512, 14),
        ("MobileNet v1, 1024->1024 at 7", 1024, 1024, 7),
        ("Xception middle flow, 728->728 at 19", 728, 728, 19),
    ]
    rows = [["layer (3x3)", "conv params", "separable", "conv MACs", "separable", "ratio", "1/C_out + 1/9"]]
    for label, c_in, c_out, size in layers:
        full_p = arithmetic.conv_params(c_in, c_out, (3, 3), bias=False)
        sep_p = arithmetic.separable_params(c_in, c_out, (3, 3), bias=False)
        full_m = arithmetic.conv_macs(c_in, c_out, (3, 3), (size, size))
        sep_m = arithmetic.separable_macs(c_in, c_out, (3, 3), (size, size))
        rows.append(
            [
                label,
                f"{full_p:,}",
                f"{sep_p:,}",
                f"{full_m:,}",
                f"{sep_m:,}",
                f"{sep_m / full_m:.4f}",
                f"{arithmetic.separable_ratio(c_out, (3, 3)):.4f}",
            ]
        )
    return "depthwise-separable convolution (depthwise 3x3, then pointwise 1x1), no bias:\n" + _table(rows)


def _tour(args: argparse.Namespace) -> int:
    size = parse_int("--size", args.size, minimum=1, maximum=MAX_SIZE)
    sections = [network_arithmetic(args.network, size), conv_matrix_demo(), separable_savings()]
    print("\n\n".join(sections))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convatlas tour``."""
    parser = subparsers.add_parser(
        "tour",
        help="a short, checked tour: a real network's arithmetic, the conv matrix, separable savings",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--network", default="alexnet", help="alexnet (default) or vgg16")
    parser.add_argument("--size", default="224", help=f"input image size, 1..{MAX_SIZE} (default 224)")
    parser.set_defaults(handler=_tour)
