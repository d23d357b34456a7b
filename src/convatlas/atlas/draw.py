"""Pictures of one convolution or pooling, frame by frame, in the spirit of Dumoulin & Visin's figures ("A guide to
convolution arithmetic for deep learning", 2016): the input with its padding, the window of each output cell, the
output filling in. Every window comes from the rows of the convolution matrix (:mod:`convatlas.atlas.windows`), every
output size from :mod:`convatlas.arithmetic`, every number written in a cell from ``C @ x``. The shared pieces here
(:class:`Drawing`, :class:`GridView`, the sliding-window picture) also serve the transposed, channel and sentence
pictures.

>>> from convatlas.atlas import draw_convolution
>>> drawing = draw_convolution((5, 5), 3, stride=2, padding=1)
>>> drawing.save("conv.gif")            # every frame, animated
>>> drawing.save("conv.svg", frame=4)   # one frame
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convatlas.atlas import windows as W
from convatlas.atlas.scene import Line, Rect, Scene, Shape, Text, fitted, save_scene, text_width
from convatlas.ops import conv_matrix
from convatlas.utils import MAX_SEED

# Colours (inputs blue, outputs teal, as in Dumoulin & Visin's figures).
INPUT = "#8ab6e8"
PAD = "#ffffff"
INSERTED = "#f3f3f3"
OUTSIDE = "#e9e9e9"
WINDOW = "#1d4f91"
WINDOW_ZERO = "#c9d8ec"
OUT_EMPTY = "#ffffff"
OUT_DONE = "#8fd8cc"
OUT_NOW = "#127a6b"
GRID = "#555555"
INK = "#222222"
MUTED = "#666666"

MAX_FRAMES = 1024  # an animation with more frames than this is not a picture anyone reads
MAX_GRID = 96  # cells per side
CELL_RANGE = (4, 100)  # pixels a cell: smaller is unreadable, larger makes pictures of tens of thousands of pixels


@dataclass
class Drawing:
    """A picture of one operation: its scene (every frame) and what each frame shows.

    Attributes:
        title: what is drawn, with its parameters.
        scene: the shapes (:class:`~convatlas.atlas.scene.Scene`).
        frames: per frame, a dict describing it (``"output"``: the cell computed, ``"reads"``: the cells read with
            their kernel taps, ...); the SVG of the frame carries the same in ``data-`` attributes.
        output: the output values written on the picture (when drawn with values), ``C @ x``.
        data: what else the picture was computed from (``"matrix"``: ``C`` of a scatter, ``"counts"``: the parameter
            lines of a channel picture, ``"maps"``: the feature maps of a sentence, ...).
    """

    title: str
    scene: Scene
    frames: list[dict] = field(default_factory=list)
    output: torch.Tensor | None = None
    data: dict = field(default_factory=dict)

    def svg(self, frame: int = 0) -> str:
        return self.scene.svg(frame)

    def gif_bytes(self) -> bytes:
        return self.scene.gif_bytes()

    def save(self, path: str | Path, *, frame: int = 0, overwrite: bool = False) -> Path:
        """Write a ``.gif`` (every frame), or a ``.svg`` / ``.png`` of frame ``frame``; atomic, no silent replace."""
        return save_scene(self.scene, path, frame=frame, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------------------
# Grids


@dataclass
class GridView:
    """A grid of square cells at ``(x, y)``; 1-D grids are drawn as one row."""

    name: str
    shape: tuple[int, int]
    x: float
    y: float
    cell: float

    def rect(self, cell: tuple[int, ...]) -> tuple[float, float, float, float]:
        r, c = (0, cell[0]) if len(cell) == 1 else cell
        return self.x + c * self.cell, self.y + r * self.cell, self.cell, self.cell

    def centre(self, cell: tuple[int, ...]) -> tuple[float, float]:
        x, y, w, h = self.rect(cell)
        return x + w / 2, y + h / 2

    @property
    def width(self) -> float:
        return self.shape[1] * self.cell

    @property
    def height(self) -> float:
        return self.shape[0] * self.cell

    def box(self, cell, fill, *, mark: str = "", tap: int | None = None, dash: bool = False, stroke=GRID) -> Rect:
        x, y, w, h = self.rect(cell)
        data = [("grid", self.name), ("cell", ",".join(map(str, cell)))]
        if mark:
            data.append(("mark", mark))
        if tap is not None:
            data.append(("tap", str(tap)))
        return Rect(x, y, w, h, fill=fill, stroke=stroke, width=1.0, dash=dash, data=tuple(data))

    def label(self, text: str, size: float = 11) -> Text:
        return Text(self.x, self.y - 6, text, size=size, fill=MUTED)

    def write(self, cell, text: str, *, colour: str = INK, size: float | None = None) -> Text:
        cx, cy = self.centre(cell)
        size = size or max(7.0, self.cell * 0.42)
        size = min(size, size * self.cell * 0.88 / max(text_width(text, size), 1e-6))  # fit in the cell
        return Text(cx, cy + size * 0.36, text, size=size, fill=colour, anchor="middle")

    def corner(self, cell, text: str, *, colour: str = "#ffffff") -> Text:
        x, y, w, h = self.rect(cell)
        size = max(6.0, self.cell * 0.3)
        return Text(x + w - 2, y + h - 3, text, size=size, fill=colour, anchor="end")


def _grid_shape(size: tuple[int, ...]) -> tuple[int, int]:
    return (1, size[0]) if len(size) == 1 else (size[0], size[1])


def _kind_fill(kind: int) -> tuple[str, bool]:
    return {W.REAL: (INPUT, False), W.PADDING: (PAD, True), W.INSERTED: (INSERTED, True), W.OUTSIDE: (OUTSIDE, True)}[
        kind
    ]


def _check_drawable(grid: tuple[int, ...], frames: int, what: str) -> None:
    if max(grid) > MAX_GRID:
        raise ValueError(
            f"{what}: a grid of {'x'.join(map(str, grid))} cells is too large to draw (at most {MAX_GRID})"
        )
    if frames > MAX_FRAMES:
        raise ValueError(f"{what}: {frames} frames is too many to animate (at most {MAX_FRAMES}); draw a smaller input")


def _check_input(size: tuple[int, ...], border, what: str) -> None:
    """Refuse a grid too large to draw before any window is computed: ``size`` plus ``border`` cells each side."""
    border = (border,) * len(size) if isinstance(border, int) else tuple(border)
    grid = tuple(n + 2 * b for n, b in zip(size, border, strict=True))
    if max(grid) > MAX_GRID:
        raise ValueError(
            f"{what}: a grid of {'x'.join(map(str, grid))} cells is too large to draw (at most {MAX_GRID})"
        )


def _fmt(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _cell_text(cell: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, cell)) + ")"


def _check_cell(cell) -> None:
    low, high = CELL_RANGE
    number = isinstance(cell, int | float) and not isinstance(cell, bool)
    if not number or not math.isfinite(cell) or not low <= cell <= high:
        raise ValueError(f"cell must be a size in pixels in {low}..{high}, got {cell!r}")


def _generator(seed) -> torch.Generator:
    """A generator seeded with ``seed``, an int in ``0..MAX_SEED``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in 0..{MAX_SEED}, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _numbers(shape: tuple[int, ...], low: int, high: int, seed: int) -> torch.Tensor:
    """Small integers, float64, reproducible: the values written on a picture."""
    generator = _generator(seed)
    return torch.randint(low, high + 1, shape, generator=generator).to(torch.float64)


