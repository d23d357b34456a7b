"""Image classification and semantic segmentation as tasks of the engine.

Inputs are moved to the device, resized to ``image_size`` when set and normalised per channel there
(:func:`prepare_inputs`); the loss is the cross-entropy over classes or pixels (mask value 255 ignored). In-memory sets
(Fashion-MNIST, MNIST) are indexed a whole batch at a time; sets decoded per item (folders) go through a DataLoader.
Augmentation (``augment``) is :func:`convatlas.data.transforms.flip_and_shift`, drawn per micro-batch from a seed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from convatlas.data import build_dataset, collate, is_text_spec
from convatlas.data.transforms import IGNORE_INDEX, augment_batch, flip_and_shift
from convatlas.files import atomic_write
from convatlas.train.checkpoint import InputSpec, ModelSpec, json_kwargs
from convatlas.train.config import ConfigError
from convatlas.train.metrics import accuracy, confusion_matrix, mean_iou
from convatlas.train.plots import plot_confusion, plot_masks
from convatlas.train.task import Task, model_keywords


def prepare_inputs(
    x: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | None,
    device: torch.device | str,
    channels_last: bool = False,
) -> Tensor:
    """Move a batch to the device, resize it to ``image_size`` (bilinear, antialiased) and normalise it per channel.

    Args:
        x (Tensor[N, C, H, W]): images in [0, 1].

    Returns:
        Tensor[N, C, image_size, image_size] (or the input size), float32.
    """
    x = x.to(device, non_blocking=True).float()
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def resize_masks(y: Tensor, image_size: int | None) -> Tensor:
    """Masks ``Tensor[N, H, W]`` resized (nearest) to ``image_size``, or unchanged."""
    if image_size is None or tuple(y.shape[-2:]) == (image_size, image_size):
        return y
    return F.interpolate(y[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()


def loss_fn(logits: Tensor, target: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy in float32 over classes (``Tensor[N, K]``) or pixels (``Tensor[N, K, H, W]``, 255 ignored)."""
    return F.cross_entropy(
        _fit_logits(logits, target), target, label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX
    )


def _fit_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Float32 logits, upsampled (bilinear) to the masks' size when a segmentation model predicts at a lower one."""
    logits = logits.float()
    if logits.ndim == 4 and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


