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
import statistics
from pathlib import Path

from torch import nn

from convatlas.train import TrainConfig
from convatlas.train.checkpoint import ModelSpec
from convatlas.train.images import SegmentationTask
from engine_runs import add_arguments, check_out, choose, machine_line, mean_spread, ratio, run_all, timed_fit

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
    """Train and evaluate one side from ``seed``: the final test metrics, process CPU and wall seconds, steps."""
    config = config_of(side, args, seed, root / f"{side}-{seed}")
    task = None
    if side == "smp":
        task = SmpTask(config.resolved())
        task.encoder = args.encoder
    return timed_fit(config, task)


def table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: mean ± spread over seeds per side, and the ratios to ``smp`` where it ran."""
    peer = results.get("smp")
    lines = ["| model | fg IoU | Dice | instance F1 | CPU s | fg IoU / smp | CPU / smp |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for side, rows in results.items():
        iou, cpu = statistics.fmean(r["fg_iou"] for r in rows), statistics.fmean(r["cpu_s"] for r in rows)
        ratios = "- | -"
        if peer:
            ratios = (f"{ratio(iou, statistics.fmean(r['fg_iou'] for r in peer), 3)} | "
                      f"{ratio(cpu, statistics.fmean(r['cpu_s'] for r in peer))}")  # fmt: skip
        scores = " | ".join(mean_spread([r[k] for r in rows]) for k in ("fg_iou", "dice", "instance_f1"))
        lines.append(f"| {side} | {scores} | {cpu:.0f} | {ratios} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--encoder", default="mobilenet_v2", help="a zoo encoder that smp also has")
    parser.add_argument("--paper-width", type=int, default=8, help="first width of the 'paper' U-Net (64 in it)")
    parser.add_argument("--paper-levels", type=int, default=5, help="levels of the 'paper' U-Net (5 in it)")
    parser.add_argument("--paper-loss", default="unet-weighted", choices=("unet-weighted", "cross-entropy"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="side of the training crops' masks (the paper's "
                        "unpadded network takes the largest output it can give that is not above it)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.batch_size, args.size = 2, args.seeds[:1], 2, 64
    check_out(args)
    names = choose(parser, "--models", args.models, SIDES)
    import segmentation_models_pytorch as smp

    print(
        machine_line(
            f"encoder {args.encoder}, paper U-Net {args.paper_levels} levels from width {args.paper_width} "
            f"with loss {args.paper_loss}; {args.steps} steps x batch {args.batch_size}, crops {args.size}, "
            f"AdamW lr {args.lr}, seeds {args.seeds}, threads {args.threads}",
            f", smp {smp.__version__}",
        )
    )
    run_all(
        args,
        names,
        lambda side, seed, root: run(side, args, seed, root),
        lambda r: f"fg IoU {r['fg_iou']:.4f} Dice {r['dice']:.4f} F1 {r['instance_f1']:.4f}",
        table,
        "convatlas-segmentation",
    )


if __name__ == "__main__":
    main()
