"""Our Faster R-CNN against torchvision's ``FasterRCNN``: same backbone, anchors, data, schedule and budget, seeds.

Both detectors train in the convatlas training engine (:func:`convatlas.train.fit`): the same data in the same order,
the same augmentation, AdamW, cosine schedule, gradient clipping, number of steps, exact batch-norm statistics before
evaluation, and the same evaluation (VOC mAP@0.5 and pycocotools' COCO mAP). Ours is exactly what ``convatlas train
--model faster_rcnn --data SPEC`` runs (its defaults for small objects); torchvision's model is given the engine's
detector interface by :class:`TorchvisionDetector`.

What "same" means (``--fpn``, the default):

- backbone: our zoo ``mobilenet_v3_small`` (``--backbone``), randomly initialised from the run's seed, so both sides
  start from identical backbone weights; its stages of stride 4, 8, 16 and 32. Ours puts
  :class:`convatlas.detection.Backbone`'s pyramid on them; torchvision's side is
  ``torchvision.models.detection.backbone_utils.BackboneWithFPN`` over the same module (``IntermediateLayerGetter``
  on its ``features`` and ``torchvision.ops.FeaturePyramidNetwork``), without torchvision's extra max-pooled level
  P6, so both have P2 to P5 of 64 channels (``--fpn-channels``);
- anchors: one size per level, 16, 32, 64 and 128 pixels, at ratios 0.5, 1 and 2; RPN: 600 / 300 boxes per level
  before NMS (training / testing), 300 / 150 after, NMS 0.7, 256 anchors per image, half positive; RoI heads: 128
  RoIs per image, a quarter foreground, 7x7 RoI align with 2 samples per bin from the level FPN's rule picks, two
  fully connected layers of 256, score threshold 0.05, NMS 0.5, 100 detections;
- inputs: the same normalisation (ImageNet mean and std), padding to a multiple of 32, and no resizing on either
  side (torchvision's ``GeneralizedRCNNTransform.resize`` is made the identity).

What differs is each library's own: the initialisation of the heads and the pyramid, torchvision's anchors centred on
cell corners (ours on cell centres), its ``aligned=False`` RoI align, its box coder's clamping, and so on.
``--c4`` compares the one stride-16 map (no pyramid) instead, as ``benchmarks/gpu.py`` builds it.

Prints the date, machine, load and versions, one line per run, then a table of mean and spread over the seeds with
the ratio ours / torchvision (mAP, training CPU time, inference CPU time per image). CPU time is the process's (one
thread with ``--threads 1``), what a run costs on an unshared core; the machine may be shared.

    .venv/bin/python benchmarks/detection.py --data nuclei --seeds 0 1 2 --threads 1
    .venv/bin/python benchmarks/detection.py --data fashion-scenes --seeds 0 1 2 --threads 1
    .venv/bin/python benchmarks/detection.py --quick          # a few steps of each, to check the script

``--pretrain`` first trains the backbone (``--backbone``, ``--backbone-kwargs``) on Fashion-MNIST, once per seed, and
both detectors start from that run (ours through ``backbone_weights``, torchvision's through the same
:func:`~convatlas.train.checkpoint.load_backbone`); its CPU time is added to each row. ``--keep DIR`` keeps the runs,
and ``--reevaluate DIR`` with the same options scores them again on ``--test-images`` test images without training:

    .venv/bin/python benchmarks/detection.py --pretrain --backbone resnet9 --backbone-kwargs '{"width_mult": 0.125}' \
        --anchor-sizes 24 48 --fpn-channels 32 --warmup-epochs 0.05 --lr 0.002 --train-images 20000 --threads 1 \
        --keep runs/det
    .venv/bin/python benchmarks/detection.py --pretrain --backbone resnet9 ... --reevaluate runs/det --test-images 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from convatlas.detection.detectors import IMAGENET_MEAN, IMAGENET_STD, Backbone
from convatlas.models import create_model
from convatlas.train import TrainConfig
from convatlas.train.checkpoint import ModelSpec, load_backbone, load_checkpoint, load_state, prefixed
from convatlas.train.detection import SMALL_OBJECT_KWARGS, DetectionTask, small_object_anchor_sizes
from convatlas.train.engine import evaluate, run_config
from convatlas.utils import set_threads
from engine_runs import add_arguments, check_out, choose, machine_line, mean_spread, ratio, run_all, timed_fit

# The data of each comparison: the spec (its training images make the budget) and the test images.
DATA = {
    "fashion-scenes": ("fashion-scenes:canvas=128,num_images={images}", 200),
    "nuclei": ("nuclei:size=128,samples={images}", None),
}
SMALL = SMALL_OBJECT_KWARGS["faster_rcnn"]
C4_ANCHOR_SIZES = (16.0, 32.0, 64.0, 128.0)
RATIOS = (0.5, 1.0, 2.0)


class _TorchvisionBackbone(nn.Module):
    """Our :class:`Backbone` in torchvision's interface: an ``OrderedDict`` of maps and ``out_channels``."""

    def __init__(self, body: Backbone):
        super().__init__()
        self.body, self.out_channels = body, body.out_channels

    def forward(self, x):
        return OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))


