"""Receptive fields of any network: analytic on the dataflow graph, and empirical from input gradients.

Analytic (``method="graph"``): one forward pass on the ``meta`` device under
:class:`~convatlas.analysis.graph.GraphTracer`, which propagates the exact field of every position through every
ATen operator, so residual additions, concatenations, branches, pooling, dilation, transposed convolution,
interpolation, padding and crops (U-Net skips) are all handled.

Empirical (``method="empirical"``): the network is made linear and positive (activations become the identity,
normalisations the identity, max pooling a window sum, every parameter a positive constant), one output position is
back-propagated, and the support of the input gradient is measured. With no cancellation possible, the support is
exactly the set of inputs that reach that position. Networks whose graph has an operator without a rule fall back
to this method, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convatlas import arithmetic
from convatlas.analysis.trace import Call, DimField, check_input_size, run_trace, spatial_dims, summarise


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of one tensor of a network, per spatial input dimension.

    Attributes:
        size: field size per dimension, ``max(hi - lo + 1)`` over positions, boundary-free (as in Distill 2019).
        jump: input positions between neighbouring outputs (the product of the strides).
        start: centre of the first output's field (negative when it lies in the padding).
        method: ``"graph"`` (analytic) or ``"empirical"`` (input-gradient support).
        layer: the module path whose output this is (``""``: the model's output).
        output_shape: shape of that tensor.
        exact: the Distill form ``centre_i = start + i * jump`` with one size holds at every position.
        covers_input: every position sees the whole input (global pooling, squeeze-and-excitation upstream).
        notes: what the analysis could not do exactly, or why it fell back.
    """

    size: tuple[int, ...]
    jump: tuple[int | float, ...]
    start: tuple[float, ...]
    method: str
    layer: str
    output_shape: tuple[int, ...]
    exact: bool = True
    covers_input: bool = False
    notes: tuple[str, ...] = ()

    def per_dim(self) -> list[arithmetic.RF]:
        """One :class:`convatlas.arithmetic.RF` per spatial dimension."""
        return [arithmetic.RF(s, j, c) for s, j, c in zip(self.size, self.jump, self.start, strict=True)]

    def __str__(self) -> str:
        dims = " x ".join(str(s) for s in self.size)
        text = (
            f"receptive field {dims} (jump {', '.join(map(str, self.jump))}; start {', '.join(map(str, self.start))})"
        )
        where = f"at {self.layer!r}" if self.layer else "at the output"
        text += f" {where} {tuple(self.output_shape)}, method {self.method}"
        if self.covers_input:
            text += "; every position sees the whole input"
        return text


# --------------------------------------------------------------------------------------------------------------------
# Choosing the tensor


def _is_spatial(fields: tuple[DimField, ...] | None) -> bool:
    """A tensor that still lays the input's spatial dimensions along distinct dimensions of its own."""
    if fields is None or any(f.dim is None for f in fields):
        return False
    return len({f.dim for f in fields}) == len(fields)


def pick_call(calls: list[Call], lengths: list[int], layer: str | None) -> Call:
    """The module call whose output is analysed: ``layer`` by path (its last call), or by default the last module
    to finish whose output is still a spatial map with more than one position (the feature map before the head)."""
    done = sorted(calls, key=lambda c: c.order)
    if layer is not None:
        matching = [c for c in done if c.path == layer and c.outputs]
        if not matching:
            paths = [c.path for c in done if c.path]
            from convatlas.utils import close_matches

            raise ValueError(f"layer {layer!r} is not a module of this model{close_matches(layer, paths)}")
        return matching[-1]
    # the last call is the usual answer: look from the end, summarising each state once
    last_spatial = None
    for c in reversed(done):
        fields = summarise(c.state, lengths) if c.outputs else None
        if not _is_spatial(fields):
            continue
        if any(c.outputs[0].shape[f.dim] > 1 for f in fields):
            return c
        last_spatial = last_spatial or c
    return last_spatial or done[-1]


