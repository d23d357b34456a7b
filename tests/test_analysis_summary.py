"""``summary``: rows, totals, formats, ERF and the CLI, against torchinfo (peer) and torchvision's parameter counts."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torchinfo
import torchvision
from torch import nn

from convatlas.analysis import plot_effective_receptive_field, summary
from convatlas.analysis.erf import effective_receptive_field
from convatlas.cli import main


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18()


def test_rows_match_torchinfo(resnet18):
    # reference: torchinfo (shapes, parameters, and its MACs of convolutions and linear layers)
    ours = summary(resnet18, (3, 96, 96))
    theirs = torchinfo.summary(resnet18, input_size=(1, 3, 96, 96), verbose=0, depth=10)
    their_rows = [r for r in theirs.summary_list if r.depth > 0]
    assert [r.type for r in ours.rows] == [r.class_name for r in their_rows]
    assert [r.depth for r in ours.rows] == [r.depth for r in their_rows]
    assert [list(r.output_shape) for r in ours.rows] == [list(r.output_size) for r in their_rows]
    assert [r.params for r in ours.rows] == [r.num_params for r in their_rows]
    for mine, other in zip(ours.rows, their_rows, strict=True):
        if mine.type == "Conv2d":
            assert mine.macs == other.macs, mine.path
        if mine.type == "Linear":  # torchinfo counts the bias additions as MACs, we do not
            assert mine.macs + mine.output_shape[-1] == other.macs
    assert ours.total_params == theirs.total_params == 11_689_512
    assert ours.trainable_params == theirs.trainable_params


def test_full_size_parameters_match_torchvision():
    for name, published in (("resnet50", 25_557_032), ("vgg16", 138_357_544), ("alexnet", 61_100_840)):
        with torch.device("meta"):
            model = torchvision.models.get_model(name)
        assert summary(model, (3, 224, 224)).total_params == published


def test_depth_rf_columns_and_memory(resnet18):
    result = summary(resnet18, (3, 224, 224), depth=1)
    assert {r.depth for r in result.rows} == {1}
    rows = {r.path: r for r in result.rows}
    assert rows["conv1"].rf_size == (7, 7) and rows["conv1"].rf_jump == (2, 2) and rows["conv1"].rf_start == (0, 0)
    assert rows["maxpool"].rf_size == (11, 11) and rows["maxpool"].rf_jump == (4, 4)
    assert rows["layer4"].rf_size == (435, 435) and rows["layer4"].rf_jump == (32, 32)
    assert rows["avgpool"].rf_global and rows["fc"].rf_global
    assert rows["conv1"].activation_bytes == 64 * 112 * 112 * 4
    assert result.total_macs == 1_814_073_344  # convolutions and the classifier only
    deeper = summary(resnet18, (3, 224, 224))
    assert deeper.total_macs == result.total_macs and len(deeper.rows) > len(result.rows)
    assert sum(r.macs for r in result.rows) == result.total_macs


def test_formats(resnet18):
    result = summary(resnet18, (3, 64, 64), depth=2)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["total_params"] == 11_689_512 and data["input_size"] == [3, 64, 64]
    assert data["rows"][0]["path"] == "conv1" and data["rows"][0]["output_shape"] == [1, 64, 32, 32]
    lines = list(csv.reader(io.StringIO(result.to_csv())))
    assert lines[0][:3] == ["path", "type", "depth"] and len(lines) == len(result.rows) + 1
    assert lines[1][3] == "1x64x32x32"
    text = str(result)
    assert "layer4 (Sequential)" in text and "Total params: 11,689,512" in text and "global" in text


def test_shared_module_is_one_row_per_call_counted_once():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    result = summary(model, (2, 8, 8))
    assert [r.path for r in result.rows] == ["0", "1", "0"]
    assert [r.params for r in result.rows] == [38, 0, 0] and result.total_params == 38
    assert result.rows[2].rf_size == (5, 5)


def test_model_is_left_as_it_was(resnet18):
    resnet18.train()
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    summary(resnet18, (3, 32, 32))
    assert resnet18.training and all(m.training for m in resnet18.modules())
    after = resnet18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.device.type == "cpu" for p in resnet18.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in resnet18.modules())


class NeedsValues(nn.Module):
    """Data-dependent control flow: cannot run on the meta device, so the summary runs on the CPU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if float(y.sum()) > -1e30 else y


def test_falls_back_to_the_model_device():
    result = summary(NeedsValues(), (1, 8, 8))
    assert result.device == "cpu" and result.total_macs == 36 * 9


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth must be a positive int"):
        summary(nn.Conv2d(1, 1, 3), (1, 8, 8), depth=0)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        summary(lambda x: x, (1, 8, 8))
    with pytest.raises(ValueError, match="input_size must be positive ints"):
        summary(nn.Conv2d(1, 1, 3), (1, -8, 8))


# --------------------------------------------------------------------------------------------------------------------
# Effective receptive field (Luo et al. 2016)


def test_effective_field_stays_inside_the_theoretical_field(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 5, stride=2), nn.Tanh())
    erf = effective_receptive_field(model, (1, 33, 33), samples=4)
    assert erf.heatmap.shape == (33, 33) and erf.unit == (7, 7)
    # field 3 + (5 - 1) = 7, start (5 - 1)/2 = 2: the centre unit 7 at jump 2 sees 16 +- 3
    assert erf.theoretical == [(13, 19), (13, 19)]
    assert erf.mass_inside() == pytest.approx(1.0, abs=1e-6) and erf.heatmap[16, 16] > 0
    path = tmp_path / "erf.png"
    plot_effective_receptive_field(model, (1, 33, 33), path, samples=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_summary_json(capsys):
    assert (
        main(["summary", "torchvision.models:resnet18", "--input", "3x64x64", "--format", "json", "--depth", "1"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "ResNet" and data["total_params"] == 11_689_512


def test_cli_summary_registry_table_and_csv(capsys):
    assert main(["summary", "mobilenet_v2", "--input", "3x64x64", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "features (Sequential)" in out and "Total MACs" in out
    assert main(["summary", "mobilenet_v2", "--input", "3x64x64", "--format", "csv", "--depth", "1"]) == 0
    assert capsys.readouterr().out.startswith("path,type,depth,")


def test_cli_rf_with_plot(tmp_path, capsys):
    path = tmp_path / "rf.png"
    assert (
        main(["rf", "torchvision.models:alexnet", "--input", "3x224x224", "--plot", str(path), "--samples", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "H: size 195, jump 32, start 31.0" in out and "method: graph" in out
    assert path.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "resnext50_32x4d", "--input", "1x64x64"], "expects 3 input channels, got 1"),
        (["rf", "torchvision.models:alexnet", "--input", "3x30x30"], "layer features.5 (MaxPool2d)"),
        (["summary", "no_such_model"], "unknown model"),
        (["summary", "torchvision.models:nothing"], "has no callable"),
        (["summary", "mobilenet_v2", "--input", "3xabc"], "--input must look like"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_wrong_features_and_channels_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\): expects 10 input features, got 12"):
        summary(nn.Sequential(nn.Flatten(), nn.Linear(10, 2)), (3, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm2d\): expects 8 channels, got 4"):
        summary(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(8)), (1, 8, 8))
    with pytest.raises(ValueError, match=r"layer 0 \(ConvTranspose2d\): expects 4 input channels, got 2"):
        summary(nn.Sequential(nn.ConvTranspose2d(4, 2, 2, stride=2)), (2, 8, 8))
