"""Optimiser, learning-rate schedule and mixed precision of a run, the same for every task."""

from __future__ import annotations

import math

import torch
from torch import nn

from convatlas.train.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), AdamW or Adadelta (rho 0.95, eps 1e-6: Kim 2014's settings) over the trainable
    parameters; biases and normalisation weights (1-d parameters) get no weight decay.

    Args:
        config: a resolved configuration (``opt``, ``lr``, ``momentum``, ``weight_decay``).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.opt == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.opt == "adadelta":
        return torch.optim.Adadelta(groups, lr=config.lr, rho=0.95, eps=1e-6)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float, cosine: bool = True) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up from 0.1 to 1 over ``warmup`` steps, then a cosine
    decay to ``min_ratio`` at ``total`` (or constant 1 when ``cosine`` is false)."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``config`` over ``config.epochs * steps_per_epoch`` steps (one call of ``step()`` per
    optimiser step)."""
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    min_ratio = (config.min_lr or 0.0) / config.lr
    cosine = config.schedule == "cosine"
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=total, warmup=warmup, min_ratio=min_ratio, cosine=cosine)
    )


def sync_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set each group's rate to the schedule's value at its current step (after loading a saved scheduler state
    into a schedule of another length, e.g. a resumed run with more epochs)."""
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``: ``"auto"`` is bf16 on CUDA and off on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
