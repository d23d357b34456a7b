"""Run a model once under the :class:`~convatlas.analysis.graph.GraphTracer` and collect one record per module call.

The pass runs on the ``meta`` device when it can (parameters are swapped for meta copies with
``torch.func.functional_call``, so nothing is computed and the user's model is not touched); a model that needs real
values (``.item()``, tensors built outside ``register_buffer``) runs on its own device instead, at batch size 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from convatlas.analysis.graph import Frame, GraphTracer, Span, Unknown
from convatlas.errors import InputTypeError


@dataclass
class Call:
    """One module call: where it is, what it produced, what it computed."""

    path: str
    module: nn.Module
    depth: int
    outputs: list = field(default_factory=list)  # output tensors (meta or real)
    state: object = None  # receptive-field state of the first output tensor (dict, Unknown or None)
    macs: int = 0
    other_ops: int = 0
    order: int = 0  # completion order
    index: int = 0  # position in the list of calls


@dataclass
class Trace:
    calls: list[Call]  # in call order (parents before children)
    output: object
    output_state: object
    tracer: GraphTracer
    device: str
    input_size: tuple[int, ...]


MAX_INPUT_SIDE = 2**20


def check_input_size(input_size) -> tuple[int, ...]:
    """``input_size`` as a tuple of positive ints (without the batch dimension)."""
    if isinstance(input_size, int):
        input_size = (input_size,)
    try:
        size = tuple(input_size)
    except TypeError:
        raise InputTypeError(f"input_size must be a sequence of ints like (3, 224, 224), got {input_size!r}") from None
    if not size or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ValueError(
            f"input_size must be positive ints without the batch dimension, like (3, 224, 224); got {size!r}"
        )
    if max(size) > MAX_INPUT_SIDE:
        raise ValueError(f"input_size {size}: each dimension must be at most {MAX_INPUT_SIDE:,} (the analysis keeps "
                         "per-position arrays of every dimension)")  # fmt: skip
    return size


def spatial_dims(input_size: tuple[int, ...]) -> dict[int, int]:
    """Spatial dimensions of the batched input ``(1, *input_size)``: all after the channels, or the only one.

    ``(3, 224, 224) -> {2: 224, 3: 224}``; token sequences ``(T,) -> {1: T}``.
    """
    if len(input_size) == 1:
        return {1: input_size[0]}
    return {2 + i: n for i, n in enumerate(input_size[1:])}


def input_dtype(model: nn.Module, input_size: tuple[int, ...], dtype: torch.dtype | None) -> torch.dtype:
    """The input dtype: ``dtype`` if given; token ids (int64) for a 1-d input to a model with an embedding."""
    if dtype is not None:
        return dtype
    if len(input_size) == 1 and any(isinstance(m, nn.Embedding) for m in model.modules()):
        return torch.long
    return torch.float32


def _check_norm(module: nn.Module, args, where: str) -> None:
    """Normalisation layers check their channels inside composite ATen code, before the tracer sees an operator:
    check them here, so that the error names the layer and both numbers."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if x is None:
        return
    if isinstance(module, nn.modules.batchnorm._NormBase) and x.dim() > 1 and x.shape[1] != module.num_features:
        raise ValueError(
            f"{where}: expects {module.num_features} channels, got {x.shape[1]} (input of shape {tuple(x.shape)})"
        )
    if isinstance(module, nn.GroupNorm) and x.dim() > 1 and x.shape[1] != module.num_channels:
        raise ValueError(
            f"{where}: expects {module.num_channels} channels, got {x.shape[1]} (input of shape {tuple(x.shape)})"
        )
    if type(module) is nn.LayerNorm:  # subclasses (LayerNorm2d of ConvNeXt) take channels-first input
        shape = tuple(module.normalized_shape)
        if tuple(x.shape[x.dim() - len(shape) :]) != shape:
            raise ValueError(f"{where}: normalises the last dimensions {shape}, got input of shape {tuple(x.shape)}")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def run_trace(
    model: nn.Module,
    input_size,
    *,
    dtype: torch.dtype | None = None,
    fields: bool = True,
    device: str | None = None,
    log: bool = False,
) -> Trace:
    """One forward pass at batch size 1 under the tracer, in eval mode and without gradients.

    Args:
        model: any ``nn.Module`` taking one tensor.
        input_size: the input without the batch dimension, ``(C, H, W)``, ``(C, L)`` or ``(T,)`` for token ids.
        dtype: input dtype; by default float32 (int64 token ids for a 1-d input to a model with an embedding).
        fields: propagate receptive fields.
        device: ``"meta"`` or a real device; by default meta, falling back to the model's device.
        log: keep the pass's events in order in ``trace.tracer.log`` (the data flow between module calls):
            ``("call", i, input ids)`` when module call ``i`` (an index into ``trace.calls``) starts,
            ``("op", name, input ids, output ids)`` for each operator, ``("return", i, output ids)`` when it ends;
            ids are ``id()`` of the tensors, which the tracer keeps alive for the whole pass.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the input does not fit the network (named layer, arithmetic).
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = check_input_size(input_size)
    dtype = input_dtype(model, size, dtype)
    if device is None:
        try:
            return _run(model, size, dtype, fields, "meta", log)
        except (RuntimeError, NotImplementedError):
            device = str(_model_device(model))
    return _run(model, size, dtype, fields, device, log)


def _tensor_ids(value) -> tuple[int, ...]:
    return tuple(id(t) for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor))


def _run(model: nn.Module, size, dtype, fields: bool, device: str, log: bool = False) -> Trace:
    tracer = GraphTracer(spatial_dims(size), fields=fields)
    if log:
        tracer.log = []
    calls: list[Call] = []
    open_calls: list[Call] = []
    completed = [0]

    def pre_hook(module, args, path=""):
        call = Call(path, module, path.count(".") + 1 if path else 0, index=len(calls))
        if tracer.log is not None:
            tracer.log.append(("call", len(calls), _tensor_ids(args)))
        calls.append(call)
        open_calls.append(call)
        tracer.stack.append(Frame(path, module))
        _check_norm(module, args, tracer.where())

    def post_hook(module, args, output, path=""):
        frame = tracer.stack.pop()
        call = open_calls.pop()
        call.macs, call.other_ops = frame.macs, frame.other_ops
        call.outputs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        call.state = tracer.state(call.outputs[0]) if call.outputs else None
        completed[0] += 1
        call.order = completed[0]
        if tracer.log is not None:
            tracer.log.append(("return", call.index, tuple(id(t) for t in call.outputs)))

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, p=path: pre_hook(m, a, p)))
        handles.append(module.register_forward_hook(lambda m, a, o, p=path: post_hook(m, a, o, p), always_call=True))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if dtype.is_floating_point:
            x = torch.zeros((1, *size), dtype=dtype, device=device)
        else:
            x = torch.zeros((1, *size), dtype=dtype, device=device)
        with torch.no_grad():
            if device == "meta":
                params = {n: t.to("meta") for n, t in model.named_parameters()}
                params.update({n: t.to("meta") for n, t in model.named_buffers()})
                with tracer:
                    tracer.seed(x)
                    out = torch.func.functional_call(model, params, (x,), tie_weights=True)
            else:
                with tracer:
                    tracer.seed(x)
                    out = model(x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.train(flag)
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    state = tracer.state(outs[0]) if outs else None
    return Trace(calls, out, state, tracer, device, size)


# --------------------------------------------------------------------------------------------------------------------
# Reading a field state


def _number(value: Fraction | float) -> int | float:
    value = Fraction(value)
    return int(value) if value.denominator == 1 else float(value)


@dataclass(frozen=True)
class DimField:
    """The receptive field of a tensor along one spatial input dimension, summarised.

    Attributes:
        size: the largest field over the tensor's positions, ``max(hi - lo + 1)`` (boundary-free).
        jump: input positions per step along the tensor dimension (0 when reduced).
        start: centre of the first position's field.
        exact: every position has the same size and centres advance by exactly ``jump`` (the Distill form is exact).
        covers_input: every position reads the whole input along this dimension.
        dim: the tensor dimension that holds it (``None`` when reduced).
        lo, hi: per-position first and last input positions, boundary-free (padding extends the input).
        rlo, rhi: per-position first and last input positions actually read (the input-gradient support).
    """

    size: int
    jump: int | float
    start: float
    exact: bool
    covers_input: bool
    dim: int | None
    lo: tuple
    hi: tuple
    rlo: tuple
    rhi: tuple


def summarise(state, input_lengths: list[int]) -> tuple[DimField, ...] | None:
    """Per spatial input dimension, the :class:`DimField` of a tracer state; ``None`` if unknown or untracked."""
    if state is None or isinstance(state, Unknown):
        return None
    result = []
    for k, n in enumerate(input_lengths):
        span: Span = state[k]
        lo, hi, rlo, rhi = (np.asarray(a).reshape(-1) for a in (span.lo, span.hi, span.rlo, span.rhi))
        widths = hi - lo + 1
        start = (lo[0] + hi[0]) / 2
        covers = bool((rlo <= 0).all() and (rhi >= n - 1).all())
        as_ints = [tuple(a.tolist()) for a in (lo, hi, rlo, rhi)]
        if span.dim is None:
            result.append(DimField(int(widths.max()), 0, float(start), True, covers, None, *as_ints))
            continue
        # centres (lo + hi) / 2 advance by exactly one jump per position: integer arithmetic on 2 * centre
        jump = Fraction(span.jump)
        twice = (lo + hi - lo[0] - hi[0]) * jump.denominator
        affine = bool(np.array_equal(twice, 2 * jump.numerator * np.arange(len(lo))))
        exact = bool((widths == widths[0]).all()) and affine
        result.append(DimField(int(widths.max()), _number(span.jump), float(start), exact, covers, span.dim, *as_ints))
    return tuple(result)


def activation_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def shape_of(tensors: list[torch.Tensor]) -> tuple | list | None:
    if not tensors:
        return None
    if len(tensors) == 1:
        return tuple(tensors[0].shape)
    return [tuple(t.shape) for t in tensors]


def param_counts(model: nn.Module) -> dict[int, tuple[int, int]]:
    """``(parameters, trainable parameters)`` of ``model`` and of every module inside it, keyed by ``id(module)``;
    a tensor shared between modules counts once in each module that holds it. One walk over the tree (the parameter
    sets of the children are merged upwards) instead of one walk per module."""
    counts: dict[int, tuple[int, int]] = {}

    def walk(module: nn.Module) -> dict[int, torch.Tensor]:
        own = {id(p): p for p in module._parameters.values() if p is not None}
        for child in module._modules.values():
            if child is not None:
                own.update(walk(child))
        if id(module) not in counts:
            total = sum(p.numel() for p in own.values())
            counts[id(module)] = total, sum(p.numel() for p in own.values() if p.requires_grad)
        return own

    walk(model)
    return counts


def prod(values) -> int:
    return math.prod(values)