def _no_extra_level():
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

    class NoExtraLevel(ExtraFPNBlock):
        """Keep the pyramid at P2 to P5 (torchvision adds a max-pooled P6 by default)."""

        def forward(self, results, x, names):
            return results, names

    return NoExtraLevel()


def build_ours(args, num_classes: int) -> nn.Module:
    """Our Faster R-CNN: with ``args.fpn`` the engine's small-object default, else the stride-16 map (C4)."""
    torch.manual_seed(args.seed)
    if getattr(args, "fpn", False):
        return create_model("faster_rcnn", num_classes=num_classes, backbone=args.backbone,
                            **{**SMALL, **pyramid_args(args), "anchor_sizes": anchor_sizes(args)})  # fmt: skip
    return create_model("faster_rcnn", num_classes=num_classes, backbone=args.backbone, anchor_sizes=C4_ANCHOR_SIZES,
                        aspect_ratios=RATIOS, representation_size=args.representation_size,
                        rpn_pre_nms_top_n=(600, 300), rpn_post_nms_top_n=(300, 150),
                        batch_size_per_image=128)  # fmt: skip


def build_torchvision(args, num_classes: int) -> tuple[nn.Module, int]:
    """torchvision's ``FasterRCNN`` on the same backbone (see the module docstring); returns it and the finest stride.

    The backbone is built first, as in ours, so the same seed gives both the same backbone weights.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(args.seed)
    model = create_model(args.backbone, **(getattr(args, "backbone_kwargs", None) or {}))
    if getattr(args, "weights", None):
        load_backbone(model, args.backbone, args.weights, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    if getattr(args, "fpn", False):
        info = model.feature_info
        stages = [f for f in info if 4 <= f["reduction"] <= 32]
        parents = {f["module"].rpartition(".")[0] for f in stages}
        if len(parents) != 1:
            raise ValueError(f"--backbone {args.backbone}: its stages are not children of one module")
        parent = model.get_submodule(parents.pop())  # `features` of a MobileNet, the model itself for ResNet-9
        return_layers = {f["module"].rpartition(".")[2]: str(k) for k, f in enumerate(stages)}
        channels = pyramid_args(args).get("fpn_channels", SMALL["fpn_channels"])
        backbone = BackboneWithFPN(parent, return_layers, [f["num_chs"] for f in stages], channels,
                                   extra_blocks=_no_extra_level())  # fmt: skip
        names = [str(k) for k in range(len(stages))]
        sizes = tuple((s,) for s in anchor_sizes(args))
        anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(RATIOS,) * len(names))
        size, stride = SMALL["representation_size"], stages[0]["reduction"]
    else:
        body = Backbone(model)
        backbone = _TorchvisionBackbone(body)
        names, channels, size, stride = ["0"], body.out_channels, args.representation_size, body.strides[0]
        anchors = AnchorGenerator(sizes=(C4_ANCHOR_SIZES,), aspect_ratios=(RATIOS,))
    canvas = getattr(args, "canvas", 128)
    detector = FasterRCNN(
        backbone,
        min_size=canvas,
        max_size=canvas,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
        box_head=TwoMLPHead(channels * 49, size),
        box_predictor=FastRCNNPredictor(size, num_classes + 1),
        rpn_pre_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=300,
        rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=128,
    )
    detector.transform.resize = lambda image, target=None: (image, target)  # no resizing, as ours
    return detector, stride


class TorchvisionDetector(nn.Module):
    """torchvision's detector with the engine's interface: ``forward(images, targets=None, *, detect=True)`` returns
    ``(losses, detections)``; losses in training mode with targets (torchvision gives no detections then), detections
    in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, targets=None, *, detect: bool = True):
        if self.training and targets is not None:
            return self.model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]), []
        return {}, self.model(list(images))


