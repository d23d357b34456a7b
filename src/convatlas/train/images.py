"""Image classification and semantic segmentation as tasks of the engine.

Inputs are moved to the device, resized to ``image_size`` when set and normalised per channel there
(:func:`prepare_inputs`); the loss is the cross-entropy over classes or pixels (mask value 255 ignored). In-memory sets
(Fashion-MNIST, MNIST) are indexed a whole batch at a time; sets decoded per item (folders) go through a DataLoader.
Augmentation (``augment``) is the data's recipe of :mod:`convatlas.data.augment` (its ``augmentation`` attribute,
:func:`~convatlas.data.augment.flip_and_shift` by default), drawn per micro-batch from a seed.

Segmentation as the U-Net paper does it, for the unpadded ``unet`` (``padding="valid"``, its default without an
encoder): its output is smaller than its input by a border (92 pixels a side for five levels), so it trains on
crops whose centre it predicts, with that much real image context around (``nuclei`` cuts its crops so, the loss
taking the centre of the crops' maps; other data is mirrored outward, one tile as large as the image:
:func:`~convatlas.models.tiling.forward_padded`), and is evaluated and run on whole images by the overlap-tile
strategy (:func:`~convatlas.models.tiling.predict_tiled`), never by resizing its scores. ``loss "unet-weighted"``
weighs each pixel by the paper's map (:func:`~convatlas.ops.unet_loss.weighted_cross_entropy`).
Binary masks also get the foreground IoU and Dice; data with instance labels (``nuclei``) the instance F1 at IoU 0.5
after the predicted foreground is split into connected components.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from convatlas.data import build_dataset, collate, is_text_spec, spec_kind
from convatlas.data.augment import IGNORE_INDEX, augment_batch, augmentation
from convatlas.files import atomic_write
from convatlas.models.tiling import (
    forward_padded,
    mirror_pad,
    predict_tiled,
    unpadded_border,
    unpadded_levels,
    valid_output_size,
)
from convatlas.models.unet import center_crop
from convatlas.ops.masks import instance_f1, label_instances
from convatlas.ops.unet_loss import SIGMA, W0, weighted_cross_entropy
from convatlas.train.checkpoint import InputSpec, ModelSpec, build_model, json_kwargs
from convatlas.train.config import ConfigError
from convatlas.train.metrics import accuracy, confusion_matrix, iou_per_class, mean_iou
from convatlas.train.plots import plot_confusion, plot_masks
from convatlas.train.task import DatasetTask, model_keywords


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


class ClassificationTask(DatasetTask):
    """Image classification: ``fashion-mnist``, ``mnist5k``, ``imagefolder:DIR``; accuracy and a confusion matrix."""

    kind = "classification"
    select = "test_acc"
    outputs = ("confusion.png",)

    def __init__(self, config) -> None:
        super().__init__(config)
        self._cm: Tensor | None = None

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
        recipe = getattr(self.train_set, "augmentation", "flip-shift")
        transform = augmentation(recipe, self.kind) if self.config.augment else None
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
        return {"loss": sum(p["loss"] for p in parts) / max(1, sum(p["n"] for p in parts)), "acc": accuracy(cm)}

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


@torch.no_grad()
def segment_scores(model: nn.Module, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Float32 class scores for every pixel of normalised images of any size, the way each kind of network needs.

    An unpadded U-Net predicts by the overlap-tile strategy (:func:`~convatlas.models.tiling.predict_tiled`); any
    other network sees the images mirrored at the bottom and right to a multiple of 32 (so that every pooling step
    halves evenly) in one pass, its scores cut back to the images (and upsampled first if it predicts at a lower
    resolution).

    Args:
        model: a segmentation model in eval mode.
        x (Tensor[N, C, H, W]): normalised images.
        size: ``(H', W')`` to upsample the scores to (bilinear), for images that were resized; default ``(H, W)``.

    Returns:
        Tensor[N, K, H', W'].
    """
    height, width = x.shape[-2:]
    if unpadded_levels(model) is not None:
        scores = predict_tiled(model, x).float()
    else:
        padded = mirror_pad(x, 0, -height % 32, 0, -width % 32)
        scores = model(padded).float()
        if tuple(scores.shape[-2:]) != tuple(padded.shape[-2:]):
            scores = F.interpolate(scores, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        scores = scores[..., :height, :width]
    if size is not None and tuple(size) != (height, width):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    return scores


def _maps(y) -> tuple[Tensor, dict[str, Tensor]]:
    """A segmentation target as ``(class mask, other maps)``: a mask, or a dict with ``"mask"`` and others."""
    if isinstance(y, dict):
        return y["mask"], {k: v for k, v in y.items() if k != "mask"}
    return y, {}


class SegmentationTask(ClassificationTask):
    """Semantic segmentation: ``fashion-scenes[:...]``, ``segfolder:IMAGES:MASKS``, ``nuclei[:...]``; pixel accuracy,
    mean IoU, foreground IoU and Dice (two classes) and instance F1 (data with instance labels)."""

    kind = "segmentation"
    select = "test_miou"
    outputs = ("masks.png",)

    @property
    def shown(self) -> tuple[str, ...]:
        names = ("loss", "acc", "miou")
        if len(self.classes()) == 2:
            names += ("fg_iou", "dice")
        if self._has_instances:
            names += ("instance_f1",)
        return names

    @functools.cached_property
    def levels(self) -> int | None:
        """The levels of an unpadded U-Net (its geometry decides crops and tiling), ``None`` for other models."""
        # The geometry does not depend on the classes or channels, which come from the data: probe on the meta device.
        keywords = model_keywords(self.config.model, self.config.model_args, {"num_classes": 2, "in_channels": 1})
        with torch.device("meta"):
            return unpadded_levels(build_model(ModelSpec(self.config.model, keywords)))

    @functools.cached_property
    def _has_instances(self) -> bool:
        target = self.test_set[0][1]
        return isinstance(target, dict) and "instances" in target

    def _split(self, split: str, limit: int | None) -> Dataset:
        c = self.config
        dataset = super()._split(split, limit)
        if self.levels is not None and c.image_size is not None:
            raise ConfigError("image_size", "does not apply to an unpadded U-Net: it sees images at their own size "
                              "and covers large ones tile by tile (overlap-tile)")  # fmt: skip
        if split == "train" and self.levels is not None and spec_kind(c.data) == "nuclei":
            # Crops whose centre the network's output covers exactly, with its border of real image context around.
            size = valid_output_size(_maps(dataset[0][1])[0].shape[-1], levels=self.levels)
            crop = (size, unpadded_border(self.levels))
            dataset = build_dataset(c.data, split=split, limit=limit, data_dir=c.data_dir, crop=crop)
        if split == "train" and c.loss == "unet-weighted" and "weight" not in _maps(dataset[0][1])[1]:
            raise ConfigError("loss", f"unet-weighted needs per-pixel weights from instance labels; {c.data} has "
                              "none (nuclei has them)")  # fmt: skip
        return dataset

    def notes(self) -> list[tuple[str, dict | None]]:
        found = []
        if self.levels is not None:
            border = unpadded_border(self.levels)
            side = self.train_set[0][0].shape[-1]
            how = (f"the central {side - 2 * border}x{side - 2 * border} of {side}x{side} crops ({border} px of image "
                   "context a side)" if spec_kind(self.config.data) == "nuclei"
                   else f"its images mirrored outward by {border} px")  # fmt: skip
            found.append((f"unpadded {self.config.model} ({self.levels} levels): trains on {how}; evaluated tile by "
                          "tile (overlap-tile)", None))  # fmt: skip
        if self.config.loss == "unet-weighted":
            found.append((f"loss: the U-Net weighted cross-entropy (w0 {W0:g}, sigma {SIGMA:g} px)", None))
        return found

    def _inputs(self, x: Tensor, y, device: torch.device):
        spec = self._input_spec
        x = prepare_inputs(x, mean=spec.mean, std=spec.std, image_size=spec.image_size, device=device,
                           channels_last=self.config.channels_last)  # fmt: skip
        if isinstance(y, dict):
            return x, {k: resize_masks(v.to(device), spec.image_size) for k, v in y.items()}
        return x, resize_masks(y.to(device), spec.image_size)

    def train_step(self, model: nn.Module, batch, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        x, y = self._inputs(*batch, device)
        mask, maps = _maps(y)
        if self.levels is not None and spec_kind(self.config.data) != "nuclei":
            logits = forward_padded(model, x)  # no context around the images: mirror them outward
        else:
            logits = model(x)
        if self.levels is not None:  # the network predicts the centre of its input (nuclei crops carry context)
            h, w = logits.shape[-2:]
            mask, maps = center_crop(mask, h, w), {k: center_crop(v, h, w) for k, v in maps.items()}
        if self.config.loss == "unet-weighted":
            loss = weighted_cross_entropy(logits, mask, maps["weight"], ignore_index=IGNORE_INDEX)
        else:
            loss = loss_fn(logits, mask, label_smoothing=self.config.label_smoothing)
        with torch.no_grad():
            pred = _fit_logits(logits.detach(), mask).argmax(1)
            valid = mask != IGNORE_INDEX
            n, correct = int(valid.sum()), int(((pred == mask) & valid).sum())
        return loss, {"loss": loss.item() * n, "acc": float(correct), "n": float(n)}

    @torch.no_grad()
    def eval_part(self, model: nn.Module, split: str, indices: Tensor, device: torch.device, batch_size: int):
        k = len(self.split_classes(split))
        cm = torch.zeros(k, k, dtype=torch.int64, device=device)
        loss_sum, count, found = 0.0, 0, None
        for x, y in self._fetch(self.dataset(split), list(indices.split(batch_size))):
            x, y = self._inputs(x, y, device)
            mask, maps = _maps(y)
            logits = segment_scores(model, x, tuple(mask.shape[-2:]))
            n = int((mask != IGNORE_INDEX).sum())
            loss_sum += loss_fn(logits, mask).item() * n
            count += n
            pred = logits.argmax(1)
            cm += confusion_matrix(pred, mask, k, ignore_index=IGNORE_INDEX)
            if "instances" in maps:
                for p, true, m in zip(pred.cpu(), maps["instances"].cpu(), mask.cpu(), strict=True):
                    scores = instance_f1(label_instances(p), true, ignore=m == IGNORE_INDEX)
                    found = scores if found is None else found + scores
        return {"cm": cm.cpu(), "loss": loss_sum, "n": count, "instances": found}

    def summarize(self, split: str, parts: list) -> dict[str, float]:
        metrics = super().summarize(split, parts)
        cm = self._cm
        metrics["miou"] = mean_iou(cm)
        if len(cm) == 2:  # background and one foreground class
            tp, fp, fn = cm[1, 1].item(), cm[0, 1].item(), cm[1, 0].item()
            metrics["fg_iou"] = float(iou_per_class(cm)[1])
            metrics["dice"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        scores = [p["instances"] for p in parts if p.get("instances") is not None]
        if scores:
            total = sum(scores[1:], scores[0])
            metrics.update(instance_f1=total.f1, instance_precision=total.precision, instance_recall=total.recall)
        return metrics

    @torch.no_grad()
    def finish(self, model: nn.Module, out: Path, device: torch.device) -> None:
        n = min(4, len(self.test_set))
        images, target = collate([self.test_set[i] for i in range(n)])
        masks = _maps(target)[0]
        model.eval()
        x, _ = self._inputs(images, masks, device)
        pred = segment_scores(model, x, tuple(masks.shape[-2:])).argmax(1).cpu()
        k = len(self.classes())
        atomic_write(out / "masks.png", lambda tmp: plot_masks(images, masks, pred, tmp, num_classes=k))
