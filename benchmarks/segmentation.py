"""Our U-Net against ``segmentation_models_pytorch``'s ``Unet`` on the real nuclei image: same budget, seeds, backbone.

Every model trains in the convatlas training engine (:func:`convatlas.train.fit`) on the same ``nuclei`` training
crops (random crops of the three training quadrants, drawn from the seed) in the same order with the same
augmentation (the U-Net paper's flips, 90-degree rotations and elastic deformation), optimiser (AdamW), cosine
schedule and number of steps, and is evaluated the same way on the held-out quadrant: foreground IoU, Dice, and the
instance F1 at IoU 0.5 of the connected components of the predicted foreground. The sides:

- ``ours``: our ``unet`` decoder on the zoo's ``mobilenet_v2`` (``--encoder``), what ``convatlas train --model unet
  --model-arg encoder=mobilenet_v2 --data nuclei`` runs;
- ``smp``: ``segmentation_models_pytorch.Unet`` on its ``mobilenet_v2`` encoder with ``encoder_weights=None`` (random
  initialisation, as ours), given to the engine in place of our model;
- ``paper``: our unpadded U-Net of the 2015 paper, five levels (``--paper-levels``) narrowed to ``--paper-width`` x
  (1, 2, 4, 8, 16) channels, with the paper's weighted loss (w0 = 10, sigma = 5 px; ``--paper-loss``), trained on
  crops with 92 pixels of image context around the part it predicts and evaluated by the overlap-tile strategy:
  ``convatlas train --model unet --model-arg "widths=(8,16,32,64,128)" --loss unet-weighted --data nuclei``.

"Same backbone" holds for ``ours`` and ``smp``: the same MobileNetV2 architecture as encoder (each library's own
implementation, both from scratch), each library's own decoder. Prints the date, machine, load and versions, one line
per run, then mean and spread over the seeds and the ratio to ``smp`` (foreground IoU and process CPU time).

    .venv/bin/python benchmarks/segmentation.py --seeds 0 1 2 --threads 1
    .venv/bin/python benchmarks/segmentation.py --quick        # a few steps of each, to check the script
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from convatlas.files import atomic_write_json, check_output_file
from convatlas.train import TrainConfig, fit
from convatlas.train.checkpoint import ModelSpec
from convatlas.train.images import SegmentationTask

SIDES = ("ours", "smp", "paper")


class SmpTask(SegmentationTask):
    """The engine's segmentation task with ``segmentation_models_pytorch.Unet`` in place of our model."""

    encoder = "mobilenet_v2"

    def build_model(self) -> nn.Module:
        import segmentation_models_pytorch as smp

        return smp.Unet(encoder_name=self.encoder, encoder_weights=None, in_channels=self.train_set.in_channels,
                        classes=self.train_set.num_classes)  # fmt: skip

    def model_spec(self) -> ModelSpec:
        return ModelSpec("segmentation_models_pytorch.Unet", {"encoder_name": self.encoder})


def config_of(side: str, args: argparse.Namespace, seed: int, out: Path) -> TrainConfig:
    """The engine's configuration of one side: everything but the model and the loss is shared."""
    model_args = {"encoder": args.encoder}
    loss = None
    if side == "paper":
        model_args = {"widths": tuple(args.paper_width * 2**i for i in range(args.paper_levels))}
        loss = args.paper_loss
    data = f"nuclei:size={args.size},samples={args.steps * args.batch_size},seed={seed}"
    return TrainConfig(model="unet", data=data, out=str(out), model_args=model_args, loss=loss, epochs=1,
                       batch_size=args.batch_size, opt="adamw", lr=args.lr, weight_decay=args.weight_decay,
                       warmup_epochs=0.0, augment=True, seed=seed, threads=args.threads, device=args.device,
                       log_every=10**9)  # fmt: skip


def run(side: str, args: argparse.Namespace, seed: int, root: Path) -> dict:
    """Train and evaluate one side from ``seed``: the final test metrics, process CPU and wall seconds, parameters."""
    config = config_of(side, args, seed, root / f"{side}-{seed}")
    task = None
    if side == "smp":
        task = SmpTask(config.resolved())
        task.encoder = args.encoder
    cpu, wall = time.process_time(), time.perf_counter()
    result = fit(config, task)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    final = {k.removeprefix("test_"): v for k, v in result.final.items()}
    return {**final, "cpu_s": cpu, "wall_s": wall, "steps": result.global_step}


def runs_folder(keep: str | None, name: str):
    """``keep`` (the run folders stay), or a temporary folder removed afterwards."""
    return contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix=f"convatlas-{name}-")


def _mean_spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: mean ± spread over seeds per side, and the ratios to ``smp`` where it ran."""
    peer = results.get("smp")
    lines = ["| model | fg IoU | Dice | instance F1 | CPU s | fg IoU / smp | CPU / smp |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for side, rows in results.items():
        iou, cpu = statistics.fmean(r["fg_iou"] for r in rows), statistics.fmean(r["cpu_s"] for r in rows)
        ratios = "- | -"
        if peer:
            ratios = (f"{iou / statistics.fmean(r['fg_iou'] for r in peer):.3f} | "
                      f"{cpu / statistics.fmean(r['cpu_s'] for r in peer):.2f}")  # fmt: skip
        scores = " | ".join(_mean_spread([r[k] for r in rows]) for k in ("fg_iou", "dice", "instance_f1"))
        lines.append(f"| {side} | {scores} | {cpu:.0f} | {ratios} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--encoder", default="mobilenet_v2", help="a zoo encoder that smp also has")
    parser.add_argument("--paper-width", type=int, default=8, help="first width of the 'paper' U-Net (64 in it)")
    parser.add_argument("--paper-levels", type=int, default=5, help="levels of the 'paper' U-Net (5 in it)")
    parser.add_argument("--paper-loss", default="unet-weighted", choices=("unet-weighted", "cross-entropy"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="side of the training crops' masks (the paper's "
                        "unpadded network takes the largest output it can give that is not above it)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each side and one seed")
    parser.add_argument("--keep", help="keep the run folders (checkpoints, metrics.jsonl) in this folder")
    parser.add_argument("--out", help="also write every run's metrics to this JSON file")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.batch_size, args.size = 2, args.seeds[:1], 2, 64
    if args.out:
        check_output_file(args.out, "--out", overwrite=args.overwrite)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in SIDES:
            parser.error(f"--models: unknown model {n!r} (known: {', '.join(SIDES)})")
    import segmentation_models_pytorch as smp

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {load:.1f}; torch {torch.__version__}, torchvision {torchvision.__version__}, smp {smp.__version__}; "
          f"encoder {args.encoder}, paper U-Net {args.paper_levels} levels from width {args.paper_width} with loss "
          f"{args.paper_loss}; {args.steps} steps x batch {args.batch_size}, "
          f"crops {args.size}, AdamW lr {args.lr}, seeds {args.seeds}, threads {args.threads}")  # fmt: skip
    results: dict[str, list[dict]] = {n: [] for n in names}
    with runs_folder(args.keep, "segmentation") as tmp:
        for seed in args.seeds:
            for n in names:
                r = run(n, args, seed, Path(tmp))
                results[n].append(r)
                print(f"  seed {seed} {n:6s} fg IoU {r['fg_iou']:.4f} Dice {r['dice']:.4f} F1 {r['instance_f1']:.4f} "
                      f"CPU {r['cpu_s']:.0f} s (wall {r['wall_s']:.0f} s)", flush=True)  # fmt: skip
    print()
    print("\n".join(table(results)))
    if args.out:
        atomic_write_json(args.out, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
