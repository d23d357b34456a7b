"""One sweep over every registered model (whatever the zoo holds at test time): MACs against
``torch.utils.flop_counter`` (FLOPs / 2), and the receptive field of the graph against the input-gradient support.

Detection models are left out: they take lists of images and return boxes; their backbones are classifiers of this
sweep. Text models take token ids, which carry no gradient: the graph must follow them to their output, and their
MACs are checked. Models are built on the ``meta`` device (no weights are initialised); the gradient check runs on the
CPU with positive constant weights, at a small input.
"""

from __future__ import annotations

import pytest
import torch

from convatlas.analysis import summary
from convatlas.models import create_model, list_models, model_info
from test_analysis_macs import flop_counter_macs
from test_analysis_rf import assert_graph_matches_gradients, graph_fields

SIDE = {"unet": 188}  # the smallest input of the valid-convolution U-Net (output 4x4); 32 for the rest


def _summary_at_small_input(model, info, side: int):
    """Summary at ``(C, side, side)``, or at the model's default input when the network needs more."""
    size = (info.input_size[0], side, side)
    try:
        return size, summary(model, size)
    except ValueError as err:
        assert "too small" in str(err), err
        return tuple(info.input_size), summary(model, tuple(info.input_size))


def _cases():
    return [n for n in list_models() if model_info(n).task != "detection"]


@pytest.mark.slow
@pytest.mark.parametrize("name", _cases())
def test_registered_model(name):
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name)
    if info.task == "text":
        size = tuple(info.input_size)
        x = torch.zeros((1, *size), dtype=torch.long, device="meta")
        result = summary(model, size)
    else:
        size, result = _summary_at_small_input(model, info, SIDE.get(name, 32))
        x = torch.zeros((1, *size), device="meta")
    assert result.device == "meta"
    assert result.total_macs == flop_counter_macs(model, x) > 0
    if info.task == "text":
        call, fields, trace = graph_fields(model, size)
        assert not trace.tracer.notes.unsupported, trace.tracer.notes.unsupported
        assert fields is not None
        return
    call, fields = assert_graph_matches_gradients(model, size, units="centre-and-first")
    assert all(f.dim is not None for f in fields)
