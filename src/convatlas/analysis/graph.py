"""One forward pass, recorded op by op: receptive fields, MACs and input checks on the dataflow graph.

A :class:`GraphTracer` is a ``TorchDispatchMode``: it sees every ATen operator of a forward pass after autograd and
after Python-level composites have been lowered, i.e. the same node set that ``torch.fx``'s ``make_fx`` records,
with residual additions, concatenations and branches as explicit data flow. For each operator it

- counts multiply-accumulates (convolution, transposed convolution, ``mm``/``addmm``/``bmm``/``baddbmm``, attention)
  and, separately, the elements written by every other computing operator;
- propagates the receptive field of every tensor it produces (:class:`Span`, one per spatial input dimension);
- checks the input of convolutions, poolings and matrix products and raises a ``ValueError`` that names the module
  and the arithmetic when a channel count is wrong or a spatial size would become empty.

Receptive fields are kept exactly, per output position: along each spatial input dimension a tensor carries, for each
index along the tensor dimension that holds it, the interval ``[lo, hi]`` of input positions (pixel ``i`` has centre
``i``) that can influence it. Windows that reach into padding extend the input virtually (position ``-1`` lies one
jump left of position ``0``), which gives the usual boundary-free sizes of Araujo et al., "Computing receptive fields
of convolutional neural networks" (Distill, 2019). Merging paths (addition, multiplication, concatenation of
channels) takes the union of the intervals position by position, so paths with different jumps or offsets are merged
exactly rather than by a formula that assumes a common jump. A reduction over a spatial dimension (global pooling,
squeeze-and-excitation) makes the field the union over all positions. Normalisation statistics are treated as
constants (as in eval-mode BatchNorm), so BatchNorm, LayerNorm and GroupNorm act position by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from convatlas import arithmetic


class _Missing:
    """Stands for an ATen operator this PyTorch build does not have; it never equals a real one."""

    def __init__(self, name: str):
        self.name = name


class _Aten:
    """``torch.ops.aten`` for the rule tables, tolerant of operators added after PyTorch 2.4 (``_safe_softmax``)."""

    def __getattr__(self, name: str):
        return getattr(torch.ops.aten, name, None) or _Missing(name)


aten = _Aten()


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


@dataclass
class Frame:
    """Counters of one module call while it runs."""

    path: str
    module: torch.nn.Module
    macs: int = 0
    other_ops: int = 0


@dataclass
class TraceNotes:
    """What the tracer could not do exactly, in words (shown in results; never silent)."""

    unsupported: dict = field(default_factory=dict)  # op name -> module path of its first use
    messages: list = field(default_factory=list)

    def add(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)


def _flat(obj) -> list:
    """Leaves of nested tuples, lists and dicts (the argument structures of ATen operators)."""
    if isinstance(obj, tuple | list):
        return [leaf for item in obj for leaf in _flat(item)]
    if isinstance(obj, dict):
        return [leaf for item in obj.values() for leaf in _flat(item)]
    return [obj]


# --------------------------------------------------------------------------------------------------------------------
# MAC counting


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def count_macs(func, args, out) -> int:
    """Multiply-accumulates of one ATen call: convolutions and matrix products only (bias additions excluded)."""
    packet = func.overloadpacket
    if packet is aten.convolution or packet is aten._convolution:
        x, w = args[0], args[1]
        transposed, groups = bool(args[6]), int(args[8])
        kernel = _shape(w)[2:]
        if transposed:  # weight (C_in, C_out / g, k...): every input value meets C_out / g filters of size k
            c_in, c_out = _shape(w)[0], _shape(w)[1] * groups
            return x.shape[0] * arithmetic.conv_macs(c_out, c_in, kernel, _shape(x)[2:], groups=groups)
        c_out, c_in = _shape(w)[0], _shape(w)[1] * groups
        return out.shape[0] * arithmetic.conv_macs(c_in, c_out, kernel, _shape(out)[2:], groups=groups)
    if packet in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm):
        a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
        return math.prod(_shape(a)) * _shape(b)[-1]
    if packet in _ATTENTION:
        q, k, v = args[0], args[1], args[2]
        batch = math.prod(_shape(q)[:-2])
        return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return 0


_ATTENTION = tuple(
    getattr(aten, name)
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(aten, name)
)

# Operators that write no new values (views, metadata, copies) are not counted as "other ops".
_NO_COMPUTE = {
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten._reshape_alias,
    aten.expand,
    aten.permute,
    aten.transpose,
    aten.t,
    aten.unsqueeze,
    aten.squeeze,
    aten.select,
    aten.slice,
    aten.split,
    aten.split_with_sizes,
    aten.unbind,
    aten.chunk,
    aten.detach,
    aten.alias,
    aten.clone,
    aten._to_copy,
    aten.copy_,
    aten.empty_like,
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.new_empty,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
    aten.empty,
    aten.zeros,
    aten.ones,
    aten.full,
    aten.arange,
    aten.lift_fresh,
    aten.lift_fresh_copy,
    aten.contiguous,
    aten.as_strided,
    aten.cat,
    aten.stack,
    aten.constant_pad_nd,
    aten.embedding,
    aten.sym_size,
    aten.sym_stride,
    aten.sym_numel,
}


# --------------------------------------------------------------------------------------------------------------------
# Receptive-field rules


def _intervals(lo, hi, jump: Fraction | None, dim: int | None, rlo, rhi) -> Span:
    lo, hi, rlo, rhi = (np.asarray(a, dtype=np.int64) for a in (lo, hi, rlo, rhi))
    return Span(dim, lo, hi, jump, rlo, rhi)


def _window_span(span: Span, out_len: int, kernel: int, stride: int, padding: int, dilation: int) -> Span:
    """Sliding windows (convolution, pooling): output ``o`` reads inputs ``o s - p + k d`` for ``k < kernel``."""
    o = np.arange(out_len)[:, None]
    taps = o * stride - padding + np.arange(kernel)[None, :] * dilation
    lo, hi, rlo, rhi = span.at(taps)
    return _intervals(lo.min(1), hi.max(1), span.jump * stride, span.dim, rlo.min(1), rhi.max(1))


def _transposed_span(span: Span, out_len: int, kernel: int, stride: int, padding: int, dilation: int) -> Span:
    """Transposed convolution: output ``o`` receives input ``i`` when ``o = i s - p + k d`` for some ``k``."""
    sources = []
    for o in range(out_len):
        taps = [o + padding - k * dilation for k in range(kernel)]
        sources.append([t // stride for t in taps if t % stride == 0])
    return _index_span(span, sources, span.jump / stride)


def _index_span(span: Span, sources: list, jump: Fraction) -> Span:
    """Each output index ``o`` reads the input indices ``sources[o]`` along the same dimension."""
    out = np.empty((4, len(sources)), dtype=np.int64)
    for o, src in enumerate(sources):
        if len(src) == 0:  # no tap lands on an input (transposed convolution with a kernel shorter than its stride)
            out[:, o] = (EMPTY_LO, EMPTY_HI, EMPTY_LO, EMPTY_HI)
            continue
        lo, hi, rlo, rhi = span.at(np.asarray(src, dtype=np.int64))
        out[:, o] = (lo.min(), hi.max(), rlo.min(), rhi.max())
    return _intervals(out[0], out[1], jump, span.dim, out[2], out[3])


def _adaptive_sources(in_len: int, out_len: int) -> list[np.ndarray]:
    """PyTorch's adaptive pooling windows: ``[floor(o L / O), ceil((o + 1) L / O))``."""
    return [np.arange((o * in_len) // out_len, -((-(o + 1) * in_len) // out_len)) for o in range(out_len)]


def _interp_sources(in_len: int, out_len: int, mode: str, align_corners: bool, scale: float | None) -> list:
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


def _merge(states: list[tuple[State, tuple[int, ...]]], out_shape: tuple[int, ...], where: str, notes) -> State:
    """Union of several operands' fields, broadcast to ``out_shape`` (elementwise ops, channel concatenation).

    Position by position: ``lo = min(lo_a, lo_b)``, ``hi = max(hi_a, hi_b)``. Operands with different jumps are
    merged exactly this way (the field of each output position is the union of the fields of what it reads), and a
    note records that the Distill form no longer holds.
    """
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
        merged[k] = _intervals(lo, hi, min(jumps) if jumps else None, dims.pop() if dims else None, rlo, rhi)
    return merged


def _relabel(state: State, mapping: dict[int, int | None]) -> State:
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


def _view_state(state: State, in_shape: tuple[int, ...], out_shape: tuple[int, ...], where: str, notes) -> State:
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


_FAST_POINTWISE = {
    aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add_.Tensor, aten.mul_.Tensor,
    aten.add.Scalar, aten.mul.Scalar, aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default,
    aten.silu_.default, aten.sigmoid.default, aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.clone.default,
}  # fmt: skip


def _fast_meta(func, args, kwargs):
    """Output of a few frequent operators on the ``meta`` device from their shapes alone, or ``None``.

    PyTorch computes meta outputs of these through Python reference implementations, which costs about a millisecond
    per call; a forward pass of ConvNeXt-T makes a few hundred of them. The shapes here follow the operators'
    definitions: broadcasting for elementwise operators (same dtype operands only), ``(M, N)`` for matrix products,
    the input's shape and one statistic per normalised group for layer norm, ``conv_out`` for convolutions (the
    input check has run before).
    """
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.device.type != "meta":
        return None
    if func in _FAST_POINTWISE:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.dtype != x.dtype or t.device != x.device for t in tensors) or not x.is_floating_point():
            return None
        if any(not isinstance(a, torch.Tensor | int | float) for a in args[1:]) or set(kwargs) - {
            "alpha",
            "approximate",
        }:
            return None
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        if func.overloadpacket.__name__.endswith("_"):
            return x if shape == x.shape else None
        return torch.empty_like(x) if shape == x.shape else x.new_empty(shape)
    if func is aten.native_layer_norm.default:
        axis = x.dim() - len(args[1])
        stats_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        stats = x.new_empty(tuple(x.shape[:axis]) + (1,) * len(args[1]), dtype=stats_dtype)
        return torch.empty_like(x), stats, torch.empty_like(stats)
    if func is aten.convolution.default and not args[6] and x.dim() >= 3:  # not transposed
        w, stride, padding, dilation = args[1], args[3], args[4], args[5]
        spatial = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], w.shape[2:], stride, padding, dilation, strict=True)
        ]
        return x.new_empty((x.shape[0], w.shape[0], *spatial))
    if func in (aten.addmm.default, aten.mm.default) and not kwargs:
        a, b = (args[1], args[2]) if func is aten.addmm.default else (args[0], args[1])
        if a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0] and a.dtype == b.dtype:
            return a.new_empty((a.shape[0], b.shape[1]))
    return None


