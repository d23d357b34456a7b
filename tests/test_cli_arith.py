"""``convatlas arith ...`` and ``convatlas tour``: every command and its numbers (checked against PyTorch shapes or the
closed forms of convatlas.arithmetic, themselves tested against PyTorch). Their bad inputs are in the corpus of
``test_cli_bad_inputs.py``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from convatlas import arithmetic
from convatlas.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_conv_prints_length_and_formula_with_numbers(capsys):
    code, out, _ = run(capsys, "arith", "conv", "--length", "224", "--kernel", "7", "--stride", "2", "--padding", "3")
    expected = F.conv1d(torch.empty(1, 1, 224, device="meta"), torch.empty(1, 1, 7, device="meta"), None, 2, 3)
    assert code == 0
    assert out.splitlines()[0] == f"output length: {expected.shape[-1]}" == "output length: 112"
    assert "floor((224 + 2*3 - 1*(7-1) - 1)/2) + 1 = floor(223/2) + 1 = 112" in out


def test_conv_asymmetric_padding_and_dilation(capsys):
    code, out, _ = run(
        capsys, "arith", "conv", "--length", "10", "--kernel", "4", "--padding", "1,2", "--dilation", "1"
    )
    assert code == 0 and out.startswith("output length: 10\n") and "pl + pr" in out and "10 + 1 + 2" in out


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool(capsys, ceil_mode):
    argv = ["arith", "pool", "--length", "5", "--kernel", "2", "--stride", "2", "--padding", "1"]
    code, out, _ = run(capsys, *argv, *(["--ceil-mode"] if ceil_mode else []))
    expected = F.max_pool1d(torch.zeros(1, 1, 5), 2, 2, 1, ceil_mode=ceil_mode).shape[-1]
    assert code == 0 and out.splitlines()[0] == f"output length: {expected}"
    if ceil_mode:  # ceil(5/2) + 1 = 4 would start the last window in the right padding
        assert "ceil(5/2) + 1 = 4 - 1 = 3" in out


def test_transpose(capsys):
    code, out, _ = run(
        capsys,
        "arith",
        "transpose",
        "--length",
        "7",
        "--kernel",
        "3",
        "--stride",
        "2",
        "--padding",
        "1",
        "--output-padding",
        "1",
    )
    expected = F.conv_transpose1d(torch.zeros(1, 1, 7), torch.zeros(1, 1, 3), None, 2, 1, 1).shape[-1]
    assert code == 0 and out.splitlines()[0] == f"output length: {expected}" == "output length: 14"
    assert "(7 - 1)*2 - 2*1 + 1*(3-1) + 1 + 1 = 14" in out


def test_same(capsys):
    code, out, _ = run(capsys, "arith", "same", "--kernel", "5", "--dilation", "2")
    assert code == 0 and out.splitlines()[0] == "padding: 4"
    code, out, _ = run(capsys, "arith", "same", "--kernel", "4")
    assert code == 0 and out.splitlines()[0] == "padding: left 1, right 2 (asymmetric)"


def test_rf_table(capsys):
    code, out, _ = run(capsys, "arith", "rf", "7/2/3, 3/2/1, 3/1/1", "--length", "224")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "k/s/p/d", "size", "jump", "start", "length"]
    fields = arithmetic.receptive_field([(7, 2, 3), (3, 2, 1), (3, 1, 1)])
    for line, rf, length in zip(lines[1:], fields, [112, 56, 56], strict=True):
        _, _, size, jump, start, out_length = line.split()
        assert (int(size), int(jump), float(start), int(out_length)) == (rf.size, rf.jump, rf.start, length)
    assert [int(line.split()[2]) for line in lines[1:]] == [7, 11, 19]


def test_params(capsys):
    code, out, _ = run(capsys, "arith", "params", "--in-channels", "256", "--out-channels", "256", "--size", "14x14")
    assert code == 0
    conv = torch.nn.Conv2d(256, 256, 3, device="meta")
    assert f"{sum(p.numel() for p in conv.parameters()):,}" in out.splitlines()[1]
    assert "separable total" in out and "1/256 + 1/9 = 0.1150" in out


@pytest.mark.parametrize("argv", [["arith", "--help"], ["arith", "rf", "--help"], ["tour", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0 and "usage: convatlas" in capsys.readouterr().out


def test_tour(capsys):
    code, out, _ = run(capsys, "tour")
    assert code == 0
    assert "every output size equals PyTorch's" in out
    # AlexNet's pool5 sees 195x195 pixels; its features hold 2,469,696 convolution parameters (torchvision).
    assert " 195 " in out and "2,469,696" in out
    assert "C @ x                  = [0, 4, 14]" in out and "C^T @ g                = [2, -1, 0, -2, -4]" in out
    assert "Xception middle flow" in out


def test_python_m_convatlas_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "convatlas", "arith", "conv", "--length", "32", "--kernel", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("output length: 28\n"), result.stderr