class ClassificationTask(Task):
    """Image classification: ``fashion-mnist``, ``mnist5k``, ``imagefolder:DIR``; accuracy and a confusion matrix."""

    kind = "classification"
    select = "test_acc"
    outputs = ("confusion.png",)

    def __init__(self, config) -> None:
        super().__init__(config)
        self._cm: Tensor | None = None

    @functools.cached_property
    def train_set(self) -> Dataset:
        return self._split("train", self.config.limit_train)

    @functools.cached_property
    def test_set(self) -> Dataset:
        return self._split("test", self.config.limit_test)

    def _split(self, split: str, limit: int | None) -> Dataset:
        c = self.config
        if is_text_spec(c.data):
            raise ConfigError("data", f"{c.data}: a text set, but {c.model} is a {self.kind} model")
        dataset = build_dataset(c.data, split=split, limit=limit, data_dir=c.data_dir)
        if dataset.task != self.kind:
            raise ConfigError("data", f"{c.data} is a {dataset.task} set, but {c.model} is a {self.kind} model")
        if split == "train" and c.num_workers and hasattr(dataset, "get_batch"):
            raise ConfigError("num_workers", f"does not apply to `data` {c.data}: it is held in memory and read a "
                              "whole batch at a time, without a DataLoader")  # fmt: skip
        if split == "train" and dataset.num_classes < 2:
            names = ", ".join(map(str, dataset.classes))
            raise ConfigError("data", f"{c.data} has {dataset.num_classes} class ({names}); a {self.kind} run needs "
                              "at least 2")  # fmt: skip
        return dataset

    def dataset(self, split: str) -> Dataset:
        if split not in ("train", "test"):
            raise ConfigError("split", f"must be train or test for a {self.kind} run, got {split!r}")
        return self.train_set if split == "train" else self.test_set

    @property
    def train_size(self) -> int:
        return len(self.train_set)

    def eval_size(self, split: str) -> int:
        return len(self.dataset(split))

    def classes(self) -> list[str]:
        return [str(c) for c in self.train_set.classes]

    def model_spec(self) -> ModelSpec:
        fixed = {"num_classes": self.train_set.num_classes, "in_channels": self.train_set.in_channels}
        return ModelSpec(self.config.model, json_kwargs(model_keywords(self.config.model, self.config.model_args,
                                                                       fixed)))  # fmt: skip

    def build_model(self) -> nn.Module:
        """The model, after one pass on the meta device has checked that the data's inputs fit it: an image too small
        for a layer is refused here, naming the layer, instead of failing in the first step."""
        from convatlas.analysis.trace import run_trace

        model = super().build_model()
        c, spec = self.config, self._input_spec
        size = (spec.in_channels, *((spec.image_size, spec.image_size) if spec.image_size else spec.data_size))
        try:
            trace = run_trace(model, size, fields=False)
        except ValueError as err:
            shown = "x".join(map(str, size))
            raise ConfigError("data", f"{c.data}: its inputs ({shown}) do not fit {c.model} (resize them with "
                              f"`image_size`): {err}") from None  # fmt: skip
        if c.batch_size // c.accum_steps == 1:  # one image per micro-batch (on one process)
            for call in trace.calls:
                norm = isinstance(call.module, nn.modules.batchnorm._BatchNorm)
                if norm and call.outputs and call.outputs[0][0, 0].numel() == 1:
                    raise ConfigError("batch_size", f"{c.batch_size} with `accum_steps` {c.accum_steps} trains on one "
                                      f"image at a time, and layer {call.path} ({type(call.module).__name__}) sees one "
                                      "value per channel: batch norm needs more than one in training")  # fmt: skip
        return model

    def input_spec(self) -> InputSpec:
        return self._input_spec

    @functools.cached_property
    def _input_spec(self) -> InputSpec:
        ds = self.train_set
        return InputSpec(ds.in_channels, [float(v) for v in ds.mean], [float(v) for v in ds.std],
                         self.config.image_size, list(ds[0][0].shape[-2:]))  # fmt: skip

    def _fetch(self, dataset: Dataset, indices: Sequence[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        if hasattr(dataset, "get_batch"):
            for idx in indices:
                yield dataset.get_batch(idx)
            return
        sampler = [b.tolist() for b in indices]
        yield from DataLoader(dataset, batch_sampler=sampler, num_workers=self.config.num_workers, collate_fn=collate)

    def batches(self, indices: Sequence[Tensor], seeds: Sequence[int | None]) -> Iterator[tuple[Tensor, Tensor]]:
        transform = flip_and_shift(self.kind) if self.config.augment else None
        for (x, y), seed in zip(self._fetch(self.train_set, indices), seeds, strict=True):
            if transform is not None and seed is not None:
                x, y = augment_batch(transform, self.kind, x, y, seed=seed)
            yield x, y

    def _inputs(self, x: Tensor, y: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        spec = self._input_spec
        x = prepare_inputs(x, mean=spec.mean, std=spec.std, image_size=spec.image_size, device=device,
                           channels_last=self.config.channels_last)  # fmt: skip
        y = y.to(device)
        return x, (resize_masks(y, spec.image_size) if self.kind == "segmentation" else y)

    def train_step(self, model: nn.Module, batch, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        x, y = self._inputs(*batch, device)
        logits = model(x)
        loss = loss_fn(logits, y, label_smoothing=self.config.label_smoothing)
        with torch.no_grad():
            pred = _fit_logits(logits.detach(), y).argmax(1)
            valid = y != IGNORE_INDEX
            n, correct = int(valid.sum()), int(((pred == y) & valid).sum())
        return loss, {"loss": loss.item() * n, "acc": float(correct), "n": float(n)}

    @torch.no_grad()
    def eval_part(self, model: nn.Module, split: str, indices: Tensor, device: torch.device, batch_size: int):
        k = len(self.split_classes(split))
        cm = torch.zeros(k, k, dtype=torch.int64, device=device)
        loss_sum, count = 0.0, 0
        for x, y in self._fetch(self.dataset(split), list(indices.split(batch_size))):
            x, y = self._inputs(x, y, device)
            logits = _fit_logits(model(x), y)
            n = int((y != IGNORE_INDEX).sum())
            loss_sum += loss_fn(logits, y).item() * n
            count += n
            cm += confusion_matrix(logits.argmax(1), y, k, ignore_index=IGNORE_INDEX)
        return {"cm": cm.cpu(), "loss": loss_sum, "n": count}

    def summarize(self, split: str, parts: list) -> dict[str, float]:
        cm = sum(p["cm"] for p in parts)
        self._cm = cm
        metrics = {"loss": sum(p["loss"] for p in parts) / max(1, sum(p["n"] for p in parts)), "acc": accuracy(cm)}
        if self.kind == "segmentation":
            metrics["miou"] = mean_iou(cm)
        return metrics

    def split_classes(self, split: str) -> list[str]:
        return [str(c) for c in self.dataset(split).classes]

    def use_checkpoint(self, record, split: str) -> None:
        super().use_checkpoint(record, split)
        channels = self.dataset(split).in_channels
        if channels != record.inputs.in_channels:
            raise ConfigError("data", f"{self.config.data} has {channels} channels, the checkpoint's model takes "
                              f"{record.inputs.in_channels}")  # fmt: skip
        self._input_spec = record.inputs  # normalise and resize as the model was trained

    def confusion(self) -> Tensor | None:
        """The confusion matrix of the last evaluation (rows: true class)."""
        return self._cm

    def finish(self, model: nn.Module, out: Path, device: torch.device) -> None:
        if self._cm is not None:
            title = f"{self.config.model}: test set"
            atomic_write(out / "confusion.png", lambda tmp: plot_confusion(self._cm, self.classes(), tmp, title=title))


class SegmentationTask(ClassificationTask):
    """Semantic segmentation: ``fashion-scenes[:...]``, ``segfolder:IMAGES:MASKS``; pixel accuracy and mean IoU."""

    kind = "segmentation"
    select = "test_miou"
    shown = ("loss", "acc", "miou")
    outputs = ("masks.png",)

    @torch.no_grad()
    def finish(self, model: nn.Module, out: Path, device: torch.device) -> None:
        n = min(4, len(self.test_set))
        images, masks = collate([self.test_set[i] for i in range(n)])
        model.eval()
        x, _ = self._inputs(images, masks, device)
        pred = _fit_logits(model(x), masks).argmax(1).cpu()
        k = len(self.classes())
        atomic_write(out / "masks.png", lambda tmp: plot_masks(images, masks, pred, tmp, num_classes=k))
