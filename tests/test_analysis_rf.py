"""Receptive fields: analytic (graph) against empirical (input-gradient support), published tables and closed forms.

References used here:
- the empirical method: back-propagate one output position through the linearised, positive network and read the
  support of the input gradient (``gradient_support``); it is independent of the graph rules;
- the published table of Araujo, Norris & Sim, "Computing receptive fields of convolutional neural networks",
  Distill 2019 (the table of its library, google-research/receptive_field): receptive field / effective stride /
  effective padding of alexnet_v2 195/32/64, vgg_16 212/32/90, inception_v3 1311/32/618, mobilenet_v1 315/32/126,
  resnet_v1_50 483/32/239;
- the closed forms of ``convatlas.arithmetic.receptive_field`` for single-path chains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convatlas import arithmetic
from convatlas.analysis import gradient_support, receptive_field
from convatlas.analysis.receptive import pick_call
from convatlas.analysis.trace import run_trace, summarise
from convatlas.models import create_model, list_models


def graph_fields(model, size, layer=None):
    trace = run_trace(model, size)
    lengths = list(size[1:]) if len(size) > 1 else list(size)
    call = pick_call(trace.calls, lengths, layer)
    return call, summarise(call.state, lengths), trace


def assert_graph_matches_gradients(model, size, *, layer=None, units="corners"):
    """The real field of the graph (``rlo..rhi``) equals the input-gradient support, position by position."""
    call, fields, _ = graph_fields(model, size, layer)
    assert fields is not None, f"graph analysis lost the tensor at {call.path!r}"
    shape = call.outputs[0].shape
    dims = tuple(f.dim for f in fields)
    if units == "all":
        assert len(dims) == 1
        chosen = [(i,) for i in range(shape[dims[0]])]
    else:
        chosen = [tuple(shape[d] // 2 for d in dims), tuple(0 for _ in dims)]
        if units == "corners":
            chosen.append(tuple(shape[d] - 1 for d in dims))
    supports, _ = gradient_support(model, size, layer=call.path, units=chosen, spatial=dims)
    for unit, support in zip(chosen, supports, strict=True):
        expected = []
        for f, u in zip(fields, unit, strict=True):
            lo, hi = f.rlo[u], f.rhi[u]
            expected.append((lo, hi) if lo <= hi else (-1, -1))
        assert support == expected, f"{type(model).__name__} at {call.path!r}, unit {unit}: {support} != {expected}"
    return call, fields


def effective_padding(rf) -> list[float]:
    """Distill's effective padding: the field of output 0 starts at ``-P``, i.e. ``P = (r - 1)/2 - start``."""
    return [(s - 1) / 2 - c for s, c in zip(rf.size, rf.start, strict=True)]


def meta(builder, **kw):
    with torch.device("meta"):
        return builder(**kw)


# --------------------------------------------------------------------------------------------------------------------
# Published table (Distill 2019)


def test_vgg16_matches_distill_table():
    rf = receptive_field(meta(torchvision.models.vgg16), (3, 224, 224), layer="features")
    assert rf.method == "graph" and rf.exact
    assert rf.size == (212, 212) and rf.jump == (32, 32)
    assert effective_padding(rf) == [90, 90]


def test_alexnet_matches_distill_table():
    rf = receptive_field(meta(torchvision.models.alexnet), (3, 224, 224), layer="features")
    assert rf.size == (195, 195) and rf.jump == (32, 32)
    # torchvision's conv1 pads 2 where TF-slim's alexnet_v2 pads none (VALID): 2 more pixels at jump 1
    assert effective_padding(rf) == [64 + 2, 64 + 2]


def test_inception_v3_matches_distill_table():
    model = meta(torchvision.models.inception_v3, init_weights=False, aux_logits=False)
    rf = receptive_field(model, (3, 299, 299), layer="Mixed_7c")
    assert rf.size == (1311, 1311) and rf.jump == (32, 32)
    assert effective_padding(rf) == [618, 618]