class TorchvisionTask(DetectionTask):
    """The engine's detection task with torchvision's detector in place of ours (the record names it)."""

    args: argparse.Namespace

    def build_model(self) -> nn.Module:
        return TorchvisionDetector(build_torchvision(self.args, self.train_set.num_classes)[0])

    def model_spec(self) -> ModelSpec:
        return ModelSpec("torchvision.models.detection.FasterRCNN", {"backbone": self.args.backbone})

    def initialise(self, model: nn.Module) -> None:
        """Nothing: :func:`build_torchvision` has loaded the backbone weights (``args.weights``) already."""


def pyramid_args(args) -> dict:
    """Our builder's keywords that ``--backbone-kwargs``, ``--anchor-sizes`` and ``--fpn-channels`` change (the same
    on both sides)."""
    changed = {}
    if getattr(args, "backbone_kwargs", None):
        changed["backbone_kwargs"] = args.backbone_kwargs
    if getattr(args, "anchor_sizes", None):
        changed["anchor_sizes"] = list(args.anchor_sizes)
    if getattr(args, "fpn_channels", None):
        changed["fpn_channels"] = args.fpn_channels
    return changed


def anchor_sizes(args) -> list[float]:
    """One anchor size per pyramid level: ``--anchor-sizes``, else the engine's default for small objects."""
    given = pyramid_args(args).get("anchor_sizes")
    return given or list(small_object_anchor_sizes(args.backbone, getattr(args, "backbone_kwargs", None)))


# The backbone's pretraining with --pretrain: Fashion-MNIST's 60,000 training images (the scenes' test items come
# from its test images), 4 epochs of SGD with warm-up, label smoothing and channels-last (`make demo`'s recipe).
PRETRAIN = dict(data="fashion-mnist", epochs=4, batch_size=256, opt="sgd", lr=0.2, warmup_epochs=0.3,
                label_smoothing=0.1, channels_last=True)  # fmt: skip
_pretrained: dict[int, dict] = {}


def scored_images(args: argparse.Namespace) -> int | None:
    """The test images a run is scored on: ``--test-images``, else the data's default (``None``: the whole split)."""
    return DATA[args.data][1] if args.test_images is None else args.test_images


def pretrain(args: argparse.Namespace, seed: int, root: Path) -> dict:
    """The backbone's classification run for ``seed`` (once per seed, both sides start from it): its folder, test
    accuracy and process CPU seconds."""
    if seed not in _pretrained:
        config = TrainConfig(model=args.backbone, model_args=dict(args.backbone_kwargs or {}), seed=seed,
                             out=str(root / f"pretrain-{seed}"), threads=args.threads, device=args.device,
                             log_every=10**9, **PRETRAIN)  # fmt: skip
        if args.quick:
            config = dataclasses.replace(config, epochs=1, limit_train=512, limit_test=256)
        row = timed_fit(config)
        _pretrained[seed] = {"folder": config.out, "acc": row["acc"], "cpu_s": row["cpu_s"]}
    return _pretrained[seed]


