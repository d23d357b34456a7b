"""The shape of a network for the report: its blocks, their branches, and its stages, read off one traced pass.

One forward pass of :func:`convatlas.analysis.trace.run_trace` with its event log gives the module calls and the
data flow between them (which tensors each call reads and which operator wrote them). From that:

- the **spine** is the sequence of blocks: the model's children, a module that holds blocks rather than layers
  (see :func:`_spine`) opened into its own children until each piece is a block of a few layers;
- each **block** lists its layers (its children, a ``Sequential`` child opened one level) with the layers or the
  block input each one reads, so parallel branches and skip connections show, and the operator that merges paths
  at its output (``add`` for a residual, ``cat`` for a dense or Inception block);
- a **stage** is a run of consecutive blocks whose outputs have the same stride (receptive-field jump); a non-spatial
  output (after global pooling) is the head.

Sizes, strides, receptive fields, parameters and MACs all come from the analysis of that same pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from convatlas.analysis.trace import Call, param_counts, run_trace, spatial_dims, summarise

LEAF_LIMIT = 32  # a block with more leaf modules than this is opened into its children
CONTAINER_LIMIT = 8  # a Sequential of blocks with more leaf modules than this is opened too
INPUT = -1  # the data-flow source "the block's (or the model's) input"


@dataclass
class Layer:
    """One module call drawn as a box.

    Attributes:
        call: index of the call in the trace.
        path, type: module path and class name.
        text: short description (``Conv2d 7x7 s2 dw``).
        output_shape: shape of its first output.
        params, macs: its parameters (on its first call) and multiply-accumulates.
        rf: receptive-field size per spatial dimension of its output (``None`` when not a spatial map).
        jump: the output's stride in input pixels (``None`` when not a spatial map).
        sources: the calls whose outputs it reads (``INPUT``: the block's input), in the order first seen.
        merge: the operator that joined several sources before it (``"add"``, ``"cat"``), if any.
        lane: column of the block drawing (parallel branches get their own).
    """

    call: int
    path: str
    type: str
    text: str
    output_shape: tuple | None
    params: int
    macs: int
    rf: tuple[int, ...] | None
    jump: tuple | None
    sources: list[int] = field(default_factory=list)
    merge: str | None = None
    lane: int = 0


@dataclass
class Block:
    """A block of the spine: itself as a :class:`Layer`, its layers and what its output is made of.

    Attributes:
        layer: the block's own call.
        layers: its layers in call order (empty when the block is a single layer).
        out_sources: the layers (or ``INPUT``) its output is made of; two or more mean a merge.
        out_merge: the operator of that merge.
        spine_sources: the earlier blocks (indices into the spine, ``INPUT`` for the model input) it reads.
        repeat: how many identical blocks in a row it stands for.
    """

    layer: Layer
    layers: list[Layer]
    out_sources: list[int]
    out_merge: str | None
    spine_sources: list[int]
    repeat: int = 1

    def signature(self) -> tuple:
        inner = tuple((x.type, x.text, x.lane, len(x.sources), x.merge) for x in self.layers)
        return (self.layer.type, self.layer.output_shape, self.layer.params, inner, self.out_merge)


@dataclass
class Stage:
    """Consecutive blocks whose outputs share one stride.

    Attributes:
        jump: the stride (input pixels per output step) per spatial dimension; ``None`` for the head.
        blocks: the blocks (identical neighbours collapsed, see :attr:`Block.repeat`).
        output_shape: of the last block.
        params, macs: summed over the stage's blocks (every block, collapsed or not).
        rf: receptive-field size of the last block's output.
        fields: the receptive field of every position of that output, per spatial input dimension
            (:class:`~convatlas.analysis.trace.DimField`), ``None`` when the analysis lost it.
        path: module path of the last block.
    """

    jump: tuple | None
    blocks: list[Block]
    output_shape: tuple | None
    params: int
    macs: int
    rf: tuple[int, ...] | None
    fields: tuple | None = None
    path: str = ""

    @property
    def name(self) -> str:
        if self.jump is None:
            return "head"
        return "stride " + "x".join(dict.fromkeys(_num(j) for j in self.jump))


@dataclass
class Network:
    """What :func:`network` read off the pass.

    Attributes:
        model: class name; input_size: without the batch dimension.
        stages: the stages in order.
        spine: every block of the spine, uncollapsed, in order.
        leaves: the leaf module calls in order (for the receptive-field growth chart).
        leaf_stages: for each leaf, the index of the stage whose block holds it (``None``: outside every block).
        total_macs: multiply-accumulates of the whole pass; ``outside_macs`` those of operators outside every block
            (functional code in a parent's ``forward``).
        notes: what the analysis could not do exactly.
    """

    model: str
    input_size: tuple[int, ...]
    stages: list[Stage]
    spine: list[Block]
    leaves: list[Layer]
    leaf_stages: list[int | None]
    total_macs: int
    outside_macs: int
    notes: list[str]


def _num(value) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


def describe(module: nn.Module) -> str:
    """A short description of a layer: ``Conv2d 3x3 s2 g32``, ``Linear 768->3072``, ``LayerNorm``."""
    name = type(module).__name__
    if isinstance(module, nn.modules.conv._ConvNd):
        parts = [name, "x".join(map(str, module.kernel_size))]
        if any(s != 1 for s in module.stride):
            parts.append("s" + "x".join(dict.fromkeys(map(str, module.stride))))
        if any(d != 1 for d in module.dilation):
            parts.append("d" + "x".join(dict.fromkeys(map(str, module.dilation))))
        if module.groups == module.in_channels and module.groups > 1:
            parts.append("dw")
        elif module.groups > 1:
            parts.append(f"g{module.groups}")
        parts.append(f"{module.in_channels}->{module.out_channels}")
        return " ".join(parts)
    if isinstance(module, nn.Linear):
        return f"{name} {module.in_features}->{module.out_features}"
    if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
        kernel = module.kernel_size if isinstance(module.kernel_size, int) else "x".join(map(str, module.kernel_size))
        stride = module.stride if isinstance(module.stride, int) else "x".join(map(str, module.stride))
        return f"{name} {kernel} s{stride}"
    return name


# ------------------------------------------------------------------------------------------------------------------
# Data flow


def _replay(log: list, start: int, end: int, initial: dict[int, frozenset], nodes: set[int]):
    """Follow the data flow through ``log[start:end]``.

    Each tensor id carries the set of nodes (module calls in ``nodes``, or ``INPUT``) its value comes from; an
    operator's outputs get the union of its inputs' sets, a node's outputs get the node itself.

    Returns:
        ``(sources, merges, provenance)``: the sources each node read when it started, the operator that last merged
        several sources into what each node read, and the final sets of every tensor id.
    """
    provenance: dict[int, tuple[frozenset, str | None]] = {k: (v, None) for k, v in initial.items()}
    sources: dict[int, list[int]] = {}
    merges: dict[int, str | None] = {}
    for event in log[start:end]:
        kind = event[0]
        if kind == "op":
            _, name, ins, outs = event
            found = [provenance[i] for i in ins if i in provenance and provenance[i][0]]
            if not found:
                continue
            sets = {s for s, _ in found}
            union = frozenset().union(*sets)
            merge = name.rstrip("_") if len(sets) > 1 else next((m for _, m in found if m), None)
            for o in outs:
                provenance[o] = (union, merge)
        elif kind == "call":
            _, index, ins = event
            if index in nodes and index not in sources:
                seen: list[int] = []
                merge = None
                for i in ins:
                    if i in provenance:
                        merge = merge or provenance[i][1]
                        seen += [s for s in sorted(provenance[i][0]) if s not in seen]
                sources[index] = seen
                merges[index] = merge
        else:  # return
            _, index, outs = event
            if index in nodes:
                for o in outs:
                    provenance[o] = (frozenset([index]), None)
    return sources, merges, provenance


def _passes_through(log: list, span: tuple[int, int]) -> bool:
    """A call that runs no operator and returns its input (``nn.Identity``): drawn as nothing, it computes nothing
    (and its output, the very same tensor, must not look like a new value to the layers that read the input)."""
    start, end = span
    return end == start + 1 and set(log[end][2]) <= set(log[start][2])


def _event_positions(log: list) -> dict[int, tuple[int, int]]:
    """For each call, the positions of its ``call`` and ``return`` events in the log."""
    starts, spans = {}, {}
    for position, event in enumerate(log):
        if event[0] == "call":
            starts[event[1]] = position
        elif event[0] == "return":
            spans[event[1]] = (starts[event[1]], position)
    return spans


def _children(calls: list[Call], log: list) -> dict[int, list[int]]:
    """The calls made directly inside each call (its children), in order, from the nesting of the events."""
    children: dict[int, list[int]] = {c.index: [] for c in calls}
    stack: list[int] = []
    for event in log:
        if event[0] == "call":
            if stack:
                children[stack[-1]].append(event[1])
            stack.append(event[1])
        elif event[0] == "return":
            stack.pop()
    return children


# ------------------------------------------------------------------------------------------------------------------
# The network


def network(model: nn.Module, input_size) -> Network:
    """Read the blocks, branches and stages of ``model`` off one traced forward pass (on the ``meta`` device when
    the model allows it).

    Args:
        model: any ``nn.Module`` taking one tensor.
        input_size: the input without the batch dimension.

    Returns:
        A :class:`Network`.
    """
    trace = run_trace(model, input_size, log=True)
    log = trace.tracer.log
    calls = trace.calls
    lengths = list(spatial_dims(trace.input_size).values())
    counts = param_counts(model)
    children = _children(calls, log)
    spans = _event_positions(log)
    seen_modules: set[int] = set()
    layers: dict[int, Layer] = {}
    fields_of: dict[int, tuple | None] = {}
    for call in calls:
        fields = fields_of[call.index] = summarise(call.state, lengths)
        spatial = fields is not None and all(f.dim is not None for f in fields)
        first = id(call.module) not in seen_modules
        seen_modules.add(id(call.module))
        layers[call.index] = Layer(
            call=call.index,
            path=call.path,
            type=type(call.module).__name__,
            text=describe(call.module),
            output_shape=tuple(call.outputs[0].shape) if call.outputs else None,
            params=counts[id(call.module)][0] if first else 0,
            macs=call.macs,
            rf=tuple(f.size for f in fields) if fields is not None else None,
            jump=tuple(f.jump for f in fields) if spatial else None,
        )
    root = calls[0].index
    spine_calls = _spine(children, calls, log, spans)
    spine_set = set(spine_calls)
    root_input = {i: frozenset([INPUT]) for i in log[0][2]} if log and log[0][0] == "call" else {}
    spine_sources, _, _ = _replay(log, 0, len(log), root_input, spine_set)
    position = {c: i for i, c in enumerate(spine_calls)}
    blocks = []
    for c in spine_calls:
        inner = [i for i in _open_sequential(children, calls, c) if not _passes_through(log, spans[i])]
        start, end = spans[c]
        block_input = {i: frozenset([INPUT]) for i in log[start][2]}
        sources, merges, provenance = _replay(log, start + 1, end, block_input, set(inner))
        out_sets = [provenance[i][0] for i in log[end][2] if i in provenance]
        out_sources = sorted(frozenset().union(*out_sets)) if out_sets else []
        out_merge = next((provenance[i][1] for i in log[end][2] if i in provenance and provenance[i][1]), None)
        block_layers = []
        for i in inner:
            layer = layers[i]
            layer.sources = sources.get(i, [])
            layer.merge = merges.get(i)
            block_layers.append(layer)
        _assign_lanes(block_layers)
        from_spine = [position.get(s, INPUT) if s != INPUT else INPUT for s in spine_sources.get(c, [])]
        blocks.append(Block(layers[c], block_layers, out_sources, out_merge if len(out_sources) > 1 else None,
                            from_spine))  # fmt: skip
    stages = _stages(blocks, fields_of)
    leaves = [layers[c.index] for c in calls if not children[c.index] and c.index != root]
    stage_of_call: dict[int, int] = {}
    block_stage = {}
    start = 0
    for s, stage in enumerate(stages):  # the spine blocks of stage s, uncollapsed
        count = sum(b.repeat for b in stage.blocks)
        for block in blocks[start : start + count]:
            block_stage[block.layer.call] = s
        start += count
    for c, s in block_stage.items():
        for inner in _descendants(children, c):
            stage_of_call[inner] = s
    leaf_stages = [stage_of_call.get(leaf.call) for leaf in leaves]
    outside = trace.tracer.total_macs - sum(b.layer.macs for b in blocks)
    notes = list(trace.tracer.notes.messages)
    return Network(type(model).__name__, tuple(trace.input_size), stages, blocks, leaves, leaf_stages,
                   trace.tracer.total_macs, outside, notes)  # fmt: skip


def _descendants(children: dict[int, list[int]], i: int) -> list[int]:
    out, todo = [], [i]
    while todo:
        c = todo.pop()
        out.append(c)
        todo += children[c]
    return out


def _leaf_counts(children: dict[int, list[int]]) -> dict[int, int]:
    counts: dict[int, int] = {}

    def count(i: int) -> int:
        if i not in counts:
            counts[i] = 1 if not children[i] else sum(count(c) for c in children[i])
        return counts[i]

    for i in children:
        count(i)
    return counts


def _heights(children: dict[int, list[int]]) -> dict[int, int]:
    """Height of each call's subtree: 0 for a leaf module, one more than its tallest child otherwise."""
    heights: dict[int, int] = {}

    def height(i: int) -> int:
        if i not in heights:
            heights[i] = 1 + max(height(c) for c in children[i]) if children[i] else 0
        return heights[i]

    for i in children:
        height(i)
    return heights


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential | nn.ModuleList)


def _spine(children: dict[int, list[int]], calls: list[Call], log: list, spans: dict) -> list[int]:
    """The root's children, opened until each piece is a block.

    A call is a block (drawn with its layers) unless it is a plain chain of pieces that are blocks themselves: its
    children run one after the other, each reading only the one before, its output being the last one's, and it is
    three or more levels deep (a stage of blocks of layers) or a ``Sequential`` of more than ``CONTAINER_LIMIT``
    leaves (a run of blocks). A call with branches or a merge inside (a residual block, an Inception block) stays a
    block, unless it holds more than ``LEAF_LIMIT`` leaf modules.
    """
    heights, leaves = _heights(children), _leaf_counts(children)
    spine: list[int] = []

    def visit(i: int) -> None:
        kids = children[i]
        deep = heights[i] >= 3 or (_is_container(calls[i].module) and leaves[i] > CONTAINER_LIMIT)
        if kids and (leaves[i] > LEAF_LIMIT or (deep and _is_chain(log, spans, i, kids))):
            for c in kids:
                visit(c)
        else:
            spine.append(i)

    root = calls[0].index
    if not children[root]:
        return [root]
    for c in children[root]:
        visit(c)
    return spine


def _is_chain(log: list, spans: dict, parent: int, kids: list[int]) -> bool:
    """The children of ``parent`` run as a chain: each reads only the previous one (the first, the parent's input),
    and the parent returns the last one's output."""
    start, end = spans[parent]
    initial = {i: frozenset([INPUT]) for i in log[start][2]}
    sources, _, provenance = _replay(log, start + 1, end, initial, set(kids))
    previous = INPUT
    for kid in kids:
        if sources.get(kid) != [previous]:
            return False
        previous = kid
    outputs = [provenance[i][0] for i in log[end][2] if i in provenance]
    return bool(outputs) and all(o == frozenset([previous]) for o in outputs)


def _open_sequential(children: dict[int, list[int]], calls: list[Call], block: int, depth: int = 2) -> list[int]:
    """The layers of a block: its children, ``Sequential`` and ``ModuleList`` children opened (two levels at most)."""
    out = []
    for c in children[block]:
        if depth and children[c] and _is_container(calls[c].module):
            out += _open_sequential(children, calls, c, depth - 1)
        else:
            out.append(c)
    return out


def _assign_lanes(layers: list[Layer]) -> None:
    """Columns for the block drawing: a layer continues the lane whose last layer it reads; a layer that reads
    only something further back (the block input after another layer read it, an earlier layer) opens a lane."""
    tails: list[int | None] = [INPUT]
    for layer in layers:
        lanes = [lane for lane, tail in enumerate(tails) if tail is not None and tail in layer.sources]
        if lanes:
            layer.lane = lanes[0]
            for other in lanes[1:]:  # joined into this lane
                tails[other] = None
        else:
            layer.lane = len(tails)
            tails.append(None)
        tails[layer.lane] = layer.call


def _stages(blocks: list[Block], fields_of: dict[int, tuple | None]) -> list[Stage]:
    """Runs of blocks with one output stride; identical neighbours inside a run collapsed into one with a count."""
    runs: list[list[Block]] = []
    for block in blocks:
        if runs and runs[-1][-1].layer.jump == block.layer.jump:
            runs[-1].append(block)
        else:
            runs.append([block])
    stages = []
    for run in runs:
        collapsed: list[Block] = []
        for block in run:
            if collapsed and collapsed[-1].signature() == block.signature() and _reads_only_previous(block, blocks):
                collapsed[-1].repeat += 1
            else:
                collapsed.append(Block(block.layer, block.layers, block.out_sources, block.out_merge,
                                       block.spine_sources))  # fmt: skip
        last = run[-1].layer
        stages.append(
            Stage(
                jump=run[0].layer.jump,
                blocks=collapsed,
                output_shape=last.output_shape,
                params=sum(b.layer.params for b in run),
                macs=sum(b.layer.macs for b in run),
                rf=last.rf,
                fields=fields_of[last.call],
                path=last.path,
            )
        )
    return stages


def _reads_only_previous(block: Block, spine: list[Block]) -> bool:
    """A block that reads only the block just before it (no skip from further back), so it can be collapsed."""
    index = next(i for i, b in enumerate(spine) if b.layer.call == block.layer.call)
    return block.spine_sources == [index - 1] or (index == 0 and block.spine_sources == [INPUT])
