"""Our Faster R-CNN against torchvision's ``FasterRCNN`` with the same backbone, data, schedule and budget.

Both detectors get the same zoo backbone (``--backbone``, its C4 map, freshly initialised from the same seed), the
same anchors (sizes x ratios), RPN and RoI sampling settings, 7x7 RoI align, two fully connected layers of the same
width, the same input normalisation and no resizing (torchvision's transform is set to the canvas size). They train
in one process, alternately step by step on the same batches with AdamW and the same learning-rate schedule; then
both get exact batch-norm statistics over 200 training images and are evaluated on the same ``fashion-scenes``
test split with our VOC mAP@0.5 and pycocotools' COCO mAP.
Throughput is images per second for training steps and for inference (batch ``--batch-size``).

Written to run on CUDA (``--device cuda``, the intended comparison); on CPU it runs a small side-by-side.

    .venv/bin/python benchmarks/detection.py --device cuda --train-images 4000 --epochs 12 --batch-size 16
    .venv/bin/python benchmarks/detection.py --device cpu --train-images 200 --epochs 1 --test-images 50
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from convatlas.data.detection import ScenesDetection
from convatlas.detection.detectors import IMAGENET_MEAN, IMAGENET_STD, Backbone
from convatlas.detection.evaluation import coco_evaluate, voc_evaluate
from convatlas.models import create_model

ANCHOR_SIZES = (16.0, 32.0, 64.0, 128.0)
RATIOS = (0.5, 1.0, 2.0)


class _TorchvisionBackbone(nn.Module):
    """Our :class:`Backbone` in torchvision's interface: an ``OrderedDict`` of maps and ``out_channels``."""

    def __init__(self, body: Backbone):
        super().__init__()
        self.body, self.out_channels = body, body.out_channels

    def forward(self, x):
        return OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))


def build_ours(args, num_classes: int) -> nn.Module:
    torch.manual_seed(args.seed)
    return create_model("faster_rcnn", num_classes=num_classes, backbone=args.backbone, anchor_sizes=ANCHOR_SIZES,
                        aspect_ratios=RATIOS, representation_size=args.representation_size,
                        rpn_pre_nms_top_n=(600, 300), rpn_post_nms_top_n=(300, 150),
                        batch_size_per_image=128)  # fmt: skip


def build_torchvision(args, num_classes: int) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(args.seed)
    body = Backbone(create_model(args.backbone))  # the same weights as ours: same seed, same construction order
    backbone = _TorchvisionBackbone(body)
    stride = body.strides[0]
    head = TwoMLPHead(backbone.out_channels * 49, args.representation_size)
    return FasterRCNN(
        backbone,
        box_predictor=FastRCNNPredictor(args.representation_size, num_classes + 1),
        min_size=args.canvas,
        max_size=args.canvas,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=AnchorGenerator(sizes=(ANCHOR_SIZES,), aspect_ratios=(RATIOS,)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=head,
        rpn_pre_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=300,
        rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=128,
    ), stride


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def precise_batch_norm(model, dataset, *, ours: bool, device, num_images: int = 200, batch_size: int = 4) -> None:
    """Exact batch-norm statistics over training images for either detector (the zoo's MobileNets keep a BN
    momentum of 0.01, so short runs need it; both sides get the same treatment)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, min(num_images, len(dataset)), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, num_images, len(dataset)))]
        images = [im.to(device) for im, _ in items]
        targets = [{k: v.to(device) for k, v in t.items()} for _, t in items]
        if ours:
            model(images, targets, detect=False)
        else:
            model(images, targets)
    for m, momentum in zip(layers, saved, strict=True):
        m.momentum = momentum


@torch.no_grad()
def evaluate(model, dataset, *, ours: bool, device, batch_size: int):
    model.eval()
    detections, targets, sizes = [], [], []
    elapsed = 0.0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = [im.to(device) for im, _ in items]
        sync(device)
        t = time.perf_counter()
        out = model(images)[1] if ours else model(images)
        sync(device)
        elapsed += time.perf_counter() - t
        detections += [{k: v.cpu() for k, v in d.items()} for d in out]
        targets += [t for _, t in items]
        sizes += [tuple(im.shape[1:]) for im, _ in items]
    voc = voc_evaluate(detections, targets, num_classes=dataset.num_classes)["map"]
    coco = coco_evaluate(detections, targets, num_classes=dataset.num_classes, image_sizes=sizes)
    return voc, coco["AP"], len(dataset) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--canvas", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--representation-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    train_set = ScenesDetection("train", num_images=args.train_images, canvas=args.canvas, seed=args.seed)
    test_set = ScenesDetection("test", num_images=args.test_images, canvas=args.canvas, seed=args.seed)
    ours = build_ours(args, train_set.num_classes).to(device)
    theirs, _ = build_torchvision(args, train_set.num_classes)
    theirs = theirs.to(device)
    models = {"convatlas": ours, "torchvision": theirs}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=1e-4) for k, m in models.items()}
    steps = math.ceil(len(train_set) / args.batch_size)
    total, step = args.epochs * steps, 0
    train_time = dict.fromkeys(models, 0.0)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_set), generator=gen).tolist()
        last = {}
        for b in range(steps):
            items = [train_set[i] for i in order[b * args.batch_size : (b + 1) * args.batch_size]]
            images = [im.to(device) for im, _ in items]
            targets = [{k: v.to(device) for k, v in t.items()} for _, t in items]
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for name, model in models.items():
                model.train()
                for group in optimizers[name].param_groups:
                    group["lr"] = lr
                sync(device)
                t = time.perf_counter()
                losses = model(images, targets, detect=False)[0] if name == "convatlas" else model(images, targets)
                loss = sum(losses.values())
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizers[name].step()
                sync(device)
                train_time[name] += time.perf_counter() - t
                last[name] = loss.item()
            step += 1
        print(f"epoch {epoch + 1}: last batch loss " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
    seen = step * args.batch_size
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {time.strftime('%Y-%m-%d')}, {gpu}, torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"{args.backbone}, fashion-scenes {args.canvas}px, {len(train_set)} train x {args.epochs} epochs, "
          f"batch {args.batch_size}, {len(test_set)} test images")  # fmt: skip
    print("| detector | VOC mAP@0.5 | COCO mAP | train img/s | inference img/s |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        ours_model = name == "convatlas"
        precise_batch_norm(model, train_set, ours=ours_model, device=device)
        voc, coco, speed = evaluate(model, test_set, ours=ours_model, device=device, batch_size=args.batch_size)
        print(f"| {name} | {voc:.4f} | {coco:.4f} | {seen / train_time[name]:.1f} | {speed:.1f} |")


if __name__ == "__main__":
    main()