def run(side: str, args: argparse.Namespace, seed: int, root: Path) -> dict:
    """Train and evaluate one side from ``seed``; the final metrics, the process CPU seconds (with ``--pretrain``,
    the backbone's pretraining included) and the wall seconds."""
    spec = DATA[args.data][0]
    model_args = pyramid_args(args) if args.fpn else {"fpn": False, "anchor_sizes": C4_ANCHOR_SIZES,
                                                      "representation_size": args.representation_size}  # fmt: skip
    data = spec.format(images=args.train_images)
    tests = scored_images(args)
    before = pretrain(args, seed, root) if args.pretrain else None
    weights = before["folder"] if before else None
    config = TrainConfig(model="faster_rcnn", data=data, out=str(root / f"{side}-{seed}"), backbone=args.backbone,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, limit_test=tests,
                         model_args=model_args, threads=args.threads, device=args.device, augment=args.augment,
                         warmup_epochs=args.warmup_epochs, backbone_weights=weights, log_every=10**9)  # fmt: skip
    task = None
    if side == "torchvision":
        task = TorchvisionTask(config.resolved())
        task.args = argparse.Namespace(**{**vars(args), "seed": seed, "weights": weights})
    row = timed_fit(config, task)
    if before:
        row.update(pretrain_acc=before["acc"], pretrain_cpu_s=before["cpu_s"], cpu_s=row["cpu_s"] + before["cpu_s"])
    return row


def reevaluate(side: str, args: argparse.Namespace, seed: int, root: Path) -> dict:
    """The kept run ``root/SIDE-SEED`` (trained by this script with the same options and ``--keep root``) evaluated
    again on ``--test-images`` test images, its batch-norm statistics recomputed first as training's end does: its
    metrics and the process CPU seconds of both."""
    folder = root / f"{side}-{seed}"
    tensors, _ = load_checkpoint(folder, "last")
    tests = scored_images(args)
    config = dataclasses.replace(run_config(folder), limit_test=tests, threads=args.threads,
                                 device=args.device).resolved()  # fmt: skip
    task = TorchvisionTask(config) if side == "torchvision" else DetectionTask(config)
    task.args = argparse.Namespace(**{**vars(args), "seed": seed, "weights": None})
    model = task.build_model()
    load_state(model, prefixed(tensors, "model"), folder)
    set_threads(args.threads)
    cpu, wall = time.process_time(), time.perf_counter()
    task.before_eval(model, torch.device(args.device))  # the batch-norm statistics, as at the end of training
    metrics = evaluate(task, model, "test", device=torch.device(args.device), batch_size=config.batch_size)
    return {**metrics, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "steps": 0}


