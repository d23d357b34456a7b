"""``convatlas.analysis.summary`` + ``receptive_field`` against ``torchinfo.summary``, side by side in one run.

The model is ConvNeXt-T at 224x224 (ours from the registry when it is registered, and torchvision's), batch 1.
Prints the median time of each side and the ratio ``torchinfo time / our time`` (above 1.0 means ours is faster).
The goal is at most 1 second for our summary plus receptive field, and faster than torchinfo.

Times are this process's CPU time (``time.process_time``, one thread by default), which stays comparable on a machine
loaded by other jobs; wall time is printed too. Our analysis runs on the ``meta`` device (no arithmetic), so the
device of the model does not matter to it; torchinfo runs a real forward pass, on CUDA when ``--device cuda``.

    .venv/bin/python benchmarks/analysis.py [--threads 1] [--repeat 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchinfo
import torchvision

from convatlas.analysis import receptive_field, summary
from convatlas.models import list_models


def _time(fn: Callable[[], object], repeat: int, cuda: bool) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of ``fn`` after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")

    models = {"torchvision convnext_tiny": torchvision.models.convnext_tiny()}
    if "convnext_tiny" in list_models():
        from convatlas.models import create_model

        models["convatlas convnext_tiny"] = create_model("convnext_tiny")
    size = (3, 224, 224)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchinfo {torchinfo.__version__}, "
        f"threads {args.threads}, device {args.device}, repeat {args.repeat} (median)"
    )
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"{'model':28s} {'ours (s)':>10s} {'torchinfo (s)':>14s} {'ratio':>7s}   wall: ours / torchinfo")
    for name, model in models.items():
        model = model.to(args.device)

        def ours(model=model):
            table = summary(model, size)
            field = receptive_field(model, size)
            return table, field

        def peer(model=model):
            return torchinfo.summary(model, input_size=(1, *size), device=args.device, verbose=0, depth=10)

        (ours_cpu, ours_wall), (peer_cpu, peer_wall) = _time(ours, args.repeat, cuda), _time(peer, args.repeat, cuda)
        if cuda:  # a GPU forward pass is mostly waiting: compare wall time there
            ours_cpu, peer_cpu = ours_wall, peer_wall
        table, field = ours()
        print(
            f"{name:28s} {ours_cpu:10.3f} {peer_cpu:14.3f} {peer_cpu / ours_cpu:7.2f}   "
            f"{ours_wall:.3f} / {peer_wall:.3f}"
        )
        print(
            f"{'':28s} MACs {table.total_macs / 1e9:.3f} G, params {table.total_params:,}, "
            f"receptive field {field.size[0]} at {field.layer!r}"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
