"""The R-CNN lineage on fashion-scenes, three seeds, and the measurement that explains its ranking.

R-CNN, Fast R-CNN and Faster R-CNN (on the one stride-16 map of the paper, "C4", and on a feature pyramid, the
engine's default for small objects) train in the convatlas training engine with the same backbone
(``mobilenet_v3_small`` from scratch), data, optimiser (AdamW, lr 1e-3, weight decay 1e-4, cosine decay, gradient clip
10), batch (4) and number of steps (one pass over ``--train-images`` scenes of 128x128), each run what ``convatlas
train --model NAME --data fashion-scenes:canvas=128,num_images=N --limit-test 200 --epochs 1 --seed S`` runs (plus
``--model-arg fpn=False`` for C4). Selective search (fast mode, at most 300 boxes) is computed once per image inside
each run, and its time is part of the run's CPU time and of the time per test image, as in the papers.

The explanation (``--explain``, no extra training): each trained model's detections on the test scenes are scored
again with every class merged into one (class-agnostic NMS at 0.5, then VOC AP@0.5): how well a detector *finds*
objects, whatever their class. Beside the usual VOC mAP@0.5, it separates finding from classifying, and the AP of
the four upper-body classes (T-shirt/top, pullover, coat, shirt), which Fashion-MNIST classifiers confuse most, shows
where the classification is lost.

    .venv/bin/python benchmarks/lineage.py --seeds 0 1 2 --threads 1 --explain
    .venv/bin/python benchmarks/lineage.py --quick --explain      # a few steps of each, to check the script
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from convatlas.data.detection import build_detection_dataset
from convatlas.detection.evaluation import voc_evaluate
from convatlas.detection.proposals import selective_search
from convatlas.ops.boxes import batched_nms
from convatlas.train import TrainConfig, load_model
from engine_runs import add_arguments, check_out, choose, machine_line, mean_spread, run_all, timed_fit

DETECTORS = {
    "rcnn": ("R-CNN", "rcnn", {}),
    "fast_rcnn": ("Fast R-CNN", "fast_rcnn", {}),
    "faster_c4": ("Faster R-CNN, C4", "faster_rcnn", {"fpn": False}),
    "faster_fpn": ("Faster R-CNN, FPN", "faster_rcnn", {}),
}
UPPER_BODY = ("T-shirt/top", "Pullover", "Coat", "Shirt")


def config_of(name: str, args: argparse.Namespace, seed: int, out: Path) -> TrainConfig:
    _, model, model_args = DETECTORS[name]
    return TrainConfig(model=model, data=f"fashion-scenes:canvas=128,num_images={args.train_images}", out=str(out),
                       model_args=model_args, epochs=1, batch_size=4, seed=seed, limit_test=args.test_images,
                       threads=args.threads, device=args.device, log_every=10**9)  # fmt: skip


@torch.no_grad()
def explain(run: Path, config: TrainConfig) -> dict[str, float]:
    """Class-agnostic VOC AP@0.5 and the per-class AP of the trained model in ``run`` on the test scenes."""
    model, record = load_model(run, tag="last")
    test = build_detection_dataset(config.data, "test", limit=config.limit_test)
    detections, targets = [], []
    for i in range(len(test)):
        image, target = test[i]
        extra = {}
        if record.model.name in ("rcnn", "fast_rcnn"):
            extra["proposals"] = [selective_search(image, max_proposals=config.max_proposals or 300)]
        found = model([image], **extra)[1][0]
        detections.append(found)
        targets.append(target)
    by_class = voc_evaluate(detections, targets, num_classes=test.num_classes)
    agnostic = []
    for d in detections:
        keep = batched_nms(d["boxes"], d["scores"], torch.zeros_like(d["labels"]), 0.5)
        agnostic.append({"boxes": d["boxes"][keep], "scores": d["scores"][keep], "labels": torch.ones_like(keep)})
    merged = [{"boxes": t["boxes"], "labels": torch.ones_like(t["labels"])} for t in targets]
    names = test.classes
    per_class = {names[int(k)]: float(v) for k, v in by_class["ap"].items()}
    upper = [v for n, v in per_class.items() if n in UPPER_BODY]  # classes without test objects are left out
    other = [v for n, v in per_class.items() if n not in UPPER_BODY]
    return {
        "agnostic_ap50": voc_evaluate(agnostic, merged, num_classes=1)["map"],
        "upper_body_ap50": statistics.fmean(upper) if upper else float("nan"),
        "other_ap50": statistics.fmean(other) if other else float("nan"),
        "per_class": per_class,
    }


def run(name: str, args: argparse.Namespace, seed: int, root: Path) -> dict:
    out = root / f"{name}-{seed}"
    config = config_of(name, args, seed, out)
    row = timed_fit(config)
    if args.explain:
        row.update(explain(out, config))
    return row


def table(results: dict[str, list[dict]], explained: bool) -> list[str]:
    head = "| detector | steps | train CPU s | VOC mAP@0.5 | COCO mAP | CPU ms / image |"
    rule = "|---|---|---|---|---|---|"
    if explained:
        head += " class-agnostic AP@0.5 | upper-body AP@0.5 | other classes AP@0.5 |"
        rule += "---|---|---|"
    lines = [head, rule]
    for name, rows in results.items():
        line = (f"| {DETECTORS[name][0]} | {rows[0]['steps']} | {statistics.fmean(r['cpu_s'] for r in rows):.0f} | "
                f"{mean_spread([r['voc_map50'] for r in rows])} | {mean_spread([r['coco_ap'] for r in rows])} | "
                f"{1000 * statistics.fmean(r['cpu_seconds_per_image'] for r in rows):.0f} |")  # fmt: skip
        if explained:
            line += (f" {mean_spread([r['agnostic_ap50'] for r in rows])} | "
                     f"{mean_spread([r['upper_body_ap50'] for r in rows])} | "
                     f"{mean_spread([r['other_ap50'] for r in rows])} |")  # fmt: skip
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectors", default=",".join(DETECTORS), help=f"comma-separated: {', '.join(DETECTORS)}")
    parser.add_argument("--train-images", type=int, default=2400, help="training scenes, seen once (batch 4)")
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--explain", action="store_true", help="class-agnostic and upper-body AP of each model")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_images, args.test_images, args.seeds = 8, 4, args.seeds[:1]
    check_out(args)
    names = choose(parser, "--detectors", args.detectors, DETECTORS)
    print(machine_line(f"mobilenet_v3_small; fashion-scenes 128 px: {args.train_images} training scenes once, batch "
                       f"4, {args.test_images} test scenes; seeds {args.seeds}, threads {args.threads}"))  # fmt: skip

    def describe(r: dict) -> str:
        extra = (
            f" class-agnostic {r['agnostic_ap50']:.4f} upper-body {r['upper_body_ap50']:.4f}" if args.explain else ""
        )
        return f"VOC mAP@0.5 {r['voc_map50']:.4f} COCO mAP {r['coco_ap']:.4f}{extra}"

    run_all(
        args,
        names,
        lambda name, seed, root: run(name, args, seed, root),
        describe,
        lambda results: table(results, args.explain),
        "convatlas-lineage",
    )


if __name__ == "__main__":
    main()
