"""SVG pictures of a whole network for the report: its stages and blocks (with their branches), the growth of the
receptive field layer by layer, and the parameters and MACs of each stage. Everything drawn is read off a
:class:`~convatlas.atlas.network.Network`.
"""

from __future__ import annotations

import html
import math

from convatlas.atlas.network import INPUT, Block, Layer, Network
from convatlas.atlas.scene import FONT_FAMILY, text_width

CHIP_W, CHIP_H, CHIP_GAP = 150, 18, 6
STAGE_W = 190
MAX_WIDTH = 1180
STAGE_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#bab0ac")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def si(value: float) -> str:
    """``4.46G``, ``28.6M``, ``512K``, ``96``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"


def shape_text(shape) -> str:
    if shape is None:
        return "-"
    return "x".join(str(s) for s in shape[1:]) if len(shape) > 1 else str(shape[0])


def rf_text(rf) -> str:
    if rf is None:
        return "-"
    return str(rf[0]) if len(set(rf)) == 1 else "x".join(map(str, rf))


def _fit(text: str, width: float, size: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "...", size) > width:
        text = text[:-1]
    return text + "..."


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{math.ceil(width)}" height="{math.ceil(height)}" '
        f'viewBox="0 0 {math.ceil(width)} {math.ceil(height)}" font-family="{FONT_FAMILY}" role="img" '
        f'aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def _tooltip(layer: Layer) -> str:
    return (
        f"{layer.path} ({layer.type})\noutput {shape_text(layer.output_shape)}\nparams {layer.params:,}\n"
        f"MACs {layer.macs:,}\nreceptive field {rf_text(layer.rf)}"
    )


# ------------------------------------------------------------------------------------------------------------------
# The stages and blocks


def _block_size(block: Block) -> tuple[float, float]:
    layers = block.layers or [block.layer]
    lanes = max(x.lane for x in block.layers) + 1 if block.layers else 1
    skip = 18 if INPUT in block.out_sources and block.layers else 0
    width = 16 + lanes * (CHIP_W + 10) + skip
    height = 40 + len(layers) * (CHIP_H + CHIP_GAP) + 26
    return width, height


def _draw_block(block: Block, x: float, y: float) -> tuple[list[str], float, float]:
    width, height = _block_size(block)
    out = [
        f'<g class="block" data-path="{_e(block.layer.path)}"><title>{_e(_tooltip(block.layer))}</title>',
        f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" fill="#f7f9fc" stroke="#9aa9bd"/>',
    ]
    head = (f"{block.repeat} x " if block.repeat > 1 else "") + block.layer.path
    out.append(
        f'<text x="{x + 8}" y="{y + 15}" font-size="11" font-weight="bold">{_e(_fit(head, width - 16, 11))}</text>'
    )
    sub = f"{block.layer.type} -> {shape_text(block.layer.output_shape)}"
    out.append(f'<text x="{x + 8}" y="{y + 29}" font-size="10" fill="#555">{_e(_fit(sub, width - 16, 10))}</text>')
    layers = block.layers or [block.layer]
    ports: dict[int, tuple[float, float, float]] = {}  # call -> (x centre, top, bottom)
    in_x, in_y = x + 8 + CHIP_W / 2, y + 36
    out.append(f'<circle cx="{in_x}" cy="{in_y}" r="2.5" fill="#555"/>')
    for i, layer in enumerate(layers):
        cx = x + 8 + layer.lane * (CHIP_W + 10)
        cy = y + 42 + i * (CHIP_H + CHIP_GAP)
        ports[layer.call] = (cx + CHIP_W / 2, cy, cy + CHIP_H)
        fill = "#dbe7f6" if "Conv" in layer.type else "#e8f4ea" if layer.type in ("Linear",) else "#ffffff"
        out.append(
            f'<g class="layer"><title>{_e(_tooltip(layer))}</title><rect x="{cx}" y="{cy}" width="{CHIP_W}" '
            f'height="{CHIP_H}" rx="3" fill="{fill}" stroke="#7d8ca3"/><text x="{cx + 5}" y="{cy + 13}" '
            f'font-size="10">{_e(_fit(layer.text, CHIP_W - 10, 10))}</text></g>'
        )
    for layer in layers if block.layers else []:
        tx, top, _ = ports[layer.call]
        for source in layer.sources:
            if source == INPUT:
                sx, sy = in_x, in_y
            elif source in ports:
                sx, _, sy = ports[source]
            else:
                continue
            out.append(_arrow(sx, sy, tx, top))
        if layer.merge and len(layer.sources) > 1:
            out.append(
                f'<text x="{tx + CHIP_W / 2 + 3}" y="{top - 1}" font-size="9" fill="#b23">{_e(layer.merge)}</text>'
            )
    out_y = y + height - 12
    out_x = x + 8 + CHIP_W / 2
    if block.out_merge:
        out.append(f'<circle cx="{out_x}" cy="{out_y}" r="7" fill="#fff" stroke="#b23"/>')
        symbol = {"add": "+", "mul": "x", "cat": "||"}.get(block.out_merge, block.out_merge[:3])
        out.append(
            f'<text x="{out_x}" y="{out_y + 3.5}" font-size="10" text-anchor="middle" fill="#b23">{_e(symbol)}</text>'
        )
        out.append(f'<text x="{out_x + 11}" y="{out_y + 4}" font-size="9" fill="#b23">{_e(block.out_merge)}</text>')
    else:
        out.append(f'<circle cx="{out_x}" cy="{out_y}" r="2.5" fill="#555"/>')
    if block.layers:
        for source in block.out_sources:
            if source == INPUT:  # the identity path: down the right side of the block
                right = x + width - 10
                out.append(
                    f'<polyline points="{in_x},{in_y} {right},{in_y} {right},{out_y} {out_x + 7},{out_y}" fill="none" '
                    f'stroke="#b23" stroke-dasharray="4 3"/>'
                )
            elif source in ports:
                sx, _, sy = ports[source]
                out.append(_arrow(sx, sy, out_x, out_y - 7))
    out.append("</g>")
    return out, width, height


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2 - 3:.1f}" stroke="#7d8ca3"/>'
        f'<polygon points="{x2:.1f},{y2:.1f} {x2 - 3:.1f},{y2 - 5:.1f} {x2 + 3:.1f},{y2 - 5:.1f}" fill="#7d8ca3"/>'
    )


def stage_diagram(net: Network) -> str:
    """The stages as rows: a summary card, then the blocks left to right (identical neighbours collapsed, ``n x``),
    each with its layers, branches and merge; a block that reads an earlier block other than the one before it
    (a U-Net skip, a dense connection) says so."""
    names = [b.layer.path for b in net.spine]
    body: list[str] = []
    y = 10.0
    width_used = 0.0
    for s, stage in enumerate(net.stages):
        colour = STAGE_COLOURS[s % len(STAGE_COLOURS)]
        x = STAGE_W + 20.0
        row_top = y
        row_height = 0.0
        for block in stage.blocks:
            bw, bh = _block_size(block)
            if x + bw > MAX_WIDTH and x > STAGE_W + 20:
                y += row_height + 14
                x, row_height = STAGE_W + 20.0, 0.0
            shapes, bw, bh = _draw_block(block, x, y)
            body += shapes
            index = names.index(block.layer.path)
            skips = [names[i] if i != INPUT else "input" for i in block.spine_sources if i != index - 1]
            if skips and not (index == 0 and skips == ["input"]):
                text = "reads " + ", ".join(skips)
                body.append(f'<text x="{x}" y="{y + bh + 11}" font-size="9" fill="#b23">{_e(_fit(text, bw, 9))}</text>')
                bh += 12
            x += bw + 12
            row_height = max(row_height, bh)
            width_used = max(width_used, x)
        card_h = max(y + row_height - row_top, 78)
        body.insert(
            0,
            f'<g class="stage" data-stage="{s}"><rect x="4" y="{row_top}" width="{STAGE_W}" height="{card_h}" rx="6" '
            f'fill="{colour}" fill-opacity="0.12" stroke="{colour}"/>'
            f'<text x="14" y="{row_top + 18}" font-size="12" font-weight="bold">{_e(stage.name)}</text>'
            f'<text x="14" y="{row_top + 34}" font-size="10">output {_e(shape_text(stage.output_shape))}</text>'
            f'<text x="14" y="{row_top + 48}" font-size="10">params {si(stage.params)}, MACs {si(stage.macs)}</text>'
            f'<text x="14" y="{row_top + 62}" font-size="10">receptive field {_e(rf_text(stage.rf))}</text>'
            f'<text x="14" y="{row_top + 76}" font-size="10">{sum(b.repeat for b in stage.blocks)} block(s)</text></g>',
        )
        y = row_top + card_h + 16
    return _svg(max(width_used, STAGE_W + 200) + 10, y, body, f"stages and blocks of {net.model}")


# ------------------------------------------------------------------------------------------------------------------
# Charts


def rf_chart(net: Network, width: float = 560, height: float = 280) -> str:
    """Receptive-field size (largest spatial dimension, log scale) after every leaf layer, coloured by stage, with
    the input size drawn as a line."""
    points = [(i, max(x.rf), x, s) for i, (x, s) in enumerate(zip(net.leaves, net.leaf_stages, strict=True)) if x.rf]
    left, right, top, bottom = 54, 12, 16, 36
    body = [f'<text x="{left}" y="11" font-size="11" font-weight="bold">receptive field after each layer</text>']
    if not points:
        body.append(f'<text x="{left}" y="{height / 2}" font-size="11">no spatial receptive field to draw</text>')
        return _svg(width, height, body, "receptive field growth")
    limit = max(max(p[1] for p in points), max(net.input_size[1:] or net.input_size))
    ymax = 2 ** math.ceil(math.log2(max(limit, 2)))
    n = max(len(net.leaves) - 1, 1)

    def px(i):
        return left + (width - left - right) * i / n

    def py(v):
        return height - bottom - (height - top - bottom) * math.log2(max(v, 1)) / math.log2(ymax)

    v = 1
    while v <= ymax:
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 4}" y="{py(v) + 3:.1f}" font-size="9" text-anchor="end">{v}</text>')
        v *= 4 if ymax > 256 else 2
    for d, size in enumerate(net.input_size[1:] if len(net.input_size) > 1 else net.input_size):
        if d == 0 or size != net.input_size[1]:
            body.append(
                f'<line x1="{left}" x2="{width - right}" y1="{py(size):.1f}" y2="{py(size):.1f}" stroke="#b23" '
                f'stroke-dasharray="5 3"/><text x="{width - right}" y="{py(size) - 3:.1f}" font-size="9" '
                f'text-anchor="end" fill="#b23">input {size}</text>'
            )
    path = " ".join(f"{px(i):.1f},{py(r):.1f}" for i, r, _, _ in points)
    body.append(f'<polyline points="{path}" fill="none" stroke="#777" stroke-width="1"/>')
    for i, r, layer, s in points:
        colour = STAGE_COLOURS[s % len(STAGE_COLOURS)] if s is not None else "#999"
        body.append(
            f'<circle cx="{px(i):.1f}" cy="{py(r):.1f}" r="2.6" fill="{colour}"><title>{_e(_tooltip(layer))}</title>'
            "</circle>"
        )
    body.append(f'<text x="{(left + width) / 2}" y="{height - 6}" font-size="10" text-anchor="middle">layer (call '
                "order)</text>")  # fmt: skip
    body.append(f'<text x="12" y="{(top + height - bottom) / 2}" font-size="10" text-anchor="middle" '
                f'transform="rotate(-90 12 {(top + height - bottom) / 2})">pixels (log)</text>')  # fmt: skip
    return _svg(width, height, body, "receptive field growth")


def stage_bars(net: Network, key: str, width: float = 560) -> str:
    """Horizontal bars of ``key`` (``"params"`` or ``"macs"``) per stage, with MACs outside every block as a
    last bar when there are any."""
    items = [
        (stage.name, getattr(stage, key), STAGE_COLOURS[s % len(STAGE_COLOURS)]) for s, stage in enumerate(net.stages)
    ]
    if key == "macs" and net.outside_macs:
        items.append(("outside blocks", net.outside_macs, "#999"))
    title = {"params": "parameters per stage", "macs": "MACs per stage"}[key]
    left, bar_h = 96, 18
    height = 24 + len(items) * (bar_h + 6) + 6
    top = max((v for _, v, _ in items), default=0) or 1
    body = [f'<text x="4" y="13" font-size="11" font-weight="bold">{title}</text>']
    for i, (name, value, colour) in enumerate(items):
        y = 22 + i * (bar_h + 6)
        w = (width - left - 70) * value / top
        body.append(f'<text x="{left - 6}" y="{y + 13}" font-size="10" text-anchor="end">{_e(name)}</text>')
        body.append(
            f'<rect class="bar" data-stage="{_e(name)}" data-value="{value}" x="{left}" y="{y}" '
            f'width="{w:.1f}" height="{bar_h}" fill="{colour}"><title>{_e(name)}: {value:,}</title></rect>'
        )
        body.append(f'<text x="{left + w + 5:.1f}" y="{y + 13}" font-size="10">{si(value)}</text>')
    return _svg(width, height, body, title)
