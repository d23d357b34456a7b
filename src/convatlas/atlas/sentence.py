"""A sentence drawn as Kim's network sees it ("Convolutional neural networks for sentence classification", 2014):
word vectors stacked in rows, filters spanning a few words and every dimension, a 1-D convolution along the words,
then max-over-time pooling.
"""

from __future__ import annotations

import math

import torch

from convatlas import arithmetic
from convatlas.atlas import windows as W
from convatlas.atlas.draw import (
    GRID,
    INK,
    MUTED,
    OUT_DONE,
    OUT_EMPTY,
    OUT_NOW,
    PAD,
    WINDOW,
    WINDOW_ZERO,
    Drawing,
    GridView,
    _check_cell,
    _durations,
    _fmt,
    _generator,
)
from convatlas.atlas.scene import Rect, Scene, Shape, Text, fitted, text_width
from convatlas.ops import conv_matrix

DEFAULT_SENTENCE = "wait for the video and do n't rent it"


def draw_sentence(
    sentence: str = DEFAULT_SENTENCE,
    kernels=(2, 3),
    *,
    dim: int = 6,
    padding: int = 0,
    embeddings: torch.Tensor | None = None,
    seed: int = 0,
    cell: float = 22,
) -> Drawing:
    """Animate Kim's convolution over a sentence: each filter spans ``h`` words and every embedding dimension, a 1-D
    convolution along the words (``conv1d`` with ``dim`` input channels), then ReLU and max-over-time pooling.

    Args:
        sentence: the words, separated by spaces.
        kernels: filter heights ``h`` in words, one filter each (Kim: 3, 4, 5 with 100 filters each).
        dim: embedding size drawn, when ``embeddings`` is not given (then the vectors are random with ``seed``).
        padding: zero words on each side.
        embeddings (Tensor[T, D]): the word vectors, one row per word.
        seed: seed of the random vectors and filters.
        cell: cell size in pixels.
    """
    _check_cell(cell)
    words = sentence.split()
    if not 2 <= len(words) <= 24:
        raise ValueError(f"sentence must have 2 to 24 words to draw, got {len(words)}")
    kernels = (kernels,) if isinstance(kernels, int) else tuple(kernels)
    if not kernels or len(kernels) > 4:
        raise ValueError(f"kernels must list 1 to 4 filter heights, got {kernels!r}")
    generator = _generator(seed)
    if embeddings is None:
        if not 1 <= dim <= 16:
            raise ValueError(f"dim must be in 1..16 to draw, got {dim}")
        embeddings = torch.randn(len(words), dim, generator=generator, dtype=torch.float64)
    if embeddings.dim() != 2 or embeddings.shape[0] != len(words):
        raise ValueError(f"embeddings must be Tensor[T, D] with T = {len(words)} words, got {tuple(embeddings.shape)}")
    T, D = embeddings.shape
    x = embeddings.t().to(torch.float64)  # (D, T): dimensions are the channels of a 1-D convolution over words
    filters, maps, wins = [], [], []
    for h in kernels:
        out_len = arithmetic.conv_out(T, h, padding=padding)  # the arithmetic's error when h does not fit
        weight = torch.randn(1, D, h, generator=generator, dtype=torch.float64) / math.sqrt(D * h)
        cw = W.channel_windows((T,), h, in_channels=D, out_channels=1, padding=padding)
        c = conv_matrix(weight, T, 1, padding) @ x.flatten()  # C x: one feature per window
        filters.append(weight)
        maps.append(torch.relu(c))
        wins.append(cw)
        assert len(c) == out_len
    label_w = max(text_width(w, 11) for w in words) + 12
    top = 74
    gx = GridView("words", (T + 2 * padding, D), 16 + label_w, top + 16, cell)
    static: list[Shape] = [
        Text(
            16,
            22,
            f"Kim's CNN over a sentence: filters of {', '.join(map(str, kernels))} words x {D} dimensions",
            size=14,
            bold=True,
        ),  # fmt: skip
        Text(
            16,
            42,
            "each filter is a conv1d over the words with the embedding dimensions as channels; "
            "o = T + 2p - h + 1, then ReLU and max over time",
            size=11,
            fill=MUTED,
        ),  # fmt: skip
        Text(16, 58, "word vectors drawn as colours (random unless given)", size=11, fill=MUTED),
    ]
    lo, hi = float(embeddings.min()), float(embeddings.max())
    for t in range(T + 2 * padding):
        word = words[t - padding] if padding <= t < T + padding else "<pad>"
        static.append(Text(gx.x - 6, gx.y + t * cell + cell * 0.68, word, size=11, fill=INK, anchor="end"))
        for d in range(D):
            pad = not padding <= t < T + padding
            fill = PAD if pad else _diverging(float(embeddings[t - padding, d]), lo, hi)
            static.append(gx.box((t, d), fill, dash=pad))
    x0 = gx.x + gx.width + 50
    maps_views = []
    for f, (h, fmap) in enumerate(zip(kernels, maps, strict=True)):
        view = GridView(f"map{f}", (len(fmap), 1), x0 + f * (cell * 2.4 + 20), gx.y, cell * 2.4)  # wide cells
        maps_views.append(view)
        static.append(Text(view.x, view.y - 6, f"h={h}", size=11, fill=MUTED))
        for t in range(len(fmap)):
            static.append(Rect(view.x, view.y + t * cell, view.cell, cell, fill=OUT_EMPTY, stroke=GRID,
                               data=(("grid", f"map{f}"), ("cell", str(t)))))  # fmt: skip
    px = x0 + len(kernels) * (cell * 2.4 + 20) + 30
    static.append(Text(px, gx.y - 6, "max over time", size=11, fill=MUTED))
    bottom = max(gx.y + gx.height, gx.y + max(len(m) for m in maps) * cell) + 40
    width = px + cell * 2.4 + 24
    frames, infos = [], []
    for f, (h, fmap, cw) in enumerate(zip(kernels, maps, wins, strict=True)):
        for t in range(len(fmap)):
            shapes: list[Shape] = []
            rows = sorted({gcell[0] for _, gcell, _ in cw.reads[0][t]})
            for d, gcell, _ in cw.reads[0][t]:
                pad = not padding <= gcell[0] < T + padding
                shapes.append(gx.box((gcell[0], d), WINDOW_ZERO if pad else WINDOW, mark="window", dash=pad))
            shapes += _map_shapes(maps_views, maps, f, t, cell)
            shapes.append(
                Text(
                    16,
                    bottom - 14,
                    f"filter h={h} at words {rows[0] - padding}..{rows[-1] - padding}: "
                    f"relu(w . x) = {_fmt(float(fmap[t]))}",
                    size=11,
                    fill=INK,
                )  # fmt: skip
            )
            frames.append(shapes)
            infos.append({"filter": f, "position": t, "words": [r - padding for r in rows], "value": float(fmap[t])})
    final: list[Shape] = _map_shapes(maps_views, maps, len(maps) - 1, len(maps[-1]) - 1, cell, done=True)
    for f, fmap in enumerate(maps):
        best = int(torch.argmax(fmap))
        view = maps_views[f]
        final.append(Rect(view.x, view.y + best * cell, view.cell, cell, fill="#d1495b", stroke=GRID,
                          data=(("grid", f"map{f}"), ("cell", str(best)), ("mark", "max"))))  # fmt: skip
        final.append(Text(view.x + view.cell / 2, view.y + best * cell + cell * 0.7, _fmt(float(fmap[best])),
                          size=cell * 0.45, fill="#ffffff", anchor="middle"))  # fmt: skip
        final.append(Rect(px, gx.y + f * cell, cell * 2.4, cell, fill="#d1495b", stroke=GRID,
                          data=(("grid", "pooled"), ("cell", str(f)))))  # fmt: skip
        final.append(Text(px + cell * 1.2, gx.y + f * cell + cell * 0.7, _fmt(float(fmap[best])),
                          size=cell * 0.45, fill="#ffffff", anchor="middle"))  # fmt: skip
    final.append(Text(16, bottom - 14, "max-over-time pooling keeps each filter's largest feature: one number per "
                      "filter, the sentence's vector for the classifier", size=11, fill=INK))  # fmt: skip
    frames.append(final)
    infos.append({"pooled": [float(m.max()) for m in maps]})
    scene = fitted(Scene(int(math.ceil(width)), int(math.ceil(bottom)), static, frames, _durations(len(frames))))
    return Drawing(static[0].text, scene, infos, data={"filters": filters, "maps": maps, "embeddings": embeddings})


