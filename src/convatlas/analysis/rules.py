"""The receptive-field rule of each ATen operator: ``rule(tracer, func, args, kwargs, out) -> State | list | None``.

A rule reads the spans of the operator's tensor inputs (``tracer.state(t)``) and returns those of its outputs;
``None`` means the operator has no rule here and its outputs become :class:`~convatlas.analysis.fields.Unknown`.
Pointwise operators (ATen's ``pointwise`` tag) merge their operands with broadcasting.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from convatlas.analysis.fields import (
    Span,
    State,
    adaptive_sources,
    index_span,
    interp_sources,
    intervals,
    merge,
    relabel,
    transposed_span,
    view_state,
    window_span,
)


class _Missing:
    """Stands for an ATen operator this PyTorch build does not have; it never equals a real one."""

    def __init__(self, name: str):
        self.name = name


class _Aten:
    """``torch.ops.aten`` for the rule tables, tolerant of operators added after PyTorch 2.4 (``_safe_softmax``)."""

    def __getattr__(self, name: str):
        packet = getattr(torch.ops.aten, name, None) or _Missing(name)
        setattr(self, name, packet)  # looked up once: the rules ask for operators on every call
        return packet


aten = _Aten()


def tensor_shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


# Operators whose output does not depend on the values of their tensor inputs.
NO_DATA = {
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


def is_pointwise(func) -> bool:
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
    if tensor_shape(out) == tensor_shape(args[0]):
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
    return merge([(src, tensor_shape(args[1]))], tensor_shape(args[0]), tracer.where(), tracer.notes)


def _rule_norm(tracer, func, args, kwargs, out):
    # statistics treated as constants: the normalised output at a position depends on the input at that position
    state = tracer.state(args[0])
    return [state] + [None] * (len(out) - 1) if isinstance(out, tuple | list) else state


def _rule_view(tracer, func, args, kwargs, out):
    return view_state(tracer.state(args[0]), tensor_shape(args[0]), tensor_shape(out), tracer.where(), tracer.notes)


def _rule_expand(tracer, func, args, kwargs, out):
    return merge([(tracer.state(args[0]), tensor_shape(args[0]))], tensor_shape(out), tracer.where(), tracer.notes)


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
    return relabel(tracer.state(x), {old: new for new, old in enumerate(order)})


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
        shapes = [tensor_shape(t) for t in tensors]
        unions = []
        for s, shp in zip(states, shapes, strict=True):
            unions.append((s, tuple(1 if i == dim else v for i, v in enumerate(shp))))
        return merge(unions, tensor_shape(out), tracer.where(), tracer.notes)
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
        result[k] = intervals(arrays[0], arrays[1], min(jumps) if jumps else Fraction(1), dim, arrays[2], arrays[3])
    return result


def _rule_stack(tracer, func, args, kwargs, out):
    dim = int(args[1]) % out.dim() if len(args) > 1 else 0
    tensors = [t for t in args[0] if tracer.state(t) is not None]
    operands = []
    for t in tensors:
        mapping = {d: d if d < dim else d + 1 for d in range(t.dim())}
        shp = list(tensor_shape(t))
        shp.insert(dim, 1)
        operands.append((relabel(tracer.state(t), mapping), tuple(shp)))
    return merge(operands, tensor_shape(out), tracer.where(), tracer.notes)


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
                result[k] = transposed_span(span, n, kernel, s, p, d)
            else:
                result[k] = window_span(span, n, kernel, s, p, d)
    return tracer._with_others(result, tensor_shape(out), args, 0)


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
            result[k] = window_span(
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
            result[k] = index_span(span, adaptive_sources(in_len, out_len), span.jump * Fraction(in_len, out_len))
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
            sources = interp_sources(in_len, out_len, mode, align, scale)
            result[k] = index_span(span, sources, span.jump * Fraction(in_len, out_len))
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
        result[k] = intervals(lo, hi, span.jump, span.dim, rlo, rhi)
    return result


def _rule_mm(tracer, func, args, kwargs, out):
    packet = func.overloadpacket
    a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
    batched = packet in (aten.bmm, aten.baddbmm)
    operands = []
    if tracer.state(a) is not None:  # rows of a index rows of the result; its columns are summed
        mapping = {0: 0, 1: 1, 2: None} if batched else {0: 0, 1: None}
        operands.append((relabel(tracer.state(a), mapping), tensor_shape(out)))
    if tracer.state(b) is not None:
        mapping = {0: 0, 1: None, 2: 2} if batched else {0: None, 1: 1}
        operands.append((relabel(tracer.state(b), mapping), tensor_shape(out)))
    if packet in (aten.addmm, aten.baddbmm) and tracer.state(args[0]) is not None:
        operands.append((tracer.state(args[0]), tensor_shape(args[0])))
    return merge(operands, tensor_shape(out), tracer.where(), tracer.notes)


def _rule_glu(tracer, func, args, kwargs, out):
    # glu(x, dim) = a * sigmoid(b) with (a, b) the two halves of x along dim: position i reads i and i + n/2
    x = args[0]
    dim = int(args[1]) % x.dim() if len(args) > 1 else x.dim() - 1
    half = x.shape[dim] // 2
    first = _slice_state(tracer.state(x), dim, 0, half, 1)
    second = _slice_state(tracer.state(x), dim, half, 2 * half, 1)
    return merge(
        [(first, tensor_shape(out)), (second, tensor_shape(out))], tensor_shape(out), tracer.where(), tracer.notes
    )


def _rule_embedding(tracer, func, args, kwargs, out):
    return tracer.state(args[1])  # (N, T) indices -> (N, T, E): the index dimensions keep their fields


RULES = {
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