def _slim_resnet_v1_50() -> nn.Module:
    """torchvision's ResNet-50 rearranged to TF-slim's resnet_v1_50: each block's stride on its last unit (blocks 1-3,
    block 4 at stride 1), shortcut subsampling by a 1x1 max pool, and TF "SAME" max pooling (pad right only)."""
    model = meta(torchvision.models.resnet50)
    model.maxpool = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        first, last = stage[0], stage[-1]
        first.conv2.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        if stage is not model.layer4:
            last.conv2.stride = (2, 2)
            last.downsample = nn.MaxPool2d(1, 2)
    return model


def test_resnet_v1_50_slim_layout_matches_distill_table():
    rf = receptive_field(_slim_resnet_v1_50(), (3, 224, 224), layer="layer4")
    assert rf.size == (483, 483) and rf.jump == (32, 32)
    assert effective_padding(rf) == [239, 239]


def test_torchvision_resnet50_v1_5():
    # torchvision's ResNet-50 strides the first unit of each stage: a smaller field than slim's resnet_v1_50
    rf = receptive_field(meta(torchvision.models.resnet50), (3, 224, 224))
    assert rf.layer == "layer4" and rf.size == (427, 427) and rf.jump == (32, 32)


@pytest.mark.skipif("mobilenet_v1" not in list_models(), reason="mobilenet_v1 is not registered")
def test_mobilenet_v1_matches_distill_table():
    with torch.device("meta"):
        model = create_model("mobilenet_v1")
    rf = receptive_field(model, (3, 224, 224))
    assert rf.size == (315, 315) and rf.jump == (32, 32)
    # TF "SAME" pads stride-2 layers on the right only; PyTorch pads 1 on both sides: 1+2+4+8+16 more on the left
    assert effective_padding(rf) == [126 + 31, 126 + 31]


# --------------------------------------------------------------------------------------------------------------------
# Closed forms (convatlas.arithmetic) on single-path chains


@pytest.mark.parametrize(
    "layers",
    [
        [(7, 2, 3), (3, 2, 1), (3, 1, 1), (3, 1, 1)],
        [(11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1)],
        [(3, 1, 1, 2), (3, 1, 2, 2), (3, 2, 0, 3), (1, 1, 0)],
    ],
)
def test_chain_matches_closed_form(layers):
    model = nn.Sequential(*[nn.Conv2d(2, 2, k, s, p, d) for k, s, p, d in [(*x, 1)[:4] for x in layers]])
    rf = receptive_field(model, (2, 96, 96), layer="")
    expected = arithmetic.receptive_field(layers)[-1]
    assert rf.size == (expected.size,) * 2 and rf.jump == (expected.jump,) * 2 and rf.start == (expected.start,) * 2
    assert rf.exact


# --------------------------------------------------------------------------------------------------------------------
# Branches, different jumps, upsampling, transposed convolution, U-Net crops: every position against gradients


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(1, 2, 5, padding=2)
        self.b = nn.Conv1d(1, 2, 3, stride=1, padding=4, dilation=4)

    def forward(self, x):
        return self.a(x) + self.b(x) + x


class DifferentJumps(nn.Module):
    """A crop of the input (jump 1) added to a stride-2 convolution of it (jump 2): same length, different jumps."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv1d(1, 1, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.down(x)
        return y + x[..., : y.shape[-1]]


class UpDown(nn.Module):
    def __init__(self, mode: str, align_corners: bool | None = None):
        super().__init__()
        self.down = nn.Conv1d(1, 2, 3, stride=2)
        self.pool = nn.MaxPool1d(3, 2, ceil_mode=True)
        self.mode, self.align = mode, align_corners

    def forward(self, x):
        y = self.pool(self.down(x))
        up = F.interpolate(y, size=x.shape[-1], mode=self.mode, align_corners=self.align)
        return up + x


class TinyUNet(nn.Module):
    """Valid convolutions, max pooling, a 2x2 transposed convolution, the encoder map cropped and concatenated."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Conv1d(2, 2, 3), nn.ReLU())
        self.mid = nn.Sequential(nn.MaxPool1d(2), nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3))
        self.up = nn.ConvTranspose1d(4, 2, 2, stride=2)
        self.dec = nn.Conv1d(4, 1, 3)

    def forward(self, x):
        skip = self.enc(x)
        y = self.up(self.mid(skip))
        offset = (skip.shape[-1] - y.shape[-1]) // 2
        return self.dec(torch.cat([skip[..., offset : offset + y.shape[-1]], y], 1))


