"""Receptive fields on a real picture: the theoretical field of one output position per stage, drawn over an image
(scikit-image's astronaut by default), next to the effective field (Luo et al. 2016) of the same position.

The fields come from the analysis of one traced pass (:func:`convatlas.atlas.network.network`, which keeps the field
of every position of each stage's output); the effective field from
:func:`convatlas.analysis.effective_receptive_field`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from convatlas.analysis import effective_receptive_field
from convatlas.atlas.network import Network, network

SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "camera", "rocket")


def load_image(image: str | Path | np.ndarray | Image.Image | None = None) -> Image.Image:
    """An RGB picture: a scikit-image sample by name (``"astronaut"``, the default, ``"coffee"``, ...), a file, or an
    array or PIL image.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: neither a sample name nor a readable image.
    """
    if image is None:
        image = "astronaut"
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if str(image) in SAMPLE_IMAGES and not Path(image).exists():
        from skimage import data

        return Image.fromarray(getattr(data, str(image))()).convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(2, f"image not found (give a file or one of {', '.join(SAMPLE_IMAGES)})", str(path))
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"image {path}: not a picture Pillow can read ({err})") from None


@dataclass
class StageField:
    """The theoretical field of one stage's output position nearest to the chosen point.

    Attributes:
        name: the stage (``stride 8``), path: its last module.
        unit: the position on the stage's output map.
        box: per spatial dimension, the first and last input pixel it reads (inside the image).
        size: its boundary-free size per dimension (it may be larger than the image).
    """

    name: str
    path: str
    unit: tuple[int, ...]
    box: list[tuple[int, int]]
    size: tuple[int, ...]


@dataclass
class FieldFigure:
    """What :func:`field_figure` drew: the PNG, the per-stage fields and the effective field's heatmap."""

    png: bytes
    stages: list[StageField]
    heatmap: np.ndarray
    layer: str
    unit: tuple[int, ...]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from convatlas.files import atomic_write_bytes, check_output_file

        check_output_file(path, "out", overwrite=overwrite)
        return atomic_write_bytes(path, self.png)


def stage_fields(net: Network, point: tuple[float, float]) -> list[StageField]:
    """For each stage whose output is a 2-D spatial map, the position whose field centre lies nearest ``point``
    (``(y, x)`` in input pixels) and its field."""
    out = []
    for stage in net.stages:
        fields = stage.fields
        if stage.jump is None or fields is None or len(fields) != 2 or any(f.dim is None for f in fields):
            continue
        unit, box, size = [], [], []
        for f, p in zip(fields, point, strict=True):
            centres = (np.asarray(f.lo) + np.asarray(f.hi)) / 2
            u = int(np.argmin(np.abs(centres - p)))
            unit.append(u)
            box.append((int(f.rlo[u]), int(f.rhi[u])))
            size.append(int(f.hi[u] - f.lo[u] + 1))
        out.append(StageField(stage.name, stage.path, tuple(unit), box, tuple(size)))
    return out


def field_figure(
    model: nn.Module,
    input_size,
    *,
    image=None,
    point: tuple[float, float] | None = None,
    samples: int = 8,
    seed: int = 0,
    net: Network | None = None,
) -> FieldFigure:
    """Draw the theoretical field per stage of the output position nearest ``point`` over a picture, next to the
    effective field of the last stage's position.

    Args:
        model: an image model taking ``Tensor[N, C, H, W]`` (1 or 3 channels are drawn on the picture).
        input_size: ``(C, H, W)``.
        image: the picture (see :func:`load_image`), resized to ``H x W``.
        point: ``(y, x)`` in input pixels; by default the centre.
        samples, seed: random inputs of the effective field.
        net: the :func:`~convatlas.atlas.network.network` of the model when already computed.

    Returns:
        A :class:`FieldFigure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    size = tuple(input_size)
    if len(size) != 3:
        raise ValueError(f"field_figure draws image models with input (C, H, W), got input_size {size}")
    h, w = size[1], size[2]
    point = (h / 2 - 0.5, w / 2 - 0.5) if point is None else tuple(float(v) for v in point)
    if not (0 <= point[0] < h and 0 <= point[1] < w):
        raise ValueError(f"point (y, x) = {point} must lie in the {h}x{w} input")
    net = net or network(model, size)
    fields = stage_fields(net, point)
    if not fields:
        raise ValueError(f"{net.model}: no stage has a 2-D spatial output, so there is no field to draw")
    last = fields[-1]
    erf = effective_receptive_field(model, size, layer=last.path, samples=samples, seed=seed, unit=last.unit)
    picture = np.asarray(load_image(image).resize((w, h), Image.BILINEAR))
    if size[0] == 1:
        picture = np.asarray(Image.fromarray(picture).convert("L"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 5.4), dpi=100)
    left.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(fields)))
    for colour, sf in zip(colours, fields, strict=True):
        (y0, y1), (x0, x1) = sf.box
        label = f"{sf.name}: {sf.size[0]}x{sf.size[1]}" + (
            " (larger than the input)" if max(sf.size) > max(h, w) else ""
        )
        left.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec=colour, lw=2,
                                 label=label))  # fmt: skip
    left.plot([point[1]], [point[0]], "+", color="white", ms=12, mew=2)
    left.set_title(f"theoretical field per stage of the position nearest ({point[0]:.0f}, {point[1]:.0f})", fontsize=9)
    left.legend(loc="lower left", fontsize=7, framealpha=0.85)
    heat = erf.heatmap.numpy()
    right.imshow(heat / max(float(heat.max()), 1e-30), cmap="magma", interpolation="nearest")
    (y0, y1), (x0, x1) = erf.theoretical
    right.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec="cyan", lw=1.5,
                              ls="--", label="theoretical field"))  # fmt: skip
    right.legend(loc="lower left", fontsize=7)
    right.set_title(
        f"effective field (mean |grad| over {samples} random inputs)\nof {erf.layer} at unit {erf.unit}", fontsize=9
    )
    for ax in (left, right):
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{net.model}: receptive fields on a {h}x{w} input", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return FieldFigure(buffer.getvalue(), fields, heat, erf.layer, erf.unit)
