"""Transposed convolution drawn two ways: as the stride-1 convolution of the turned-around kernel over the
zero-inserted, padded input (Dumoulin & Visin's transposed figures), and as the scatter of each input cell through
``C^T``, with ``C`` and ``C^T`` drawn beside it.
"""

from __future__ import annotations

import math

import torch

from convatlas import arithmetic
from convatlas.atlas import windows as W
from convatlas.atlas.draw import (
    GRID,
    INK,
    INPUT,
    MUTED,
    OUT_DONE,
    OUT_EMPTY,
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
    _fmt,
    _grid_shape,
    _numbers,
    _same,
    _size_text,
    _sliding,
)
from convatlas.atlas.scene import Line, Rect, Scene, Shape, Text, fitted, text_width
from convatlas.ops import conv_matrix


def draw_transposed(
    input_size,
    kernel,
    *,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    view: str = "convolution",
    values: bool = False,
    seed: int = 0,
    cell: float = 28,
) -> Drawing:
    """Animate a transposed convolution, drawn one of two ways.

    - ``view="convolution"``: the equivalent stride-1 convolution of the turned-around kernel over the input with
      ``s - 1`` zeros inserted between its cells and ``d(k-1) - p`` zeros around it (``a`` more at the end): one
      frame per output cell (Dumoulin & Visin's transposed figures).
    - ``view="scatter"``: each input cell ``r`` multiplies the kernel and adds it into the output: column ``r`` of
      ``C^T``, drawn beside ``C`` and ``C^T`` (the cells of the uncropped output that the padding removes are drawn
      dashed): one frame per input cell.

    Args:
        input_size: the transposed convolution's input, ``(L,)`` or ``(H, W)``.
        kernel, stride, padding, output_padding, dilation: as in ``torch.nn.ConvTranspose2d``.
        view: ``"convolution"`` or ``"scatter"``.
        values, seed, cell: as in :func:`draw_convolution`; the output is ``C^T x``.
    """
    _check_cell(cell)
    if view not in ("convolution", "scatter"):
        raise ValueError(f"view must be 'convolution' or 'scatter', got {view!r}")
    size = tuple(input_size)
    nd = len(size)
    geo = W.transposed_geometry(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    kernel, stride, padding, output_padding, dilation = (
        W.per_dim(n, v, nd)
        for n, v in (
            ("kernel", kernel),
            ("stride", stride),
            ("padding", padding),
            ("output_padding", output_padding),
            ("dilation", dilation),
        )
    )
    # the drawn grid: the output plus d(k-1) cells (as a convolution) or plus 2p (the uncropped scatter)
    extra = [max(d * (k - 1), 2 * p) for d, k, p in zip(dilation, kernel, padding, strict=True)]
    _check_input(geo.out_size, tuple((e + 1) // 2 for e in extra), "conv_transpose")
    x = w = out = None
    if values:
        x = _numbers(size, 0, 3, seed)
        w = _numbers(kernel, -1, 2, seed + 1)
        matrix = _dense_c(w, geo.out_size, size, stride, padding, dilation)
        out = (matrix.t() @ x.flatten()).reshape(geo.out_size)
    name = "conv_transpose1d" if nd == 1 else "conv_transpose2d"
    title = (
        f"{name}: input {_size_text(size)}, kernel {_size_text(kernel)}, stride {_same(stride)}, "
        f"padding {_same(padding)}, output_padding {_same(output_padding)}"
        + (f", dilation {_same(dilation)}" if any(d != 1 for d in dilation) else "")
    )
    parts = []
    for n, k, s, p, a, d, o in zip(size, kernel, stride, padding, output_padding, dilation, geo.out_size, strict=True):
        parts.append(f"({n}-1)*{s} - 2*{p} + {d}*({k}-1) + {a} + 1 = {o}")
    formula = "o' = (i'-1)s - 2p + d(k-1) + a + 1: " + ";  ".join(dict.fromkeys(parts))
    if view == "convolution":
        win = W.transposed_as_convolution(
            size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
        )
        border = ", ".join(dict.fromkeys(str(b) for b in geo.border))
        more = ", ".join(dict.fromkeys(str(a) for a in output_padding))
        extra = (
            f"as a convolution: {', '.join(dict.fromkeys(str(s - 1) for s in stride))} zero(s) inserted between "
            f"inputs, {border} zero(s) around (d(k-1) - p)"
            + (f" and {more} more at the end (a)" if any(output_padding) else "")
            + ", the kernel turned around, stride 1",
        )

        def caption(r, now):
            reads = win.real_cells(r)
            text = f"output {_cell_text(now)} reads {len(reads)} input cells through the turned-around kernel"
            if out is not None:
                text += f" = {_fmt(out[now])}"
            return text

        drawing = _sliding(
            name,
            title,
            formula,
            win,
            size,
            kernel,
            values=x,
            weights=w,
            outputs=out,
            caption=caption,
            cell=cell,
            kernel_label=f"kernel {_size_text(kernel)} (taps numbered as in the convolution)",
            extra_lines=extra,
        )
    else:
        drawing = _scatter(name, title, formula, size, kernel, stride, padding, output_padding, dilation, geo, x, w,
                           out, cell)  # fmt: skip
    drawing.data.update(input=x, weight=w)
    return drawing


def _dense_c(weight, out_size, in_size, stride, padding, dilation) -> torch.Tensor:
    """``C`` (dense) of the convolution from the transposed output back to its input, rows past the input dropped."""
    nd = len(in_size)
    matrix = conv_matrix(
        weight[None, None], out_size if nd > 1 else out_size[0], stride, padding, dilation, sparse=False
    )
    full = arithmetic.conv_out_shape(out_size, weight.shape, stride=stride, padding=padding, dilation=dilation)
    keep = [r for r in range(math.prod(full)) if all(a < n for a, n in zip(W.unravel(r, full), in_size, strict=True))]
    return matrix[keep]


def _scatter(name, title, formula, size, kernel, stride, padding, output_padding, dilation, geo, x, w, out, cell):
    sc = W.transposed_scatter(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    win, matrix = sc.windows, sc.matrix
    n_frames = math.prod(size)
    _check_drawable(win.grid, n_frames, name)
    top = 74
    gin = GridView("input", _grid_shape(size), 16, top + 16, cell)
    gout = GridView("output", _grid_shape(win.grid), gin.x + gin.width + 56, top + 16, cell)
    rows, cols = matrix.shape
    mcell = max(3.0, min(10.0, 420.0 / max(rows, cols)))
    below = max(gin.y + gin.height, gout.y + gout.height) + 34
    gc = GridView("C", (rows, cols), 16, below + 14, mcell)
    gct = GridView("C^T", (cols, rows), gc.x + gc.width + 40, below + 14, mcell)
    bottom = max(gc.y + gc.height, gct.y + gct.height) + 34
    width = max(gout.x + gout.width, gct.x + gct.width, text_width(formula, 11) + 16) + 16
    static: list[Shape] = [Text(16, 22, title, size=14, bold=True), Text(16, 42, formula, size=11, fill=MUTED)]
    static.append(
        Text(
            16,
            58,
            "as C^T: input cell r adds its value times the kernel into the output cells of row r of C (column r of "
            "C^T); dashed cells are cropped by the padding",
            size=11,
            fill=MUTED,
        )
    )
    static.append(gin.label(f"input {_size_text(size)}"))
    static.append(gout.label(f"output {_size_text(geo.out_size)} (uncropped {_size_text(win.grid)})"))
    static.append(gc.label(f"C: {rows} x {cols} (output -> input convolution)", size=10))
    static.append(gct.label(f"C^T: {cols} x {rows}", size=10))
    for c in W.grid_cells(size):
        static.append(gin.box(c, INPUT))
        if x is not None:
            static.append(gin.write(c, _fmt(x[c])))
    for c in W.grid_cells(win.grid):
        real = win.kind(c) == W.REAL
        static.append(gout.box(c, OUT_EMPTY if real else PAD, dash=not real))
    for i, j in _nonzeros(matrix):
        static.append(Rect(gc.x + j * mcell, gc.y + i * mcell, mcell, mcell, fill="#9aa9bd", stroke=None))
        static.append(Rect(gct.x + i * mcell, gct.y + j * mcell, mcell, mcell, fill="#9aa9bd", stroke=None))
    static.append(Rect(gc.x, gc.y, gc.width, gc.height, fill=None, stroke=GRID))
    static.append(Rect(gct.x, gct.y, gct.width, gct.height, fill=None, stroke=GRID))
    arrow_y = gin.y + gin.height / 2
    static.append(Line(gin.x + gin.width + 8, arrow_y, gout.x - 8, arrow_y, stroke=MUTED, width=1.5, arrow=True))
    frames, infos = [], []
    reached: dict = {}
    for r in range(n_frames):
        now = W.unravel(r, size)
        shapes: list[Shape] = [gin.box(now, OUT_NOW, mark="current")]
        if x is not None:
            shapes.append(gin.write(now, _fmt(x[now]), colour="#ffffff"))
        for c in win.cells[r]:
            reached[c] = reached.get(c, 0) + 1
        for c in reached:
            if c not in win.cells[r]:
                shapes.append(gout.box(c, OUT_DONE, mark="done", dash=win.kind(c) != W.REAL))
        for c, tap in zip(win.cells[r], win.taps[r], strict=True):
            real = win.kind(c) == W.REAL
            shapes.append(gout.box(c, WINDOW if real else WINDOW_ZERO, mark="scatter", tap=tap, dash=not real))
            shapes.append(gout.corner(c, str(tap), colour="#ffffff" if real else WINDOW))
        shapes.append(Rect(gc.x, gc.y + r * mcell, gc.width, mcell, fill=None, stroke="#d1495b", width=1.5))
        shapes.append(Rect(gct.x + r * mcell, gct.y, mcell, gct.height, fill=None, stroke="#d1495b", width=1.5))
        for _, j in _nonzeros(matrix[r : r + 1]):
            shapes.append(Rect(gc.x + j * mcell, gc.y + r * mcell, mcell, mcell, fill=WINDOW, stroke=None))
            shapes.append(Rect(gct.x + r * mcell, gct.y + j * mcell, mcell, mcell, fill=WINDOW, stroke=None))
        kept = sum(1 for c in win.cells[r] if win.kind(c) == W.REAL)
        cropped = len(win.cells[r]) - kept
        text = f"input {_cell_text(now)}: row {r} of C = column {r} of C^T reaches {kept} output cells"
        text += f" ({cropped} more are cropped by the padding)" if cropped else ""
        shapes.append(Text(16, bottom - 12, text, size=11, fill=INK))
        frames.append(shapes)
        infos.append(
            {
                "input": now,
                "writes": [
                    (win.source[c], t) for c, t in zip(win.cells[r], win.taps[r], strict=True) if c in win.source
                ],
                "cells": win.cells[r],
                "taps": win.taps[r],
            }
        )
    if out is not None:  # the last frame also shows the finished output
        frames[-1] += [gout.write(c, _fmt(out[win.source[c]]), size=cell * 0.32) for c in win.source]
    scene = fitted(Scene(int(math.ceil(width)), int(math.ceil(bottom)), static, frames, _durations(n_frames)))
    return Drawing(title, scene, infos, out, {"matrix": matrix})


def _nonzeros(matrix: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(ij) for ij in torch.nonzero(matrix).tolist()]
