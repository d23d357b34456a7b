"""The one reference-comparison helper of the suite (in the spirit of tinygrad's ``helper_test_op``).

``check_against(ours, reference, inputs)`` runs the same inputs through both functions, compares the outputs and,
for every input that requires grad, the gradients of a random projection of the output. ``randomize(model)`` gives a
model random biases and batch-norm statistics, so that a wrongly mapped or skipped tensor shows in a comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def _clone_inputs(inputs: Sequence) -> list:
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            y = x.detach().clone()
            y.requires_grad_(x.requires_grad)
            out.append(y)
        else:
            out.append(x)
    return out


def check_against(
    ours: Callable,
    reference: Callable,
    inputs: Sequence,
    *,
    atol: float = 1e-10,
    rtol: float = 1e-7,
    grad: bool = True,
    seed: int = 0,
) -> None:
    """Assert ``ours(*inputs) == reference(*inputs)`` and that their input gradients agree.

    Args:
        ours: the function under test.
        reference: the trusted implementation (PyTorch, torchvision, timm or a slow float64 loop).
        inputs: positional arguments; tensors with ``requires_grad=True`` get their gradients compared.
        atol, rtol: tolerances for outputs and gradients.
        grad: also compare gradients.
        seed: seed of the random output projection used for the backward pass.
    """
    a_in, b_in = _clone_inputs(inputs), _clone_inputs(inputs)
    a, b = ours(*a_in), reference(*b_in)
    a_out = a if isinstance(a, tuple | list) else (a,)
    b_out = b if isinstance(b, tuple | list) else (b,)
    assert len(a_out) == len(b_out), f"{len(a_out)} outputs, reference has {len(b_out)}"
    for i, (x, y) in enumerate(zip(a_out, b_out, strict=True)):
        assert x.shape == y.shape, f"output {i}: shape {tuple(x.shape)}, reference {tuple(y.shape)}"
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=lambda m, i=i: f"output {i}: {m}")
    if not grad:
        return
    leaves = [
        (i, x, y) for i, (x, y) in enumerate(zip(a_in, b_in, strict=True)) if isinstance(x, Tensor) and x.requires_grad
    ]
    if not leaves:
        return
    gen = torch.Generator().manual_seed(seed)
    loss_a = loss_b = 0
    for x, y in zip(a_out, b_out, strict=True):
        if not x.is_floating_point():
            continue
        w = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        loss_a = loss_a + (x * w).sum()
        loss_b = loss_b + (y * w.to(y.dtype)).sum()
    ga = torch.autograd.grad(loss_a, [x for _, x, _ in leaves], allow_unused=True)
    gb = torch.autograd.grad(loss_b, [y for _, _, y in leaves], allow_unused=True)
    for (i, _, _), g1, g2 in zip(leaves, ga, gb, strict=True):
        assert (g1 is None) == (g2 is None), f"input {i}: gradient present in only one of the two"
        if g1 is not None:
            torch.testing.assert_close(g1, g2, atol=atol, rtol=rtol, msg=lambda m, i=i: f"grad of input {i}: {m}")


def randomize(model: nn.Module) -> nn.Module:
    """Random parameters and batch-norm statistics, so that a wrongly mapped tensor cannot go unnoticed.

    Seeded (the same model gets the same values every run); returns the model in eval mode.
    """
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            elif isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model.eval()
