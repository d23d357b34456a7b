"""Receptive fields position by position: the :class:`Span` of a tensor along one spatial input dimension, and the
interval arithmetic the operator rules share (sliding windows, gathers, unions, reshapes).

Pixel ``i`` of the input has its centre at ``i``. Every helper here is exact per position; see
:mod:`convatlas.analysis.graph` for how the spans travel through a forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass
class Span:
    """Receptive field of a tensor along one spatial input dimension.

    Two fields are kept: the boundary-free one (``lo``, ``hi``: padding extends the input virtually, giving the
    sizes of Distill 2019) and the real one (``rlo``, ``rhi``: only input positions that exist and are read, i.e.
    the support of the input gradient; ``rlo > rhi`` when nothing real is read).

    Attributes:
        dim: the tensor dimension that indexes the field, or ``None`` when every element has the same field
            (after a reduction over that dimension).
        lo, hi: int64 arrays of the first and last input position seen by each index along ``dim``
            (0-d arrays when ``dim`` is None).
        jump: input positions per step along ``dim`` (a ``Fraction``; ``None`` when ``dim`` is None).
        rlo, rhi: the same for the real field.
    """

    dim: int | None
    lo: np.ndarray
    hi: np.ndarray
    jump: Fraction | None
    rlo: np.ndarray
    rhi: np.ndarray

    def at(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(lo, hi, rlo, rhi)`` at integer ``index`` along ``dim``; past both ends the boundary-free field
        continues linearly (one jump per step) and the real field is empty (padding reads no input)."""
        if self.dim is None:
            return tuple(np.broadcast_to(a, index.shape) for a in (self.lo, self.hi, self.rlo, self.rhi))
        n = len(self.lo)
        inside = np.clip(index, 0, n - 1)
        outside = index != inside
        over = (index - inside).astype(np.float64) * float(self.jump)
        return (
            self.lo[inside] + np.floor(over).astype(np.int64),
            self.hi[inside] + np.ceil(over).astype(np.int64),
            np.where(outside, EMPTY_LO, self.rlo[inside]),
            np.where(outside, EMPTY_HI, self.rhi[inside]),
        )

    def take(self, index) -> Span:
        """The span at ``index`` (an int array or a slice) along ``dim``, same dimension and jump."""
        return Span(self.dim, self.lo[index], self.hi[index], self.jump, self.rlo[index], self.rhi[index])

    def moved(self, dim: int | None, jump: Fraction | None = None) -> Span:
        """The same field held by another tensor dimension."""
        return Span(dim, self.lo, self.hi, self.jump if jump is None else jump, self.rlo, self.rhi)

    def union(self) -> Span:
        """The field of every element at once (the dimension reduced)."""
        lo, hi, rlo, rhi = (np.asarray(v) for v in (self.lo.min(), self.hi.max(), self.rlo.min(), self.rhi.max()))
        return Span(None, lo, hi, None, rlo, rhi)


EMPTY_LO = np.int64(2**62)  # the real field of a position that reads no input has rlo > rhi
EMPTY_HI = np.int64(-(2**62))


class Unknown:
    """State of a tensor produced by an operator without a receptive-field rule; it taints what it flows into."""

    def __init__(self, op: str):
        self.op = op


State = dict  # input dimension k -> Span, for every spatial input dimension


def intervals(lo, hi, jump: Fraction | None, dim: int | None, rlo, rhi) -> Span:
    lo, hi, rlo, rhi = (np.asarray(a, dtype=np.int64) for a in (lo, hi, rlo, rhi))
    return Span(dim, lo, hi, jump, rlo, rhi)


def window_span(span: Span, out_len: int, kernel: int, stride: int, padding: int, dilation: int) -> Span:
    """Sliding windows (convolution, pooling): output ``o`` reads inputs ``o s - p + k d`` for ``k < kernel``."""
    o = np.arange(out_len)[:, None]
    taps = o * stride - padding + np.arange(kernel)[None, :] * dilation
    lo, hi, rlo, rhi = span.at(taps)
    return intervals(lo.min(1), hi.max(1), span.jump * stride, span.dim, rlo.min(1), rhi.max(1))


