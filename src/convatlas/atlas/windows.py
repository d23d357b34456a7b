"""Which input cells each output reads, read off the rows of the convolution matrix ``C`` (``convatlas.ops``).

The atlas never computes a window with a geometry formula of its own. It builds ``C`` with
:func:`convatlas.ops.conv_matrix` for a *tap-coded* kernel (tap ``t`` of the kernel, in row-major order, holds the
value ``t + 1``) over the grid that is drawn (the input with its padding, the zero-inserted input of a transposed
convolution, ...) and reads, for output ``r``, the nonzero columns of row ``r``: those are the cells of its window,
and each value minus one is the kernel tap that lands there. Output sizes come from :mod:`convatlas.arithmetic`, so
a bad parameter fails with the arithmetic's own one-line error before anything is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from convatlas import arithmetic
from convatlas.ops import conv_matrix

# Kinds of grid cells, as drawn.
REAL, PADDING, INSERTED, OUTSIDE = 0, 1, 2, 3

Cell = tuple[int, ...]


@dataclass(frozen=True)
class Windows:
    """The windows of a sliding operation over a drawn grid.

    Attributes:
        grid: size of the drawn grid per spatial dimension (the input plus padding, overhang or inserted zeros).
        kinds: the kind of each grid cell (``REAL``, ``PADDING``, ``INSERTED`` zero, ``OUTSIDE`` the padded input),
            a nested tuple indexed like the grid.
        out_size: number of outputs per spatial dimension.
        cells: for each output (row-major), the grid cells of its window in kernel-tap order.
        taps: for each output, the kernel tap (row-major index) that reads each of those cells.
        source: for each grid cell of kind ``REAL``, the input position it holds.
    """

    grid: tuple[int, ...]
    kinds: tuple
    out_size: tuple[int, ...]
    cells: tuple[tuple[Cell, ...], ...]
    taps: tuple[tuple[int, ...], ...]
    source: dict[Cell, Cell]

    def kind(self, cell: Cell) -> int:
        value = self.kinds
        for i in cell:
            value = value[i]
        return value

    def real_cells(self, output: int) -> list[tuple[Cell, int]]:
        """``(input position, tap)`` of the window cells of ``output`` that hold input values."""
        return [
            (self.source[c], t)
            for c, t in zip(self.cells[output], self.taps[output], strict=True)
            if self.kind(c) == REAL
        ]


def tap_codes(kernel: tuple[int, ...], *, c_out: int = 1, c_in: int = 1) -> torch.Tensor:
    """A float64 weight ``Tensor[c_out, c_in, *kernel]`` whose tap ``t`` (row-major over the kernel) holds ``t + 1``."""
    codes = torch.arange(1, math.prod(kernel) + 1, dtype=torch.float64).reshape(1, 1, *kernel)
    return codes.expand(c_out, c_in, *kernel).clone()


def matrix_rows(weight: torch.Tensor, grid: tuple[int, ...], **conv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, values)`` of the nonzeros of ``C = conv_matrix(weight, grid, **conv)``, sorted by row then column.

    ``C`` is built sparse, so drawings of large grids stay cheap.
    """
    matrix = conv_matrix(weight, grid if len(grid) > 1 else grid[0], sparse=True, **conv)
    rows, cols = matrix.indices()
    return rows, cols, matrix.values()