class Odd(nn.Module):
    """Transposed convolution with a kernel (3) not a multiple of its stride (2), reflect padding, adaptive pooling."""

    def __init__(self):
        super().__init__()
        self.t = nn.ConvTranspose1d(1, 1, 3, stride=2, padding=1, output_padding=1)
        self.c = nn.Conv1d(1, 1, 3)

    def forward(self, x):
        y = self.c(F.pad(self.t(x), (2, 2), mode="reflect"))
        return F.adaptive_avg_pool1d(y, 13) + F.avg_pool1d(x, 3, 3, padding=1, ceil_mode=True).mean(-1, keepdim=True)


@pytest.mark.parametrize(
    "model",
    [
        Residual(),
        DifferentJumps(),
        UpDown("nearest"),
        UpDown("linear", False),
        UpDown("linear", True),
        TinyUNet(),
        Odd(),
    ],
    ids=["residual", "different-jumps", "nearest", "linear", "linear-align", "unet-crop", "transposed-odd"],
)
def test_every_position_matches_gradients(model):
    assert_graph_matches_gradients(model, (1, 41), layer="", units="all")


@pytest.mark.parametrize(
    ("mode", "align"), [("bicubic", False), ("bicubic", True), ("bilinear", False), ("nearest", None)]
)
def test_2d_upsampling_matches_gradients(mode, align):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Upsample(size=(23, 17), mode=mode, align_corners=align))
    assert_graph_matches_gradients(model, (1, 19, 21), layer="")


def test_different_jumps_are_flagged_and_merged_exactly():
    rf = receptive_field(DifferentJumps(), (1, 40), layer="")
    assert not rf.exact
    assert any("jumps" in note for note in rf.notes)
    _, fields, _ = graph_fields(DifferentJumps(), (1, 40), layer="")
    # position i reads the crop's input i and the convolution's inputs 2i-1..2i+1: the union is [i, 2i+1] inside
    f = fields[0]
    assert [(f.lo[i], f.hi[i]) for i in (3, 10)] == [(3, 7), (10, 21)]


def test_residual_takes_the_largest_branch():
    rf = receptive_field(Residual(), (1, 64), layer="")
    assert rf.size == (9,) and rf.jump == (1,) and rf.exact  # dilated 3-tap branch spans 9, the 5-tap branch 5


def test_global_reduction_covers_the_input():
    model = torchvision.ops.SqueezeExcitation(4, 2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), model)
    rf = receptive_field(net, (3, 20, 20), layer="")
    assert rf.covers_input
    assert_graph_matches_gradients(net, (3, 20, 20), layer="")


# --------------------------------------------------------------------------------------------------------------------
# torchvision's classic networks: analytic against empirical


def test_alexnet_empirical_equals_graph_unclipped():
    model = meta(torchvision.models.alexnet)
    graph = receptive_field(model, (3, 323, 323), layer="features")
    empirical = receptive_field(model, (3, 323, 323), layer="features", method="empirical")
    assert empirical.method == "empirical" and not empirical.notes  # the centre's field lies inside the input
    assert (empirical.size, empirical.jump, empirical.start) == (graph.size, graph.jump, graph.start)