def _size_text(size: tuple[int, ...]) -> str:
    return "x".join(map(str, size))


def _durations(n: int) -> list[int]:
    return [700] * (n - 1) + [1600] if n > 1 else [1600]


# ------------------------------------------------------------------------------------------------------------------
# Convolution and pooling


def _conv_formula(size, kernel, stride, padding, dilation, out) -> str:
    parts = []
    for n, k, s, p, d, o in zip(size, kernel, stride, padding, dilation, out, strict=True):
        parts.append(f"floor(({n} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1 = {o}")
    same = len(set(parts)) == 1
    return "o = floor((i + 2p - d(k-1) - 1)/s) + 1: " + (parts[0] if same else ";  ".join(parts))


def _sliding(
    kind: str,
    title: str,
    formula: str,
    grid_windows: W.Windows,
    input_size: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    values: torch.Tensor | None,
    weights: torch.Tensor | None,
    outputs: torch.Tensor | None,
    caption,
    cell: float,
    kernel_label: str,
    extra_lines: tuple[str, ...] = (),
) -> Drawing:
    """The common picture of a sliding window: grid (input and its border), kernel, output; one frame per output."""
    win = grid_windows
    n_frames = len(win.cells)
    _check_drawable(win.grid, n_frames, kind)
    top = 58 + 16 * len(extra_lines)
    gin = GridView("input", _grid_shape(win.grid), 16, top + 16, cell)
    out_shape = _grid_shape(win.out_size)
    gout = GridView("output", out_shape, gin.x + gin.width + 56, top + 16, cell)
    kshape = _grid_shape(kernel)
    kcell = max(12.0, cell * 0.7)
    gker = GridView("kernel", kshape, gin.x, gin.y + gin.height + 30, kcell)
    bottom = max(gker.y + gker.height, gout.y + gout.height) + 34
    width = max(gout.x + gout.width + 16, text_width(formula, 11) + 32, 300)
    static: list[Shape] = [Text(16, 22, title, size=14, bold=True), Text(16, 42, formula, size=11, fill=MUTED)]
    static += [Text(16, 58 + 16 * i, line, size=11, fill=MUTED) for i, line in enumerate(extra_lines)]
    static.append(gin.label(f"input {_size_text(input_size)} (grid {_size_text(win.grid)})"))
    static.append(gout.label(f"output {_size_text(win.out_size)}"))
    static.append(gker.label(kernel_label))
    for c in W.grid_cells(win.grid):
        fill, dash = _kind_fill(win.kind(c))
        static.append(gin.box(c, fill, dash=dash))
        if values is not None and c in win.source:
            static.append(gin.write(c, _fmt(values[win.source[c]])))
    for c in W.grid_cells(kernel):
        static.append(gker.box(c, "#f7f3e3"))
        tap = W.ravel(c, kernel)
        static.append(gker.write(c, _fmt(weights[c]) if weights is not None else str(tap), size=kcell * 0.42))
    arrow_y = gout.y + min(gout.height, gin.height) / 2
    static.append(Line(gin.x + gin.width + 8, arrow_y, gout.x - 8, arrow_y, stroke=MUTED, width=1.5, arrow=True))
    frames, infos = [], []
    for r in range(n_frames):
        shapes: list[Shape] = []
        now = W.unravel(r, win.out_size)
        for done in range(math.prod(win.out_size)):
            oc = W.unravel(done, win.out_size)
            fill = OUT_NOW if done == r else OUT_DONE if done < r else OUT_EMPTY
            mark = "current" if done == r else "done" if done < r else ""
            shapes.append(gout.box(oc, fill, mark=mark))
            if outputs is not None and done <= r:
                shapes.append(gout.write(oc, _fmt(outputs[oc]), colour="#ffffff" if done == r else INK))
        for c, tap in zip(win.cells[r], win.taps[r], strict=True):
            real = win.kind(c) == W.REAL
            shapes.append(gin.box(c, WINDOW if real else WINDOW_ZERO, mark="window", tap=tap, dash=not real))
            if values is not None and real:
                shapes.append(gin.write(c, _fmt(values[win.source[c]]), colour="#ffffff"))
            shapes.append(gin.corner(c, str(tap), colour="#ffffff" if real else WINDOW))
        for c in W.grid_cells(kernel):
            tap = W.ravel(c, kernel)
            if tap in win.taps[r]:
                shapes.append(gker.box(c, "#f2d98c", mark="tap"))
                shapes.append(gker.write(c, _fmt(weights[c]) if weights is not None else str(tap), size=kcell * 0.42))
        shapes.append(Text(16, bottom - 12, caption(r, now), size=11, fill=INK))
        frames.append(shapes)
        infos.append({"output": now, "reads": win.real_cells(r), "cells": win.cells[r], "taps": win.taps[r]})
    scene = fitted(Scene(int(math.ceil(width)), int(math.ceil(bottom)), static, frames, _durations(n_frames)))
    return Drawing(title, scene, infos, outputs)


