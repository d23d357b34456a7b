"""Object detection (R-CNN, Fast R-CNN, Faster R-CNN) as a task of the engine.

A step is a list of images (sizes may differ) with their box targets; the loss is the sum of the detector's losses.
Selective-search proposals for R-CNN and Fast R-CNN are computed once per image and cached, as in the papers (their time
is counted in the reported time per image). Before every evaluation the batch-norm statistics are recomputed exactly
over training images, layer by layer as evaluation sees them (:func:`precise_batch_norm`). Evaluation reports PASCAL VOC
mAP@0.5 (all-point and 11-point), the twelve COCO statistics (pycocotools) and the time per image; the ``best``
checkpoint has the best VOC mAP@0.5.

Small objects: on ``fashion-scenes`` (items of 21 to 49 pixels) and ``nuclei`` (nuclei of 2 to 39 pixels, most 16 to
32), ``faster_rcnn`` defaults to a feature pyramid (P2 to P5, strides 4 to 32, 64 channels) with one anchor size per
level, 4 times its stride: 16 to 128 pixels (:data:`SMALL_OBJECT_KWARGS`; 16 and 32 on a backbone with stages of
stride 4 and 8 only, such as ``resnet9``); ``--model-arg fpn=False`` gives the one stride-16 map of the
paper. ``fit_anchors`` replaces the anchors by shapes fitted to the training boxes
(:func:`~convatlas.detection.anchors.fit_anchors`, k-means on ``1 - IoU``), on every pyramid level, and reports the
share of the training boxes the default and the fitted anchors can match at the RPN's positive IoU of 0.7
(:func:`~convatlas.detection.anchors.grid_coverage`), printed and in ``metrics.jsonl`` (``kind`` ``"anchors"``).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from convatlas.data.augment import augment_batch, augmentation
from convatlas.data.detection import build_detection_dataset, collate_detection
from convatlas.detection.anchors import AnchorGenerator, fit_anchors, grid_coverage
from convatlas.detection.detectors import pyramid_strides
from convatlas.detection.evaluation import coco_evaluate, voc_evaluate
from convatlas.detection.proposals import selective_search
from convatlas.train.checkpoint import CheckpointError, ModelSpec, build_model, json_kwargs, load_backbone
from convatlas.train.config import EXTERNAL_PROPOSALS, ConfigError
from convatlas.train.task import DatasetTask, model_keywords

# fashion-scenes items are 21 to 49 pixels, nuclei mostly 16 to 32: a feature pyramid, anchors of 16 to 128 pixels
# (one size per level; the same sizes serve the one stride-16 map with fpn=False) and fewer proposals fit them.
SMALL_OBJECT_KWARGS = {
    "faster_rcnn": dict(fpn=True, fpn_channels=64, anchor_sizes=(16.0, 32.0, 64.0, 128.0),
                        rpn_pre_nms_top_n=(600, 300), rpn_post_nms_top_n=(300, 150), batch_size_per_image=128,
                        representation_size=256),
    "fast_rcnn": dict(representation_size=256),
    "rcnn": dict(warp_size=64, context=5),
}  # fmt: skip
SMALL_OBJECT_SPECS = ("fashion-scenes", "nuclei")
PRECISE_BN_IMAGES = 200


def small_object_anchor_sizes(backbone: str, backbone_kwargs: dict | None = None) -> tuple[float, ...]:
    """The small-object anchors on ``backbone``'s pyramid: one size per level, 4 x its stride (16 to 128 px on P2 to
    P5; 16 and 32 on the two levels of ``resnet9``)."""
    return (
        tuple(4.0 * s for s in pyramid_strides(backbone, backbone_kwargs))
        or SMALL_OBJECT_KWARGS["faster_rcnn"]["anchor_sizes"]
    )


class ProposalCache:
    """Selective-search boxes per dataset index, computed on first use, with the wall and CPU seconds each took."""

    def __init__(self, *, max_proposals: int, mode: str = "fast") -> None:
        self.max_proposals, self.mode = max_proposals, mode
        self.boxes: dict[int, Tensor] = {}
        self.seconds: dict[int, tuple[float, float]] = {}

    def __call__(self, index: int, image: Tensor) -> Tensor:
        if index not in self.boxes:
            start, cpu = time.perf_counter(), time.process_time()
            self.boxes[index] = selective_search(image, mode=self.mode, max_proposals=self.max_proposals)
            self.seconds[index] = (time.perf_counter() - start, time.process_time() - cpu)
        return self.boxes[index]


class _Reached(Exception):
    """Raised by a forward hook to end a pass at the batch-norm layer being recalibrated."""


def precise_batch_norm(model: nn.Module, dataset, *, cache=None, device, num_images: int = PRECISE_BN_IMAGES,
                       batch_size: int = 4) -> int:  # fmt: skip
    """Recompute every batch-norm layer's running statistics as exact averages over ``num_images`` training images,
    one layer at a time in the order the forward pass reaches them.

    The zoo's MobileNets keep torchvision's batch-norm momentum of 0.01, so after a short run the running statistics
    still lag the weights and eval-mode detections suffer; detectron2's "precise BN" recomputes them. It does so for
    all layers in one training-mode pass, where every layer's input was normalised with its batch's own statistics;
    at evaluation the layers before it normalise with the running ones, and with batches of 4 images the difference
    grows layer by layer (a ResNet-9 detector's boxes came out 1.5 px too wide, COCO mAP 0.72 instead of 0.82). Here
    layer ``k`` is measured with the layers before it already in eval mode with their new statistics, so each layer's
    statistics are those of the input it gets at evaluation. The passes are the training ones (sampled RoIs for
    R-CNN's crops), without gradients, and each stops at the layer it measures. Layers the forward pass never reaches
    keep their statistics.

    Args:
        cache: ``cache(index, image) -> Tensor[P, 4]`` proposals (R-CNN, Fast R-CNN), or ``None``.

    Returns:
        the number of batch-norm layers updated.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    n = min(num_images, len(dataset))
    if not layers or n == 0:
        model.eval()
        return 0
    batches = []
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        items = [dataset[i] for i in indices]
        extra = {}
        if cache is not None:
            extra["proposals"] = [cache(i, im).to(device) for i, (im, _) in zip(indices, items, strict=True)]
        images = [im.to(device) for im, _ in items]
        targets = [{k: v.to(device) for k, v in t.items()} for _, t in items]
        batches.append((images, targets, extra))

    def run(part: list, hooks: list) -> None:
        """Training-mode passes over ``part``, each ended early if a hook raises :class:`_Reached`."""
        try:
            for images, targets, extra in part:
                with contextlib.suppress(_Reached):
                    model(images, targets, detect=False, **extra)
        finally:
            for h in hooks:
                h.remove()

    order: dict[nn.Module, None] = {}  # the layers in the order the forward pass reaches them
    model.train()
    for m in layers:
        m.eval()  # the order pass leaves every running statistic as it is
    with torch.no_grad():
        run(batches[:1], [m.register_forward_hook(lambda m, i, o: order.setdefault(m)) for m in layers])
        for layer in order:
            momentum = layer.momentum
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over the batches
            layer.train()
            try:
                run(batches, [layer.register_forward_hook(_stop)])
            finally:
                layer.momentum = momentum
                layer.eval()
    model.eval()
    return len(order)


def _stop(module: nn.Module, inputs, output) -> None:
    raise _Reached


def detection_metrics(detections: list, targets: list, sizes: list, num_classes: int) -> dict[str, float]:
    """VOC mAP@0.5 (all-point and 11-point) and the COCO statistics (``coco_ap``, ``coco_ap50``, ...)."""
    coco = coco_evaluate(detections, targets, num_classes=num_classes, image_sizes=sizes)
    return {
        "voc_map50": voc_evaluate(detections, targets, num_classes=num_classes, method="all")["map"],
        "voc_map50_11point": voc_evaluate(detections, targets, num_classes=num_classes, method="11point")["map"],
        **{f"coco_{k.lower()}": float(v) for k, v in coco.items()},
    }


class DetectionTask(DatasetTask):
    """Detection on ``fashion-scenes[:...]``, ``coco:DIR`` or ``voc:DIR``."""

    kind = "detection"
    select = "test_voc_map50"
    shown = ("voc_map50", "coco_ap")
    shown_train = ("loss",)
    unused_parameters = True  # the backbone's classifier head and unused stages

    def __init__(self, config) -> None:
        super().__init__(config)
        external = config.model in EXTERNAL_PROPOSALS
        self.caches = {s: ProposalCache(max_proposals=config.max_proposals) for s in ("train", "test")} if external \
            else None  # fmt: skip

    def _split(self, split: str, limit: int | None) -> Dataset:
        return build_detection_dataset(self.config.data, split, limit=limit)

    def model_spec(self) -> ModelSpec:
        return self._model_spec

    @functools.cached_property
    def _model_spec(self) -> ModelSpec:
        c = self.config
        fixed = {"num_classes": self.train_set.num_classes, "backbone": c.backbone}
        if c.model in EXTERNAL_PROPOSALS:
            fixed["max_proposals"] = c.max_proposals
        small = dict(SMALL_OBJECT_KWARGS.get(c.model, {})) if c.data.split(":")[0] in SMALL_OBJECT_SPECS else {}
        if "anchor_sizes" in small and c.model_args.get("fpn", True) and "anchor_sizes" not in c.model_args:
            # a bad backbone or keywords: the builder's own error names it below
            with contextlib.suppress(ValueError, TypeError):
                small["anchor_sizes"] = small_object_anchor_sizes(c.backbone, c.model_args.get("backbone_kwargs"))
        keywords = model_keywords(c.model, {**small, **c.model_args}, fixed)
        if c.fit_anchors is not None:
            if "anchor_shapes" in c.model_args:
                raise ConfigError("fit_anchors", "and `model_args` anchor_shapes both set the anchors; give one")
            keywords["anchor_shapes"] = self._fit(keywords)
        return ModelSpec(c.model, json_kwargs(keywords))

    def _fit(self, keywords: dict) -> list:
        """Anchor shapes fitted to the training boxes, on every level; the report goes to :meth:`notes`."""
        probe = build_model(ModelSpec(self.config.model, keywords))  # its default anchors and strides
        generator, strides = probe.rpn.anchor_generator, probe.backbone.strides
        boxes, sizes = [], []
        for i in range(len(self.train_set)):
            image, target = self.train_set[i]
            boxes.append(target["boxes"])
            sizes.append(tuple(image.shape[-2:]))
        k = self.config.fit_anchors
        every = torch.cat(boxes)
        if len(every) < k:
            raise ConfigError("fit_anchors", f"is {k}, but the training set has only {len(every)} boxes")
        fit = fit_anchors(every, k)
        shapes = fit.per_level(len(strides))
        fitted = AnchorGenerator(shapes=shapes)
        default_cover = grid_coverage(boxes, sizes, generator, strides)
        fitted_cover = grid_coverage(boxes, sizes, fitted, strides)
        default_count = generator.num_anchors_per_location()[0]
        self._anchor_note = (
            f"anchors: {k} shapes fitted to {len(every)} training boxes (mean best IoU {fit.mean_iou:.3f}); share of "
            f"the boxes an anchor matches at IoU >= 0.7: {default_cover:.3f} with the default {default_count} per "
            f"cell, {fitted_cover:.3f} with the fitted {k} per cell",
            {"kind": "anchors", "k": k, "boxes": len(every), "shapes": [[round(v, 2) for v in wh]
             for wh in fit.shapes.tolist()], "mean_iou": fit.mean_iou, "coverage_default": default_cover,
             "coverage_fitted": fitted_cover, "iou_threshold": fit.iou_threshold},
        )  # fmt: skip
        return [[list(wh) for wh in level] for level in shapes]

    def initialise(self, model: nn.Module) -> None:
        """With ``backbone_weights``: the backbone starts from that classification run (the rest from its builder)."""
        weights = self.config.backbone_weights
        if weights is None:
            return
        # R-CNN's backbone is the CNN it runs on each warped proposal
        body = model.roi_heads.box_features.cnn if model.backbone is None else model.backbone.body
        mean, std = (v.flatten().tolist() for v in (model.image_mean, model.image_std))
        try:
            line = load_backbone(body, self.config.backbone, weights, image_mean=mean, image_std=std)
        except CheckpointError as err:
            raise ConfigError("backbone_weights", str(err)) from None
        self._backbone_note = (line, {"kind": "backbone", "weights": str(weights), "model": self.config.backbone})

    def notes(self) -> list[tuple[str, dict | None]]:
        self.model_spec()
        found = (getattr(self, "_anchor_note", None), getattr(self, "_backbone_note", None))
        return [note for note in found if note is not None]

    def _proposals(self, split: str, indices: Sequence[int], images: Sequence[Tensor]) -> list[Tensor] | None:
        if self.caches is None:
            return None
        return [self.caches[split](i, im) for i, im in zip(indices, images, strict=True)]

    def _items(self, dataset: Dataset, indices: Sequence[Tensor]) -> Iterator[tuple[list, list]]:
        if self.config.num_workers == 0:
            for idx in indices:
                yield collate_detection([dataset[i] for i in idx.tolist()])
            return
        sampler = [b.tolist() for b in indices]
        yield from DataLoader(dataset, batch_sampler=sampler, num_workers=self.config.num_workers,
                              collate_fn=collate_detection)  # fmt: skip

    def batches(self, indices: Sequence[Tensor], seeds: Sequence[int | None]) -> Iterator[tuple]:
        recipe = getattr(self.train_set, "augmentation", "flip-shift")
        transform = augmentation(recipe, self.kind) if self.config.augment else None
        for idx, (images, targets), seed in zip(indices, self._items(self.train_set, indices), seeds, strict=True):
            proposals = self._proposals("train", idx.tolist(), images)
            if transform is not None and seed is not None:
                images, targets = augment_batch(transform, self.kind, images, targets, seed=seed)
            yield images, targets, proposals

    def train_step(self, model: nn.Module, batch, device: torch.device) -> tuple[Tensor, dict[str, float]]:
        images, targets, proposals = batch
        extra = {"proposals": [p.to(device) for p in proposals]} if proposals is not None else {}
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses, _ = model([im.to(device) for im in images], targets, detect=False, **extra)
        loss = sum(v.float() for v in losses.values())
        n = float(len(images))
        return loss, {"loss": loss.item() * n, **{k: v.item() * n for k, v in losses.items()}, "n": n}

    def before_eval(self, model: nn.Module, device: torch.device) -> None:
        cache = self.caches["train"] if self.caches is not None else None
        precise_batch_norm(model, self.train_set, cache=cache, device=device)

    @torch.no_grad()
    def eval_part(self, model: nn.Module, split: str, indices: Tensor, device: torch.device, batch_size: int):
        model.eval()
        part = {"detections": [], "targets": [], "sizes": [], "seconds": 0.0, "cpu_seconds": 0.0}
        for images, targets in self._items(self.dataset(split), list(indices.split(batch_size))):
            chunk = indices[len(part["targets"]) : len(part["targets"]) + len(images)].tolist()
            proposals = self._proposals(split, chunk, images)  # computed once per image, timed by the cache
            start, cpu = time.perf_counter(), time.process_time()
            extra = {"proposals": [p.to(device) for p in proposals]} if proposals is not None else {}
            _, found = model([im.to(device) for im in images], **extra)
            part["seconds"] += time.perf_counter() - start
            part["cpu_seconds"] += time.process_time() - cpu
            if self.caches is not None:  # what the user waits for per image includes selective search
                wall, used = zip(*(self.caches[split].seconds[i] for i in chunk), strict=True)
                part["seconds"] += sum(wall)
                part["cpu_seconds"] += sum(used)
            part["detections"] += [{k: v.cpu() for k, v in d.items()} for d in found]
            part["targets"] += targets
            part["sizes"] += [tuple(im.shape[-2:]) for im in images]
        return part

    def summarize(self, split: str, parts: list) -> dict[str, float]:
        joined = {k: [x for p in parts for x in p[k]] for k in ("detections", "targets", "sizes")}
        n = max(1, len(joined["targets"]))
        metrics = detection_metrics(
            joined["detections"], joined["targets"], joined["sizes"], len(self.split_classes(split)) - 1
        )
        metrics["seconds_per_image"] = sum(p["seconds"] for p in parts) / n
        metrics["cpu_seconds_per_image"] = sum(p["cpu_seconds"] for p in parts) / n
        return metrics
