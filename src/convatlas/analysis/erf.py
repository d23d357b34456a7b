"""The effective receptive field (Luo et al., "Understanding the effective receptive field in deep convolutional
neural networks", NeurIPS 2016): how strongly each input pixel actually moves one central output unit.

The gradient of the centre position of a feature map (all channels) is back-propagated to random inputs through the
model as it is (trained or not, eval mode) and ``|grad|`` is averaged over the samples. Luo et al. show it is close to
a Gaussian that fills only part of the theoretical field; the plot draws the theoretical field's outline over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from convatlas.analysis.receptive import pick_call
from convatlas.analysis.trace import check_input_size, run_trace, spatial_dims, summarise
from convatlas.utils import MAX_SEED

MAX_SAMPLES = 1024  # random inputs averaged over: more changes nothing visible and costs memory


@dataclass
class EffectiveField:
    """Result of :func:`effective_receptive_field`.

    Attributes:
        heatmap (Tensor[H, W]): mean ``|d y_centre / d x|`` over samples, summed over input channels.
        layer: module path of the feature map.
        unit: the position on the map's spatial dimensions whose gradient this is (by default the centre).
        theoretical: per spatial dimension, ``(first, last)`` input positions the unit reads (the theoretical field,
            clipped to the input).
        theoretical_size: boundary-free theoretical field size per dimension.
    """

    heatmap: Tensor
    layer: str
    unit: tuple[int, ...]
    theoretical: list[tuple[int, int]]
    theoretical_size: tuple[int, ...]

    def mass_inside(self) -> float:
        """Fraction of the gradient mass inside the theoretical field (1.0 up to rounding: nothing reaches past it)."""
        index = tuple(slice(lo, hi + 1) for lo, hi in self.theoretical)
        total = float(self.heatmap.sum())
        return float(self.heatmap[index].sum()) / total if total > 0 else 0.0


def effective_receptive_field(
    model: nn.Module,
    input_size,
    *,
    layer: str | None = None,
    samples: int = 8,
    seed: int = 0,
    unit: tuple[int, ...] | None = None,
) -> EffectiveField:
    """Mean absolute input gradient of one unit of a feature map, by default its centre (Luo et al. 2016).

    Args:
        model: an image model taking ``Tensor[N, C, H, W]`` (or ``Tensor[N, C, L]``).
        input_size: ``(C, H, W)`` without the batch dimension.
        layer: module path of the feature map; by default the one :func:`receptive_field` picks.
        samples: random inputs ``x ~ N(0, 1)`` averaged over, ``1..MAX_SAMPLES``.
        seed: seed of the inputs.
        unit: the position on the feature map's spatial dimensions; by default the centre (``L // 2`` each).

    Returns:
        An :class:`EffectiveField`.
    """
    size = check_input_size(input_size)
    if len(size) < 2:
        raise ValueError(f"effective_receptive_field needs an image or signal input (C, H, W) or (C, L), got {size}")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be an int in 1..{MAX_SAMPLES}, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in 0..{MAX_SEED}, got {seed!r}")
    lengths = list(spatial_dims(size).values())
    trace = run_trace(model, size)
    call = pick_call(trace.calls, lengths, layer)
    fields = summarise(call.state, lengths)
    if fields is None or any(f.dim is None for f in fields):
        raise ValueError(f"layer {call.path!r}: its output is not a spatial map, so it has no centre unit")
    shape = call.outputs[0].shape
    map_size = tuple(int(shape[f.dim]) for f in fields)
    if unit is None:
        unit = tuple(n // 2 for n in map_size)
    unit = tuple(unit)
    if len(unit) != len(map_size) or not all(0 <= u < n for u, n in zip(unit, map_size, strict=True)):
        raise ValueError(f"unit {unit} is not a position of the feature map {call.path!r} of size {map_size}")
    theoretical = [(int(f.rlo[u]), int(f.rhi[u])) for f, u in zip(fields, unit, strict=True)]

    modules = dict(model.named_modules())
    captured = []
    handle = modules[call.path].register_forward_hook(lambda m, a, o: captured.append(o))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *size), generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        model(x)
    finally:
        handle.remove()
        for m, flag in training.items():
            m.train(flag)
    out = captured[-1]
    index: list = [slice(None)] * out.dim()
    for f, u in zip(fields, unit, strict=True):
        index[f.dim] = u
    (grad,) = torch.autograd.grad(out[tuple(index)].sum(), x)
    heatmap = grad.abs().mean(0).sum(0).detach().cpu()
    return EffectiveField(heatmap, call.path, unit, theoretical, tuple(f.size for f in fields))


def plot_effective_receptive_field(
    model: nn.Module,
    input_size,
    path: str | Path,
    *,
    layer: str | None = None,
    samples: int = 8,
    seed: int = 0,
    title: str | None = None,
) -> EffectiveField:
    """Save the effective receptive field of a 2-d model as a PNG, with the theoretical field's outline.

    Args:
        model, input_size, layer, samples, seed: as in :func:`effective_receptive_field`.
        path: where to write the PNG.
        title: figure title; by default the model's class name and the layer.

    Returns:
        The :class:`EffectiveField` that was drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    erf = effective_receptive_field(model, input_size, layer=layer, samples=samples, seed=seed)
    if erf.heatmap.dim() != 2:
        raise ValueError(f"plot_effective_receptive_field draws 2-d inputs, got input_size {tuple(input_size)}")
    heat = erf.heatmap / erf.heatmap.max().clamp_min(1e-30)
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    ax.imshow(heat.numpy(), cmap="magma", interpolation="nearest")
    (ylo, yhi), (xlo, xhi) = erf.theoretical
    ax.add_patch(
        Rectangle(
            (xlo - 0.5, ylo - 0.5),
            xhi - xlo + 1,
            yhi - ylo + 1,
            fill=False,
            ec="cyan",
            lw=1.5,
            ls="--",
            label=f"theoretical field {erf.theoretical_size[0]}x{erf.theoretical_size[1]}",
        )
    )
    ax.legend(loc="lower right", fontsize=8)
    name = title or f"{type(model).__name__} at {erf.layer or 'output'}"
    ax.set_title(
        f"Effective receptive field: {name}\ncentre unit {erf.unit}, mean |grad| over {samples} inputs", fontsize=9
    )
    ax.set_xlabel("x (input pixels)")
    ax.set_ylabel("y (input pixels)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return erf