def draw_convolution(
    input_size,
    kernel,
    *,
    stride=1,
    padding=0,
    dilation=1,
    values: bool = False,
    seed: int = 0,
    cell: float = 28,
) -> Drawing:
    """Animate a convolution (1-D or 2-D, any stride, padding and dilation): one frame per output cell.

    Args:
        input_size: ``(L,)`` or ``(H, W)``.
        kernel, stride, padding, dilation: an int or one per dimension, as in ``torch.nn.Conv2d``.
        values: write numbers in the cells: small random integers for the input and kernel (``seed``), and each
            output as ``C @ x``.
        seed: seed of those numbers.
        cell: cell size in pixels.

    Returns:
        A :class:`Drawing`; ``drawing.frames[r]["reads"]`` lists the ``(input position, kernel tap)`` pairs of output
        ``r``, the nonzeros of row ``r`` of the convolution matrix.

    Raises:
        ValueError: the arithmetic's error when the kernel does not fit (``conv_out``), or a picture too large.
    """
    _check_cell(cell)
    size = tuple(input_size)
    _check_input(size, padding if isinstance(padding, int) else tuple(padding), "conv")
    win = W.conv_windows(size, kernel, stride=stride, padding=padding, dilation=dilation)
    nd = len(size)
    kernel, stride, padding, dilation = (
        W.per_dim(n, v, nd)
        for n, v in (("kernel", kernel), ("stride", stride), ("padding", padding), ("dilation", dilation))
    )
    x = w = out = None
    if values:
        x = _numbers(size, 0, 3, seed)
        w = _numbers(kernel, -1, 2, seed + 1)
        out = (
            conv_matrix(w[None, None], size if nd > 1 else size[0], stride, padding, dilation) @ x.flatten()
        ).reshape(win.out_size)
    name = "conv1d" if nd == 1 else "conv2d"
    title = (
        f"{name}: input {_size_text(size)}, kernel {_size_text(kernel)}, stride {_same(stride)}, "
        f"padding {_same(padding)}, dilation {_same(dilation)}"
    )
    formula = _conv_formula(size, kernel, stride, padding, dilation, win.out_size)

    def caption(r, now):
        reads = win.real_cells(r)
        zeros = len(win.cells[r]) - len(reads)
        text = f"output {_cell_text(now)} reads {len(reads)} input cells"
        text += f" and {zeros} padding zeros" if zeros else ""
        if out is not None:
            text += f": sum of input x kernel = {_fmt(out[now])}"
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
        kernel_label=f"kernel {_size_text(kernel)}" + (" (taps numbered)" if w is None else ""),
    )
    drawing.data.update(input=x, weight=w)
    return drawing


