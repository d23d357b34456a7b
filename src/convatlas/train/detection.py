"""Detection training and evaluation: the loop behind ``convatlas train --task detection`` and ``convatlas evaluate``.

The loop is deliberately plain: AdamW, a cosine learning-rate decay, gradient clipping, one list of images per step
(sizes may differ), selective-search proposals computed once per image and cached for R-CNN and Fast R-CNN. The run
folder gets a checkpoint (safetensors + JSON, see :mod:`convatlas.train.checkpoint`), ``metrics.json`` and
``history.json``. Evaluation reports PASCAL VOC mAP@0.5 (all-point and 11-point), COCO mAP (pycocotools) and the
inference time per image.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from convatlas.data.detection import build_detection_dataset
from convatlas.detection.evaluation import coco_evaluate, voc_evaluate
from convatlas.detection.proposals import selective_search
from convatlas.models import create_model, model_info
from convatlas.train import checkpoint as ckpt

EXTERNAL_PROPOSALS = ("rcnn", "fast_rcnn")


def _arg(args, name: str, default):
    value = getattr(args, name, None)
    return default if value is None else value


def detector_kwargs(args, num_classes: int) -> dict:
    """The builder keywords of a run: the class count from the data, the backbone, and small-image settings.

    ``fashion-scenes`` items are 21 to 49 pixels, so anchors of 16 to 128 pixels and fewer proposals fit it.
    """
    name = _arg(args, "model", "faster_rcnn")
    if model_info(name).task != "detection":
        raise ValueError(f"--model {name} is a {model_info(name).task} model; detection needs rcnn, fast_rcnn or "
                         "faster_rcnn")  # fmt: skip
    kwargs = {"num_classes": num_classes, "backbone": _arg(args, "backbone", "mobilenet_v3_small")}
    small = _arg(args, "data", "fashion-scenes") == "fashion-scenes"
    if name == "faster_rcnn" and small:
        kwargs.update(anchor_sizes=(16.0, 32.0, 64.0, 128.0), rpn_pre_nms_top_n=(600, 300),
                      rpn_post_nms_top_n=(300, 150), batch_size_per_image=128, representation_size=256)  # fmt: skip
    if name == "fast_rcnn" and small:
        kwargs.update(representation_size=256)
    if name == "rcnn" and small:
        kwargs.update(warp_size=64, context=5)
    kwargs.update(_arg(args, "model_args", {}) or {})
    return kwargs


class ProposalCache:
    """Selective search boxes per dataset index, computed on first use (R-CNN and Fast R-CNN)."""

    def __init__(self, dataset, *, max_proposals: int, mode: str = "fast"):
        self.dataset, self.max_proposals, self.mode = dataset, max_proposals, mode
        self.boxes: dict[int, Tensor] = {}
        self.seconds = 0.0

    def __call__(self, index: int, image: Tensor) -> Tensor:
        if index not in self.boxes:
            start = time.perf_counter()
            self.boxes[index] = selective_search(image, mode=self.mode, max_proposals=self.max_proposals)
            self.seconds += time.perf_counter() - start
        return self.boxes[index]


@torch.no_grad()
def predict(model: nn.Module, dataset, *, name: str, cache: ProposalCache | None, device, limit: int | None = None):
    """Detections for the first ``limit`` items of ``dataset``, one image at a time, and seconds per image (wall
    clock and process CPU time: the latter is what a single-threaded run costs on an unshared machine).

    The time covers everything a user waits for per image: for R-CNN and Fast R-CNN it includes selective search.
    """
    model.eval()
    detections, targets, sizes = [], [], []
    elapsed = cpu = 0.0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        image, target = dataset[i]
        start, cpu_start = time.perf_counter(), time.process_time()
        extra = {}
        if name in EXTERNAL_PROPOSALS:
            extra["proposals"] = [selective_search(image, max_proposals=cache.max_proposals).to(device)]
        _, out = model([image.to(device)], **extra)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        detections.append({k: v.cpu() for k, v in out[0].items()})
        targets.append(target)
        sizes.append(tuple(image.shape[1:]))
    return detections, targets, sizes, elapsed / max(n, 1), cpu / max(n, 1)


@torch.no_grad()
def precise_batch_norm(model: nn.Module, dataset, *, cache: ProposalCache | None, device, num_images: int = 200,
                       batch_size: int = 4) -> int:  # fmt: skip
    """Recompute every batch-norm layer's running statistics as exact averages over ``num_images`` training images.

    The zoo's MobileNets keep torchvision's batch-norm momentum of 0.01, so after a short run the running statistics
    still lag the weights and eval-mode detections suffer; detectron2's "precise BN" fixes that the same way. The
    forward passes are the training ones (sampled RoIs for R-CNN's crops), without gradients.

    Returns:
        the number of batch-norm layers updated.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    n = min(num_images, len(dataset))
    for start in range(0, n, batch_size):
        indices = list(range(start, min(start + batch_size, n)))
        items = [dataset[i] for i in indices]
        extra = {}
        if cache is not None:
            extra["proposals"] = [cache(i, im).to(device) for i, (im, _) in zip(indices, items, strict=True)]
        model([im.to(device) for im, _ in items], [{k: v.to(device) for k, v in t.items()} for _, t in items],
              detect=False, **extra)  # fmt: skip
    for m, momentum in zip(layers, saved, strict=True):
        m.momentum = momentum
    model.eval()
    return len(layers)


def metrics_of(detections, targets, sizes, num_classes: int) -> dict:
    """VOC mAP@0.5 (all-point and 11-point) and the COCO statistics of one set of detections."""
    return {
        "voc_map50": voc_evaluate(detections, targets, num_classes=num_classes, method="all")["map"],
        "voc_map50_11point": voc_evaluate(detections, targets, num_classes=num_classes, method="11point")["map"],
        "coco": coco_evaluate(detections, targets, num_classes=num_classes, image_sizes=sizes),
    }


def run(args) -> int:
    """Train a detector and evaluate it on the test split; the handler of ``convatlas train --task detection``.

    Reads from ``args`` (with defaults): ``model`` (faster_rcnn), ``backbone`` (mobilenet_v3_small), ``data``
    (fashion-scenes), ``epochs`` (2), ``batch_size`` (4), ``lr`` (1e-3), ``seed`` (0), ``out`` (runs/MODEL-DATA),
    ``train_images`` or ``limit_train`` (400 fashion scenes), ``test_images`` or ``limit_test`` (100), ``canvas``
    or ``image_size`` (128, the scene side), ``max_proposals`` (300), ``max_minutes``
    (none: a budget of process CPU time for training, robust to a shared machine; the cosine learning-rate decay
    then follows the budget when that is further along than the step count),
    ``device`` (cpu), ``threads`` (CPU threads), ``model_args`` (extra builder keywords).

    Returns:
        0 on success.
    """
    name = _arg(args, "model", "faster_rcnn")
    data = _arg(args, "data", "fashion-scenes")
    epochs, batch_size, lr = (
        int(_arg(args, "epochs", 2)),
        int(_arg(args, "batch_size", 4)),
        float(_arg(args, "lr", 1e-3)),
    )
    seed = int(_arg(args, "seed", 0))
    out = Path(_arg(args, "out", f"runs/{name}-{data.replace(':', '-').replace('/', '_')}"))
    canvas = int(_arg(args, "canvas", _arg(args, "image_size", 128)))
    num_train = int(_arg(args, "train_images", _arg(args, "limit_train", 400)))
    num_test = int(_arg(args, "test_images", _arg(args, "limit_test", 100)))
    max_minutes = _arg(args, "max_minutes", None)
    device = torch.device(_arg(args, "device", "cpu"))
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if _arg(args, "threads", 0):
        torch.set_num_threads(int(args.threads))
    torch.manual_seed(seed)
    train_set = build_detection_dataset(data, "train", num_images=num_train, canvas=canvas,
                                        seed=seed)  # fmt: skip
    test_set = build_detection_dataset(data, "test", num_images=num_test, canvas=canvas,
                                       seed=seed)  # fmt: skip
    kwargs = detector_kwargs(args, train_set.num_classes)
    model = create_model(name, **kwargs).to(device)
    max_proposals = int(_arg(args, "max_proposals", 300))
    cache = ProposalCache(train_set, max_proposals=max_proposals) if name in EXTERNAL_PROPOSALS else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total = epochs * steps_per_epoch
    if cache is not None:  # proposals are precomputed, as in the papers; their time is reported, not budgeted
        for i in range(len(train_set)):
            cache(i, train_set[i][0])
        print(f"selective search on {len(train_set)} training images: {cache.seconds:.0f} s")
    gen = torch.Generator().manual_seed(seed)
    history, step, start, cpu_start = [], 0, time.perf_counter(), time.process_time()
    stopped_early = False
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen).tolist()
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            indices = order[b * batch_size : (b + 1) * batch_size]
            items = [train_set[i] for i in indices]
            images = [im.to(device) for im, _ in items]
            targets = [{k: v.to(device) for k, v in t.items()} for _, t in items]
            extra = {}
            if cache is not None:
                extra["proposals"] = [cache(i, im).to(device) for i, (im, _) in zip(indices, items, strict=True)]
            progress = step / total
            if max_minutes is not None:  # a time budget: the schedule ends when the budget does, whichever first
                progress = max(progress, (time.process_time() - cpu_start) / (60 * float(max_minutes)))
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            losses, _ = model(images, targets, detect=False, **extra)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise ValueError(
                    f"training diverged at step {step}: losses { ({k: v.item() for k, v in losses.items()}) }"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            if max_minutes is not None and time.process_time() - cpu_start > 60 * float(max_minutes):
                stopped_early = True
                break
        record = {"epoch": epoch + 1, "step": step, **{k: v / max(b + 1, 1) for k, v in sums.items()}}
        history.append(record)
        print(f"epoch {epoch + 1}/{epochs} step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                                   if k.startswith("loss")))  # fmt: skip
        if stopped_early:
            print(f"stopped after {max_minutes} CPU minutes (step {step} of {total})")
            break
    train_seconds = time.perf_counter() - start
    train_cpu_seconds = time.process_time() - cpu_start
    precise_batch_norm(model, train_set, cache=cache, device=device)
    detections, targets, sizes, per_image, cpu_per_image = predict(model, test_set, name=name, cache=cache,
                                                                   device=device)  # fmt: skip
    metrics = metrics_of(detections, targets, sizes, test_set.num_classes)
    metrics.update(
        seconds_per_image=per_image,
        cpu_seconds_per_image=cpu_per_image,
        train_seconds=train_seconds,
        train_cpu_seconds=train_cpu_seconds,
        train_steps=step,
        train_images_seen=step * batch_size,
        proposal_seconds=cache.seconds if cache is not None else 0.0,
        test_images=len(test_set),
    )
    meta = {
        "global_step": step,
        "task": "detection",
        "model": name,
        "model_args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
        "num_classes": train_set.num_classes,
        "classes": list(train_set.classes),
        "data": data,
        "canvas": canvas,
        "max_proposals": max_proposals,
        "test_images": num_test,
        "seed": seed,
        "metrics": metrics,
    }
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    ckpt.save_checkpoint(out, "last", tensors, meta)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    print(f"{name}: VOC mAP@0.5 {metrics['voc_map50']:.4f}, COCO mAP {metrics['coco']['AP']:.4f}, "
          f"{1000 * per_image:.1f} ms/image ({1000 * cpu_per_image:.1f} ms of CPU), trained {train_seconds:.0f} s "
          f"({step} steps); saved to {out}")  # fmt: skip
    return 0


def load_detector(checkpoint, *, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained detector from a run folder or checkpoint JSON.

    Returns:
        (model in eval mode, the checkpoint's JSON record).
    """
    state, meta = ckpt.load_checkpoint(checkpoint)
    if meta.get("task") != "detection":
        raise ValueError(f"--checkpoint {checkpoint}: a {meta.get('task')} checkpoint, not a detection one")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["model_args"].items()}
    model = create_model(meta["model"], **kwargs)
    model.load_state_dict(ckpt.prefixed(state, "model"))
    return model.to(device).eval(), meta


def evaluate(args) -> int:
    """``convatlas evaluate --checkpoint DIR`` for a detection checkpoint: VOC and COCO metrics on the test split.

    Reads ``checkpoint`` and optionally ``data`` (default: the training data), ``test_images``, ``limit_test`` or
    ``limit`` (default: as in training) and ``device``.
    """
    model, meta = load_detector(args.checkpoint, device=_arg(args, "device", "cpu"))
    data = _arg(args, "data", meta["data"])
    num_test = int(
        _arg(args, "test_images", _arg(args, "limit_test", _arg(args, "limit", meta.get("test_images", 100))))
    )
    test_set = build_detection_dataset(data, "test", num_images=num_test,
                                       canvas=int(meta.get("canvas", 128)), seed=int(meta.get("seed", 0)))  # fmt: skip
    cache = ProposalCache(test_set, max_proposals=int(meta.get("max_proposals", 300)))
    detections, targets, sizes, per_image, cpu_per_image = predict(model, test_set, name=meta["model"], cache=cache,
                                                    device=_arg(args, "device", "cpu"))  # fmt: skip
    metrics = metrics_of(detections, targets, sizes, test_set.num_classes)
    coco = metrics["coco"]
    print(
        f"{meta['model']} on {data} test ({len(test_set)} images): VOC mAP@0.5 {metrics['voc_map50']:.4f} "
        f"(11-point {metrics['voc_map50_11point']:.4f}), COCO mAP {coco['AP']:.4f}, AP50 {coco['AP50']:.4f}, "
        f"AP75 {coco['AP75']:.4f}, {1000 * per_image:.1f} ms/image ({1000 * cpu_per_image:.1f} ms of CPU)"
    )
    return 0
