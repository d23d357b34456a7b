"""Feature extraction written once (``convatlas.models.base``): ``forward_stages`` and ``forward_features`` come from
each model's declared ``trunk`` and ``feature_info``, never from a per-family copy.

References: hand-written forward passes of small models (the stage outputs computed module by module), and the
encoder's own ``forward_stages`` for U-Net.
"""

from __future__ import annotations

import typing

import pytest
import torch
from torch import Tensor, nn

from convatlas.models import create_model, list_models, model_info
from convatlas.models.base import FeatureStages, ImageModel, stage_plan
from convatlas.nn.layers import ClassifierHead


class Counting(nn.Module):
    """Adds ``step`` and counts its calls."""

    def __init__(self, step: float):
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x + self.step


class Tiny(ImageModel):
    """stem -> body (three steps) -> tail; the stages are the stem and body.1 / body.2."""

    def __init__(self, feature_info: list[dict] | None = None, body: nn.Module | None = None):
        super().__init__(num_classes=2, in_channels=1)
        self.stem = Counting(1.0)
        self.body = body if body is not None else nn.Sequential(Counting(10.0), Counting(100.0), Counting(1000.0))
        self.tail = Counting(10000.0)
        self.trunk = ("stem", "body", "tail")
        self.feature_info = feature_info or [
            {"num_chs": 1, "reduction": 1, "module": "stem"},
            {"num_chs": 1, "reduction": 1, "module": "body.1"},
            {"num_chs": 1, "reduction": 1, "module": "body.2"},
        ]
        self.head = ClassifierHead(1, 2)


def test_stages_follow_the_declared_trunk_and_stop_after_the_last_stage():
    model = Tiny()
    x = torch.zeros(1, 1, 2, 2)
    stages = model.forward_stages(x)
    # By hand: stem adds 1, body.0 adds 10, body.1 adds 100, body.2 adds 1000; the tail is not needed.
    assert [s.flatten()[0].item() for s in stages] == [1.0, 111.0, 1111.0]
    assert model.tail.calls == 0
    assert model.forward_features(x).flatten()[0].item() == 11111.0  # the whole trunk
    assert model.tail.calls == 1
    assert model(x).shape == (1, 2)


def test_the_same_module_may_run_twice_on_the_trunk():
    # U-Net's levels share one max pool: trunk ("down.0", "pool", "down.1", "pool", "down.2").
    unet = create_model("unet", widths=(4, 8, 16), padding="same")
    assert unet.trunk == ("down.0", "pool", "down.1", "pool", "down.2")
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        by_hand = [unet.down[0](x)]
        by_hand.append(unet.down[1](unet.pool(by_hand[0])))
        by_hand.append(unet.down[2](unet.pool(by_hand[1])))
        for got, ref in zip(unet.forward_stages(x), by_hand, strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
        torch.testing.assert_close(unet.forward_features(x), by_hand[-1], rtol=0, atol=0)


def test_unet_with_an_encoder_walks_the_encoder_trunk():
    unet = create_model("unet", encoder="mobilenet_v3_small", in_channels=3, num_classes=2).eval()
    assert unet.trunk == ("encoder.features",)
    assert [f["module"] for f in unet.feature_info] == [f"encoder.{f['module']}" for f in unet.encoder.feature_info]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, ref in zip(unet.forward_stages(x), unet.encoder.forward_stages(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (["stem", "body.1", "missing"], r"Tiny: feature_info modules .* found \['stem', 'body.1'\] \(not on the trunk: "
         r"\['missing'\]\)"),
        (["body.2", "body.1"], r"must each run once on the trunk \('stem', 'body', 'tail'\), in that order"),
        (["stem", "stem"], r"must each run once on the trunk"),
    ],
)  # fmt: skip
def test_a_wrong_feature_info_is_a_clear_error(modules, message):
    model = Tiny([{"num_chs": 1, "reduction": 1, "module": m} for m in modules])
    with pytest.raises(ValueError, match=message):
        model.forward_stages(torch.zeros(1, 1, 2, 2))


def test_stages_inside_a_container_that_is_not_sequential_are_refused():
    body = nn.ModuleList([Counting(10.0), Counting(100.0)])  # no forward of its own: the order is not known
    model = Tiny([{"num_chs": 1, "reduction": 1, "module": "body.1"}], body=body)
    with pytest.raises(ValueError, match=r"Tiny: feature_info module 'body.1' lies inside 'body', a ModuleList"):
        stage_plan(model)


def _model_classes() -> dict[str, type]:
    """The class each registered image or segmentation builder returns (its return annotation); nothing is built."""
    names = [n for n in list_models() if model_info(n).task in ("classification", "segmentation")]
    return {n: typing.get_type_hints(model_info(n).builder)["return"] for n in names}


@pytest.mark.parametrize(("name", "cls"), sorted(_model_classes().items()))
def test_no_family_writes_its_own_feature_extraction(name, cls):
    # Regression: forward_stages was written out by hand in eight model files.
    assert issubclass(cls, FeatureStages), f"{name}: {cls.__name__} does not use the shared feature extraction"
    for klass in cls.__mro__:
        if klass in (FeatureStages, nn.Module, object):
            continue
        own = {"forward_stages", "forward_features"} & set(vars(klass))
        assert not own, f"{name}: {klass.__name__} defines {sorted(own)} itself; declare trunk and feature_info"
