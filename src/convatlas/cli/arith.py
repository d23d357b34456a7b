"""``convatlas arith``: convolution arithmetic on the command line (lengths, padding, receptive fields, counts).

Numbers are parsed here rather than by argparse so that a bad value ends as one line naming the option and the rule
(exit 2): lengths, kernels, strides, dilations and channels are at least 1, paddings at least 0, every value at most
10**100.
"""

from __future__ import annotations

import argparse
from functools import partial

from convatlas import arithmetic
from convatlas.cli import parse_int

_positive = partial(parse_int, minimum=1)
_nonnegative = partial(parse_int, minimum=0)


def _padding(text: str) -> int | tuple[int, int]:
    """``"3"`` or an asymmetric ``"1,2"`` (left, right)."""
    parts = text.split(",")
    if len(parts) == 2:
        return _nonnegative("--padding (left)", parts[0]), _nonnegative("--padding (right)", parts[1])
    if len(parts) != 1:
        raise ValueError(f"--padding must be an integer or 'left,right', got {text!r}")
    return _nonnegative("--padding", text)


def _size(option: str, text: str) -> tuple[int, int]:
    """``"14"`` or ``"14x14"``: the output size of a square 2-D convolution, as ``(H, W)``."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise ValueError(f"{option} must be N or HxW (a 2-D output), got {text!r}")
    size = tuple(_positive(option, part) for part in parts)
    return size * 2 if len(size) == 1 else size


def _conv(args: argparse.Namespace) -> int:
    length, kernel = _positive("--length", args.length), _positive("--kernel", args.kernel)
    stride, dilation = _positive("--stride", args.stride), _positive("--dilation", args.dilation)
    padding = _padding(args.padding)
    out = arithmetic.conv_out(length, kernel, stride=stride, padding=padding, dilation=dilation)
    left, right = padding if isinstance(padding, tuple) else (padding, padding)
    pad_sym, pad_num = ("2p", f"2*{left}") if left == right else ("pl + pr", f"{left} + {right}")
    numerator = length + left + right - dilation * (kernel - 1) - 1
    print(f"output length: {out}")
    print(
        f"floor((L + {pad_sym} - d(k-1) - 1)/s) + 1 = "
        f"floor(({length} + {pad_num} - {dilation}*({kernel}-1) - 1)/{stride}) + 1 = "
        f"floor({numerator}/{stride}) + 1 = {out}"
    )
    return 0


def _pool(args: argparse.Namespace) -> int:
    length, kernel = _positive("--length", args.length), _positive("--kernel", args.kernel)
    stride = kernel if args.stride is None else _positive("--stride", args.stride)
    padding, dilation = _nonnegative("--padding", args.padding), _positive("--dilation", args.dilation)
    out = arithmetic.pool_out(
        length, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=args.ceil_mode
    )
    numerator = length + 2 * padding - dilation * (kernel - 1) - 1
    rounding = "ceil" if args.ceil_mode else "floor"
    print(f"output length: {out}")
    line = (
        f"{rounding}((L + 2p - d(k-1) - 1)/s) + 1 = {rounding}(({length} + 2*{padding} - {dilation}*({kernel}-1) - 1)"
        f"/{stride}) + 1 = {rounding}({numerator}/{stride}) + 1"
    )
    raw = (-(-numerator // stride) if args.ceil_mode else numerator // stride) + 1
    line += f" = {raw}"
    if raw != out:
        line += f" - 1 = {out}\n(window {raw} would start in the right padding: "
        line += f"({raw}-1)*{stride} >= L + p = {length + padding})"
    print(line)
    return 0


def _transpose(args: argparse.Namespace) -> int:
    length, kernel = _positive("--length", args.length), _positive("--kernel", args.kernel)
    stride, padding = _positive("--stride", args.stride), _nonnegative("--padding", args.padding)
    output_padding = _nonnegative("--output-padding", args.output_padding)
    dilation = _positive("--dilation", args.dilation)
    out = arithmetic.conv_transpose_out(
        length, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    print(f"output length: {out}")
    print(
        f"(L - 1)s - 2p + d(k-1) + o + 1 = ({length} - 1)*{stride} - 2*{padding} + {dilation}*({kernel}-1) + "
        f"{output_padding} + 1 = {out}"
    )
    return 0


def _same(args: argparse.Namespace) -> int:
    kernel, dilation = _positive("--kernel", args.kernel), _positive("--dilation", args.dilation)
    padding = arithmetic.same_padding(kernel, dilation=dilation)
    total = dilation * (kernel - 1)
    if isinstance(padding, tuple):
        print(f"padding: left {padding[0]}, right {padding[1]} (asymmetric)")
        print(
            f"d(k-1) = {dilation}*({kernel}-1) = {total} is odd: no symmetric padding keeps the length; the extra zero "
            f"goes right, as with padding='same'"
        )
    else:
        print(f"padding: {padding}")
        print(f"p = d(k-1)/2 = {dilation}*({kernel}-1)/2 = {padding}; at stride 1 the length is kept (k' = 2p + 1)")
    return 0


def _rf(args: argparse.Namespace) -> int:
    layers = arithmetic.parse_layers(args.layers)
    fields = arithmetic.receptive_field(layers)
    length = None if args.length is None else _positive("--length", args.length)
    header = ["layer", "k/s/p/d", "size", "jump", "start"] + (["length"] if length is not None else [])
    rows = []
    for i, (layer, rf) in enumerate(zip(layers, fields, strict=True)):
        k, s, p, d = tuple(layer) + (1, 0, 1)[len(layer) - 1 :]
        row = [str(i + 1), f"{k}/{s}/{p}/{d}", str(rf.size), str(rf.jump), f"{rf.start:g}"]
        if length is not None:
            try:
                length = arithmetic.conv_out(length, k, stride=s, padding=p, dilation=d)
            except ValueError as err:
                raise ValueError(f"--length: layer {i + 1} ({k}/{s}/{p}/{d}) gets length {length}: {err}") from None
            row.append(str(length))
        rows.append(row)
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    return 0


def _params(args: argparse.Namespace) -> int:
    c_in, c_out = _positive("--in-channels", args.in_channels), _positive("--out-channels", args.out_channels)
    k = _positive("--kernel", args.kernel)
    kernel = (k, k)  # a square 2-D kernel
    bias = not args.no_bias
    full = arithmetic.conv_params(c_in, c_out, kernel, bias=bias)
    dw = arithmetic.depthwise_params(c_in, kernel, bias=bias)
    pw = arithmetic.pointwise_params(c_in, c_out, bias=bias)
    rows = [
        ["", "params"],
        [f"conv {k}x{k}", f"{full:,}"],
        [f"depthwise {k}x{k}", f"{dw:,}"],
        ["pointwise 1x1", f"{pw:,}"],
        ["separable total", f"{dw + pw:,}"],
    ]
    if args.size is not None:
        size = _size("--size", args.size)
        rows[0].append("MACs")
        rows[1].append(f"{arithmetic.conv_macs(c_in, c_out, kernel, size):,}")
        rows[2].append(f"{arithmetic.depthwise_macs(c_in, kernel, size):,}")
        rows[3].append(f"{arithmetic.pointwise_macs(c_in, c_out, size):,}")
        rows[4].append(f"{arithmetic.separable_macs(c_in, c_out, kernel, size):,}")
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    for row in rows:
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]))
    ratio = arithmetic.separable_ratio(c_out, kernel)
    print(f"separable / conv = 1/C_out + 1/k^2 = 1/{c_out} + 1/{k * k} = {ratio:.4f} (without bias)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convatlas arith`` and its subcommands."""
    parser = subparsers.add_parser(
        "arith",
        help="convolution arithmetic: output lengths, padding, receptive fields, parameter counts",
        description="Convolution arithmetic in closed form, with the formula and the numbers.",
    )
    sub = parser.add_subparsers(dest="arith_command", metavar="WHAT", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("conv", _conv, "output length of a convolution: floor((L + 2p - d(k-1) - 1)/s) + 1")
    p.add_argument("--length", required=True, help="input length L")
    p.add_argument("--kernel", required=True, help="kernel size k")
    p.add_argument("--stride", default="1", help="stride s (default 1)")
    p.add_argument("--padding", default="0", help="padding p on each side, or 'left,right' (default 0)")
    p.add_argument("--dilation", default="1", help="dilation d (default 1)")

    p = add("pool", _pool, "output length of max/average pooling (PyTorch's rule, optional ceil mode)")
    p.add_argument("--length", required=True, help="input length L")
    p.add_argument("--kernel", required=True, help="window size k")
    p.add_argument("--stride", default=None, help="stride s (default: the kernel size)")
    p.add_argument("--padding", default="0", help="padding p on each side, at most k // 2 (default 0)")
    p.add_argument("--dilation", default="1", help="dilation d (default 1)")
    p.add_argument("--ceil-mode", action="store_true", help="round up instead of down")

    p = add("transpose", _transpose, "output length of a transposed convolution: (L - 1)s - 2p + d(k-1) + o + 1")
    p.add_argument("--length", required=True, help="input length L")
    p.add_argument("--kernel", required=True, help="kernel size k")
    p.add_argument("--stride", default="1", help="stride s (default 1)")
    p.add_argument("--padding", default="0", help="padding p (default 0)")
    p.add_argument("--output-padding", default="0", help="output padding o < max(s, d) (default 0)")
    p.add_argument("--dilation", default="1", help="dilation d (default 1)")

    p = add("same", _same, "padding that keeps the length at stride 1 (padding='same')")
    p.add_argument("--kernel", required=True, help="kernel size k")
    p.add_argument("--dilation", default="1", help="dilation d (default 1)")

    p = add("rf", _rf, "receptive field (size, jump, start) after each layer of a chain")
    p.add_argument("layers", help='layers as "kernel/stride/padding[/dilation], ...", e.g. "7/2/3, 3/2/1, 3/1/1"')
    p.add_argument("--length", default=None, help="also track the output length from this input length")

    p = add("params", _params, "parameters (and MACs) of a convolution against its depthwise-separable version")
    p.add_argument("--in-channels", required=True, help="input channels C_in")
    p.add_argument("--out-channels", required=True, help="output channels C_out")
    p.add_argument("--kernel", default="3", help="kernel size k (default 3)")
    p.add_argument("--size", default=None, help="output size, e.g. 14 or 14x14, to count multiply-accumulates")
    p.add_argument("--no-bias", action="store_true", help="count no bias terms")
