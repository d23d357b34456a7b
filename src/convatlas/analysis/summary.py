"""Per-layer summary of any network: output shapes, parameters, MACs, receptive fields, activation memory.

MACs count multiply-accumulates of convolutions, transposed convolutions, matrix products (``mm``, ``addmm``,
``bmm``, ``baddbmm``: linear layers, ``matmul``, ``einsum``) and attention, the convention behind torchvision's
published GFLOPS and ``torch.utils.flop_counter`` divided by 2. Every other computing operator (activations,
normalisations, additions, pooling) is counted separately, as elements written, in ``other_ops``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from convatlas.analysis.receptive import _is_spatial
from convatlas.analysis.trace import DimField, activation_bytes, param_counts, run_trace, shape_of, summarise


@dataclass
class Row:
    """One module call.

    Attributes:
        path: module path (``"layer1.0.conv1"``).
        type: module class name.
        depth: nesting depth, 1 for the model's children.
        output_shape: shape of the output (a list of shapes when it returns several tensors).
        params: parameters of the module and its children (shared tensors once).
        trainable: those with ``requires_grad``.
        macs: multiply-accumulates inside this call, children included.
        other_ops: elements written by other operators inside this call, children included.
        rf_size, rf_jump, rf_start: receptive field of the output per spatial input dimension, ``None`` when the
            output is not a spatial map (flattened, pooled globally) or the graph could not be followed.
        rf_global: every output position reads the whole input (its field covers it, or a reduction over space such
            as global pooling or squeeze-and-excitation happened upstream).
        activation_bytes: memory of the output tensors.
    """

    path: str
    type: str
    depth: int
    output_shape: tuple | list | None
    params: int
    trainable: int
    macs: int
    other_ops: int
    rf_size: tuple[int, ...] | None
    rf_jump: tuple[int | float, ...] | None
    rf_start: tuple[float, ...] | None
    rf_global: bool
    activation_bytes: int


@dataclass
class Summary:
    """What :func:`summary` returns; ``print(s)`` shows a table, ``s.to_dict()`` is JSON-ready.

    Attributes:
        model: the model's class name.
        input_size: the input without the batch dimension.
        rows: one :class:`Row` per module call, in call order, up to ``depth``.
        total_params, trainable_params: unique parameters of the whole model.
        total_macs: multiply-accumulates of one forward pass at batch size 1 (every operator, at any depth).
        total_other_ops: elements written by the other operators.
        activation_bytes: memory of the outputs of the leaf modules (what a forward pass keeps for backward).
        param_bytes: memory of the parameters.
        device: where the pass ran (``meta``: nothing was computed).
        notes: what the receptive-field analysis could not do exactly.
    """

    model: str
    input_size: tuple[int, ...]
    rows: list[Row]
    total_params: int
    trainable_params: int
    total_macs: int
    total_other_ops: int
    activation_bytes: int
    param_bytes: int
    device: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain types only (lists, ints, floats, strings), for ``json.dumps``."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        for row in data["rows"]:
            for key in ("output_shape", "rf_size", "rf_jump", "rf_start"):
                value = row[key]
                if isinstance(value, tuple):
                    row[key] = list(value)
                elif isinstance(value, list):
                    row[key] = [list(v) for v in value]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One line per row; tuples are written as ``x``-joined strings (``1x64x56x56``)."""
        buffer = io.StringIO()
        columns = list(Row.__dataclass_fields__)
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow([_cell(getattr(row, c)) for c in columns])
        return buffer.getvalue()

    def __str__(self) -> str:
        headers = ["Layer (type)", "Output shape", "Param #", "MACs", "Other ops", "RF", "Jump", "Start", "Act. mem"]
        lines = []
        shown = set()
        for row in self.rows:
            parent, _, last = row.path.rpartition(".")
            # indent under the parent row; a parent that is never called (ModuleList, ModuleDict) gets no row
            label = last if parent in shown else row.path
            name = f"{'  ' * (row.depth - 1)}{label} ({row.type})"
            shown.add(row.path)
            if row.rf_size is None:
                rf = "-"
            elif row.rf_jump is None:
                rf = "global"
            else:
                rf = _same(row.rf_size) + ("*" if row.rf_global else "")
            lines.append(
                [
                    name,
                    _shape_text(row.output_shape),
                    f"{row.params:,}",
                    _si(row.macs),
                    _si(row.other_ops),
                    rf,
                    _same(row.rf_jump),
                    _same(row.rf_start),
                    _bytes(row.activation_bytes),
                ]
            )
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        fmt = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        out = [rule, fmt(headers), "=" * len(rule)]
        out += [fmt(line) for line in lines]
        out.append("=" * len(rule))
        out.append(f"Input: {' x '.join(map(str, self.input_size))} (batch 1)   ran on: {self.device}")
        out.append(
            f"Total params: {self.total_params:,}   trainable: {self.trainable_params:,}   ({_bytes(self.param_bytes)})"
        )
        out.append(
            f"Total MACs: {self.total_macs:,} ({self.total_macs / 1e9:.3f} G)   other ops: {self.total_other_ops:,}"
        )
        out.append(f"Activation memory (leaf outputs): {_bytes(self.activation_bytes)}")
        out.append(
            "RF: receptive field size per spatial dimension, boundary-free (Distill 2019); *: every position reads "
            "the whole input; 'global': not a spatial map any more, it read the whole input"
        )
        for note in self.notes:
            out.append(f"note: {note}")
        out.append(rule)
        return "\n".join(out)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    if isinstance(value, list):
        return ";".join(_cell(v) for v in value)
    return str(value)