def _group(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_rows: int) -> list[list[tuple[int, int]]]:
    """For each row, its ``(column, value)`` pairs in column order."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(n_rows)]
    for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True):
        out[r].append((c, round(v)))
    return out


def unravel(index: int, shape: tuple[int, ...]) -> Cell:
    cell = []
    for n in reversed(shape):
        cell.append(index % n)
        index //= n
    return tuple(reversed(cell))


def ravel(cell: Cell, shape: tuple[int, ...]) -> int:
    index = 0
    for c, n in zip(cell, shape, strict=True):
        index = index * n + c
    return index


def _nested(shape: tuple[int, ...], fill) -> tuple:
    """A nested tuple of ``fill(cell)`` over ``shape``."""

    def build(prefix: tuple[int, ...]) -> tuple:
        d = len(prefix)
        if d == len(shape) - 1:
            return tuple(fill((*prefix, i)) for i in range(shape[d]))
        return tuple(build((*prefix, i)) for i in range(shape[d]))

    return build(())


def _windows(kernel, grid, out_size, kind, source, *, dilation, stride=None, flip=False) -> Windows:
    """Windows of a tap-coded kernel sliding over ``grid`` with no padding (the padding is part of the grid)."""
    codes = tap_codes(kernel)
    if flip:  # a transposed convolution as a convolution: the kernel turned around, taps keep their original numbers
        codes = codes.flip(tuple(range(2, 2 + len(kernel))))
    stride = stride or (1,) * len(kernel)
    rows, cols, values = matrix_rows(codes, grid, stride=stride, padding=0, dilation=dilation)
    n_out = math.prod(out_size)
    full = arithmetic.conv_out_shape(grid, kernel, stride=stride, dilation=dilation)
    keep = [r for r in range(math.prod(full)) if all(i < o for i, o in zip(unravel(r, full), out_size, strict=True))]
    grouped = _group(rows, cols, values, math.prod(full))
    cells, taps = [], []
    for r in keep:
        pairs = sorted(grouped[r], key=lambda cv: cv[1])
        cells.append(tuple(unravel(c, grid) for c, _ in pairs))
        taps.append(tuple(v - 1 for _, v in pairs))
    assert len(cells) == n_out
    kinds = _nested(grid, kind)
    sources = {}
    for cell in grid_cells(grid):
        position = source(cell)
        if position is not None:
            sources[cell] = position
    return Windows(tuple(grid), kinds, tuple(out_size), tuple(cells), tuple(taps), sources)


def grid_cells(shape: tuple[int, ...]):
    for index in range(math.prod(shape)):
        yield unravel(index, shape)


def per_dim(name: str, value, nd: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * nd
    value = tuple(value)
    if len(value) != nd:
        raise ValueError(f"{name} must be an int or {nd} ints (one per spatial dimension), got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------------------------
# Convolution and pooling


def conv_windows(input_size, kernel, *, stride=1, padding=0, dilation=1) -> Windows:
    """Windows of a convolution over its zero-padded input (1-D or 2-D).

    The grid is the input with ``padding`` cells on each side; ``C`` of the tap-coded kernel over that grid, stride
    ``stride``, dilation ``dilation`` and no further padding, gives each window, padding cells included.
    """
    size = tuple(input_size)
    nd = len(size)
    kernel, stride, padding, dilation = (
        per_dim(n, v, nd)
        for n, v in (("kernel", kernel), ("stride", stride), ("padding", padding), ("dilation", dilation))
    )
    out = tuple(
        arithmetic.conv_out(n, k, stride=s, padding=p, dilation=d)
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    )
    grid = tuple(n + 2 * p for n, p in zip(size, padding, strict=True))

    def position(cell):
        pos = tuple(c - p for c, p in zip(cell, padding, strict=True))
        return pos if all(0 <= q < n for q, n in zip(pos, size, strict=True)) else None

    return _windows(
        kernel,
        grid,
        out,
        lambda cell: REAL if position(cell) is not None else PADDING,
        position,
        dilation=dilation,
        stride=stride,
    )


def pool_windows(input_size, kernel, *, stride=None, padding=0, dilation=1, ceil_mode=False) -> Windows:
    """Windows of max or average pooling, with ``ceil_mode``'s partial windows.

    With ``ceil_mode`` the last window may run past the padded input; the grid then gets that many ``OUTSIDE`` cells
    at the end (they hold nothing and are never counted), so every window lies on the grid.
    """
    size = tuple(input_size)
    nd = len(size)
    kernel = per_dim("kernel", kernel, nd)
    stride = kernel if stride is None else per_dim("stride", stride, nd)
    padding, dilation = per_dim("padding", padding, nd), per_dim("dilation", dilation, nd)
    out = tuple(
        arithmetic.pool_out(n, k, stride=s, padding=p, dilation=d, ceil_mode=ceil_mode)
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    )
    padded = tuple(n + 2 * p for n, p in zip(size, padding, strict=True))
    # the extent the last window reaches: (L_out - 1) s + d (k - 1) + 1, at least the padded input
    grid = tuple(
        max(n, (o - 1) * s + d * (k - 1) + 1)
        for n, o, s, d, k in zip(padded, out, stride, dilation, kernel, strict=True)
    )

    def position(cell):
        pos = tuple(c - p for c, p in zip(cell, padding, strict=True))
        return pos if all(0 <= q < n for q, n in zip(pos, size, strict=True)) else None

    def kind(cell):
        if position(cell) is not None:
            return REAL
        return OUTSIDE if any(c >= n for c, n in zip(cell, padded, strict=True)) else PADDING

    return _windows(kernel, grid, out, kind, position, dilation=dilation, stride=stride)


# ------------------------------------------------------------------------------------------------------------------
# Transposed convolution, both ways


@dataclass(frozen=True)
class TransposedGeometry:
    """Sizes of a transposed convolution per spatial dimension.

    Attributes:
        input_size, out_size: its input ``i'`` and output ``o' = (i' - 1) s - 2p + d(k - 1) + a + 1``.
        stretched: the input with ``s - 1`` zeros inserted between cells, ``(i' - 1) s + 1``.
        border: zeros before the stretched input in the equivalent convolution, ``d(k - 1) - p`` (negative: cropped).
    """

    input_size: tuple[int, ...]
    out_size: tuple[int, ...]
    stretched: tuple[int, ...]
    border: tuple[int, ...]


def transposed_geometry(input_size, kernel, *, stride=1, padding=0, output_padding=0, dilation=1) -> TransposedGeometry:
    size = tuple(input_size)
    nd = len(size)
    kernel, stride, padding, output_padding, dilation = (
        per_dim(n, v, nd)
        for n, v in (
            ("kernel", kernel),
            ("stride", stride),
            ("padding", padding),
            ("output_padding", output_padding),
            ("dilation", dilation),
        )
    )
    out = tuple(
        arithmetic.conv_transpose_out(n, k, stride=s, padding=p, output_padding=a, dilation=d)
        for n, k, s, p, a, d in zip(size, kernel, stride, padding, output_padding, dilation, strict=True)
    )
    stretched = tuple((n - 1) * s + 1 for n, s in zip(size, stride, strict=True))
    border = tuple(d * (k - 1) - p for k, p, d in zip(kernel, padding, dilation, strict=True))
    return TransposedGeometry(size, out, stretched, border)


def transposed_as_convolution(input_size, kernel, *, stride=1, padding=0, output_padding=0, dilation=1) -> Windows:
    """A transposed convolution drawn as a stride-1 convolution of the turned-around kernel over its input with
    ``s - 1`` zeros inserted between cells and ``d(k - 1) - p`` zeros around (``a`` more at the end).

    The grid is the window of that padded, zero-inserted input that the ``o'`` outputs read; its cells are ``REAL``
    (an input value), ``INSERTED`` (a zero between inputs) or ``PADDING``.
    """
    size = tuple(input_size)
    nd = len(size)
    geo = transposed_geometry(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    kernel, stride, dilation = (
        per_dim("kernel", kernel, nd),
        per_dim("stride", stride, nd),
        per_dim("dilation", dilation, nd),
    )
    grid = tuple(o + d * (k - 1) for o, d, k in zip(geo.out_size, dilation, kernel, strict=True))

    def stretched_index(cell):
        return tuple(c - b for c, b in zip(cell, geo.border, strict=True))

    def position(cell):
        u = stretched_index(cell)
        inside = all(0 <= q < n for q, n in zip(u, geo.stretched, strict=True))
        if inside and all(q % s == 0 for q, s in zip(u, stride, strict=True)):
            return tuple(q // s for q, s in zip(u, stride, strict=True))
        return None

    def kind(cell):
        if position(cell) is not None:
            return REAL
        u = stretched_index(cell)
        return INSERTED if all(0 <= q < n for q, n in zip(u, geo.stretched, strict=True)) else PADDING

    return _windows(kernel, grid, geo.out_size, kind, position, dilation=dilation, flip=True)


@dataclass(frozen=True)
class Scatter:
    """A transposed convolution as ``C^T``: input cell ``r`` (row ``r`` of ``C``, column ``r`` of ``C^T``) adds its
    value times the kernel into the output cells of row ``r``.

    Attributes:
        windows: for each input cell, the output cells it reaches on the uncropped output (``padding`` cells on each
            side, marked ``PADDING``: what the transposed convolution crops), with the kernel taps.
        matrix: ``C`` (dense), the matrix of the convolution from the output size back to the input size, for the
            tap-coded kernel: ``C[r, c] = t + 1`` when tap ``t`` links input cell ``r`` to output cell ``c``.
    """

    windows: Windows
    matrix: torch.Tensor


def transposed_scatter(input_size, kernel, *, stride=1, padding=0, output_padding=0, dilation=1) -> Scatter:
    """A transposed convolution drawn as the scatter of each input cell through ``C^T``."""
    size = tuple(input_size)
    nd = len(size)
    geo = transposed_geometry(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    kernel, stride, padding, dilation = (
        per_dim(n, v, nd)
        for n, v in (("kernel", kernel), ("stride", stride), ("padding", padding), ("dilation", dilation))
    )
    uncropped = tuple(o + 2 * p for o, p in zip(geo.out_size, padding, strict=True))

    def position(cell):
        pos = tuple(c - p for c, p in zip(cell, padding, strict=True))
        return pos if all(0 <= q < n for q, n in zip(pos, geo.out_size, strict=True)) else None

    windows = _windows(
        kernel,
        uncropped,
        size,
        lambda cell: REAL if position(cell) is not None else PADDING,
        position,
        dilation=dilation,
        stride=stride,
    )
    # C itself: the convolution from the output size to the input size, rows past the input dropped (output padding
    # can add a position the convolution would read but the transposed input does not have)
    rows, cols, values = matrix_rows(tap_codes(kernel), geo.out_size, stride=stride, padding=padding, dilation=dilation)
    full = arithmetic.conv_out_shape(geo.out_size, kernel, stride=stride, padding=padding, dilation=dilation)
    keep = {
        r: i
        for i, r in enumerate(
            r for r in range(math.prod(full)) if all(a < n for a, n in zip(unravel(r, full), size, strict=True))
        )
    }
    matrix = torch.zeros(math.prod(size), math.prod(geo.out_size), dtype=torch.float64)
    for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True):
        if r in keep:
            matrix[keep[r], c] = v
    return Scatter(windows, matrix)


# ------------------------------------------------------------------------------------------------------------------
# Channels: grouped (depthwise) and pointwise convolutions


@dataclass(frozen=True)
class ChannelWindows:
    """For each output channel and position, the ``(input channel, grid cell, kernel tap)`` triples it reads.

    Attributes:
        grid: the padded input's spatial size.
        out_size: the output's spatial size.
        reads: ``reads[o][r]`` lists ``(input channel, grid cell, kernel tap)`` for output channel ``o`` at position
            ``r`` (row-major), in column order of ``C``.
    """

    grid: tuple[int, ...]
    out_size: tuple[int, ...]
    reads: tuple[tuple[tuple[tuple[int, Cell, int], ...], ...], ...]


def channel_windows(
    input_size, kernel, *, in_channels: int, out_channels: int, groups: int = 1, stride=1, padding=0, dilation=1
) -> ChannelWindows:
    """Which input channels and cells each output channel reads, from ``C`` of a grouped convolution
    (``groups = C_in`` is depthwise; a 1x1 kernel with ``groups = 1`` is pointwise)."""
    size = tuple(input_size)
    nd = len(size)
    kernel, stride, padding, dilation = (
        per_dim(n, v, nd)
        for n, v in (("kernel", kernel), ("stride", stride), ("padding", padding), ("dilation", dilation))
    )
    arithmetic.conv_params(in_channels, out_channels, kernel, groups=groups)  # checks the channel arithmetic
    out = tuple(
        arithmetic.conv_out(n, k, stride=s, padding=p, dilation=d)
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    )
    grid = tuple(n + 2 * p for n, p in zip(size, padding, strict=True))
    weight = tap_codes(kernel, c_out=out_channels, c_in=in_channels // groups)
    rows, cols, values = matrix_rows(weight, grid, stride=stride, padding=0, dilation=dilation, groups=groups)
    n_pos = math.prod(out)
    reads = [[[] for _ in range(n_pos)] for _ in range(out_channels)]
    plane = math.prod(grid)
    for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True):
        reads[r // n_pos][r % n_pos].append((c // plane, unravel(c % plane, grid), round(v) - 1))
    return ChannelWindows(grid, out, tuple(tuple(tuple(x) for x in per) for per in reads))
