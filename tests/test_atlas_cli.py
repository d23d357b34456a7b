"""``convatlas draw`` and ``convatlas report`` from the command line: files written, frames counted, bad input refused
with one line and exit status 2 (the arithmetic's own message for impossible geometry), user files never replaced
without ``--overwrite``.

References: Pillow reads the GIF back (frame count = PyTorch's output size); ``xml.etree`` parses the SVG;
``torch.nn.functional.conv2d`` gives the output size each picture must have.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cli_checks import expect_user_error, run_cli, unchanged
from convatlas.models import create_model


def test_draw_conv_gif_has_one_frame_per_output(tmp_path):
    out = tmp_path / "conv.gif"
    result = run_cli(["draw", "conv", "--input", "6x5", "--kernel", "3x2", "--stride", "2", "--padding", "1",
                      "--out", str(out)])  # fmt: skip
    assert result.code == 0, result.stderr
    expected = F.conv2d(torch.zeros(1, 1, 6, 5), torch.zeros(1, 1, 3, 2), stride=2, padding=1).shape[2:].numel()
    with Image.open(out) as gif:
        assert gif.n_frames == expected
    assert f"({expected} frames)" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["conv", "--input", "7", "--kernel", "3", "--dilation", "2", "--values"],
        ["pool", "--input", "5x5", "--kernel", "2", "--ceil-mode", "--mode", "avg", "--values"],
        ["transposed", "--input", "3x3", "--stride", "2", "--padding", "1", "--output-padding", "1"],
        ["transposed", "--input", "2x2", "--stride", "2", "--view", "scatter", "--values"],
        ["depthwise", "--input", "4x4", "--padding", "1", "--multiplier", "2", "--channels", "2"],
        ["pointwise", "--input", "3x3", "--channels", "3", "--out-channels", "2"],
        ["separable", "--input", "4x4", "--padding", "1"],
        ["sentence", "--kernel", "2,3,4"],
    ],
)
def test_every_kind_draws_an_svg(tmp_path, argv):
    out = tmp_path / "one.svg"
    result = run_cli(["draw", *argv, "--out", str(out), "--frame", "-1"])
    assert result.code == 0, result.stderr
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and len(root) > 10


def test_existing_output_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "conv.svg"
    out.write_text("mine")
    with unchanged(out):
        expect_user_error(["draw", "conv", "--input", "4x4", "--out", str(out)], names=["--out", "--overwrite"])
    assert run_cli(["draw", "conv", "--input", "4x4", "--out", str(out), "--overwrite"]).code == 0
    assert out.read_text().startswith("<svg")


@pytest.mark.parametrize(
    "argv, names",
    [
        (["conv", "--input", "3x3", "--kernel", "5"], ["conv_out", "5"]),
        (["conv", "--input", "5x5", "--kernel", "3", "--dilation", "3"], ["conv_out", "7"]),
        (["pool", "--input", "5x5", "--kernel", "2", "--padding", "2"], ["pool_out", "k // 2"]),
        (["transposed", "--input", "2x2", "--stride", "2", "--output-padding", "2"], ["conv_transpose_out"]),
        (["conv", "--input", "5xa"], ["--input", "5xa"]),
        (["conv", "--input", "5x5x5"], ["--input"]),
        (["conv", "--input", "5x5", "--stride", "0"], ["stride", "0"]),
        (["conv", "--input", "5x5", "--frame", "40"], ["frame", "40"]),
        (["depthwise", "--input", "4x4", "--channels", "20"], ["20"]),
        (["sentence", "--sentence", "too short", "--kernel", "3"], ["conv_out"]),
    ],
)
def test_bad_parameters_are_one_line_errors(tmp_path, argv, names):
    out = tmp_path / "x.svg"
    expect_user_error(["draw", *argv, "--out", str(out)], names=names)
    assert not out.exists()


def test_wrong_extension_is_refused_before_work(tmp_path):
    expect_user_error(["draw", "conv", "--input", "4x4", "--out", str(tmp_path / "x.txt")], names=["--out", ".txt"])
    expect_user_error(["report", "kim_cnn", "--out", str(tmp_path / "x.png")], names=["--out", ".png"])


def test_draw_field_writes_the_picture(tmp_path):
    out = tmp_path / "fields.png"
    result = run_cli(["draw", "field", "convnext_tiny", "--input", "3x64x64", "--samples", "1", "--point", "20x40",
                      "--out", str(out)])  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout.count("stride") == 4  # one line per spatial stage
    with Image.open(out) as im:
        assert im.size[0] > 600
    expect_user_error(["draw", "field", "kim_cnn", "--out", str(tmp_path / "k.png")], names=["(C, H, W)"])
    expect_user_error(["draw", "field", "convnext_tiny", "--input", "3x64x64", "--point", "70x1",
                       "--out", str(tmp_path / "p.png")], names=["point"])  # fmt: skip


def test_report_of_a_module_function_model(tmp_path):
    out = tmp_path / "resnet.html"
    result = run_cli(["report", "torchvision.models:resnet18", "--input", "3x64x64", "--erf-samples", "0",
                      "--out", str(out)])  # fmt: skip
    assert result.code == 0, result.stderr
    assert "11,689,512 parameters" in result.stdout
    assert 'id="total-params" data-value="11689512"' in out.read_text()
    expect_user_error(["report", "no_such_model", "--out", str(tmp_path / "n.html")], names=["no_such_model"])


def test_report_of_a_training_run_folder(tmp_path):
    run = tmp_path / "run"
    trained = run_cli(["train", "--model", "mobilenet_v2", "--model-arg", "width_mult=0.35", "--data", "fashion-mnist",
                       "--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-test", "32",
                       "--out", str(run)])  # fmt: skip
    assert trained.code == 0, trained.stderr
    result = run_cli(["report", str(run), "--out", str(run / "report.html"), "--erf-samples", "1"])
    assert result.code == 0, result.stderr
    params = sum(p.numel() for p in create_model("mobilenet_v2", width_mult=0.35, num_classes=10,
                                                 in_channels=1).parameters())  # fmt: skip
    assert "input 1x28x28" in result.stdout and f"{params:,} parameters" in result.stdout
    assert 'id="field"' in (run / "report.html").read_text()
