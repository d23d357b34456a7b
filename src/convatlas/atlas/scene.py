"""A tiny vector scene (rectangles, lines, text) drawn two ways: SVG text and Pillow images (an animated GIF).

Every picture of the atlas is built as a :class:`Scene`: shapes shared by every frame plus the shapes of each frame.
The same shapes become SVG elements (one frame, a static picture) or pixels (every frame, a GIF), so the two outputs
cannot disagree. Shapes may carry ``data`` attributes (``data-grid="input" data-cell="2,3"``) that only the SVG keeps:
tests read them to check what a frame highlights.
"""

from __future__ import annotations

import functools
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_FAMILY = "DejaVu Sans, Verdana, Arial, sans-serif"


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle, ``(x, y)`` its top-left corner in pixels."""

    x: float
    y: float
    w: float
    h: float
    fill: str | None = None
    stroke: str | None = "#444444"
    width: float = 1.0
    dash: bool = False
    data: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Line:
    """A straight segment, optionally ending in an arrow head at ``(x2, y2)``."""

    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str = "#444444"
    width: float = 1.0
    dash: bool = False
    arrow: bool = False


@dataclass(frozen=True)
class Text:
    """A line of text; ``anchor`` is ``"start"``, ``"middle"`` or ``"end"`` and ``y`` is the baseline."""

    x: float
    y: float
    text: str
    size: float = 12.0
    fill: str = "#222222"
    anchor: str = "start"
    bold: bool = False


Shape = Rect | Line | Text


@dataclass
class Scene:
    """Shapes common to every frame, and the shapes of each frame (drawn on top).

    Attributes:
        width, height: the canvas in pixels.
        static: shapes of every frame.
        frames: one list of shapes per frame (at least one, possibly empty).
        durations: milliseconds each frame is shown in a GIF.
        background: canvas colour.
    """

    width: int
    height: int
    static: list[Shape] = field(default_factory=list)
    frames: list[list[Shape]] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    background: str = "#ffffff"

    # ---------------------------------------------------------------------------------------------------------
    def svg(self, frame: int = 0) -> str:
        """One frame as a standalone SVG document."""
        frames = self.frames or [[]]
        if not -len(frames) <= frame < len(frames):
            raise ValueError(f"frame must be in 0..{len(frames) - 1}, got {frame}")
        body = [
            f'<rect x="0" y="0" width="{self.width}" height="{self.height}" fill="{self.background}" stroke="none"/>'
        ]
        body += [svg_element(s) for s in self.static]
        body += [svg_element(s) for s in frames[frame]]
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="{FONT_FAMILY}">\n' + "\n".join(body) + "\n</svg>\n"
        )

    def images(self, scale: float = 1.0) -> list[Image.Image]:
        """Every frame as an RGB image (``scale`` multiplies the pixel size)."""
        base = Image.new("RGB", (round(self.width * scale), round(self.height * scale)), self.background)
        draw = ImageDraw.Draw(base)
        for shape in self.static:
            _raster(draw, shape, scale)
        out = []
        for shapes in self.frames or [[]]:
            image = base.copy()
            draw = ImageDraw.Draw(image)
            for shape in shapes:
                _raster(draw, shape, scale)
            out.append(image)
        return out

    def gif_bytes(self) -> bytes:
        """The frames as an animated GIF that loops forever."""
        frames = self.images()
        # one palette for every frame (taken from a strip of all of them), so unchanged pixels keep their index and
        # Pillow stores each frame as the rectangle that changed
        strip = Image.new("RGB", (frames[0].width, frames[0].height * min(len(frames), 8)))
        for i, im in enumerate(frames[:: max(1, len(frames) // 8)][:8]):
            strip.paste(im, (0, i * frames[0].height))
        palette = strip.quantize(colors=96, method=Image.Quantize.MEDIANCUT)
        images = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in frames]
        durations = self.durations or [700] * len(images)
        buffer = io.BytesIO()
        images[0].save(
            buffer,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations if len(images) > 1 else durations[0],
            loop=0,
            optimize=True,
            disposal=1,
        )
        return buffer.getvalue()

    def png_bytes(self, frame: int = 0) -> bytes:
        buffer = io.BytesIO()
        self.images()[frame].save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


def fitted(scene: Scene, margin: float = 16) -> Scene:
    """``scene`` widened (never narrowed) so that every text and rectangle of every frame fits, plus ``margin``."""
    right = scene.width - margin
    for shape in [*scene.static, *(s for frame in scene.frames for s in frame)]:
        if isinstance(shape, Text):
            w = text_width(shape.text, shape.size, shape.bold)
            right = max(right, shape.x + {"start": w, "middle": w / 2, "end": 0}[shape.anchor])
        elif isinstance(shape, Rect):
            right = max(right, shape.x + shape.w)
    scene.width = int(math.ceil(right + margin))
    return scene


# ------------------------------------------------------------------------------------------------------------------
# SVG


def _attr(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def svg_element(shape: Shape) -> str:
    """One shape as an SVG element."""
    if isinstance(shape, Rect):
        parts = [
            f'<rect x="{_attr(shape.x)}" y="{_attr(shape.y)}" width="{_attr(shape.w)}" height="{_attr(shape.h)}"',
            f'fill="{shape.fill or "none"}" stroke="{shape.stroke or "none"}" stroke-width="{_attr(shape.width)}"',
        ]
        if shape.dash:
            parts.append('stroke-dasharray="3 2"')
        parts += [f'data-{key}="{html.escape(value)}"' for key, value in shape.data]
        return " ".join(parts) + "/>"
    if isinstance(shape, Line):
        dash = ' stroke-dasharray="4 3"' if shape.dash else ""
        line = (
            f'<line x1="{_attr(shape.x1)}" y1="{_attr(shape.y1)}" x2="{_attr(shape.x2)}" y2="{_attr(shape.y2)}" '
            f'stroke="{shape.stroke}" stroke-width="{_attr(shape.width)}"{dash}/>'
        )
        if not shape.arrow:
            return line
        points = " ".join(f"{_attr(x)},{_attr(y)}" for x, y in _arrow_head(shape))
        return line + f'<polygon points="{points}" fill="{shape.stroke}"/>'
    if isinstance(shape, Text):
        weight = ' font-weight="bold"' if shape.bold else ""
        return (
            f'<text x="{_attr(shape.x)}" y="{_attr(shape.y)}" font-size="{_attr(shape.size)}" fill="{shape.fill}" '
            f'text-anchor="{shape.anchor}"{weight}>{html.escape(shape.text)}</text>'
        )
    raise TypeError(f"not a shape: {shape!r}")


def _arrow_head(line: Line, length: float = 7.0, half_width: float = 3.5) -> list[tuple[float, float]]:
    dx, dy = line.x2 - line.x1, line.y2 - line.y1
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    ux, uy = dx / norm, dy / norm
    bx, by = line.x2 - ux * length, line.y2 - uy * length
    return [
        (line.x2, line.y2),
        (bx - uy * half_width, by + ux * half_width),
        (bx + uy * half_width, by - ux * half_width),
    ]


# ------------------------------------------------------------------------------------------------------------------
# Pixels


@functools.lru_cache(maxsize=32)
def font(size: float, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, a dependency) at ``size`` pixels."""
    from matplotlib import font_manager

    path = font_manager.findfont(f"DejaVu Sans{':bold' if bold else ''}")
    return ImageFont.truetype(path, max(1, round(size)))


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in pixels of ``text`` in the atlas font (the layout uses it for both outputs)."""
    return font(size, bold).getlength(text)


def _dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: str, width: int) -> None:
    for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
        length = max(abs(x2 - x1), abs(y2 - y1))
        steps = max(int(length // 5), 1)
        for i in range(0, steps, 2):
            a, b = i / steps, min(i + 1, steps) / steps
            draw.line(
                [(x1 + (x2 - x1) * a, y1 + (y2 - y1) * a), (x1 + (x2 - x1) * b, y1 + (y2 - y1) * b)], colour, width
            )


def _raster(draw: ImageDraw.ImageDraw, shape: Shape, scale: float) -> None:
    if isinstance(shape, Rect):
        box = [shape.x * scale, shape.y * scale, (shape.x + shape.w) * scale - 1, (shape.y + shape.h) * scale - 1]
        if shape.fill:
            draw.rectangle(box, fill=shape.fill)
        if shape.stroke:
            width = max(1, round(shape.width * scale))
            if shape.dash:
                corners = [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3]), (box[0], box[1])]
                _dashed(draw, corners, shape.stroke, width)
            else:
                draw.rectangle(box, outline=shape.stroke, width=width)
    elif isinstance(shape, Line):
        width = max(1, round(shape.width * scale))
        points = [(shape.x1 * scale, shape.y1 * scale), (shape.x2 * scale, shape.y2 * scale)]
        if shape.dash:
            _dashed(draw, points, shape.stroke, width)
        else:
            draw.line(points, shape.stroke, width)
        if shape.arrow:
            draw.polygon([(x * scale, y * scale) for x, y in _arrow_head(shape)], fill=shape.stroke)
    elif isinstance(shape, Text):
        anchor = {"start": "ls", "middle": "ms", "end": "rs"}[shape.anchor]
        draw.text(
            (shape.x * scale, shape.y * scale),
            shape.text,
            fill=shape.fill,
            font=font(shape.size * scale, shape.bold),
            anchor=anchor,
        )
    else:
        raise TypeError(f"not a shape: {shape!r}")


def save_scene(scene: Scene, path: str | Path, *, frame: int = 0, overwrite: bool = False) -> Path:
    """Write ``scene`` by the file's extension: ``.gif`` (every frame), ``.svg`` or ``.png`` (frame ``frame``).

    The path is checked before drawing (an existing file is replaced only with ``overwrite``) and written atomically.
    """
    from convatlas.files import atomic_write_bytes, atomic_write_text, check_output_file

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".svg", ".png"):
        raise ValueError(
            f"out {path}: the extension must be .gif (animation), .svg or .png (one frame), got {suffix!r}"
        )
    n = len(scene.frames or [[]])
    if not -n <= frame < n:
        raise ValueError(f"frame must be in 0..{n - 1} (this drawing has {n} frames), got {frame}")
    check_output_file(path, "out", overwrite=overwrite)
    if suffix == ".gif":
        return atomic_write_bytes(path, scene.gif_bytes())
    if suffix == ".png":
        return atomic_write_bytes(path, scene.png_bytes(frame))
    return atomic_write_text(path, scene.svg(frame))
