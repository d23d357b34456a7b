"""PNG plots of a run: loss and accuracy (or mean IoU) curves, the confusion matrix, a sample of predicted masks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def plot_curves(records: list[dict], path: str | os.PathLike, *, metric: str = "acc",
                splits: Sequence[str] = ("test",)) -> Path:  # fmt: skip
    """Loss (per logged step and per epoch) and an epoch metric (``"acc"``, ``"miou"``, ``"voc_map50"``) for the
    training set (where it is measured) and each evaluated split.

    Args:
        records: the ``metrics.jsonl`` records (``kind`` ``"step"`` or ``"epoch"``).
        metric: the metric's name without its split prefix.
        splits: the evaluated splits (``"test"``, or ``"dev"`` and ``"test"``).
    """
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        ax1.plot([r["global_step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="train (step)")
    x = [r["global_step"] for r in epochs]
    labels = [r["epoch"] for r in epochs]
    for prefix, marker in [("train", "o-"), *((s, "s-") for s in splits)]:
        losses = [_number(r.get(f"{prefix}_loss")) for r in epochs]
        if epochs and not all(math.isnan(v) for v in losses):
            ax1.plot(x, losses, marker, label=prefix if prefix != "train" else "train (epoch)")
        values = [_number(r.get(f"{prefix}_{metric}")) for r in epochs]
        if epochs and not all(math.isnan(v) for v in values):
            ax2.plot(labels, values, marker, label=prefix)
    ax1.set(xlabel="step", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel=metric, title=metric)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def plot_confusion(cm: Tensor, classes: Sequence[str], path: str | os.PathLike, *, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: prediction) normalised per row, with the counts written in."""
    cm = cm.cpu()
    k = cm.shape[0]
    norm = cm.double() / cm.sum(1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.5 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), [str(c) for c in classes], fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def plot_masks(images: Tensor, targets: Tensor, preds: Tensor, path: str | os.PathLike, *, num_classes: int) -> Path:
    """Rows of (image, true mask, predicted mask) for a few samples.

    Args:
        images (Tensor[B, C, H, W]): inputs in [0, 1].
        targets (Tensor[B, H, W]): true class per pixel.
        preds (Tensor[B, H, W]): predicted class per pixel.
    """
    b = images.shape[0]
    fig, axes = plt.subplots(b, 3, figsize=(7.5, 2.5 * b), squeeze=False)
    for i in range(b):
        image = images[i].detach().cpu().float()
        image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
        panels = (image, targets[i].cpu(), preds[i].cpu())
        for ax, panel, name in zip(axes[i], panels, ("image", "true mask", "predicted"), strict=True):
            if name == "image":
                ax.imshow(panel.clamp(0, 1).numpy(), cmap="gray")
            else:
                ax.imshow(panel.numpy(), cmap="tab20", vmin=0, vmax=max(num_classes - 1, 1), interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def overlay_png(image: Tensor, mask: Tensor, path: str | os.PathLike, *, alpha: float = 0.45) -> Path:
    """Save the image with each non-background class of ``mask`` blended over it in its own colour (tab10).

    Args:
        image (Tensor[C, H, W]): in [0, 1], 1 or 3 channels.
        mask (Tensor[H, W]): class per pixel; 0 (the background) is left uncoloured.
    """
    from PIL import Image

    rgb = image.detach().cpu().float().clamp(0, 1)
    rgb = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb[:3]
    colours = torch.tensor(plt.get_cmap("tab10").colors, dtype=torch.float32)  # (10, 3)
    mask = mask.cpu().long()
    tint = colours[(mask - 1).clamp(min=0) % len(colours)].permute(2, 0, 1)  # (3, H, W)
    blended = torch.where(mask[None] > 0, (1 - alpha) * rgb + alpha * tint, rgb)
    Image.fromarray((blended.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).save(path, format="PNG")
    return Path(path)


def mask_to_png(mask: Tensor, path: str | os.PathLike) -> Path:
    """Save a class mask ``Tensor[H, W]`` as an 8-bit PNG whose pixel values are the class indices."""
    from PIL import Image

    Image.fromarray(mask.to(torch.uint8).cpu().numpy()).save(path)
    return Path(path)