def _map_shapes(views, maps, f_now: int, t_now: int, cell: float, done: bool = False) -> list[Shape]:
    shapes: list[Shape] = []
    for f, (view, fmap) in enumerate(zip(views, maps, strict=True)):
        for t in range(len(fmap)):
            if (f, t) > (f_now, t_now):
                continue
            now = (f, t) == (f_now, t_now) and not done
            shapes.append(Rect(view.x, view.y + t * cell, view.cell, cell, fill=OUT_NOW if now else OUT_DONE,
                               stroke=GRID, data=(("grid", f"map{f}"), ("cell", str(t)),
                                                  ("mark", "current" if now else "done"))))  # fmt: skip
            shapes.append(Text(view.x + view.cell / 2, view.y + t * cell + cell * 0.7, _fmt(float(fmap[t])),
                               size=cell * 0.45, fill="#ffffff" if now else INK, anchor="middle"))  # fmt: skip
    return shapes


def _diverging(value: float, lo: float, hi: float) -> str:
    """Blue (negative) to white to red (positive)."""
    scale = max(abs(lo), abs(hi), 1e-12)
    t = max(-1.0, min(1.0, value / scale))
    if t < 0:
        r, g, b = 255 + t * (255 - 70), 255 + t * (255 - 120), 255 + t * (255 - 200)
    else:
        r, g, b = 255 - t * (255 - 210), 255 - t * (255 - 80), 255 - t * (255 - 80)
    return f"#{round(r):02x}{round(g):02x}{round(b):02x}"
