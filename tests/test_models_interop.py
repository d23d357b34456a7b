"""Weight interop with torchvision and timm: ``load_weights`` maps a peer's state dict onto our model.

Reference: the peer model itself (torchvision.models / timm), built with random weights and randomised batch-norm
statistics; after conversion both must give the same outputs and input gradients in eval mode (float64, 1e-5).
Zoo B's families have their interop tests in their own files.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from convatlas.models import create_model, load_weights
from helpers import check_against, randomize


def _tv(name: str, **kwargs) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, **kwargs)


# (our name, our keywords, peer source, builder of the peer model)
CASES = [
    ("resnext50_32x4d", {}, "torchvision", lambda: _tv("resnext50_32x4d")),
    ("resnext50_32x4d", {}, "timm", lambda: timm.create_model("resnext50_32x4d")),
    ("densenet121", {}, "torchvision", lambda: _tv("densenet121")),
    ("densenet121", {}, "timm", lambda: timm.create_model("densenet121")),
    ("mobilenet_v1", {}, "timm", lambda: timm.create_model("mobilenetv1_100")),
    ("mobilenet_v2", {}, "torchvision", lambda: _tv("mobilenet_v2")),
    ("mobilenet_v2", {}, "timm", lambda: timm.create_model("mobilenetv2_100")),
    ("mobilenet_v2", {"width_mult": 0.5}, "timm", lambda: timm.create_model("mobilenetv2_050")),
    ("mobilenet_v2", {"width_mult": 1.4}, "timm", lambda: timm.create_model("mobilenetv2_140")),
    ("mobilenet_v3_large", {}, "torchvision", lambda: _tv("mobilenet_v3_large")),
    ("mobilenet_v3_small", {}, "torchvision", lambda: _tv("mobilenet_v3_small")),
    ("mobilenet_v3_small", {"width_mult": 0.75}, "torchvision", lambda: _tv("mobilenet_v3_small", width_mult=0.75)),
    # timm's v3 uses BN eps 1e-5 by default; ours (and torchvision's) the paper's 1e-3.
    ("mobilenet_v3_large", {}, "timm", lambda: timm.create_model("mobilenetv3_large_100", bn_eps=1e-3)),
    ("mobilenet_v3_small", {}, "timm", lambda: timm.create_model("mobilenetv3_small_100", bn_eps=1e-3)),
]


@pytest.mark.parametrize(("name", "kwargs", "source", "peer"), CASES, ids=[f"{c[0]}-{c[2]}-{c[1]}" for c in CASES])
def test_load_weights_gives_peer_outputs(name, kwargs, source, peer):
    torch.manual_seed(0)
    theirs = randomize(peer()).double()
    ours = create_model(name, **kwargs)
    load_weights(ours, theirs.state_dict(), source=source)
    ours = ours.double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    check_against(ours, theirs, [x], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
@pytest.mark.parametrize("name", ["resnext101_32x8d", "densenet169", "densenet201", "mobilenet_v3_large"])
def test_load_weights_maps_every_tensor_of_large_variants(name, source):
    # Reference: the peer's state dict; on the meta device load_weights still checks every name and shape.
    timm_name = {"mobilenet_v3_large": "mobilenetv3_large_100"}.get(name, name)
    with torch.device("meta"):
        theirs = _tv(name) if source == "torchvision" else timm.create_model(timm_name)
        ours = create_model(name)
    load_weights(ours, theirs.state_dict(), source=source)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_load_weights_rejects_a_mismatched_peer():
    # A torchvision mobilenet_v2 at width 1.0 does not fit our width 0.5: the error names a tensor and both shapes.
    ours = create_model("mobilenet_v2", width_mult=0.5)
    with pytest.raises(ValueError, match=r"shape .* in the torchvision weights"):
        load_weights(ours, _tv("mobilenet_v2").state_dict(), source="torchvision")


def test_load_weights_rejects_missing_tensors():
    ours = create_model("densenet121")
    state = _tv("densenet121").state_dict()
    del state["classifier.bias"]
    with pytest.raises(ValueError, match=r"1 missing tensors \['head.fc.bias'\]"):
        load_weights(ours, state, source="torchvision")


def test_mobilenet_v1_has_no_torchvision_counterpart():
    with pytest.raises(ValueError, match="MobileNetV1 has no torchvision counterpart; load timm's"):
        load_weights(create_model("mobilenet_v1"), _tv("mobilenet_v2").state_dict(), source="torchvision")