class GraphTracer(TorchDispatchMode):
    """Records one forward pass: MACs and other ops per module call, receptive fields per tensor, input checks.

    Args:
        spatial: the spatial dimensions of the network input and their lengths, ``{tensor_dim: length}``.
        fields: propagate receptive fields (off for a plain MAC count).
    """

    def __init__(self, spatial: dict[int, int], *, fields: bool = True):
        super().__init__()
        self.spatial = spatial
        self.fields = fields
        self.states: dict[int, State | Unknown] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while the pass runs
        self.stack: list[Frame] = []
        self.total_macs = 0
        self.total_other = 0
        self.notes = TraceNotes()

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def seed(self, x: torch.Tensor) -> None:
        """Mark ``x`` as the network input: position ``i`` along each spatial dimension sees exactly input ``i``."""
        state = {}
        for k, (dim, n) in enumerate(self.spatial.items()):
            state[k] = _intervals(np.arange(n), np.arange(n), Fraction(1), dim, np.arange(n), np.arange(n))
        self._set(x, state)

    def state(self, t) -> State | Unknown | None:
        return self.states.get(id(t)) if isinstance(t, torch.Tensor) else None

    def _set(self, t: torch.Tensor, state) -> None:
        self.states[id(t)] = state
        self.keep.append(t)

    def where(self) -> str:
        if not self.stack:
            return "the model's forward"
        frame = self.stack[-1]
        return f"layer {frame.path} ({type(frame.module).__name__})"

    # -- dispatch ------------------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._check(func, args)
        out = _fast_meta(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        macs = count_macs(func, args, out)
        other = 0
        if not macs and func.overloadpacket not in _NO_COMPUTE:
            other = sum(t.numel() for t in _flat(out) if isinstance(t, torch.Tensor))
            if func.overloadpacket in (
                aten.native_batch_norm,
                aten._native_batch_norm_legit_no_training,
                aten.native_layer_norm,
                aten.native_group_norm,
                aten.max_pool2d_with_indices,
            ):
                first = out[0] if isinstance(out, tuple | list) else out
                other = first.numel()
        self.total_macs += macs
        self.total_other += other
        for frame in self.stack:
            frame.macs += macs
            frame.other_ops += other
        if self.fields:
            self._propagate(func, args, kwargs, out)
        return out

    # -- input checks --------------------------------------------------------------------------------------------
    def _check(self, func, args) -> None:
        packet = func.overloadpacket
        if packet is aten.convolution:
            x, w, stride, padding, dilation, transposed, groups = args[:2] + args[3:7] + args[8:9]
            expected = w.shape[0] if transposed else w.shape[1] * groups
            if x.dim() != w.dim():
                raise ValueError(
                    f"{self.where()}: expects a {w.dim()}-d input (N, C, spatial...), got shape {_shape(x)}"
                )
            if x.shape[1] != expected:
                raise ValueError(
                    f"{self.where()}: expects {expected} input channels, got {x.shape[1]} (input of shape {_shape(x)})"
                )
            if not transposed:
                for i, n in enumerate(_shape(x)[2:]):
                    try:
                        arithmetic.conv_out(
                            n,
                            int(w.shape[2 + i]),
                            stride=int(stride[i]),
                            padding=int(padding[i]),
                            dilation=int(dilation[i]),
                        )
                    except ValueError as err:
                        raise ValueError(
                            f"{self.where()}: input {'x'.join(map(str, _shape(x)[2:]))} is too small "
                            f"(spatial dimension {i}): {err}"
                        ) from None
        elif packet in (
            aten.max_pool2d_with_indices,
            aten.max_pool2d,
            aten.avg_pool2d,
            aten.max_pool1d,
            aten.avg_pool1d,
            aten.max_pool3d_with_indices,
            aten.avg_pool3d,
        ):
            x, kernel = args[0], list(args[1])
            n = len(kernel) if len(kernel) > 1 else x.dim() - 2
            kernel = kernel * n if len(kernel) == 1 else kernel
            stride = list(args[2]) if len(args) > 2 and args[2] else kernel
            stride = stride * n if len(stride) == 1 else stride
            padding = list(args[3]) if len(args) > 3 else [0]
            padding = padding * n if len(padding) == 1 else padding
            is_max = "max" in packet.__name__
            dilation = list(args[4]) if is_max and len(args) > 4 else [1]
            dilation = dilation * n if len(dilation) == 1 else dilation
            ceil_index = 5 if is_max else 4
            ceil = bool(args[ceil_index]) if len(args) > ceil_index else False
            for i, length in enumerate(_shape(x)[-n:]):
                try:
                    arithmetic.pool_out(
                        length,
                        int(kernel[i]),
                        stride=int(stride[i]),
                        padding=int(padding[i]),
                        dilation=int(dilation[i]),
                        ceil_mode=ceil,
                    )
                except ValueError as err:
                    raise ValueError(
                        f"{self.where()}: input {'x'.join(map(str, _shape(x)[-n:]))} is too small "
                        f"(spatial dimension {i}): {err}"
                    ) from None
        elif packet in (aten.mm, aten.addmm):
            a, b = (args[1], args[2]) if packet is aten.addmm else (args[0], args[1])
            if a.shape[-1] != b.shape[0]:
                raise ValueError(
                    f"{self.where()}: expects {b.shape[0]} input features, got {a.shape[-1]} "
                    f"(input of shape {_shape(a)})"
                )
        elif packet in (aten.native_batch_norm, aten._native_batch_norm_legit_no_training):
            x, w = args[0], args[1]
            if w is not None and x.dim() > 1 and x.shape[1] != w.shape[0]:
                raise ValueError(
                    f"{self.where()}: expects {w.shape[0]} channels, got {x.shape[1]} (input of shape {_shape(x)})"
                )

    # -- receptive fields ----------------------------------------------------------------------------------------
    def _propagate(self, func, args, kwargs, out) -> None:
        flat_args = _flat((args, kwargs))
        states = [self.state(a) for a in flat_args]
        if all(s is None for s in states):
            return
        outs = [t for t in _flat(out) if isinstance(t, torch.Tensor)]
        if not outs:
            return
        unknown = next((s for s in states if isinstance(s, Unknown)), None)
        if unknown is not None:
            for t in outs:
                self._set(t, unknown)
            return
        packet = func.overloadpacket
        if packet in _NO_DATA:
            return
        rule = _RULES.get(packet)
        try:
            if rule is not None:
                result = rule(self, func, args, kwargs, out)
            elif _is_pointwise(func):
                result = self._pointwise(args, kwargs, out)
            else:
                result = None
        except (IndexError, ValueError, TypeError) as err:  # a rule met a layout it does not know
            self.notes.add(f"{self.where()}: receptive-field rule for aten.{packet.__name__} failed ({err})")
            result = None
        if result is None:
            name = f"aten.{packet.__name__}"
            self.notes.unsupported.setdefault(name, self.where())
            for t in outs:
                self._set(t, Unknown(name))
            return
        if isinstance(result, dict):
            result = [result]
        for t, s in zip(outs, result, strict=False):
            if s is not None:
                self._set(t, s)

    def _pointwise(self, args, kwargs, out) -> list[State]:
        operands = [
            (self.state(a), _shape(a))
            for a in _flat((args, kwargs))
            if isinstance(a, torch.Tensor) and self.state(a) is not None
        ]
        first = out[0] if isinstance(out, tuple | list) else out
        state = _merge(operands, _shape(first), self.where(), self.notes)
        n = len(out) if isinstance(out, tuple | list) else 1
        return [state] * n

    def _others(self, args, skip: int) -> list[tuple[State, tuple[int, ...]]]:
        """Tracked tensors among ``args`` other than position ``skip`` (weights computed from the input, ...)."""
        return [
            (self.state(a), _shape(a))
            for i, a in enumerate(args)
            if i != skip and isinstance(a, torch.Tensor) and self.state(a) is not None
        ]

    def _with_others(self, state: State, out_shape, args, skip: int) -> State:
        others = self._others(args, skip)
        if not others:
            return state
        unions = [({k: s.union() for k, s in st.items()}, shp) for st, shp in others]
        return _merge([(state, out_shape)] + unions, out_shape, self.where(), self.notes)


# --------------------------------------------------------------------------------------------------------------------
# The rule table: aten packet -> rule(tracer, func, args, kwargs, out) -> State | list[State] | None

# Operators whose output does not depend on the values of their tensor inputs.
_NO_DATA = {
    aten.empty_like,
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.rand_like,
    aten.randn_like,
    aten.new_empty,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
    aten.sym_size,
    aten.sym_stride,
    aten.sym_numel,
    aten.max_pool2d_with_indices_backward,
    aten.bernoulli_,
    aten.bernoulli,
}


_POINTWISE_EXTRA = {"hardswish", "gelu", "prelu", "_prelu_kernel", "log_sigmoid_forward", "where", "masked_fill"}


def _is_pointwise(func) -> bool:
    """Tagged pointwise by ATen, a few untagged activations, or the in-place form (``add_``) of any of them."""
    if torch.Tag.pointwise in func.tags:
        return True
    name = func.overloadpacket.__name__
    base = name[:-1] if name.endswith("_") else name
    if base in _POINTWISE_EXTRA:
        return True
    overload = getattr(getattr(aten, base, None), func._overloadname, None)
    return overload is not None and torch.Tag.pointwise in overload.tags


def _rule_as_strided(tracer, func, args, kwargs, out):
    # restriding in place (a layout change, e.g. to channels-last) keeps values where they are
    if _shape(out) == _shape(args[0]):
        return tracer.state(args[0])
    return None


def _rule_roll(tracer, func, args, kwargs, out):
    x, shifts = args[0], list(args[1])
    dims = list(args[2]) if len(args) > 2 and len(args[2]) else None
    if dims is None:
        return None  # a roll of the flattened tensor
    result = dict(tracer.state(x))
    for shift, d in zip(shifts, dims, strict=True):
        d = int(d) % x.dim()
        for k, span in result.items():
            if span.dim == d:
                index = (np.arange(len(span.lo)) - int(shift)) % len(span.lo)
                result[k] = span.take(index)
    return result


def _rule_same(tracer, func, args, kwargs, out):
    state = tracer.state(args[0])
    return [state] * (len(out) if isinstance(out, tuple | list) else 1)


def _rule_copy_(tracer, func, args, kwargs, out):
    src = tracer.state(args[1])
    if src is None:
        return tracer.state(args[0])
    return _merge([(src, _shape(args[1]))], _shape(args[0]), tracer.where(), tracer.notes)


def _rule_norm(tracer, func, args, kwargs, out):
    # statistics treated as constants: the normalised output at a position depends on the input at that position
    state = tracer.state(args[0])
    return [state] + [None] * (len(out) - 1) if isinstance(out, tuple | list) else state


def _rule_view(tracer, func, args, kwargs, out):
    return _view_state(tracer.state(args[0]), _shape(args[0]), _shape(out), tracer.where(), tracer.notes)


def _rule_expand(tracer, func, args, kwargs, out):
    return _merge([(tracer.state(args[0]), _shape(args[0]))], _shape(out), tracer.where(), tracer.notes)


def _rule_permute(tracer, func, args, kwargs, out):
    x = args[0]
    n = x.dim()
    packet = func.overloadpacket
    if packet is aten.permute:
        order = [int(d) % n for d in args[1]]
    elif packet is aten.t:
        order = [1, 0] if n == 2 else list(range(n))
    else:
        a, b = int(args[1]) % n, int(args[2]) % n
        order = list(range(n))
        order[a], order[b] = order[b], order[a]
    return _relabel(tracer.state(x), {old: new for new, old in enumerate(order)})


def _rule_select(tracer, func, args, kwargs, out):
    x, dim, index = args[0], int(args[1]) % args[0].dim(), int(args[2])
    index = index % x.shape[dim]
    result = {}
    for k, span in tracer.state(x).items():
        if span.dim == dim:
            result[k] = span.take(index).moved(None)
            result[k].jump = None
        elif span.dim is not None and span.dim > dim:
            result[k] = span.moved(span.dim - 1)
        else:
            result[k] = span
    return result


def _slice_state(state: State, dim: int, start: int, stop: int, step: int) -> State:
    result = {}
    for k, span in state.items():
        if span.dim == dim:
            result[k] = span.take(slice(start, stop, step)).moved(dim, span.jump * step)
        else:
            result[k] = span
    return result


def _rule_slice(tracer, func, args, kwargs, out):
    x = args[0]
    dim = int(args[1]) % x.dim() if len(args) > 1 else 0
    n = x.shape[dim]
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    stop = args[3] if len(args) > 3 and args[3] is not None else n
    step = int(args[4]) if len(args) > 4 else 1
    start, stop, _ = slice(int(start), int(stop), step).indices(n)
    return _slice_state(tracer.state(x), dim, start, stop, step)


def _rule_split(tracer, func, args, kwargs, out):
    x = args[0]
    dim = int(args[2]) % x.dim() if len(args) > 2 else 0
    results, offset = [], 0
    for t in out:
        length = t.shape[dim]
        results.append(_slice_state(tracer.state(x), dim, offset, offset + length, 1))
        offset += length
    return results


def _rule_unbind(tracer, func, args, kwargs, out):
    x = args[0]
    dim = int(args[1]) % x.dim() if len(args) > 1 else 0
    return [_rule_select(tracer, func, (x, dim, i), kwargs, None) for i in range(x.shape[dim])]


def _rule_cat(tracer, func, args, kwargs, out):
    tensors = [t for t in args[0] if t.numel() > 0 or t.dim() > 1]
    dim = int(args[1]) % out.dim() if len(args) > 1 else 0
    states = [tracer.state(t) for t in tensors]
    if any(s is None for s in states):  # a constant operand: it adds no field
        kept = [(s, t) for s, t in zip(states, tensors, strict=True) if s is not None]
        states, tensors = [s for s, _ in kept], [t for _, t in kept]
        # concatenating along a spatial dimension with a constant block: the block's positions see nothing
        if len(tensors) != len(args[0]) and any(span.dim == dim for span in states[0].values()):
            return None
    along = any(span.dim == dim for s in states for span in s.values())
    if not along:  # channels: each position of the result comes from one operand at the same position
        shapes = [_shape(t) for t in tensors]
        unions = []
        for s, shp in zip(states, shapes, strict=True):
            unions.append((s, tuple(1 if i == dim else v for i, v in enumerate(shp))))
        return _merge(unions, _shape(out), tracer.where(), tracer.notes)
    result = {}
    for k in states[0]:
        parts = []
        for st, t in zip(states, tensors, strict=True):
            span = st[k]
            if span.dim != dim:  # this operand holds the dimension elsewhere: each of its slices sees its union
                span = span.union()
                span = Span(
                    dim,
                    *(np.full(t.shape[dim], v) for v in (span.lo, span.hi)),
                    None,
                    *(np.full(t.shape[dim], v) for v in (span.rlo, span.rhi)),
                )
            parts.append(span)
        jumps = {p.jump for p in parts if p.jump is not None}
        if len(jumps) > 1:
            tracer.notes.add(
                f"{tracer.where()}: concatenation along a spatial dimension of parts with jumps "
                f"{sorted(str(j) for j in jumps)}; kept position by position"
            )
        arrays = [np.concatenate([getattr(p, name) for p in parts]) for name in ("lo", "hi", "rlo", "rhi")]
        result[k] = _intervals(arrays[0], arrays[1], min(jumps) if jumps else Fraction(1), dim, arrays[2], arrays[3])
    return result


def _rule_stack(tracer, func, args, kwargs, out):
    dim = int(args[1]) % out.dim() if len(args) > 1 else 0
    tensors = [t for t in args[0] if tracer.state(t) is not None]
    operands = []
    for t in tensors:
        mapping = {d: d if d < dim else d + 1 for d in range(t.dim())}
        shp = list(_shape(t))
        shp.insert(dim, 1)
        operands.append((_relabel(tracer.state(t), mapping), tuple(shp)))
    return _merge(operands, _shape(out), tracer.where(), tracer.notes)


def _reduced_dims(x, dims) -> set[int]:
    if dims is None or (isinstance(dims, list | tuple) and len(dims) == 0):
        return set(range(x.dim()))
    if isinstance(dims, int):
        dims = [dims]
    return {int(d) % max(x.dim(), 1) for d in dims}


def _rule_reduce(tracer, func, args, kwargs, out):
    x = args[0]
    packet = func.overloadpacket
    if packet in (aten._softmax, aten._log_softmax, aten._safe_softmax, aten.cumsum, aten.logcumsumexp):
        dims, keep, same_shape = {int(args[1]) % x.dim()}, True, True
    else:
        same_shape = False
        dims_arg = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim")
        if packet in (aten.var, aten.std, aten.var_mean, aten.std_mean) and "dim" in kwargs:
            dims_arg = kwargs["dim"]
        dims = _reduced_dims(x, dims_arg)
        keep = bool(kwargs.get("keepdim", False))
        for a in args[2:]:
            if isinstance(a, bool):
                keep = a
        if out is not None:
            first = out[0] if isinstance(out, tuple | list) else out
            keep = keep or first.dim() == x.dim()
    result = {}
    for k, span in tracer.state(x).items():
        if span.dim is None or span.dim in dims:
            result[k] = span.union() if span.dim is not None else span
        elif keep or same_shape:
            result[k] = span
        else:
            result[k] = span.moved(span.dim - sum(1 for d in dims if d < span.dim))
    n = len(out) if isinstance(out, tuple | list) else 1
    return [result] * n


def _rule_conv(tracer, func, args, kwargs, out):
    x, w = args[0], args[1]
    stride, padding, dilation, transposed = args[3], args[4], args[5], bool(args[6])
    result = {}
    for k, span in tracer.state(x).items():
        if span.dim is None or span.dim == 0:
            result[k] = span
        elif span.dim == 1:  # channels are summed over
            result[k] = span.union()
        else:
            i = span.dim - 2
            kernel, s, p, d = int(w.shape[2 + i]), int(stride[i]), int(padding[i]), int(dilation[i])
            n = int(out.shape[span.dim])
            if transposed:
                result[k] = _transposed_span(span, n, kernel, s, p, d)
            else:
                result[k] = _window_span(span, n, kernel, s, p, d)
    return tracer._with_others(result, _shape(out), args, 0)


def _pool_params(x, args, is_max: bool, out_dim: int):
    n = out_dim
    kernel = list(args[1])
    kernel = kernel * n if len(kernel) == 1 else kernel
    stride = list(args[2]) if len(args) > 2 and args[2] else kernel
    stride = stride * n if len(stride) == 1 else stride
    padding = list(args[3]) if len(args) > 3 else [0]
    padding = padding * n if len(padding) == 1 else padding
    dilation = list(args[4]) if is_max and len(args) > 4 else [1]
    dilation = dilation * n if len(dilation) == 1 else dilation
    return kernel, stride, padding, dilation


def _rule_pool(tracer, func, args, kwargs, out):
    x = args[0]
    first = out[0] if isinstance(out, tuple | list) else out
    is_max = "max" in func.overloadpacket.__name__
    kernel_arg = list(args[1])
    n = (
        len(kernel_arg)
        if len(kernel_arg) > 1
        else {"1d": 1, "2d": 2, "3d": 3}[next(s for s in ("1d", "2d", "3d") if s in func.overloadpacket.__name__)]
    )
    kernel, stride, padding, dilation = _pool_params(x, args, is_max, n)
    first_spatial = x.dim() - n
    result = {}
    for k, span in tracer.state(x).items():
        if span.dim is None or span.dim < first_spatial:
            result[k] = span
        else:
            i = span.dim - first_spatial
            result[k] = _window_span(
                span, int(first.shape[span.dim]), int(kernel[i]), int(stride[i]), int(padding[i]), int(dilation[i])
            )
    return [result] + [None] * (len(out) - 1) if isinstance(out, tuple | list) else result


def _rule_adaptive(tracer, func, args, kwargs, out):
    x = args[0]
    first = out[0] if isinstance(out, tuple | list) else out
    n = len(list(args[1]))
    first_spatial = x.dim() - n
    result = {}
    for k, span in tracer.state(x).items():
        if span.dim is None or span.dim < first_spatial:
            result[k] = span
        else:
            in_len, out_len = int(x.shape[span.dim]), int(first.shape[span.dim])
            result[k] = _index_span(span, _adaptive_sources(in_len, out_len), span.jump * Fraction(in_len, out_len))
    return [result] + [None] * (len(out) - 1) if isinstance(out, tuple | list) else result


def _rule_interp(tracer, func, args, kwargs, out):
    x = args[0]
    name = func.overloadpacket.__name__
    mode = "nearest-exact" if "exact" in name else "nearest" if "nearest" in name else "linear"
    mode = "cubic" if "bicubic" in name else mode
    if "trilinear" in name or "_aa" in name:
        return None
    n = x.dim() - 2
    align = False
    scales = None
    rest = list(args[2:])
    if mode in ("linear", "cubic"):
        align = bool(rest.pop(0)) if rest else False
    if rest:  # the .vec overload passes a list of scale factors, the others one float per dimension
        scales = list(rest[0]) if isinstance(rest[0], list | tuple) else list(rest[:n])
    result = {}
    for k, span in tracer.state(x).items():
        if span.dim is None or span.dim < 2:
            result[k] = span
        else:
            i = span.dim - 2
            in_len, out_len = int(x.shape[span.dim]), int(out.shape[span.dim])
            scale = scales[i] if scales and scales[i] else None
            sources = _interp_sources(in_len, out_len, mode, align, scale)
            result[k] = _index_span(span, sources, span.jump * Fraction(in_len, out_len))
    return result


def _rule_pad(tracer, func, args, kwargs, out):
    x, pad = args[0], list(args[1])
    packet = func.overloadpacket
    mode = "constant" if packet is aten.constant_pad_nd else "reflect" if "reflection" in packet.__name__ else "edge"
    result = {}
    for k, span in tracer.state(x).items():
        result[k] = span
        if span.dim is None:
            continue
        j = x.dim() - 1 - span.dim  # pad lists the last dimension first
        if 2 * j + 1 >= len(pad):
            continue
        left, n = int(pad[2 * j]), int(x.shape[span.dim])
        index = np.arange(int(out.shape[span.dim])) - left
        if mode == "reflect":
            period = 2 * (n - 1)
            index = np.abs(index) % period
            index = np.where(index >= n, period - index, index)
        elif mode == "edge":
            index = np.clip(index, 0, n - 1)
        lo, hi, rlo, rhi = span.at(index)
        result[k] = _intervals(lo, hi, span.jump, span.dim, rlo, rhi)
    return result


def _rule_mm(tracer, func, args, kwargs, out):
    packet = func.overloadpacket
    a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
    batched = packet in (aten.bmm, aten.baddbmm)
    operands = []
    if tracer.state(a) is not None:  # rows of a index rows of the result; its columns are summed
        mapping = {0: 0, 1: 1, 2: None} if batched else {0: 0, 1: None}
        operands.append((_relabel(tracer.state(a), mapping), _shape(out)))
    if tracer.state(b) is not None:
        mapping = {0: 0, 1: None, 2: 2} if batched else {0: None, 1: 1}
        operands.append((_relabel(tracer.state(b), mapping), _shape(out)))
    if packet in (aten.addmm, aten.baddbmm) and tracer.state(args[0]) is not None:
        operands.append((tracer.state(args[0]), _shape(args[0])))
    return _merge(operands, _shape(out), tracer.where(), tracer.notes)


def _rule_glu(tracer, func, args, kwargs, out):
    # glu(x, dim) = a * sigmoid(b) with (a, b) the two halves of x along dim: position i reads i and i + n/2
    x = args[0]
    dim = int(args[1]) % x.dim() if len(args) > 1 else x.dim() - 1
    half = x.shape[dim] // 2
    first = _slice_state(tracer.state(x), dim, 0, half, 1)
    second = _slice_state(tracer.state(x), dim, half, 2 * half, 1)
    return _merge([(first, _shape(out)), (second, _shape(out))], _shape(out), tracer.where(), tracer.notes)


def _rule_embedding(tracer, func, args, kwargs, out):
    return tracer.state(args[1])  # (N, T) indices -> (N, T, E): the index dimensions keep their fields


_RULES = {
    aten.clone: _rule_same,
    aten._to_copy: _rule_same,
    aten.detach: _rule_same,
    aten.alias: _rule_same,
    aten.contiguous: _rule_same,
    aten.lift_fresh: _rule_same,
    aten.lift_fresh_copy: _rule_same,
    aten.native_dropout: _rule_norm,
    aten.copy_: _rule_copy_,
    aten.copy: _rule_copy_,
    aten.native_batch_norm: _rule_norm,
    aten._native_batch_norm_legit_no_training: _rule_norm,
    aten._native_batch_norm_legit: _rule_norm,
    aten.native_layer_norm: _rule_norm,
    aten.native_group_norm: _rule_norm,
    aten.view: _rule_view,
    aten._unsafe_view: _rule_view,
    aten.reshape: _rule_view,
    aten._reshape_alias: _rule_view,
    aten.unsqueeze: _rule_view,
    aten.squeeze: _rule_view,
    aten.expand: _rule_expand,
    aten.permute: _rule_permute,
    aten.transpose: _rule_permute,
    aten.t: _rule_permute,
    aten.select: _rule_select,
    aten.slice: _rule_slice,
    aten.split: _rule_split,
    aten.split_with_sizes: _rule_split,
    aten.unbind: _rule_unbind,
    aten.cat: _rule_cat,
    aten.stack: _rule_stack,
    aten.sum: _rule_reduce,
    aten.mean: _rule_reduce,
    aten.amax: _rule_reduce,
    aten.amin: _rule_reduce,
    aten.max: _rule_reduce,
    aten.min: _rule_reduce,
    aten.var: _rule_reduce,
    aten.std: _rule_reduce,
    aten.var_mean: _rule_reduce,
    aten.std_mean: _rule_reduce,
    aten.logsumexp: _rule_reduce,
    aten.prod: _rule_reduce,
    aten.linalg_vector_norm: _rule_reduce,
    aten._softmax: _rule_reduce,
    aten._log_softmax: _rule_reduce,
    aten._safe_softmax: _rule_reduce,
    aten.convolution: _rule_conv,
    aten._convolution: _rule_conv,
    aten.max_pool1d: _rule_pool,
    aten.max_pool2d: _rule_pool,
    aten.max_pool2d_with_indices: _rule_pool,
    aten.max_pool3d_with_indices: _rule_pool,
    aten.avg_pool1d: _rule_pool,
    aten.avg_pool2d: _rule_pool,
    aten.avg_pool3d: _rule_pool,
    aten._adaptive_avg_pool2d: _rule_adaptive,
    aten._adaptive_avg_pool3d: _rule_adaptive,
    aten.adaptive_avg_pool1d: _rule_adaptive,
    aten.adaptive_max_pool1d: _rule_adaptive,
    aten.adaptive_max_pool2d: _rule_adaptive,
    aten.upsample_nearest1d: _rule_interp,
    aten.upsample_nearest2d: _rule_interp,
    aten._upsample_nearest_exact1d: _rule_interp,
    aten._upsample_nearest_exact2d: _rule_interp,
    aten.upsample_linear1d: _rule_interp,
    aten.upsample_bilinear2d: _rule_interp,
    aten.upsample_bicubic2d: _rule_interp,
    aten.constant_pad_nd: _rule_pad,
    aten.reflection_pad1d: _rule_pad,
    aten.reflection_pad2d: _rule_pad,
    aten.replication_pad1d: _rule_pad,
    aten.replication_pad2d: _rule_pad,
    aten.mm: _rule_mm,
    aten.addmm: _rule_mm,
    aten.bmm: _rule_mm,
    aten.baddbmm: _rule_mm,
    aten.embedding: _rule_embedding,
    aten.glu: _rule_glu,
    aten.as_strided: _rule_as_strided,
    aten.as_strided_: _rule_as_strided,
    aten.roll: _rule_roll,
}
