"""Blocks, branches and stages read off a traced pass.

References: the models' own structure (torchvision's ResNet-18 ``BasicBlock`` adds its input before the last ReLU;
Xception's entry blocks add a strided 1x1 shortcut to a separable-convolution branch; U-Net's decoder concatenates the
encoder's map of the same level), the zoo's declared ``feature_info`` (every declared stride is a stage), and
:func:`convatlas.analysis.summary` (the stages' parameters and MACs add up to its totals).
"""

from __future__ import annotations

import pytest
import torchvision

from convatlas.analysis import summary
from convatlas.atlas.network import INPUT, network
from convatlas.models import create_model, model_info


def test_resnet_block_adds_its_input_before_the_last_relu():
    net = network(torchvision.models.resnet18(), (3, 64, 64))
    block = next(b for b in net.spine if b.layer.path == "layer1.0")
    names = [layer.path for layer in block.layers]
    assert names == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu",
    ]
    last = block.layers[-1]
    assert last.sources == [INPUT, block.layers[4].call] and last.merge == "add"
    assert block.layers[0].sources == [INPUT]
    assert all(x.sources == [block.layers[i].call] for i, x in enumerate(block.layers[1:5]))
    assert [s.name for s in net.stages] == ["stride 2", "stride 4", "stride 8", "stride 16", "stride 32", "head"]


def test_xception_entry_block_has_a_shortcut_lane():
    net = network(create_model("xception"), (3, 96, 96))
    block = next(b for b in net.spine if b.layer.path == "blocks.0")
    lanes = {layer.lane for layer in block.layers}
    assert lanes == {0, 1}
    shortcut = [layer for layer in block.layers if layer.lane == 1]
    assert shortcut[0].sources == [INPUT] and "Conv2d 1x1 s2" in shortcut[0].text
    assert block.out_merge == "add" and len(block.out_sources) == 2
    assert set(block.out_sources) == {shortcut[-1].call, next(x.call for x in block.layers if x.type == "MaxPool2d")}


def test_unet_decoder_reads_the_encoder_level():
    net = network(create_model("unet", num_classes=2), (1, 188, 188))
    names = [b.layer.path for b in net.spine]
    for level in range(4):
        dec = net.spine[names.index(f"dec.{level}")]
        assert names.index(f"down.{3 - level}") in dec.spine_sources  # the skip connection
        assert names.index(f"up.{level}") in dec.spine_sources


@pytest.mark.parametrize(
    "name", ["convnext_tiny", "mobilenet_v2", "resnext50_32x4d", "densenet121", "xception", "efficientnet_b0", "unet"]
)
def test_stages_follow_feature_info_and_add_up(name):
    model = create_model(name)
    size = tuple(model_info(name).input_size)
    net = network(model, size)
    table = summary(model, size)
    assert sum(stage.params for stage in net.stages) == table.total_params
    assert sum(stage.macs for stage in net.stages) + net.outside_macs == table.total_macs
    strides = {stage.jump for stage in net.stages if stage.jump is not None}
    for info in model.feature_info:
        assert (info["reduction"],) * 2 in strides, (info, strides)
    assert sum(b.repeat for stage in net.stages for b in stage.blocks) == len(net.spine)
