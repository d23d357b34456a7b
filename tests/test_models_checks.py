"""Bad model arguments are one-line errors naming the model, the argument, the rule and the value
(``convatlas.models.checks``, used by every family).

A wrong value is a ``ValueError``, a wrong kind of object an ``InputTypeError`` (a ``TypeError`` the command line
reports as the user's mistake). Every error below is raised before any layer is allocated, so the huge values cost
nothing. Reference: the rules stated in ``convatlas.models.checks`` and each family's docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from convatlas.errors import InputTypeError, is_user_error
from convatlas.models import create_model, list_models
from convatlas.models.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_ints,
    check_module_class,
    check_num_classes,
)
from convatlas.models.efficientnet import EfficientNet
from convatlas.models.mobilenet import V3_SMALL, MobileNetV3

CLASSIFIERS = list_models(task="classification")


def _raises(exc: type[Exception], match: str, build):
    with pytest.raises(exc, match=match) as info:
        build()
    message = str(info.value)
    assert "\n" not in message, message
    assert is_user_error(info.value)
    return message


# --- the validator itself --------------------------------------------------------------------------------------------


def test_check_int_accepts_ints_of_any_kind_and_nothing_else():
    assert check_int("M", "n", np.int64(3)) == 3 and type(check_int("M", "n", np.int64(3))) is int
    _raises(InputTypeError, r"^M: n must be an int, got bool True$", lambda: check_int("M", "n", True))
    _raises(InputTypeError, r"^M: n must be an int, got float 3.0$", lambda: check_int("M", "n", 3.0))
    _raises(InputTypeError, r"^M: n must be an int, got str '3'$", lambda: check_int("M", "n", "3"))
    _raises(InputTypeError, r"^M: n must be an int, got NoneType None$", lambda: check_int("M", "n", None))
    _raises(ValueError, r"^M: n must satisfy 1 <= n <= 16384, got 0$", lambda: check_int("M", "n", 0))
    huge = _raises(
        ValueError, r"^M: n must satisfy 1 <= n <= 16384, got 1000.*000$", lambda: check_int("M", "n", 10**99)
    )
    assert "..." in huge and len(huge) < 120  # shortened, still one readable line
    noted = r"^M: n must satisfy 2 <= n <= 5 \(why\), got 6$"
    _raises(ValueError, noted, lambda: check_int("M", "n", 6, low=2, high=5, note=" (why)"))


def test_check_float_ranges_and_nan():
    assert check_float("M", "p", 1, low=0, high=1) == 1.0
    _raises(ValueError, r"^M: p must satisfy 0 <= p < 1, got 1$", lambda: check_float("M", "p", 1, low=0, high=1,
                                                                                         high_open=True))  # fmt: skip
    _raises(ValueError, r"^M: p must satisfy 0 < p <= 1, got 0$", lambda: check_float("M", "p", 0.0, low=0, high=1,
                                                                                         low_open=True))  # fmt: skip
    _raises(ValueError, r"got nan$", lambda: check_float("M", "p", math.nan, low=0, high=1))
    _raises(ValueError, r"got inf$", lambda: check_float("M", "p", math.inf, low=0, high=1))
    _raises(InputTypeError, r"^M: p must be a number, got bool False$", lambda: check_float("M", "p", False, low=0,
                                                                                              high=1))  # fmt: skip
    _raises(InputTypeError, r"^M: p must be a number, got str '0.5'$", lambda: check_float("M", "p", "0.5", low=0,
                                                                                             high=1))  # fmt: skip


def test_check_ints_names_the_bad_item_and_the_length():
    assert check_ints("M", "d", [1, np.int32(2)]) == (1, 2)
    _raises(ValueError, r"^M: d must hold 4 values, got 2: \(3, 4\)$", lambda: check_ints("M", "d", (3, 4), length=4))
    _raises(ValueError, r"^M: d must hold at least 1 values, got 0: \(\)$", lambda: check_ints("M", "d", ()))
    _raises(ValueError, r"^M: d\[1\] must satisfy 1 <= d\[1\] <= 16384, got -2$", lambda: check_ints("M", "d", (3, -2)))
    _raises(InputTypeError, r"^M: d\[0\] must be an int, got float 3.5$", lambda: check_ints("M", "d", (3.5,)))
    _raises(InputTypeError, r"^M: d must be a tuple of ints, got str '3,4'$", lambda: check_ints("M", "d", "3,4"))
    _raises(InputTypeError, r"^M: d must be a tuple of ints, got int 3$", lambda: check_ints("M", "d", 3))
    # A long value is shortened in the message: it stays one readable line.
    message = _raises(ValueError, r"must hold 4 values, got 1000", lambda: check_ints("M", "d", [1] * 1000, length=4))
    assert len(message) < 120


def test_check_bool_choice_module_class_and_num_classes():
    _raises(InputTypeError, r"^M: b must be True or False, got int 1$", lambda: check_bool("M", "b", 1))
    _raises(ValueError, r"^M: c must be one of \('x', 'y'\), got 'z'$", lambda: check_choice("M", "c", "z", ("x", "y")))
    _raises(InputTypeError, r"^M: act must be an nn.Module class such as nn.ReLU, got ReLU ReLU\(\)$",
            lambda: check_module_class("M", "act", nn.ReLU()))  # fmt: skip
    assert check_num_classes("M", 0) == 0
    _raises(ValueError, r"^M: num_classes must satisfy 0 <= num_classes <= 1000000 \(0: no classifier\), got -1$",
            lambda: check_num_classes("M", -1))  # fmt: skip
    _raises(ValueError, r"^M: num_classes must satisfy 1 <= num_classes <= 1000000, got 0$",
            lambda: check_num_classes("M", 0, allow_zero=False))  # fmt: skip


# --- every image classifier: the arguments they all take -------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"num_classes": -1}, ValueError, r"num_classes must satisfy 0 <= num_classes <= 1000000 \(0: no classifier\), "
                                          r"got -1"),
        ({"num_classes": 10**12}, ValueError, r"num_classes must satisfy .*, got 1000000000000"),
        ({"num_classes": True}, InputTypeError, r"num_classes must be an int, got bool True"),
        ({"num_classes": 10.0}, InputTypeError, r"num_classes must be an int, got float 10.0"),
        ({"in_channels": 0}, ValueError, r"in_channels must satisfy 1 <= in_channels <= 16384, got 0"),
        ({"in_channels": -3}, ValueError, r"in_channels must satisfy 1 <= in_channels <= 16384, got -3"),
        ({"in_channels": 10**6}, ValueError, r"in_channels must satisfy 1 <= in_channels <= 16384, got 1000000"),
        ({"in_channels": "3"}, InputTypeError, r"in_channels must be an int, got str '3'"),
    ],
)  # fmt: skip
def test_common_arguments_of_every_classifier(name, kwargs, exc, message):
    cls_name = _raises(exc, message, lambda: create_model(name, **kwargs)).split(":")[0]
    assert cls_name in {"ResNeXt", "ResNet9", "DenseNet", "MobileNetV1", "MobileNetV2", "MobileNetV3", "EfficientNet",
                        "ConvNeXt", "Xception"}  # fmt: skip


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if not n.startswith("efficientnet")])
def test_drop_rate_of_every_classifier(name):
    # (EfficientNet's builders set drop_rate per variant but take it as a keyword too: covered below.)
    rule = r": drop_rate must satisfy 0 <= drop_rate < 1, got 1$"
    _raises(ValueError, rule, lambda: create_model(name, drop_rate=1.0))


def test_num_classes_zero_means_no_classifier():
    # timm's convention: forward returns the pooled features.
    model = create_model("mobilenet_v2", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


# --- family by family ------------------------------------------------------------------------------------------------


FAMILY_CASES = [
    # ResNeXt
    ("ResNeXt", {"depths": (3, 4, 6)}, ValueError, r"^ResNeXt: depths must hold 4 values, got 3: \(3, 4, 6\)$"),
    ("ResNeXt", {"depths": (3, 0, 6, 3)}, ValueError, r"^ResNeXt: depths\[1\] must satisfy 1 <= depths\[1\] <= 1000, "
                                                      r"got 0$"),
    ("ResNeXt", {"depths": (3, 4, 6, 3.0)}, InputTypeError, r"^ResNeXt: depths\[3\] must be an int, got float 3.0$"),
    ("ResNeXt", {"groups": "32"}, InputTypeError, r"^ResNeXt: groups must be an int, got str '32'$"),
    ("ResNeXt", {"width_per_group": 0}, ValueError, r"^ResNeXt: width_per_group must satisfy 1 <= width_per_group"),
    ("ResNeXt", {"groups": 64, "width_per_group": 512}, ValueError,
     r"^ResNeXt: groups \* width_per_group must satisfy 1 <= groups \* width_per_group <= 2048, got 32768$"),
    # DenseNet
    ("DenseNet", {"growth_rate": 0}, ValueError, r"^DenseNet: growth_rate must satisfy 1 <= growth_rate <= 16384, "
                                                 r"got 0$"),
    ("DenseNet", {"growth_rate": 1.5}, InputTypeError, r"^DenseNet: growth_rate must be an int, got float 1.5$"),
    ("DenseNet", {"growth_rate": "32"}, InputTypeError, r"^DenseNet: growth_rate must be an int, got str '32'$"),
    ("DenseNet", {"block_config": ()}, ValueError, r"^DenseNet: block_config must hold at least 1 values, got 0"),
    ("DenseNet", {"block_config": (6, -12)}, ValueError, r"^DenseNet: block_config\[1\] must satisfy"),
    ("DenseNet", {"bn_size": 0}, ValueError, r"^DenseNet: bn_size must satisfy 1 <= bn_size"),
    ("DenseNet", {"compression": 0}, ValueError, r"^DenseNet: compression must satisfy 0 < compression <= 1, got 0$"),
    ("DenseNet", {"memory_efficient": 1}, InputTypeError, r"^DenseNet: memory_efficient must be True or False"),
    ("DenseNet", {"growth_rate": 4096, "bn_size": 1}, ValueError,
     r"^DenseNet: num_init_features=64, block_config=\(6, 12, 24, 16\), growth_rate=4096 and compression=0.5 give "
     r"dense block 0 64 to 24640 channels; each must lie in \[1, 16384\]$"),
    ("DenseNet", {"compression": 0.001}, ValueError, r"give dense block 1 0 to 384 channels"),
    # MobileNet
    ("MobileNetV1", {"width_mult": 0}, ValueError, r"^MobileNetV1: width_mult must satisfy 0 < width_mult <= 16, "
                                                   r"got 0$"),
    ("MobileNetV1", {"width_mult": "wide"}, InputTypeError, r"^MobileNetV1: width_mult must be a number, got str"),
    ("MobileNetV1", {"act": nn.ReLU()}, InputTypeError, r"^MobileNetV1: act must be an nn.Module class"),
    ("MobileNetV2", {"width_mult": -0.5}, ValueError, r"^MobileNetV2: width_mult must satisfy 0 < width_mult <= 16"),
    ("MobileNetV2", {"width_mult": math.nan}, ValueError, r"^MobileNetV2: width_mult must satisfy .*, got nan$"),
    ("MobileNetV2", {"width_mult": 1e6}, ValueError, r"^MobileNetV2: width_mult must satisfy .*, got 1e\+06$"),
    ("MobileNetV3", {"width_mult": None}, InputTypeError, r"^MobileNetV3: width_mult must be a number, got NoneType"),
    ("MobileNetV3", {"last_channels": 0}, ValueError, r"^MobileNetV3: last_channels must satisfy 1 <= last_channels"),
    # EfficientNet
    ("EfficientNet", {"width_mult": 0.0}, ValueError, r"^EfficientNet: width_mult must satisfy 0 < width_mult <= 16"),
    ("EfficientNet", {"depth_mult": "2"}, InputTypeError, r"^EfficientNet: depth_mult must be a number, got str"),
    ("EfficientNet", {"depth_mult": 1000}, ValueError, r"^EfficientNet: depth_mult must satisfy 0 < depth_mult <= 16, "
                                                       r"got 1000$"),
    ("EfficientNet", {"drop_rate": -0.1}, ValueError, r"^EfficientNet: drop_rate must satisfy 0 <= drop_rate < 1"),
    ("EfficientNet", {"drop_path_rate": 1.0}, ValueError, r"^EfficientNet: drop_path_rate must satisfy"),
    # ConvNeXt
    ("ConvNeXt", {"depths": (1, 1), "dims": (8, 16, 32)}, ValueError,
     r"^ConvNeXt: dims must hold 2 values \(one per entry of depths\), got 3: \(8, 16, 32\)$"),
    ("ConvNeXt", {"depths": (1, 0), "dims": (8, 16)}, ValueError, r"^ConvNeXt: depths\[1\] must satisfy"),
    ("ConvNeXt", {"dims": (96, 192, 384, 10**5)}, ValueError, r"^ConvNeXt: dims\[3\] must satisfy 1 <= dims\[3\] <= "
                                                              r"4096, got 100000$"),
    ("ConvNeXt", {"layer_scale": -1e-6}, ValueError, r"^ConvNeXt: layer_scale must satisfy 0 <= layer_scale <= 1000"),
    ("ConvNeXt", {"drop_path_rate": 1.5}, ValueError, r"^ConvNeXt: drop_path_rate must satisfy"),
    # Xception
    ("Xception", {"drop_rate": "0.5"}, InputTypeError, r"^Xception: drop_rate must be a number, got str '0.5'$"),
]  # fmt: skip


def _family(cls_name: str):
    from convatlas.models import convnext, densenet, mobilenet, resnext, xception

    classes = {
        "ResNeXt": resnext.ResNeXt,
        "DenseNet": densenet.DenseNet,
        "MobileNetV1": mobilenet.MobileNetV1,
        "MobileNetV2": mobilenet.MobileNetV2,
        "MobileNetV3": lambda **kw: MobileNetV3(config=V3_SMALL, last_channels=kw.pop("last_channels", 1024), **kw),
        "EfficientNet": EfficientNet,
        "ConvNeXt": convnext.ConvNeXt,
        "Xception": xception.Xception,
    }
    return classes[cls_name]


@pytest.mark.parametrize(("cls_name", "kwargs", "exc", "message"), FAMILY_CASES)
def test_family_arguments(cls_name, kwargs, exc, message):
    _raises(exc, message, lambda: _family(cls_name)(**kwargs))


SEGMENTATION_AND_TEXT_CASES = [
    ("unet", {"num_classes": 0}, ValueError, r"^UNet: num_classes must satisfy 1 <= num_classes <= 1000000, got 0$"),
    ("unet", {"in_channels": 0}, ValueError, r"^UNet: in_channels must satisfy 1 <= in_channels <= 16384, got 0$"),
    ("unet", {"widths": (64, 0, 256)}, ValueError, r"^UNet: widths\[1\] must satisfy 1 <= widths\[1\] <= 16384, "
                                                   r"got 0$"),
    ("unet", {"widths": 64}, InputTypeError, r"^UNet: widths must be a tuple of ints, got int 64$"),
    ("unet", {"batch_norm": "yes"}, InputTypeError, r"^UNet: batch_norm must be True or False, got str 'yes'$"),
    ("unet", {"encoder": 3}, InputTypeError, r"^UNet: encoder must be the name of a registered model or None, got 3$"),
    ("unet", {"encoder": "mobilenet_v2", "in_channels": True}, InputTypeError, r"^UNet: in_channels must be an int"),
    ("kim_cnn", {"num_classes": 0}, ValueError, r"^KimCNN: num_classes must satisfy 1 <= num_classes"),
    ("kim_cnn", {"windows": (3, 0)}, ValueError, r"^KimCNN: windows\[1\] must satisfy 1 <= windows\[1\] <= 16384"),
    ("kim_cnn", {"windows": 3}, InputTypeError, r"^KimCNN: windows must be a tuple of ints, got int 3$"),
    ("kim_cnn", {"maps": 0}, ValueError, r"^KimCNN: maps must satisfy 1 <= maps <= 16384, got 0$"),
    ("kim_cnn", {"dropout": 1.0}, ValueError, r"^KimCNN: dropout must satisfy 0 <= dropout < 1, got 1$"),
    ("kim_cnn", {"max_norm": 0}, ValueError, r"^KimCNN: max_norm must satisfy 0 < max_norm <= inf, got 0$"),
    ("kim_cnn", {"vocab_size": 0}, ValueError, r"^KimCNN: vocab_size must satisfy 1 <= vocab_size <= 10000000, got 0$"),
    ("kim_cnn", {"vocab_size": 10**9}, ValueError, r"^KimCNN: vocab_size must satisfy .*, got 1000000000$"),
    ("kim_cnn", {"embed_dim": 2.5}, InputTypeError, r"^KimCNN: embed_dim must be an int, got float 2.5$"),
    ("kim_cnn", {"mode": "dynamic"}, ValueError, r"^KimCNN: mode must be one of \('rand', 'static', 'non-static', "
                                                 r"'multichannel'\), got 'dynamic'$"),
    ("lightconv_classifier", {"num_classes": -2}, ValueError, r"^SequenceClassifier: num_classes must satisfy 1 <="),
    ("lightconv_classifier", {"heads": 3}, ValueError, r"^SequenceClassifier: dim must be a multiple of heads, got "
                                                       r"dim=64 and heads=3$"),
    ("lightconv_classifier", {"heads": 128}, ValueError, r"^SequenceClassifier: heads must satisfy 1 <= heads <= 64"),
    ("dynamicconv_classifier", {"depth": 0}, ValueError, r"^SequenceClassifier: depth must satisfy 1 <= depth <= 1000"),
    ("dynamicconv_classifier", {"kernel_size": 0}, ValueError, r"^SequenceClassifier: kernel_size must satisfy"),
    ("attention_classifier", {"dim": True}, InputTypeError, r"^SequenceClassifier: dim must be an int, got bool True$"),
    ("attention_classifier", {"vocab_size": 10**8}, ValueError, r"^SequenceClassifier: vocab_size must satisfy"),
    ("attention_classifier", {"ffn_dim": 0}, ValueError, r"^SequenceClassifier: ffn_dim must satisfy 1 <= ffn_dim"),
    ("attention_classifier", {"weight_dropout": 2}, ValueError, r"^SequenceClassifier: weight_dropout must satisfy"),
    ("attention_classifier", {"padding_idx": 20000}, ValueError,
     r"^SequenceClassifier: padding_idx must satisfy 0 <= padding_idx <= 19999 \(vocab_size=20000\), got 20000$"),
    ("attention_classifier", {"freeze_embedding": "no"}, InputTypeError, r"^SequenceClassifier: freeze_embedding must "
                                                                         r"be True or False"),
    ("attention_classifier", {"embedding": [[0.0]]}, InputTypeError, r"^SequenceClassifier: embedding must be a "
                                                                      r"Tensor\[vocab_size, embed_dim\] or None, "
                                                                      r"got list$"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "exc", "message"), SEGMENTATION_AND_TEXT_CASES)
def test_segmentation_and_text_arguments(name, kwargs, exc, message):
    _raises(exc, message, lambda: create_model(name, **kwargs))


def test_detection_backbone_arguments_are_checked_by_the_backbone():
    rule = r"^MobileNetV3: in_channels must satisfy 1 <= in_channels <= 16384, got 0$"
    kwargs = {"backbone": "mobilenet_v3_small", "backbone_kwargs": {"in_channels": 0}}
    _raises(ValueError, rule, lambda: create_model("faster_rcnn", **kwargs))
