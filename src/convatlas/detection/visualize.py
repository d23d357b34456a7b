"""Drawing boxes on images (PIL), for ``convatlas detect``, ``convatlas proposals`` and the docs' pictures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255))  # fmt: skip


def to_pil(image: Tensor) -> Image.Image:
    """``Tensor[C, H, W]`` in [0, 1] (C = 1 or 3) -> an RGB PIL image."""
    array = (image.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return Image.fromarray(array, mode="RGB")


def draw_boxes(
    image: Tensor | Image.Image,
    boxes: Tensor,
    *,
    captions: Sequence[str] | None = None,
    colours: Sequence[int] | None = None,
    width: int = 2,
    scale: int = 1,
) -> Image.Image:
    """Draw boxes (and captions) on a copy of the image.

    Args:
        image (Tensor[C, H, W] or PIL image): the picture.
        boxes (Tensor[K, 4]): (x1, y1, x2, y2) in pixels of ``image``.
        captions: one text per box (e.g. ``"shirt 0.93"``).
        colours: one palette index per box (e.g. the label).
        width: line width in output pixels.
        scale: enlarge the picture by this integer factor first (small scenes read better at 3x or 4x).

    Returns:
        PIL.Image: the annotated RGB image.
    """
    picture = to_pil(image) if isinstance(image, Tensor) else image.convert("RGB")
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for k, box in enumerate(boxes.detach().cpu().tolist()):
        colour = PALETTE[(colours[k] if colours is not None else k) % len(PALETTE)]
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)  # boxes under 1 px too
        if captions is not None:
            text_box = draw.textbbox((x1, y1), captions[k])
            top = max(0, y1 - (text_box[3] - text_box[1]) - 2)
            draw.rectangle([x1, top, x1 + text_box[2] - text_box[0] + 2, top + text_box[3] - text_box[1] + 2],
                           fill=colour)  # fmt: skip
            draw.text((x1 + 1, top), captions[k], fill=(0, 0, 0))
    return picture
