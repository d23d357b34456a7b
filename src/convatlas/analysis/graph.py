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
from convatlas.analysis.fields import Span, State, Unknown, intervals, merge
from convatlas.analysis.rules import NO_DATA, RULES, aten, is_pointwise, tensor_shape

__all__ = ["Frame", "GraphTracer", "Span", "TraceNotes", "Unknown", "count_macs"]


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


def count_macs(func, args, out) -> int:
    """Multiply-accumulates of one ATen call: convolutions and matrix products only (bias additions excluded)."""
    packet = func.overloadpacket
    if packet is aten.convolution or packet is aten._convolution:
        x, w = args[0], args[1]
        transposed, groups = bool(args[6]), int(args[8])
        kernel = tensor_shape(w)[2:]
        if transposed:  # weight (C_in, C_out / g, k...): every input value meets C_out / g filters of size k
            c_in, c_out = tensor_shape(w)[0], tensor_shape(w)[1] * groups
            return x.shape[0] * arithmetic.conv_macs(c_out, c_in, kernel, tensor_shape(x)[2:], groups=groups)
        c_out, c_in = tensor_shape(w)[0], tensor_shape(w)[1] * groups
        return out.shape[0] * arithmetic.conv_macs(c_in, c_out, kernel, tensor_shape(out)[2:], groups=groups)
    if packet in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm):
        a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
        return math.prod(tensor_shape(a)) * tensor_shape(b)[-1]
    if packet in _ATTENTION:
        q, k, v = args[0], args[1], args[2]
        batch = math.prod(tensor_shape(q)[:-2])
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


_FAST_POINTWISE = {
    aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.add_.Tensor, aten.mul_.Tensor,
    aten.add.Scalar, aten.mul.Scalar, aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default,
    aten.silu_.default, aten.sigmoid.default, aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.clone.default,
}  # fmt: skip


