"""Throughput of the zoo's models against the same architectures from timm, side by side in one run.

For each model, ours and timm's are built with the same architecture (checked by loading timm's weights into ours
where a converter exists), put in the same mode and memory format, and timed alternately, so that load on the
machine hits both alike. Reported: images per second for inference (eval, no grad) and training (forward,
backward, SGD step), and the ratio ours / timm (above 1.0: ours is faster).

GPU (the target setting): bf16 autocast, channels_last, batch 256, 224x224, eager and then ``torch.compile``::

    python benchmarks/models.py --device cuda --compile

CPU (a small version for machines without a GPU)::

    python benchmarks/models.py --device cpu --batch 8 --models mobilenet_v3_small mobilenet_v2 resnext50_32x4d
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import timm
import torch
from torch import nn

from convatlas.models import create_model, load_weights

# Our registry name -> timm's name for the same architecture (and whether timm weights load into ours).
TIMM_NAMES = {
    "mobilenet_v1": "mobilenetv1_100",
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "resnext50_32x4d": "resnext50_32x4d",
    "resnext101_32x8d": "resnext101_32x8d",
    "densenet121": "densenet121",
    "densenet169": "densenet169",
    "densenet201": "densenet201",
    "xception": "legacy_xception",
    "efficientnet_b0": "efficientnet_b0",
    "convnext_tiny": "convnext_tiny",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model: nn.Module, train: bool, device: torch.device, amp: bool):
    """One timed unit of work: a forward (inference) or a forward, backward and SGD step (training)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if train else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if train:
            with autocast:
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                model(x)

    return step


def time_pair(steps, x, y, device, *, warmup: int, iters: int, rounds: int) -> list[float]:
    """Median seconds per step of each function in ``steps``, measured in alternating rounds."""
    for step in steps:
        for _ in range(warmup):
            step(x, y)
    _sync(device)
    samples: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                step(x, y)
            _sync(device)
            samples[i].append((time.perf_counter() - start) / iters)
    return [statistics.median(s) for s in samples]


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    ours = create_model(name)
    theirs = timm.create_model(TIMM_NAMES[name])
    same = "weights load"
    try:
        load_weights(ours, theirs.state_dict(), source="timm")
    except (ValueError, KeyError) as err:  # no timm converter for this family: the parameter counts still compare
        same = f"no weight converter ({type(err).__name__})"
    params = sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters())
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    ours = ours.to(device, memory_format=memory_format)
    theirs = theirs.to(device, memory_format=memory_format)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    rows = []
    for compiled in [False, True] if args.compile else [False]:
        a, b = (torch.compile(ours), torch.compile(theirs)) if compiled else (ours, theirs)
        for train in (False, True):
            a.train(train)
            b.train(train)
            steps = [make_step(a, train, device, args.amp), make_step(b, train, device, args.amp)]
            t_ours, t_timm = time_pair(steps, x, y, device, warmup=args.warmup, iters=args.iters, rounds=args.rounds)
            rows.append(
                {
                    "model": name,
                    "timm": TIMM_NAMES[name],
                    "mode": ("compile " if compiled else "eager ") + ("train" if train else "infer"),
                    "ours": args.batch / t_ours,
                    "peer": args.batch / t_timm,
                    "ratio": t_timm / t_ours,
                    "check": same if params[0] == params[1] else f"params differ {params}",
                }
            )
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(row: dict) -> str:
    return (
        f"| {row['model']} | {row['timm']} | {row['mode']} | {row['ours']:.1f} | {row['peer']:.1f} "
        f"| {row['ratio']:.2f} | {row['check']} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with the device's defaults filled in (what :func:`bench_model` reads)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TIMM_NAMES), choices=list(TIMM_NAMES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on GPU, 8 on CPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 on GPU, 1 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="steps per round; default: 20 on GPU, 2 on CPU")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (256 if gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.iters = args.iters or (20 if gpu else 2)
    args.amp = gpu  # bf16 autocast on the GPU; float32 on CPU
    args.channels_last = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}, timm {timm.__version__}; batch {args.batch}, "
        f"{args.size}x{args.size}, channels_last, {'bf16 autocast' if args.amp else 'float32'}; "
        f"median of {args.rounds} alternating rounds of {args.iters} steps"
    )
    print("| model | timm model | mode | ours img/s | timm img/s | ours/timm | same architecture |")
    print("|---|---|---|---:|---:|---:|---|")
    for model_name in args.models:
        bench_model(model_name, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