@pytest.mark.parametrize(
    ("name", "size"),
    [("vgg16", 128), ("resnet50", 256), ("mobilenet_v2", 256), ("alexnet", 160)],
)
def test_torchvision_classics_graph_equals_gradients(name, size):
    # sizes chosen so that the corner positions' fields end inside the input (an informative comparison)
    model = meta(getattr(torchvision.models, name))
    call, fields = assert_graph_matches_gradients(model, (3, size, size))
    corner = fields[0]
    assert 0 < corner.rhi[0] < size - 1


def test_kim_cnn_field_is_its_widest_filter():
    if "kim_cnn" not in list_models():
        pytest.skip("kim_cnn is not registered")
    with torch.device("meta"):
        model = create_model("kim_cnn")
    rf = receptive_field(model, (40,))
    widths = [m.kernel_size[0] for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert rf.size == (max(widths),) and rf.jump == (1,)


# --------------------------------------------------------------------------------------------------------------------
# Fallback and errors


class Flipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.conv(torch.flip(x, dims=[-1]))


def test_untraceable_graph_falls_back_to_empirical():
    rf = receptive_field(Flipped(), (1, 16, 16), layer="")
    assert rf.method == "empirical"
    assert any("aten.flip" in note for note in rf.notes)
    assert rf.size == (3, 3) and rf.jump == (1, -1)  # flipped along W: the field moves left as the output moves right
    with pytest.raises(ValueError, match=r"aten\.flip"):
        receptive_field(Flipped(), (1, 16, 16), layer="", method="graph")


def test_input_too_small_names_the_first_empty_layer_and_the_arithmetic():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 5), nn.Conv2d(2, 2, 7))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv2d\): input 4x4 is too small") as err:
        receptive_field(model, (1, 6, 6))
    assert "d(k-1)+1 = 1*(5-1)+1 = 5 is longer than the padded input L + 2p = 4 + 2*0 = 4" in str(err.value)


def test_pooling_too_small_names_the_layer():
    # AlexNet at 30x30: conv1 gives 6x6, pool1 2x2, conv2 2x2, and pool2 (features.5) would be empty
    with pytest.raises(ValueError, match=r"layer features\.5 \(MaxPool2d\): input 2x2 is too small.*pool_out"):
        receptive_field(meta(torchvision.models.alexnet), (3, 30, 30))


def test_wrong_channels_names_the_layer_and_both_numbers():
    model = meta(torchvision.models.resnet18)
    with pytest.raises(ValueError, match=r"layer conv1 \(Conv2d\): expects 3 input channels, got 1"):
        receptive_field(model, (1, 64, 64))


def test_unknown_layer_and_method():
    with pytest.raises(ValueError, match="not a module"):
        receptive_field(nn.Conv2d(1, 1, 3), (1, 8, 8), layer="nope")
    with pytest.raises(ValueError, match="method must be"):
        receptive_field(nn.Conv2d(1, 1, 3), (1, 8, 8), method="fast")


class DataDependent(nn.Module):
    """Python control flow on values: ``torch.fx.symbolic_trace`` cannot trace it, the meta device cannot run it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 5, stride=2)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > -1e30:  # always true, but only known from values
            y = y + self.a(x)
        return self.b(y)


def test_models_fx_cannot_trace_still_get_the_graph_method():
    model = DataDependent()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    rf = receptive_field(model, (1, 24, 24), layer="")
    assert rf.method == "graph" and rf.size == (7, 7) and rf.jump == (2, 2)
    assert_graph_matches_gradients(model, (1, 24, 24), layer="")


@pytest.mark.parametrize(("name", "side"), [("mobilenet_v1", 224), ("resnext50_32x4d", 256), ("mobilenet_v2", 256)])
def test_zoo_models_graph_equals_gradients_informative(name, side):
    # the registry sweep runs at 32x32, where deep fields cover the whole input; here the corner positions' fields
    # end inside the input, so the comparison checks sizes and offsets
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    with torch.device("meta"):
        model = create_model(name)
    _, fields = assert_graph_matches_gradients(model, (3, side, side))
    assert 0 < fields[0].rhi[0] < side - 1