def _meta_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` on the meta device: a dense tensor keeps its strides (channels-last, permuted), as
    ``empty_like`` does; ``empty_strided`` is a C++ call where ``empty_like`` on meta runs Python reference code."""
    order = sorted(range(x.dim()), key=lambda d: x.stride(d))
    expected = 1
    for d in order:  # dense and non-overlapping: the strides, smallest first, are the running products of the sizes
        if x.shape[d] != 1 and x.stride(d) != expected:
            return torch.empty_like(x)
        expected *= x.shape[d]
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)


def _meta_empty(x: torch.Tensor, shape) -> torch.Tensor:
    """``x.new_empty(shape)`` (contiguous) through the C++ ``empty`` of the meta device."""
    return torch.empty(shape, dtype=x.dtype, device=x.device)


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
        return _meta_like(x) if shape == x.shape else _meta_empty(x, shape)
    if func is aten.native_layer_norm.default:
        axis = x.dim() - len(args[1])
        stats_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        stats = torch.empty(tuple(x.shape[:axis]) + (1,) * len(args[1]), dtype=stats_dtype, device=x.device)
        return _meta_like(x), stats, _meta_empty(stats, stats.shape)
    if func is aten.convolution.default and not args[6] and x.dim() >= 3:  # not transposed
        w, stride, padding, dilation = args[1], args[3], args[4], args[5]
        spatial = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], w.shape[2:], stride, padding, dilation, strict=True)
        ]
        return _meta_empty(x, (x.shape[0], w.shape[0], *spatial))
    if func in (aten.addmm.default, aten.mm.default) and not kwargs:
        a, b = (args[1], args[2]) if func is aten.addmm.default else (args[0], args[1])
        if a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0] and a.dtype == b.dtype:
            return _meta_empty(a, (a.shape[0], b.shape[1]))
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
        self.log: list | None = None  # the pass's events in order, when run_trace(log=True) asks for them

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def seed(self, x: torch.Tensor) -> None:
        """Mark ``x`` as the network input: position ``i`` along each spatial dimension sees exactly input ``i``."""
        state = {}
        for k, (dim, n) in enumerate(self.spatial.items()):
            state[k] = intervals(np.arange(n), np.arange(n), Fraction(1), dim, np.arange(n), np.arange(n))
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
        if self.log is not None:
            inputs = tuple(id(a) for a in _flat((args, kwargs)) if isinstance(a, torch.Tensor))
            outputs = [t for t in _flat(out) if isinstance(t, torch.Tensor)]
            self.keep.extend(outputs)  # ids stay unique while the pass runs
            self.log.append(("op", func.overloadpacket.__name__, inputs, tuple(id(t) for t in outputs)))
        return out

    # -- input checks --------------------------------------------------------------------------------------------
    def _check(self, func, args) -> None:
        packet = func.overloadpacket
        if packet is aten.convolution:
            x, w, stride, padding, dilation, transposed, groups = args[:2] + args[3:7] + args[8:9]
            expected = w.shape[0] if transposed else w.shape[1] * groups
            if x.dim() != w.dim():
                raise ValueError(
                    f"{self.where()}: expects a {w.dim()}-d input (N, C, spatial...), got shape {tensor_shape(x)}"
                )
            if x.shape[1] != expected:
                raise ValueError(
                    f"{self.where()}: expects {expected} input channels, got {x.shape[1]} "
                    f"(input of shape {tensor_shape(x)})"
                )
            if not transposed:
                for i, n in enumerate(tensor_shape(x)[2:]):
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
                            f"{self.where()}: input {'x'.join(map(str, tensor_shape(x)[2:]))} is too small "
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
            for i, length in enumerate(tensor_shape(x)[-n:]):
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
                        f"{self.where()}: input {'x'.join(map(str, tensor_shape(x)[-n:]))} is too small "
                        f"(spatial dimension {i}): {err}"
                    ) from None
        elif packet in (aten.mm, aten.addmm):
            a, b = (args[1], args[2]) if packet is aten.addmm else (args[0], args[1])
            if a.shape[-1] != b.shape[0]:
                raise ValueError(
                    f"{self.where()}: expects {b.shape[0]} input features, got {a.shape[-1]} "
                    f"(input of shape {tensor_shape(a)})"
                )
        elif packet in (aten.native_batch_norm, aten._native_batch_norm_legit_no_training):
            x, w = args[0], args[1]
            if w is not None and x.dim() > 1 and x.shape[1] != w.shape[0]:
                raise ValueError(
                    f"{self.where()}: expects {w.shape[0]} channels, got {x.shape[1]} "
                    f"(input of shape {tensor_shape(x)})"
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
        if packet in NO_DATA:
            return
        rule = RULES.get(packet)
        try:
            if rule is not None:
                result = rule(self, func, args, kwargs, out)
            elif is_pointwise(func):
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
            (self.state(a), tensor_shape(a))
            for a in _flat((args, kwargs))
            if isinstance(a, torch.Tensor) and self.state(a) is not None
        ]
        first = out[0] if isinstance(out, tuple | list) else out
        state = merge(operands, tensor_shape(first), self.where(), self.notes)
        n = len(out) if isinstance(out, tuple | list) else 1
        return [state] * n

    def _others(self, args, skip: int) -> list[tuple[State, tuple[int, ...]]]:
        """Tracked tensors among ``args`` other than position ``skip`` (weights computed from the input, ...)."""
        return [
            (self.state(a), tensor_shape(a))
            for i, a in enumerate(args)
            if i != skip and isinstance(a, torch.Tensor) and self.state(a) is not None
        ]

    def _with_others(self, state: State, out_shape, args, skip: int) -> State:
        others = self._others(args, skip)
        if not others:
            return state
        unions = [({k: s.union() for k, s in st.items()}, shp) for st, shp in others]
        return merge([(state, out_shape)] + unions, out_shape, self.where(), self.notes)