def _from_fields(fields: tuple[DimField, ...], method: str, layer: str, shape, notes) -> ReceptiveField:
    return ReceptiveField(
        size=tuple(f.size for f in fields),
        jump=tuple(f.jump for f in fields),
        start=tuple(f.start for f in fields),
        method=method,
        layer=layer,
        output_shape=tuple(shape),
        exact=all(f.exact for f in fields),
        covers_input=all(f.covers_input for f in fields),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------------------------
# Public entry point


def receptive_field(
    model: nn.Module,
    input_size,
    *,
    layer: str | None = None,
    method: str = "auto",
) -> ReceptiveField:
    """The receptive field of a network's feature map (or of any module's output), per spatial dimension.

    Args:
        model: any ``nn.Module`` taking one tensor ``Tensor[N, *input_size]`` (token ids ``LongTensor[N, T]`` for
            text models).
        input_size: the input without the batch dimension, ``(C, H, W)``, ``(C, L)`` or ``(T,)``.
        layer: a module path (``"layer4"``, ``"features.12"``); ``""`` is the model's output. By default the last
            module output that is still a spatial map with more than one position (the map before a classifier's
            global pooling; the output itself for segmentation networks).
        method: ``"graph"`` (analytic), ``"empirical"`` (input-gradient support) or ``"auto"`` (graph, falling back
            to empirical when the graph has an operator without a receptive-field rule).

    Returns:
        A :class:`ReceptiveField` with ``size``, ``jump`` and ``start`` per spatial dimension, and the method used.

    Raises:
        ValueError: the input does not fit the network (names the layer and the arithmetic), an unknown ``layer``
            or ``method``, or ``method="graph"`` on a graph the rules cannot follow.
    """
    if method not in ("auto", "graph", "empirical"):
        raise ValueError(f"method must be 'auto', 'graph' or 'empirical', got {method!r}")
    size = check_input_size(input_size)
    lengths = list(spatial_dims(size).values())
    trace = run_trace(model, size)
    call = pick_call(trace.calls, lengths, layer)
    fields = summarise(call.state, lengths)
    notes = list(trace.tracer.notes.messages)
    unsupported = dict(trace.tracer.notes.unsupported)
    if method == "empirical" or fields is None:
        if fields is None:
            reason = ", ".join(f"{op} in {where}" for op, where in unsupported.items()) or "the tensor is not tracked"
            if method == "graph":
                raise ValueError(f"receptive_field: the graph has operators without a receptive-field rule ({reason})")
            notes.append(f"fell back to the empirical method: no receptive-field rule for {reason}")
        return empirical_receptive_field(model, size, layer=call.path, notes=notes)
    return _from_fields(fields, "graph", call.path, call.outputs[0].shape, notes)


# --------------------------------------------------------------------------------------------------------------------
# Empirical: linear, positive network; support of the input gradient of one output position

_IDENTITY = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "hardswish", "hardswish_",
    "leaky_relu", "leaky_relu_", "elu", "elu_",
    "selu", "selu_", "celu", "mish", "softplus", "softsign", "logsigmoid", "rrelu", "threshold",
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
}  # fmt: skip
_GATES = {"hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_", "softmax"}  # fmt: skip
_MAX_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
             "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices"}  # fmt: skip
_ADAPTIVE_MAX = {"adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
                 "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices"}  # fmt: skip


