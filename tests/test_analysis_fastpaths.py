"""The tracer's shortcuts give what the general code gives.

References: ``torch.empty_like`` on the meta device (shape and strides), the general branch of
``fields.merge`` (operands forced through broadcasting), ``fields.view_state`` on a reshape that moves the dimension
(its general branch), and ``nn.Module.parameters()`` for the parameter counts.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from convatlas.analysis import fields
from convatlas.analysis.graph import _meta_like
from convatlas.analysis.trace import param_counts


def random_span(rng: np.random.Generator, dim: int | None, n: int, jump=Fraction(2)) -> fields.Span:
    lo = rng.integers(-5, 20, n if dim is not None else ())
    hi = lo + rng.integers(0, 9, lo.shape)
    return fields.intervals(lo, hi, jump if dim is not None else None, dim, lo + 1, hi - 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.empty(2, 3, 5, 7, device="meta"),
        lambda: torch.empty(2, 3, 5, 7, device="meta").to(memory_format=torch.channels_last),
        lambda: torch.empty(2, 5, 7, 3, device="meta").permute(0, 3, 1, 2),
        lambda: torch.empty(1, 3, 1, 7, device="meta"),
        lambda: torch.empty(3, 1, 7, device="meta").expand(3, 4, 7),
        lambda: torch.empty(4, 6, device="meta")[:, ::2],
    ],
)
def test_meta_like_matches_empty_like(make):
    x = make()
    ours, reference = _meta_like(x), torch.empty_like(x)
    assert ours.shape == reference.shape and ours.stride() == reference.stride() and ours.dtype == reference.dtype


class Notes:
    def add(self, message):
        raise AssertionError(message)


def test_merge_of_aligned_operands_equals_the_broadcast_union():
    rng = np.random.default_rng(0)
    shape = (1, 4, 6, 5)
    states = [{0: random_span(rng, 2, 6), 1: random_span(rng, 3, 5)} for _ in range(3)]
    fast = fields.merge([(s, shape) for s in states], shape, "test", Notes())
    # the general branch: the same operands broadcast along the batch dimension to (2, 4, 6, 5)
    general = fields.merge([(s, shape) for s in states], (2, *shape[1:]), "test", Notes())
    for k in fast:
        for name in ("lo", "hi", "rlo", "rhi"):
            np.testing.assert_array_equal(getattr(fast[k], name), getattr(general[k], name))
        assert fast[k].dim == general[k].dim and fast[k].jump == general[k].jump


def test_merge_of_one_operand_of_the_output_shape_keeps_its_state():
    rng = np.random.default_rng(1)
    state = {0: random_span(rng, 2, 6), 1: random_span(rng, None, 1)}
    assert fields.merge([(state, (1, 3, 6))], (1, 3, 6), "test", Notes()) is state


def test_view_that_keeps_the_dimension_moves_the_span_like_the_general_branch():
    rng = np.random.default_rng(2)
    span = random_span(rng, 2, 6)
    # (1, 3, 6, 5) -> (3, 6, 5) keeps dimension 2 whole (the shortcut); -> (1, 3, 30) merges it (the general code)
    moved = fields.view_state({0: span}, (1, 3, 6, 5), (3, 6, 5), "test", Notes())[0]
    assert moved.dim == 1 and moved.jump == span.jump
    np.testing.assert_array_equal(moved.lo, span.lo)
    merged = fields.view_state({0: span}, (1, 3, 6, 5), (1, 3, 30), "test", Notes())[0]  # general: 6x5 -> 30
    assert merged.dim == 2 and merged.jump == span.jump / 5
    np.testing.assert_array_equal(merged.lo, np.repeat(span.lo, 5))


def test_param_counts_match_parameters_with_shared_and_frozen_tensors():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(shared, nn.ReLU(), shared), nn.Linear(3, 2))
    model[2].weight.requires_grad_(False)
    counts = param_counts(model)
    for module in model.modules():
        unique = {id(p): p for p in module.parameters()}.values()
        total = sum(p.numel() for p in unique)
        trainable = sum(p.numel() for p in unique if p.requires_grad)
        assert counts[id(module)] == (total, trainable)
