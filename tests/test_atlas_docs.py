"""docs/atlas.md: the fifteen cases of Dumoulin & Visin's guide, as the page lists them.

References: the output sizes the guide states (the "guide" column, from its figures' parameters) and the output sizes
``torch.nn.functional.conv2d`` / ``conv_transpose2d`` produce for the same arguments; each command is run through the
command line, and the committed GIF must have one frame per output cell.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cli_checks import run_cli
from convatlas.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "atlas.md"
ROW = re.compile(r"^\| (\d+) \| ([^|]+) \| `(convatlas draw [^`]+)` \| (\d+x\d+) \| (\d+x\d+) \|$")


def cases() -> list[tuple]:
    return [m.groups() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def test_the_table_has_the_fifteen_cases():
    rows = cases()
    assert [int(r[0]) for r in rows] == list(range(1, 16))
    assert sum("transposed" in r[1] for r in rows) == 7 and sum("dilation" in r[1] for r in rows) == 1


def pair(text: str) -> tuple[int, int]:
    values = tuple(int(v) for v in text.split("x"))
    return values * 2 if len(values) == 1 else values


@pytest.mark.parametrize("number, name, command, guide, stated", cases())
def test_case_output_size_equals_pytorch_and_the_picture(tmp_path, number, name, command, guide, stated):
    argv = command.split()[1:]
    args = build_parser().parse_args(argv)
    size, kernel = pair(args.input), pair(args.kernel)
    stride, padding, dilation = pair(args.stride), pair(args.padding), pair(args.dilation)
    x, w = torch.zeros(1, 1, *size), torch.zeros(1, 1, *kernel)
    if args.kind == "conv":
        out = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    else:
        out = F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=pair(args.output_padding),
                                 dilation=dilation)  # fmt: skip
    torch_size = "x".join(map(str, out.shape[2:]))
    assert guide == stated == torch_size, (name, guide, stated, torch_size)
    frames = out.shape[2:].numel()
    # the command draws one frame per output cell ...
    result = run_cli([*argv[: argv.index("--out")], "--out", str(tmp_path / "case.svg"), "--frame", "-1"])
    assert result.code == 0, result.stderr
    assert f"frame {frames - 1} of {frames})" in result.stdout
    # ... and the committed picture is that drawing
    with Image.open(ROOT / args.out) as gif:
        assert gif.n_frames == frames


def test_every_picture_the_page_shows_exists():
    text = DOC.read_text()
    for path in re.findall(r'src="(img/atlas/[^"]+)"', text) + re.findall(r"\]\((img/atlas/[^)]+)\)", text):
        assert (DOC.parent / path).is_file(), path
    for path in re.findall(r"--out (docs/img/atlas/[\w.-]+)", text):
        assert (ROOT / path).is_file(), path