def _arg(args, kwargs, index: int, name: str, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _window_sum(x: torch.Tensor, n: int, args, kwargs) -> torch.Tensor:
    """Max pooling replaced by a sum over the same windows (a depthwise convolution with ones, zero padding)."""
    expand = lambda v: [int(v)] * n if isinstance(v, int) else [int(a) for a in v] * (n if len(v) == 1 else 1)  # noqa: E731
    kernel = expand(_arg(args, kwargs, 1, "kernel_size", 1))
    stride = _arg(args, kwargs, 2, "stride", None)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else expand(stride)
    padding = expand(_arg(args, kwargs, 3, "padding", 0))
    dilation = expand(_arg(args, kwargs, 4, "dilation", 1))
    ceil_mode = bool(_arg(args, kwargs, 5, "ceil_mode", False))
    pads = []
    for i in reversed(range(n)):
        length = x.shape[-n + i]
        out = arithmetic.pool_out(
            length, kernel[i], stride=stride[i], padding=padding[i], dilation=dilation[i], ceil_mode=ceil_mode
        )
        needed = (out - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
        pads += [padding[i], max(needed - length - padding[i], 0)]
    x = F.pad(x, pads)
    channels = x.shape[-n - 1]
    weight = torch.ones((channels, 1, *kernel), dtype=x.dtype, device=x.device)
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return conv(x, weight, stride=stride, dilation=dilation, groups=channels)


class _Linearize(TorchFunctionMode):
    """Activations and normalisations become the identity; max pooling a window sum; max reductions sums."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _IDENTITY and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name in _GATES and args and isinstance(args[0], torch.Tensor):
            # a gate stays a gate: x / (1 + |x|) is increasing and below 1, so x * gate(x) cannot blow up
            return args[0] / (1 + args[0].abs())
        if name in _MAX_POOL:
            n = int(name.split("max_pool")[1][0])
            out = _window_sum(args[0], n, args, kwargs)
            return (out, None) if kwargs.get("return_indices") or name.endswith("with_indices") else out
        if name in _ADAPTIVE_MAX:
            n = int(name.split("max_pool")[1][0])
            pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[n - 1]
            out = pool(args[0], _arg(args, kwargs, 1, "output_size", None))
            return (out, None) if kwargs.get("return_indices") or name.endswith("with_indices") else out
        if name in ("max", "amax") and args and isinstance(args[0], torch.Tensor):
            other = _arg(args, kwargs, 1, "dim", None)
            if isinstance(other, torch.Tensor):
                return args[0] + other
            keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
            if other is None:
                return args[0].sum()
            values = args[0].sum(other, keepdim=keepdim)
            if name == "amax":
                return values
            return torch.return_types.max((values, torch.zeros_like(values, dtype=torch.long)))
        return func(*args, **kwargs)


def _positive_parameters(model: nn.Module, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Weights ``1 / fan_in`` (a constant input stays near 1), biases 0, other 1-d parameters (scales) 1."""
    params = {}
    for name, p in model.named_parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        value = 0.0 if p.dim() == 1 and name.rsplit(".", 1)[-1] == "bias" else 1.0 / fan_in
        params[name] = torch.full((), value, dtype=dtype, device=device).expand(p.shape)  # no memory per weight
    return params


def gradient_support(
    model: nn.Module,
    input_size,
    *,
    layer: str,
    units: list[tuple[int, ...]] | None = None,
    spatial: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[list[tuple[int, int]]], tuple[int, ...]]:
    """First and last input position, per spatial dimension, whose gradient is non-zero for given output positions.

    The network is linearised and made positive (see the module docstring), so each support is exact. One forward
    pass, one backward pass per position. A model on the ``meta`` device runs on the CPU (its weights are replaced
    anyway).

    Args:
        model: the network.
        input_size: input without the batch dimension, ``(C, H, W)``.
        layer: module path of the tensor (``""``: the model's output).
        units: positions along the tensor's spatial dimensions; by default the centre (``L // 2`` each).
        spatial: the tensor dimensions holding the spatial dimensions; by default ``2, 3, ...``.
        dtype: computing dtype.

    Returns:
        ``(supports, output_shape)``: for each unit, ``[(first, last) per input spatial dimension]``;
        ``(-1, -1)`` where the unit reads no input along that dimension.
    """
    size = check_input_size(input_size)
    dims = list(spatial_dims(size))
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of this model")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device("cpu") if device.type == "meta" else device
    x = torch.ones((1, *size), dtype=dtype, device=device, requires_grad=True)
    captured = []
    handle = modules[layer].register_forward_hook(lambda m, a, o: captured.append(o))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        params = _positive_parameters(model, dtype, device)
        buffers = {}
        for name, b in model.named_buffers():
            b = torch.zeros(b.shape, dtype=b.dtype, device=device) if b.device.type == "meta" else b.to(device)
            buffers[name] = b.to(dtype) if b.is_floating_point() else b
        with _Linearize():
            torch.func.functional_call(model, {**params, **buffers}, (x,), tie_weights=True)
    finally:
        handle.remove()
        for m, flag in training.items():
            m.train(flag)
    out = next(t for t in torch.utils._pytree.tree_flatten(captured[-1])[0] if isinstance(t, torch.Tensor))
    spatial = tuple(spatial) if spatial is not None else tuple(range(2, out.dim()))
    units = list(units) if units is not None else [tuple(out.shape[d] // 2 for d in spatial)]
    supports = []
    for i, unit in enumerate(units):
        index = [0] + [slice(None)] * (out.dim() - 1)
        for d, u in zip(spatial, unit, strict=True):
            index[d] = u
        (grad,) = torch.autograd.grad(out[tuple(index)].sum(), x, retain_graph=i < len(units) - 1)
        support = []
        for d in dims:
            other = [a for a in range(grad.dim()) if a != d]
            nonzero = torch.nonzero(grad.abs().amax(dim=other) > 0).flatten()
            support.append((int(nonzero[0]), int(nonzero[-1])) if len(nonzero) else (-1, -1))
        supports.append(support)
    return supports, tuple(out.shape)


def empirical_receptive_field(
    model: nn.Module, input_size, *, layer: str = "", notes=(), dtype: torch.dtype = torch.float32
) -> ReceptiveField:
    """Receptive field measured from input gradients (see :func:`gradient_support`).

    The size is the support of the centre position; the jump is the shift of the support between the centre
    position and its neighbour; the start follows from both. A field that reaches past the input is clipped by it
    (a note says so): give an input larger than the field to measure its full size.
    """
    size = check_input_size(input_size)
    lengths = list(spatial_dims(size).values())
    (centre,), shape = gradient_support(model, size, layer=layer, dtype=dtype)
    spatial = tuple(range(2, len(shape)))
    unit = tuple(shape[d] // 2 for d in spatial)
    neighbours = []
    for i, d in enumerate(spatial):
        moved = list(unit)
        moved[i] = unit[i] - 1 if unit[i] > 0 else min(unit[i] + 1, shape[d] - 1)
        neighbours.append(tuple(moved))
    others, _ = gradient_support(model, size, layer=layer, units=neighbours, dtype=dtype) if neighbours else ([], 0)
    notes = list(notes)
    sizes, jumps, starts = [], [], []
    for i, (lo, hi) in enumerate(centre):
        if lo < 0:
            raise ValueError(f"layer {layer!r}: output position {unit} does not depend on the input")
        sizes.append(hi - lo + 1)
        step = 0
        if i < len(spatial) and neighbours[i][i] != unit[i]:
            olo, ohi = others[i][i]
            step = (lo + hi - olo - ohi) / 2 / (unit[i] - neighbours[i][i])
            step = int(step) if float(step).is_integer() else step
        jumps.append(step)
        starts.append((lo + hi) / 2 - (unit[i] if i < len(unit) else 0) * step)
        if lo == 0 or hi == lengths[i] - 1:
            notes.append(
                f"dimension {i}: the measured field of the centre position reaches the input border "
                f"({lo}..{hi} of 0..{lengths[i] - 1}); it is clipped, give a larger input for the full size"
            )
    return ReceptiveField(
        size=tuple(sizes),
        jump=tuple(jumps),
        start=tuple(starts),
        method="empirical",
        layer=layer,
        output_shape=shape,
        exact=True,
        covers_input=False,
        notes=tuple(notes),
    )