def evaluation_table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown rows of the evaluation again: mean ± spread over seeds per side, and the ratio ours / torchvision."""
    keys = ("voc_map50", "coco_ap", "coco_ap50")
    lines = ["| detector | VOC mAP@0.5 | COCO mAP | COCO AP50 |", "|---|---|---|---|"]
    for side, rows in results.items():
        lines.append(f"| {side} | " + " | ".join(mean_spread([r[k] for r in rows]) for k in keys) + " |")
    return lines + ratio_row(results, keys)


def ratio_row(results: dict[str, list[dict]], keys) -> list[str]:
    """The row of ratios ours / torchvision of the seed means of ``keys`` (none unless both sides ran)."""
    if not {"convatlas", "torchvision"} <= set(results):
        return []
    ours, theirs = results["convatlas"], results["torchvision"]
    ratios = [ratio(statistics.fmean(r[k] for r in ours), statistics.fmean(r[k] for r in theirs)) for k in keys]
    return ["| ratio ours / torchvision | " + " | ".join(ratios) + " |"]


def describe(r: dict) -> str:
    before = f" (pretraining: accuracy {r['pretrain_acc']:.4f}, {r['pretrain_cpu_s']:.0f} CPU s)" if "pretrain_acc" \
        in r else ""  # fmt: skip
    return (f"VOC mAP@0.5 {r['voc_map50']:.4f} COCO mAP {r['coco_ap']:.4f} steps {r['steps']} inference "
            f"{1000 * r['cpu_seconds_per_image']:.1f} CPU ms / image{before}")  # fmt: skip


def table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: mean ± spread over seeds per side, and the ratio ours / torchvision."""
    lines = ["| detector | VOC mAP@0.5 | COCO mAP | COCO AP50 | train CPU s | inference CPU ms / image |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for side, rows in results.items():
        lines.append(f"| {side} | {mean_spread([r['voc_map50'] for r in rows])} | "
                     f"{mean_spread([r['coco_ap'] for r in rows])} | {mean_spread([r['coco_ap50'] for r in rows])} | "
                     f"{statistics.fmean(r['cpu_s'] for r in rows):.0f} | "
                     f"{1000 * statistics.fmean(r['cpu_seconds_per_image'] for r in rows):.1f} |")  # fmt: skip
    return lines + ratio_row(results, ("voc_map50", "coco_ap", "coco_ap50", "cpu_s", "cpu_seconds_per_image"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=tuple(DATA), default="fashion-scenes")
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--train-images", type=int, default=6000, help="training scenes or nuclei crops")
    parser.add_argument("--test-images", type=int, help="test scenes (default 200; nuclei: the held-out quadrant)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", action="store_true", help="the data's augmentation (nuclei: the U-Net paper's)")
    parser.add_argument("--c4", dest="fpn", action="store_false", help="the stride-16 map instead of the pyramid")
    parser.add_argument("--representation-size", type=int, default=256, help="the head's width with --c4")
    parser.add_argument("--sides", default="convatlas,torchvision", help="comma-separated: convatlas, torchvision")
    parser.add_argument(
        "--backbone-kwargs", type=json.loads, help='the backbone\'s keywords, JSON: {"width_mult": 0.125}'
    )
    parser.add_argument("--anchor-sizes", type=float, nargs="+", help="one anchor size per pyramid level (pixels)")
    parser.add_argument("--fpn-channels", type=int, help=f"the pyramid's channels (default {SMALL['fpn_channels']})")
    parser.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up of the detector's training")
    parser.add_argument(
        "--pretrain",
        action="store_true",
        help="pretrain the backbone on Fashion-MNIST per seed (CPU time counted in each row)",
    )
    parser.add_argument(
        "--reevaluate",
        metavar="DIR",
        help="evaluate the runs kept in DIR (--keep DIR, the same options) on --test-images again",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_images, args.seeds, args.test_images = 8, args.seeds[:1], 2
    check_out(args)
    sides = choose(parser, "--sides", args.sides, ("convatlas", "torchvision"))
    channels = args.fpn_channels or SMALL["fpn_channels"]
    print(machine_line(f"{args.backbone} {args.backbone_kwargs or ''}, {'FPN' if args.fpn else 'C4'}, anchors "
                       f"{args.anchor_sizes or 'default'}, FPN channels {channels}, pretrain {args.pretrain}; "
                       f"{args.data}: {args.train_images} training images x {args.epochs} epochs, batch "
                       f"{args.batch_size}, lr {args.lr}, warm-up {args.warmup_epochs} epochs, augment {args.augment}, "
                       f"seeds {args.seeds}, threads {args.threads}"))  # fmt: skip
    if args.reevaluate is not None:
        args.keep = str(args.reevaluate)
        run_all(args, sides, lambda side, seed, root: reevaluate(side, args, seed, root), describe, evaluation_table,
                "convatlas-detection")  # fmt: skip
        return
    run_all(args, sides, lambda side, seed, root: run(side, args, seed, root), describe, table, "convatlas-detection")


if __name__ == "__main__":
    main()