def _same(values) -> str:
    if values is None:
        return "-"
    values = [int(v) if float(v).is_integer() else v for v in values]
    if len(set(values)) == 1:
        return str(values[0])
    return "x".join(str(v) for v in values)


def _shape_text(shape) -> str:
    if shape is None:
        return "-"
    if isinstance(shape, list):
        return ", ".join(_shape_text(s) for s in shape)
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _si(value: int) -> str:
    if value == 0:
        return "--"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def _bytes(value: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def _rf_columns(fields: tuple[DimField, ...] | None):
    """``(size, jump, start, covers the input)`` of a row.

    A spatial map gets all four; an output that is no longer a spatial map (pooled, flattened) gets only its size and
    ``True`` when it read the whole input, Nones otherwise.
    """
    if fields is None:
        return None, None, None, False
    covers = all(f.covers_input for f in fields)
    if not _is_spatial(fields):
        return (tuple(f.size for f in fields), None, None, True) if covers else (None, None, None, False)
    return tuple(f.size for f in fields), tuple(f.jump for f in fields), tuple(f.start for f in fields), covers


def summary(
    model: nn.Module,
    input_size,
    depth: int | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Summary:
    """Summarise a network layer by layer from one forward pass at batch size 1.

    The pass runs on the ``meta`` device when the model allows it (nothing is computed and the model is not
    modified), otherwise on the model's own device.

    Args:
        model: any ``nn.Module`` taking one tensor ``Tensor[N, *input_size]``.
        input_size: the input without the batch dimension: ``(C, H, W)``, ``(C, L)``, or ``(T,)`` token ids.
        depth: keep rows at most this deep (1: the model's children); ``None`` keeps all. Totals always cover
            the whole model.
        dtype: input dtype; float32 by default (int64 for a 1-d input to a model with an ``nn.Embedding``).

    Returns:
        A :class:`Summary`.

    Raises:
        ValueError: the input does not fit: the first layer whose output would be empty, with the arithmetic,
            or the layer whose channel count differs, with both numbers; or a bad ``depth``.
    """
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth must be a positive int or None, got {depth!r}")
    trace = run_trace(model, input_size, dtype=dtype)
    lengths = list(trace.tracer.spatial.values())
    counts = param_counts(model)
    rows = []
    leaf_bytes = 0
    seen_modules = set()
    for call in trace.calls:
        if not call.path:
            continue
        if not any(True for _ in call.module.children()):
            leaf_bytes += activation_bytes(call.outputs)
        if depth is not None and call.depth > depth:
            continue
        first_call = id(call.module) not in seen_modules
        seen_modules.add(id(call.module))
        params, trainable = counts[id(call.module)] if first_call else (0, 0)
        size, jump, start, is_global = _rf_columns(summarise(call.state, lengths))
        rows.append(
            Row(
                path=call.path,
                type=type(call.module).__name__,
                depth=call.depth,
                output_shape=shape_of(call.outputs),
                params=params,
                trainable=trainable,
                macs=call.macs,
                other_ops=call.other_ops,
                rf_size=size,
                rf_jump=jump,
                rf_start=start,
                rf_global=is_global,
                activation_bytes=activation_bytes(call.outputs),
            )
        )
    total, trainable = counts[id(model)]
    notes = list(trace.tracer.notes.messages)
    notes += [
        f"no receptive-field rule for {op} (first in {where})" for op, where in trace.tracer.notes.unsupported.items()
    ]
    param_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    return Summary(
        model=type(model).__name__,
        input_size=tuple(trace.input_size),
        rows=rows,
        total_params=total,
        trainable_params=trainable,
        total_macs=trace.tracer.total_macs,
        total_other_ops=trace.tracer.total_other,
        activation_bytes=leaf_bytes,
        param_bytes=param_bytes,
        device=trace.device,
        notes=notes,
    )
