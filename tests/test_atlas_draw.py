"""Every frame of every ``draw`` picture against PyTorch.

References: ``torch.nn.functional`` (``conv1d/2d``, ``conv_transpose1d/2d``, ``max_pool1d/2d``, ``avg_pool1d/2d``,
grouped ``conv2d``), float64, random inputs and weights; ``convatlas.ops.conv_matrix`` (the highlighted cells of
output ``r`` are the nonzero columns of row ``r`` of ``C``, and ``C @ x`` is torch's output); the parameter counts of
``torch.nn.Conv2d`` modules. What a frame highlights is read from its SVG (``data-`` attributes), so the test checks
the picture, not only the numbers it was drawn from.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convatlas.atlas import draw_channels, draw_convolution, draw_pooling, draw_sentence, draw_transposed
from convatlas.atlas import windows as W
from convatlas.ops import conv_matrix

SVG = "{http://www.w3.org/2000/svg}"


def marked(svg: str, grid: str, mark: str) -> dict[tuple[int, ...], int | None]:
    """``{cell: tap}`` of the rectangles of ``grid`` carrying ``data-mark=mark`` in an SVG frame."""
    out = {}
    for el in ET.fromstring(svg).iter(f"{SVG}rect"):
        if el.get("data-grid") == grid and el.get("data-mark") == mark:
            cell = tuple(int(v) for v in el.get("data-cell").split(","))
            tap = el.get("data-tap")
            out[cell] = int(tap) if tap is not None else None
    return out


def per_dim(value, nd):
    return (value,) * nd if isinstance(value, int) else tuple(value)


def flat(position, size) -> int:
    index = 0
    for p, n in zip(position, size, strict=True):
        index = index * n + p
    return index


# (input size, kernel, stride, padding, dilation): Dumoulin & Visin's convolutions, then less regular ones
CONV_CASES = [
    ((4, 4), 3, 1, 0, 1),
    ((5, 5), 4, 1, 2, 1),
    ((5, 5), 3, 1, 1, 1),
    ((5, 5), 3, 1, 2, 1),
    ((5, 5), 3, 2, 0, 1),
    ((5, 5), 3, 2, 1, 1),
    ((6, 6), 3, 2, 1, 1),
    ((7, 7), 3, 1, 0, 2),
    ((6, 7), (3, 2), (2, 1), (1, 0), (1, 2)),
    ((9,), 3, 2, 1, 2),
    ((5,), 5, 1, 2, 1),
]


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", CONV_CASES)
def test_convolution_frames_against_torch(size, kernel, stride, padding, dilation):
    nd = len(size)
    drawing = draw_convolution(size, kernel, stride=stride, padding=padding, dilation=dilation)
    kernel, padding = per_dim(kernel, nd), per_dim(padding, nd)
    x = torch.randn(size, dtype=torch.float64)
    w = torch.randn(kernel, dtype=torch.float64)
    conv = F.conv1d if nd == 1 else F.conv2d
    reference = conv(x[None, None], w[None, None], stride=stride, padding=padding, dilation=dilation)[0, 0]
    matrix = conv_matrix(w[None, None], size if nd > 1 else size[0], stride, padding, dilation)
    torch.testing.assert_close(matrix @ x.flatten(), reference.flatten(), rtol=0, atol=1e-12)
    assert len(drawing.frames) == reference.numel() == len(drawing.scene.frames)
    for r, info in enumerate(drawing.frames):
        svg = drawing.svg(r)
        window = marked(svg, "input", "window")
        assert window == dict(zip(info["cells"], info["taps"], strict=True))
        assert sorted(window.values()) == list(range(w.numel()))  # every tap once, padding taps included
        assert list(marked(svg, "output", "current")) == [info["output"]]
        # the highlighted input cells, minus the padding, and their taps: output r by hand equals torch's
        total, columns = 0.0, {}
        for cell, tap in window.items():
            position = tuple(c - p for c, p in zip(cell, padding, strict=True))
            if all(0 <= q < n for q, n in zip(position, size, strict=True)):
                tap_index = W.unravel(tap, kernel)
                total += float(x[position] * w[tap_index])
                columns[flat(position, size)] = float(w[tap_index])
        assert total == pytest.approx(float(reference.flatten()[r]), abs=1e-12)
        # ... and they are exactly the nonzero columns of row r of C, with the right weights
        nonzero = {int(c): float(matrix[r, c]) for c in torch.nonzero(matrix[r]).flatten()}
        assert columns == nonzero


def test_convolution_values_written_are_torch_output():
    drawing = draw_convolution((6, 5), (3, 2), stride=(2, 1), padding=1, values=True)
    x, w = drawing.data["input"], drawing.data["weight"]
    reference = F.conv2d(x[None, None], w[None, None], stride=(2, 1), padding=1)[0, 0]
    torch.testing.assert_close(drawing.output, reference, rtol=0, atol=1e-12)
    last = drawing.svg(-1)
    assert f">{int(reference[-1, -1])}</text>" in last  # the last output written on the last frame


POOL_CASES = [
    ((5, 5), 2, 2, 0, 1, False),
    ((5, 5), 2, 2, 0, 1, True),
    ((6, 6), 3, 2, 1, 1, True),
    ((7, 6), (3, 2), (2, 2), (1, 1), 1, True),
    ((8, 8), 3, 3, 1, 2, True),
    ((7,), 3, 2, 1, 1, True),
    ((10,), 4, 3, 0, 1, True),
]


@pytest.mark.parametrize("size, kernel, stride, padding, dilation, ceil_mode", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_frames_against_torch(size, kernel, stride, padding, dilation, ceil_mode, mode):
    if mode == "avg" and dilation != 1:
        with pytest.raises(ValueError, match="dilation"):
            draw_pooling(size, kernel, stride=stride, padding=padding, dilation=dilation, mode=mode)
        return
    nd = len(size)
    drawing = draw_pooling(
        size, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode, mode=mode, values=True
    )
    x = drawing.data["input"]
    args = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    if mode == "max":
        pool = F.max_pool1d if nd == 1 else F.max_pool2d
        reference = pool(x[None, None], dilation=dilation, **args)[0, 0]
    else:
        pool = F.avg_pool1d if nd == 1 else F.avg_pool2d
        reference = pool(x[None, None], count_include_pad=True, **args)[0, 0]
    torch.testing.assert_close(drawing.output, reference, rtol=0, atol=1e-12)
    # the windows: a max over the highlighted real cells of random distinct values picks torch's argmax
    values = torch.randperm(x.numel()).reshape(size).to(torch.float64)
    pool = F.max_pool1d if nd == 1 else F.max_pool2d
    best, index = pool(values[None, None], dilation=dilation, return_indices=True, **args)
    padding = per_dim(padding, nd)
    partial = 0
    for r, info in enumerate(drawing.frames):
        window = marked(drawing.svg(r), "input", "window")
        assert window == dict(zip(info["cells"], info["taps"], strict=True))
        positions = [tuple(c - p for c, p in zip(cell, padding, strict=True)) for cell in window]
        real = [q for q in positions if all(0 <= a < n for a, n in zip(q, size, strict=True))]
        assert max(float(values[q]) for q in real) == float(best.flatten()[r])
        assert flat(max(real, key=lambda q: values[q]), size) == int(index.flatten()[r])
        padded = [n + 2 * p for n, p in zip(size, padding, strict=True)]
        partial += any(any(c >= n for c, n in zip(cell, padded, strict=True)) for cell in window)
    if size == (5, 5) and ceil_mode:
        assert partial == 5  # the last row and column of windows run past the 5x5 input


TRANSPOSED_CASES = [  # (input, kernel, stride, padding, output_padding, dilation): D&V's seven, then others
    ((2, 2), 3, 1, 0, 0, 1),
    ((6, 6), 4, 1, 2, 0, 1),
    ((5, 5), 3, 1, 1, 0, 1),
    ((7, 7), 3, 1, 2, 0, 1),
    ((2, 2), 3, 2, 0, 0, 1),
    ((3, 3), 3, 2, 1, 0, 1),
    ((3, 3), 3, 2, 1, 1, 1),
    ((3, 4), (2, 3), (3, 2), (0, 1), (2, 1), (1, 2)),
    ((3, 3), 3, 1, 4, 0, 3),
    ((4,), 3, 2, 1, 1, 1),
]


def transposed_reference(x, w, nd, stride, padding, output_padding, dilation):
    fn = F.conv_transpose1d if nd == 1 else F.conv_transpose2d
    return fn(x[None, None], w[None, None], stride=stride, padding=padding, output_padding=output_padding,
              dilation=dilation)[0, 0]  # fmt: skip


@pytest.mark.parametrize("size, kernel, stride, padding, output_padding, dilation", TRANSPOSED_CASES)
def test_transposed_as_convolution_frames_against_torch(size, kernel, stride, padding, output_padding, dilation):
    nd = len(size)
    drawing = draw_transposed(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    kernel = per_dim(kernel, nd)
    x, w = torch.randn(size, dtype=torch.float64), torch.randn(kernel, dtype=torch.float64)
    reference = transposed_reference(x, w, nd, stride, padding, output_padding, dilation)
    win = W.transposed_as_convolution(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation
    )
    spans = zip(reference.shape, per_dim(dilation, nd), kernel, strict=True)
    assert win.grid == tuple(n + d * (k - 1) for n, d, k in spans)  # the outputs read the whole drawn grid
    assert len(drawing.frames) == reference.numel()
    # the drawn grid as a tensor (inputs at their cells, zeros elsewhere): C of the turned-around kernel over it,
    # stride 1, is torch's transposed convolution
    grid = torch.zeros(win.grid, dtype=torch.float64)
    for cell, position in win.source.items():
        grid[cell] = x[position]
    flipped = w.flip(tuple(range(nd)))[None, None]
    matrix = conv_matrix(flipped, win.grid if nd > 1 else win.grid[0], 1, 0, dilation)
    torch.testing.assert_close(matrix @ grid.flatten(), reference.flatten(), rtol=0, atol=1e-12)
    for r, info in enumerate(drawing.frames):
        window = marked(drawing.svg(r), "input", "window")
        assert window == dict(zip(info["cells"], info["taps"], strict=True))
        total = sum(float(x[win.source[c]] * w[W.unravel(t, kernel)]) for c, t in window.items() if c in win.source)
        assert total == pytest.approx(float(reference.flatten()[r]), abs=1e-12)


@pytest.mark.parametrize("size, kernel, stride, padding, output_padding, dilation", TRANSPOSED_CASES)
def test_transposed_scatter_frames_against_torch(size, kernel, stride, padding, output_padding, dilation):
    nd = len(size)
    drawing = draw_transposed(
        size, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, view="scatter"
    )
    kernel, padding_ = per_dim(kernel, nd), per_dim(padding, nd)
    x, w = torch.randn(size, dtype=torch.float64), torch.randn(kernel, dtype=torch.float64)
    reference = transposed_reference(x, w, nd, stride, padding, output_padding, dilation)
    # C of the drawing (tap codes) has the pattern of C of the real kernel; C^T x is torch's output
    codes = drawing.data["matrix"]
    real = torch.zeros_like(codes)
    real[codes != 0] = w.flatten()[(codes[codes != 0] - 1).long()]
    torch.testing.assert_close(real.t() @ x.flatten(), reference.flatten(), rtol=0, atol=1e-12)
    assert len(drawing.frames) == x.numel()
    accumulated = torch.zeros_like(reference)
    for r, info in enumerate(drawing.frames):
        svg = drawing.svg(r)
        scattered = marked(svg, "output", "scatter")
        assert scattered == dict(zip(info["cells"], info["taps"], strict=True))
        assert list(marked(svg, "input", "current")) == [info["input"]]
        kept = {}
        for cell, tap in scattered.items():
            position = tuple(c - p for c, p in zip(cell, padding_, strict=True))
            if all(0 <= q < n for q, n in zip(position, reference.shape, strict=True)):  # the rest is cropped
                accumulated[position] += x[info["input"]] * w[W.unravel(tap, kernel)]
                kept[flat(position, reference.shape)] = tap + 1
        # the output cells reached are the nonzero columns of row r of C (column r of C^T), taps included
        assert kept == {int(c): int(codes[r, c]) for c in torch.nonzero(codes[r]).flatten()}
    torch.testing.assert_close(accumulated, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kind, size, c_in, c_out, kernel, multiplier, stride, padding",
    [
        ("depthwise", (5, 5), 3, None, 3, 1, 1, 1),
        ("depthwise", (6, 5), 2, None, (3, 2), 2, 2, 1),
        ("pointwise", (4, 4), 3, 4, 1, 1, 1, 0),
        ("pointwise", (5, 5), 2, 3, 1, 1, 2, 0),
        ("separable", (4, 4), 3, 4, 3, 1, 1, 1),
        ("separable", (5,), 2, 3, 3, 2, 2, 0),
    ],
)
def test_channel_frames_against_torch(kind, size, c_in, c_out, kernel, multiplier, stride, padding):
    nd = len(size)
    drawing = draw_channels(
        kind, size, in_channels=c_in, out_channels=c_out, kernel=kernel, multiplier=multiplier, stride=stride,
        padding=padding,
    )  # fmt: skip
    c_out = c_in + 1 if c_out is None else c_out
    mid = c_in * multiplier
    kernel = per_dim(kernel, nd)
    conv = F.conv1d if nd == 1 else F.conv2d
    modules = []
    x = torch.randn(1, c_in, *size, dtype=torch.float64)
    if kind in ("depthwise", "separable"):
        dw = torch.randn(mid, 1, *kernel, dtype=torch.float64)
        steps = [("depthwise", dw, dict(stride=stride, padding=padding, groups=c_in))]
        modules.append(nn.Conv2d(c_in, mid, kernel if nd == 2 else (1, *kernel), groups=c_in, bias=False))
    else:
        steps = []
    if kind in ("pointwise", "separable"):
        pw = torch.randn(c_out, mid if kind == "separable" else c_in, *(1,) * nd, dtype=torch.float64)
        steps.append(("pointwise", pw, dict(stride=stride if kind == "pointwise" else 1)))
        modules.append(nn.Conv2d(mid if kind == "separable" else c_in, c_out, 1, bias=False))
    tensor = x
    for step, weight, args in steps:
        reference = conv(tensor, weight, **args)[0]
        pad = per_dim(args.get("padding", 0), nd)
        for r, info in enumerate(drawing.frames):
            position = info["position"]
            for o, reads in info[step].items():
                total = 0.0
                for channel, cell, tap in reads:
                    if step == "depthwise":
                        assert channel == o // multiplier  # a depthwise output reads only its own channel
                    source = tuple(c - p for c, p in zip(cell, pad, strict=True))
                    if all(0 <= q < n for q, n in zip(source, tensor.shape[2:], strict=True)):
                        tap_index = W.unravel(tap, weight.shape[2:])
                        w_index = (o, channel % weight.shape[1], *tap_index)
                        total += float(tensor[(0, channel, *source)] * weight[w_index])
                assert total == pytest.approx(float(reference[(o, *position)]), abs=1e-12), (step, r, o)
                if step == "pointwise":
                    assert sorted(ch for ch, _, _ in reads) == list(range(weight.shape[1]))  # all channels mixed
            svg = drawing.svg(r)
            if step == "depthwise":
                for o in range(mid):
                    cells = {(ch, cell) for ch, cell, _ in info[step][o]}
                    drawn = marked(svg, f"input{o // multiplier}", f"read-by-{o}")
                    assert {(o // multiplier, c) for c in drawn} == cells
        tensor = reference[None]
    assert drawing.data["counts"]["params"] == sum(p.numel() for m in modules for p in m.parameters())


def test_sentence_frames_against_torch():
    words = "the movie was not good at all"
    drawing = draw_sentence(words, (2, 3, 4), dim=5, padding=1)
    emb, filters, maps = drawing.data["embeddings"], drawing.data["filters"], drawing.data["maps"]
    for weight, fmap in zip(filters, maps, strict=True):
        reference = torch.relu(F.conv1d(emb.t()[None], weight, padding=1))[0, 0]
        torch.testing.assert_close(fmap, reference, rtol=0, atol=1e-12)
    frames = drawing.frames
    assert len(frames) == sum(len(m) for m in maps) + 1
    for r, info in enumerate(frames[:-1]):
        h = filters[info["filter"]].shape[-1]
        assert info["words"] == list(range(info["position"] - 1, info["position"] - 1 + h))
        window = marked(drawing.svg(r), "words", "window")
        assert {cell[0] for cell in window} == {w + 1 for w in info["words"]}  # grid rows include the pad word
        assert len(window) == h * emb.shape[1]  # every dimension of every word
    assert frames[-1]["pooled"] == [float(m.max()) for m in maps]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: draw_convolution((3, 3), 5), "conv_out"),
        (lambda: draw_convolution((5, 5), 3, dilation=3), "conv_out"),
        (lambda: draw_pooling((5, 5), 2, padding=2), "pool_out"),
        (lambda: draw_transposed((2, 2), 3, stride=2, output_padding=2), "conv_transpose_out"),
        (lambda: draw_transposed((2, 2), 1, padding=1), "conv_transpose_out"),
        (lambda: draw_channels("depthwise", (4, 4), in_channels=3, kernel=5), "conv_out"),
        (lambda: draw_sentence("two words", 3), "conv_out"),
        (lambda: draw_convolution((200, 200), 3), "too large"),
    ],
)
def test_bad_parameters_give_the_arithmetic_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