def transposed_span(span: Span, out_len: int, kernel: int, stride: int, padding: int, dilation: int) -> Span:
    """Transposed convolution: output ``o`` receives input ``i`` when ``o = i s - p + k d`` for some ``k``."""
    sources = []
    for o in range(out_len):
        taps = [o + padding - k * dilation for k in range(kernel)]
        sources.append([t // stride for t in taps if t % stride == 0])
    return index_span(span, sources, span.jump / stride)


def index_span(span: Span, sources: list, jump: Fraction) -> Span:
    """Each output index ``o`` reads the input indices ``sources[o]`` along the same dimension."""
    out = np.empty((4, len(sources)), dtype=np.int64)
    for o, src in enumerate(sources):
        if len(src) == 0:  # no tap lands on an input (transposed convolution with a kernel shorter than its stride)
            out[:, o] = (EMPTY_LO, EMPTY_HI, EMPTY_LO, EMPTY_HI)
            continue
        lo, hi, rlo, rhi = span.at(np.asarray(src, dtype=np.int64))
        out[:, o] = (lo.min(), hi.max(), rlo.min(), rhi.max())
    return intervals(out[0], out[1], jump, span.dim, out[2], out[3])


def adaptive_sources(in_len: int, out_len: int) -> list[np.ndarray]:
    """PyTorch's adaptive pooling windows: ``[floor(o L / O), ceil((o + 1) L / O))``."""
    return [np.arange((o * in_len) // out_len, -((-(o + 1) * in_len) // out_len)) for o in range(out_len)]


def interp_sources(in_len: int, out_len: int, mode: str, align_corners: bool, scale: float | None) -> list:
    """Input indices that get a non-zero weight in PyTorch's nearest / linear / cubic interpolation of output ``o``.

    Cubic interpolation reads ``floor(src) - 1 .. floor(src) + 2`` (clamped to the input); at an integer source
    position the cubic kernel is 0 at distances 1 and 2, so only ``src`` itself gets a weight.
    """
    sources = []
    for o in range(out_len):
        if mode == "nearest":
            step = 1.0 / scale if scale else in_len / out_len
            sources.append([min(int(math.floor(o * step)), in_len - 1)])
        elif mode == "nearest-exact":
            step = 1.0 / scale if scale else in_len / out_len
            sources.append([min(int(math.floor((o + 0.5) * step)), in_len - 1)])
        else:  # linear and cubic
            if align_corners:
                src = o * (in_len - 1) / (out_len - 1) if out_len > 1 else 0.0
            else:
                step = 1.0 / scale if scale else in_len / out_len
                src = (o + 0.5) * step - 0.5
                src = src if mode == "cubic" else max(src, 0.0)  # PyTorch clamps negative sources for linear only
            if mode == "cubic":
                i0 = int(math.floor(src))
                taps = [i0] if src == i0 else [i0 - 1, i0, i0 + 1, i0 + 2]
                sources.append(sorted({min(max(t, 0), in_len - 1) for t in taps}))
                continue
            i0 = min(int(math.floor(src)), in_len - 1)
            i1 = min(i0 + 1, in_len - 1)
            sources.append([i0, i1] if src - i0 > 0 else [i0])
    return sources


def merge(states: list[tuple[State, tuple[int, ...]]], out_shape: tuple[int, ...], where: str, notes) -> State:
    """Union of several operands' fields, broadcast to ``out_shape`` (elementwise ops, channel concatenation).

    Position by position: ``lo = min(lo_a, lo_b)``, ``hi = max(hi_a, hi_b)``. Operands with different jumps are
    merged exactly this way (the field of each output position is the union of the fields of what it reads), and a
    note records that the Distill form no longer holds.
    """
    if all(tuple(shape) == tuple(out_shape) for _, shape in states):
        if len(states) == 1:  # nothing to broadcast or unite (a constant operand such as a layer scale)
            return states[0][0]
        fast = _merge_aligned([state for state, _ in states])
        if fast is not None:
            return fast
    merged: State = {}
    ndim = len(out_shape)
    for k in states[0][0]:
        carried = []  # (out_dim or None, span)
        for state, shape in states:
            span = state[k]
            if span.dim is None or (shape[span.dim] == 1 and out_shape[span.dim + ndim - len(shape)] != 1):
                carried.append((None, span.union() if span.dim is not None else span))
            else:
                carried.append((span.dim + ndim - len(shape), span))
        dims = {d for d, _ in carried if d is not None}
        if len(dims) > 1:
            notes.add(
                f"{where}: input dimension {k} lies along different tensor dimensions in the merged operands; "
                "its field is taken as the union over all positions"
            )
            carried = [(None, s.union() if s.dim is not None else s) for _, s in carried]
            dims = set()
        n = out_shape[dims.copy().pop()] if dims else None
        arrays = []
        jumps = set()
        for d, span in carried:
            shape = (n,) if n is not None else ()
            arrays.append([np.broadcast_to(a, shape) for a in (span.lo, span.hi, span.rlo, span.rhi)])
            if d is not None:
                jumps.add(span.jump)
        lo = np.min([a[0] for a in arrays], axis=0)
        hi = np.max([a[1] for a in arrays], axis=0)
        rlo = np.min([a[2] for a in arrays], axis=0)
        rhi = np.max([a[3] for a in arrays], axis=0)
        if len(jumps) > 1:
            notes.add(
                f"{where}: paths with jumps {sorted(str(j) for j in jumps)} merge; the union of their fields is "
                "kept exactly position by position"
            )
        merged[k] = intervals(lo, hi, min(jumps) if jumps else None, dims.pop() if dims else None, rlo, rhi)
    return merged


def _merge_aligned(states: list[State]) -> State | None:
    """:func:`merge` of operands of the output's shape whose spans lie along the same dimension with the same jump
    (a residual addition): the position-by-position union directly; ``None`` when they do not line up."""
    merged: State = {}
    for k, first in states[0].items():
        spans = [state[k] for state in states]
        if any(span.dim != first.dim or span.jump != first.jump for span in spans):
            return None
        lo, hi, rlo, rhi = first.lo, first.hi, first.rlo, first.rhi
        for span in spans[1:]:
            lo, hi = np.minimum(lo, span.lo), np.maximum(hi, span.hi)
            rlo, rhi = np.minimum(rlo, span.rlo), np.maximum(rhi, span.rhi)
        merged[k] = Span(first.dim, lo, hi, first.jump, rlo, rhi)
    return merged


def relabel(state: State, mapping: dict[int, int | None]) -> State:
    """Move spans to new tensor dimensions; a dimension mapped to ``None`` is reduced (its union)."""
    out: State = {}
    for k, span in state.items():
        if span.dim is None:
            out[k] = span
        elif mapping.get(span.dim) is None:
            out[k] = span.union()
        else:
            out[k] = span.moved(mapping[span.dim])
    return out


def view_state(state: State, in_shape: tuple[int, ...], out_shape: tuple[int, ...], where: str, notes) -> State:
    """Fields through a reshape of a contiguous tensor (flatten, unflatten, squeeze, unsqueeze, view).

    The index along input dimension ``a`` of the element at output offset ``f`` is ``(f // stride_a) % L_a``. The
    field moves to the one output dimension along which it varies; if it varies along several (a spatial dimension
    split in two), it becomes the union over all positions, with a note.
    """
    out: State = {}
    in_strides = [math.prod(in_shape[i + 1 :]) for i in range(len(in_shape))]
    out_strides = [math.prod(out_shape[i + 1 :]) for i in range(len(out_shape))]
    for k, span in state.items():
        if span.dim is None or in_shape[span.dim] == 1:
            out[k] = span if span.dim is None else span.union()
            continue
        a, length = span.dim, in_shape[span.dim]
        same = [b for b in range(len(out_shape)) if out_shape[b] == length and out_strides[b] == in_strides[a]]
        if same and any(np.any(arr[1:] != arr[:-1]) for arr in (span.lo, span.hi, span.rlo, span.rhi)):
            out[k] = span.moved(same[0])  # the dimension survives whole (unsqueeze, flatten of other dimensions)
            continue
        block = (in_strides[a], in_strides[a] * length)
        touched = [
            b
            for b in range(len(out_shape))
            if out_shape[b] > 1 and out_strides[b] < block[1] and out_strides[b] * out_shape[b] > block[0]
        ]
        grids = np.meshgrid(*[np.arange(out_shape[b]) for b in touched], indexing="ij")
        offset = sum(g * out_strides[b] for g, b in zip(grids, touched, strict=True))
        index = (offset // in_strides[a]) % length
        moved = span.take(index)
        varying = [
            i
            for i in range(len(touched))
            if any(np.any(np.diff(arr, axis=i) != 0) for arr in (moved.lo, moved.hi, moved.rlo, moved.rhi))
        ]
        if not varying:
            out[k] = span.union()
        elif len(varying) > 1:
            notes.add(
                f"{where}: a reshape splits a spatial dimension across several dimensions; its field is taken "
                "as the union over all positions"
            )
            out[k] = span.union()
        else:
            i = varying[0]
            b = touched[i]
            take = tuple(slice(None) if j == i else 0 for j in range(len(touched)))
            step = Fraction(out_strides[b], in_strides[a])
            out[k] = Span(b, moved.lo[take], moved.hi[take], span.jump * step, moved.rlo[take], moved.rhi[take])
    return out
