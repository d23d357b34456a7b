"""Training throughput: zoo models against timm's same models, with the same loop, in one run.

The loop is the engine's own pieces (``prepare_inputs``, ``loss_fn``, ``build_optimizer``): batches come from a
DataLoader over the dataset, go through normalisation, forward, backward and an SGD step. Two data sources:

- ``fashion-mnist``: the real 28x28 set (1 channel), in memory;
- ``imagefolder``: a generated ImageFolder tree of JPEGs decoded per item (224x224 on CUDA by default), like users'
  own images.

On CUDA the loop runs with bf16 autocast and channels_last; on CPU in float32. Prints images/s per model and the
ratio ours / timm. The CPU defaults are small so that it finishes on a loaded 2-core machine.

    .venv/bin/python benchmarks/train.py                 # CPU: 64x64 folder images, few steps
    .venv/bin/python benchmarks/train.py --device cuda   # GPU: 224x224, more steps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from convatlas.data import build_dataset, collate
from convatlas.models import create_model
from convatlas.train.config import TrainConfig
from convatlas.train.images import loss_fn, prepare_inputs
from convatlas.train.optim import build_optimizer
from convatlas.utils import set_threads

PAIRS = (("mobilenet_v2", "mobilenetv2_100"), ("resnext50_32x4d", "resnext50_32x4d"))


def make_folder(root: Path, *, classes: int, per_class: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def throughput(model, dataset, *, batch_size: int, steps: int, warmup: int, device, image_size, workers: int) -> float:
    config = TrainConfig(model="-", data="-", lr=0.01, opt="sgd", momentum=0.9, weight_decay=5e-4)
    model = model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    model.train()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers, collate_fn=collate,
        persistent_workers=workers > 0,
    )  # fmt: skip
    seen, done, start = 0, 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                if cuda:
                    torch.cuda.synchronize()
                start, seen = time.perf_counter(), 0
            x = prepare_inputs(
                x, mean=dataset.mean, std=dataset.std, image_size=image_size, device=device, channels_last=cuda
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x), y.to(device), label_smoothing=0.0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += x.shape[0]
            done += 1
            if done >= warmup + steps:
                break
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


SOURCES = ("fashion-mnist", "imagefolder")


def run(device: torch.device, *, steps: int, batch: int, size: int, workers: int, sources=SOURCES,
        pairs=PAIRS) -> Iterator[dict]:  # fmt: skip
    """One dict per data source and model pair: ``source``, ``model``, ``timm``, ``ours`` and ``peer`` (img/s)."""
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {}
        if "fashion-mnist" in sources:
            datasets["fashion-mnist"] = (build_dataset("fashion-mnist", split="test"), 1)
        if "imagefolder" in sources:
            folder = make_folder(Path(tmp), classes=4, per_class=max(batch * 2 // 4, 8), size=size)
            datasets[f"imagefolder {size}x{size}"] = (build_dataset(f"imagefolder:{folder}", image_size=size), 3)
        for source, (dataset, channels) in datasets.items():
            for ours_name, timm_name in pairs:
                torch.manual_seed(0)
                ours = create_model(ours_name, num_classes=dataset.num_classes, in_channels=channels)
                theirs = timm.create_model(timm_name, num_classes=dataset.num_classes, in_chans=channels)
                kw = {"batch_size": batch, "steps": steps, "warmup": 2, "device": device, "image_size": None}
                rate_ours = throughput(ours, dataset, workers=workers, **kw)
                rate_timm = throughput(theirs, dataset, workers=workers, **kw)
                yield {"source": source, "model": ours_name, "timm": timm_name, "ours": rate_ours, "peer": rate_timm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int, help="side of the generated folder images")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every usable core)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 3)
    batch = args.batch_size or (128 if cuda else 16)
    size = args.image_size or (224 if cuda else 64)
    set_threads(args.threads)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, timm {timm.__version__}, "
          f"threads {torch.get_num_threads()}, batch {batch}, {steps} timed steps")  # fmt: skip
    for r in run(device, steps=steps, batch=batch, size=size, workers=args.workers):
        print(f"{r['source']:>22} {r['model']:>16}: ours {r['ours']:8.1f} img/s, timm {r['timm']} "
              f"{r['peer']:8.1f} img/s, ratio ours/timm {r['ours'] / r['peer']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
