"""Channels drawn: depthwise, pointwise and depthwise-separable convolution (Chollet 2017, Howard et al. 2017),
with the parameter and MAC counts of :mod:`convatlas.arithmetic` written on the picture.
"""

from __future__ import annotations

import math

from convatlas import arithmetic
from convatlas.atlas import windows as W
from convatlas.atlas.draw import (
    INK,
    MUTED,
    OUT_NOW,
    PAD,
    WINDOW,
    WINDOW_ZERO,
    Drawing,
    GridView,
    _cell_text,
    _check_cell,
    _check_drawable,
    _check_input,
    _durations,
    _grid_shape,
    _size_text,
)
from convatlas.atlas.scene import Line, Scene, Shape, Text, fitted, text_width

# One hue per input channel.
CHANNEL_COLOURS = ("#e07a5f", "#81b29a", "#7fa7e0", "#e9c46a", "#b39ddb", "#f4a3c0", "#90d0e0", "#c2b280")


def draw_channels(
    kind: str,
    input_size,
    *,
    in_channels: int = 3,
    out_channels: int | None = None,
    kernel=3,
    multiplier: int = 1,
    stride=1,
    padding=0,
    dilation=1,
    cell: float = 18,
) -> Drawing:
    """Animate a depthwise, pointwise or depthwise-separable convolution with every channel drawn, and the parameter
    and MAC counts of :mod:`convatlas.arithmetic` written on it.

    Args:
        kind: ``"depthwise"`` (``groups = C_in``, ``multiplier`` filters per channel), ``"pointwise"`` (1x1, all
            channels mixed) or ``"separable"`` (depthwise then pointwise).
        input_size: ``(H, W)`` (or ``(L,)``).
        in_channels: ``C_in``.
        out_channels: ``C_out`` of the pointwise step (default ``C_in + 1``).
        kernel, stride, padding, dilation: of the depthwise step.
        multiplier: depthwise channel multiplier ``m`` (``C_in m`` outputs).
        cell: cell size in pixels.
    """
    _check_cell(cell)
    if kind not in ("depthwise", "pointwise", "separable"):
        raise ValueError(f"kind must be 'depthwise', 'pointwise' or 'separable', got {kind!r}")
    size = tuple(input_size)
    nd = len(size)
    for name, value in (("in_channels", in_channels), ("multiplier", multiplier)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if in_channels * multiplier > len(CHANNEL_COLOURS):
        raise ValueError(
            f"in_channels * multiplier = {in_channels * multiplier} channels is too many to draw "
            f"(at most {len(CHANNEL_COLOURS)})"
        )
    out_channels = in_channels + 1 if out_channels is None else out_channels
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or not 1 <= out_channels <= 8:
        raise ValueError(f"out_channels must be an int in 1..8 to draw, got {out_channels!r}")
    kernel = W.per_dim("kernel", kernel, nd) if kind != "pointwise" else (1,) * nd
    _check_input(size, 0 if kind == "pointwise" else W.per_dim("padding", padding, nd), kind)
    mid = in_channels * multiplier
    if kind == "pointwise":
        steps = [("pointwise", W.channel_windows(size, kernel, in_channels=in_channels, out_channels=out_channels,
                                                  stride=stride))]  # fmt: skip
    else:
        dw = W.channel_windows(
            size,
            kernel,
            in_channels=in_channels,
            out_channels=mid,
            groups=in_channels,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        steps = [("depthwise", dw)]
        if kind == "separable":
            steps.append(("pointwise", W.channel_windows(dw.out_size, (1,) * nd, in_channels=mid,
                                                         out_channels=out_channels)))  # fmt: skip
    first = steps[0][1]
    n_frames = math.prod(steps[-1][1].out_size)
    _check_drawable(first.grid, n_frames, kind)
    counts, numbers = _channel_counts(kind, in_channels, out_channels, kernel, mid, multiplier, steps[-1][1].out_size)
    title = {
        "depthwise": f"depthwise conv: {in_channels} channels x {multiplier} filter(s) each, kernel "
        f"{_size_text(kernel)} (groups = {in_channels})",
        "pointwise": f"pointwise (1x1) conv: {in_channels} -> {out_channels} channels",
        "separable": f"depthwise-separable conv: depthwise {_size_text(kernel)} on {in_channels} channels, then "
        f"pointwise {mid} -> {out_channels}",
    }[kind]
    # layout: one column of channel grids per tensor (input, [depthwise output], [pointwise output])
    tensors = [("input", in_channels, first.grid)]
    for step, cw in steps:
        tensors.append((step, len(cw.reads), cw.out_size))
    top = 46 + 16 * len(counts)
    columns = []
    x = 16.0
    for name, channels, grid in tensors:
        shape = _grid_shape(grid)
        views = []
        for c in range(channels):
            views.append(GridView(f"{name}{c}", shape, x, top + 22 + c * (shape[0] * cell + 16), cell))
        columns.append(views)
        x += shape[1] * cell + 90
    bottom = max(v[-1].y + v[-1].height for v in columns) + 34
    width = max(x - 74, max(text_width(t, 11) for t in counts) + 32)
    static: list[Shape] = [Text(16, 22, title, size=14, bold=True)]
    static += [Text(16, 44 + 16 * i, t, size=11, fill=MUTED) for i, t in enumerate(counts)]
    labels = {"input": f"input {in_channels}x{_size_text(size)}", "depthwise": f"depthwise out {mid} ch",
              "pointwise": f"pointwise out {out_channels} ch"}  # fmt: skip
    for (name, _, grid), views in zip(tensors, columns, strict=True):
        static.append(Text(views[0].x, top + 10, labels[name], size=11, fill=MUTED))
        for c, view in enumerate(views):
            colour = _channel_colour(name, c, kind, multiplier)
            for cell_ in W.grid_cells(grid):
                pad = name == "input" and not _inside(cell_, size, first.grid)
                static.append(view.box(cell_, PAD if pad else colour, dash=pad))
    frames, infos = [], []
    for r in range(n_frames):
        shapes: list[Shape] = []
        info = {"position": W.unravel(r, steps[-1][1].out_size)}
        for s, (step, cw) in enumerate(steps):
            src, dst = columns[s], columns[s + 1]
            reads = {}
            for o in range(len(cw.reads)):
                reads[o] = cw.reads[o][r]
                oc = W.unravel(r, cw.out_size)
                shapes.append(dst[o].box(oc, OUT_NOW, mark="current"))
                for ch, gcell, _ in cw.reads[o][r]:
                    pad = s == 0 and not _inside(gcell, size, cw.grid)
                    shapes.append(src[ch].box(gcell, WINDOW_ZERO if pad else WINDOW, mark=f"read-by-{o}", dash=pad))
                    ax, ay = src[ch].centre(gcell)
                    bx, by = dst[o].centre(oc)
                    if step == "pointwise" or gcell == cw.reads[o][r][len(cw.reads[o][r]) // 2][1]:
                        shapes.append(Line(ax, ay, bx, by, stroke=_channel_colour("input", ch, kind, 1), width=1))
            info[step] = reads
        shapes.append(Text(16, bottom - 12, _channel_caption(kind, info["position"], multiplier), size=11, fill=INK))
        frames.append(shapes)
        infos.append(info)
    scene = fitted(Scene(int(math.ceil(width)), int(math.ceil(bottom)), static, frames, _durations(n_frames)))
    return Drawing(title, scene, infos, data={"counts": numbers, "lines": counts})


def _inside(cell, size, grid) -> bool:
    pad = [(g - n) // 2 for g, n in zip(grid, size, strict=True)]
    return all(0 <= c - p < n for c, p, n in zip(cell, pad, size, strict=True))


def _channel_colour(name: str, c: int, kind: str, multiplier: int) -> str:
    if name == "pointwise":
        return ("#a8dadc", "#8fd8cc", "#b5e3d8", "#9ccfc1", "#c7ebe4", "#86c5b8", "#bfe6df", "#a0d6c9")[c % 8]
    if name == "depthwise":
        return CHANNEL_COLOURS[(c // multiplier) % len(CHANNEL_COLOURS)]
    return CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)]


def _channel_caption(kind: str, position, multiplier: int) -> str:
    where = _cell_text(position)
    if kind == "depthwise":
        return f"position {where}: each output channel reads only its own input channel's window"
    if kind == "pointwise":
        return f"position {where}: every output channel mixes all input channels at this one position"
    return f"position {where}: depthwise windows per channel, then a 1x1 mix of all of them"


def _channel_counts(kind, c_in, c_out, kernel, mid, multiplier, out_size) -> tuple[list[str], dict[str, int]]:
    """The parameter and MAC lines written on a channel picture, and their numbers, from :mod:`convatlas.arithmetic`
    (weights only; a bias adds one parameter per output channel of each step)."""
    area = math.prod(kernel)
    if kind == "depthwise":
        params = arithmetic.depthwise_params(c_in, kernel, multiplier=multiplier, bias=False)
        macs = arithmetic.depthwise_macs(c_in, kernel, out_size, multiplier=multiplier)
        full = arithmetic.conv_params(c_in, mid, kernel, bias=False)
        lines = [
            f"parameters C m k^2 = {c_in}*{multiplier}*{area} = {params} (a full conv {c_in}->{mid} has {full}); "
            f"MACs {macs} (bias not counted)"
        ]
        return lines, {"params": params, "macs": macs, "full_params": full}
    if kind == "pointwise":
        params = arithmetic.pointwise_params(c_in, c_out, bias=False)
        macs = arithmetic.pointwise_macs(c_in, c_out, out_size)
        lines = [f"parameters C_in C_out = {c_in}*{c_out} = {params}; MACs {macs} (bias not counted)"]
        return lines, {"params": params, "macs": macs}
    dw = arithmetic.depthwise_params(c_in, kernel, multiplier=multiplier, bias=False)
    pw = arithmetic.pointwise_params(mid, c_out, bias=False)
    full = arithmetic.conv_params(c_in, c_out, kernel, bias=False)
    macs = arithmetic.depthwise_macs(c_in, kernel, out_size, multiplier=multiplier) + arithmetic.pointwise_macs(
        mid, c_out, out_size
    )
    lines = [
        f"parameters: depthwise C_in m k^2 = {dw} + pointwise C_in m C_out = {pw} = {dw + pw}; a full "
        f"{_size_text(kernel)} conv has C_in C_out k^2 = {full}"
    ]
    ratio = f"{(dw + pw) / full:.3f}"
    if multiplier == 1:  # MobileNets' ratio holds for one filter per channel
        ratio = f"1/C_out + 1/k^2 = {arithmetic.separable_ratio(c_out, kernel):.3f} ({dw + pw}/{full})"
    lines.append(f"ratio to the full conv {ratio}; MACs {macs} (bias not counted)")
    return lines, {"params": dw + pw, "macs": macs, "full_params": full}