def _same(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else _size_text(values)


def draw_pooling(
    input_size,
    kernel,
    *,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    mode: str = "max",
    values: bool = False,
    seed: int = 0,
    cell: float = 28,
) -> Drawing:
    """Animate max or average pooling, ``ceil_mode``'s partial windows included (their cells past the padded input
    are drawn grey: they hold nothing, and average pooling does not count them).

    Args:
        input_size, kernel, stride, padding, dilation, ceil_mode: as in ``torch.nn.MaxPool2d`` (``stride=None``
            means the kernel size; dilation for max pooling only).
        mode: ``"max"`` or ``"avg"`` (PyTorch's ``count_include_pad=True``: padding zeros count, overhang does not).
        values, seed, cell: as in :func:`draw_convolution`.
    """
    _check_cell(cell)
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    size = tuple(input_size)
    nd = len(size)
    if mode == "avg" and any(d != 1 for d in W.per_dim("dilation", dilation, nd)):
        raise ValueError(f"average pooling has no dilation (PyTorch's avg_pool), got dilation {dilation}")
    _check_input(size, padding if isinstance(padding, int) else tuple(padding), "pool")
    win = W.pool_windows(size, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    kernel = W.per_dim("kernel", kernel, nd)
    stride = kernel if stride is None else W.per_dim("stride", stride, nd)
    padding, dilation = W.per_dim("padding", padding, nd), W.per_dim("dilation", dilation, nd)
    x = out = None
    counted = []
    for r in range(len(win.cells)):
        counted.append(sum(1 for c in win.cells[r] if win.kind(c) != W.OUTSIDE))
    if values:
        x = _numbers(size, 0, 9, seed)
        out = torch.empty(win.out_size, dtype=torch.float64)
        for r in range(len(win.cells)):
            reads = [x[p] for p, _ in win.real_cells(r)]
            oc = W.unravel(r, win.out_size)
            out[oc] = max(reads) if mode == "max" else sum(reads) / counted[r]
    name = f"{mode}_pool{nd}d"
    title = (
        f"{name}: input {_size_text(size)}, kernel {_size_text(kernel)}, stride {_same(stride)}, "
        f"padding {_same(padding)}"
        + (f", dilation {_same(dilation)}" if any(d != 1 for d in dilation) else "")
        + (", ceil_mode" if ceil_mode else "")
    )
    rounding = "ceil" if ceil_mode else "floor"
    parts = []
    for n, k, s, p, d, o in zip(size, kernel, stride, padding, dilation, win.out_size, strict=True):
        parts.append(f"{rounding}(({n} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1 -> {o}")
    formula = f"o = {rounding}((i + 2p - d(k-1) - 1)/s) + 1: " + ";  ".join(dict.fromkeys(parts))
    extra = ()
    if ceil_mode:
        extra = ("ceil_mode: the last window may run past the padded input (grey cells), but must start inside it",)

    def caption(r, now):
        reads = win.real_cells(r)
        outside = sum(1 for c in win.cells[r] if win.kind(c) == W.OUTSIDE)
        text = f"output {_cell_text(now)}: {mode} over {len(reads)} input cells"
        if outside:
            text += f" (a partial window: {outside} cells past the input)"
        if mode == "avg":
            text += f", divided by {counted[r]}"
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
        weights=None,
        outputs=out,
        caption=caption,
        cell=cell,
        kernel_label=f"window {_size_text(kernel)}",
        extra_lines=extra,
    )
    drawing.data.update(input=x)
    return drawing
