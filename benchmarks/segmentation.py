"""Our U-Net against ``segmentation_models_pytorch``'s ``Unet`` on the real nuclei image: same budget, seeds, backbone.

Both networks get the same zoo encoder name (``--encoder``; random initialisation, ``encoder_weights=None`` for the
peer), the same training crops of the nuclei training region in the same order (``NucleiSegmentation``, flips,
90-degree rotations and the U-Net paper's elastic deformation), the same optimiser, schedule and number of steps, and
one training function (:func:`train_and_evaluate`). ``--models paper`` adds our unpadded U-Net of the 2015 paper
(narrowed by ``--paper-width``) with its weighted loss and the overlap-tile prediction. Each model is evaluated on
the held-out quadrant: foreground IoU, Dice and instance F1 at IoU 0.5 (connected components of the predicted
foreground against the test nuclei). Prints one row per model with mean and spread over the seeds and the training
time against ours.

    .venv/bin/python benchmarks/segmentation.py --steps 20 --seeds 0 --batch-size 4 --size 64   # smoke test (CPU)
    .venv/bin/python benchmarks/segmentation.py --device cuda --steps 2000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from convatlas.data.augment import unet_augmentation
from convatlas.data.nuclei import IGNORE_INDEX, NucleiSegmentation
from convatlas.files import atomic_write_json, check_output_file
from convatlas.models import create_model
from convatlas.models.tiling import predict_tiled, valid_input_size
from convatlas.models.unet import UNet, output_size
from convatlas.ops.masks import dice, foreground_iou, instance_f1, label_instances
from convatlas.ops.unet_loss import weighted_cross_entropy
from convatlas.utils import resolve_device, set_threads

MODELS = ("ours", "smp", "paper")


def build(name: str, *, encoder: str, paper_width: int) -> nn.Module:
    """A fresh network: ``ours`` (our U-Net decoder on the zoo encoder), ``smp`` (the peer on the same encoder name)
    or ``paper`` (the unpadded 2015 U-Net, widths ``paper_width * (1, 2, 4, 8, 16)``)."""
    if name == "ours":
        return create_model("unet", encoder=encoder, in_channels=1, num_classes=2)
    if name == "smp":
        import segmentation_models_pytorch as smp

        return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=2)
    if name == "paper":
        return UNet(in_channels=1, num_classes=2, widths=tuple(paper_width * 2**i for i in range(5)))
    raise ValueError(f"--models: unknown model {name!r} (known: {', '.join(MODELS)})")


def _is_valid(model: nn.Module) -> bool:
    return getattr(model, "padding", None) == "valid" and getattr(model, "encoder", None) is None


def crop_geometry(model: nn.Module, size: int) -> tuple[int, int]:
    """``(mask size, context)`` of the training crops: ``size`` without context for a padded network; for the
    unpadded U-Net the largest valid output not above ``size`` (at least the smallest one) and its border loss."""
    if not _is_valid(model):
        return size, 0
    levels = len(model.feature_info)
    side = valid_input_size(1, levels=levels)
    while output_size(valid_input_size(side + 1, levels=levels), levels=levels) <= size:
        side = valid_input_size(side + 1, levels=levels)
    out = output_size(side, levels=levels)
    return out, (side - out) // 2


@torch.no_grad()
def evaluate(model: nn.Module, test_set: NucleiSegmentation, *, device: torch.device) -> dict[str, float]:
    """Foreground IoU, Dice and instance F1 (IoU 0.5) on the held-out quadrant."""
    image, target = test_set[0]
    x = ((image - test_set.mean[0]) / test_set.std[0])[None].to(device)
    model.eval()
    scores = predict_tiled(model, x) if _is_valid(model) else model(x)
    pred = scores.argmax(1)[0].cpu()
    mask = target["mask"]
    ignore = mask == IGNORE_INDEX
    instances = instance_f1(label_instances(pred), target["instances"], ignore=ignore)
    return {
        "fg_iou": foreground_iou(pred, mask),
        "dice": dice(pred, mask),
        "instance_f1": instances.f1,
        "matched_iou": instances.matched_iou,
    }


def train_and_evaluate(name: str, *, args: argparse.Namespace, seed: int, device: torch.device) -> dict[str, float]:
    """Train one network for ``args.steps`` steps from ``seed`` and evaluate it: the one loop of every model."""
    torch.manual_seed(seed)
    model = build(name, encoder=args.encoder, paper_width=args.paper_width).to(device)
    size, context = crop_geometry(model, args.size)
    weighted = name == "paper" or args.weighted
    train_set = NucleiSegmentation("train", size=size, context=context, num_samples=args.steps * args.batch_size,
                                   seed=seed, weights=weighted, transform=unet_augmentation())  # fmt: skip
    test_set = NucleiSegmentation("test", instances=True)
    loader = DataLoader(train_set, batch_size=args.batch_size, num_workers=args.workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))
    )
    model.train()
    start = time.perf_counter()
    last = float("nan")
    for x, target in loader:
        mask, weight = (target["mask"], target["weight"]) if weighted else (target, None)
        x = ((x - train_set.mean[0]) / train_set.std[0]).to(device)
        loss = weighted_cross_entropy(model(x), mask.to(device), None if weight is None else weight.to(device),
                                      ignore_index=IGNORE_INDEX)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        last = loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = evaluate(model, test_set, device=device)
    params = sum(p.numel() for p in model.parameters())
    return {**result, "train_s": seconds, "final_loss": last, "params": params, "crop": size, "context": context}


def _summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="ours,smp", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--encoder", default="mobilenet_v2", help="a zoo encoder that smp also has")
    parser.add_argument("--paper-width", type=int, default=16, help="first width of the 'paper' U-Net (64 in it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="side of the training crops' masks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--weighted", action="store_true", help="U-Net's weighted loss for every model")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core)")
    parser.add_argument("--out", help="write the per-seed results as JSON")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.out:
        check_output_file(args.out, "--out", overwrite=args.overwrite)
    set_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            parser.error(f"--models: unknown model {n!r} (known: {', '.join(MODELS)})")
    import segmentation_models_pytorch as smp

    print(f"{time.strftime('%Y-%m-%d %H:%M')} device {device} ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, smp {smp.__version__}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    print(f"encoder {args.encoder}, {args.steps} steps x batch {args.batch_size}, crops {args.size}, "
          f"seeds {args.seeds}")  # fmt: skip
    results: dict[str, list[dict]] = {n: [] for n in names}
    for seed in args.seeds:
        for n in names:
            results[n].append(train_and_evaluate(n, args=args, seed=seed, device=device))
            r = results[n][-1]
            print(f"  seed {seed} {n:6s} fg IoU {r['fg_iou']:.4f} Dice {r['dice']:.4f} F1 {r['instance_f1']:.4f} "
                  f"loss {r['final_loss']:.4f} {r['train_s']:.1f}s")  # fmt: skip
    base = statistics.fmean(r["train_s"] for r in results[names[0]])
    print(f"\n| model | params | crop (+context) | fg IoU | Dice | instance F1 | train s | time / {names[0]} |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        rows = results[n]
        seconds = statistics.fmean(r["train_s"] for r in rows)
        print(f"| {n} | {rows[0]['params']:,} | {rows[0]['crop']} (+{rows[0]['context']}) | "
              f"{_summary([r['fg_iou'] for r in rows])} | {_summary([r['dice'] for r in rows])} | "
              f"{_summary([r['instance_f1'] for r in rows])} | {seconds:.1f} | {seconds / base:.2f} |")  # fmt: skip
    if args.out:
        atomic_write_json(args.out, {"args": vars(args), "device": str(device), "results": results})


if __name__ == "__main__":
    main()
