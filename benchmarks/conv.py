"""convatlas.ops.conv against torch.nn.functional, side by side in one run.

Prints, per case, the median time of ours and of PyTorch (forward, and forward + backward) and the ratio
``PyTorch time / our time`` (above 1.0 means ours is faster). Runs on CPU always and on CUDA when it is present.
On CPU the time is this process's CPU time (``time.process_time``, one thread by default), which stays comparable
on a machine loaded by other jobs; on CUDA it is wall time between synchronisations.

    .venv/bin/python benchmarks/conv.py [--device all|cpu|cuda] [--threads 1] [--repeat 20] [--quick]

``--quick`` runs every case at tiny sizes with three timed calls (a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from convatlas.ops import conv2d, conv_transpose2d, depthwise_conv, pointwise_conv, separable_conv


def _time(fn: Callable[[], torch.Tensor], repeat: int, backward: bool, device: str) -> float:
    """Median seconds of ``fn`` (plus a backward pass when asked), after two warm-up calls."""

    def once() -> None:
        out = fn()
        if backward:
            out.sum().backward()

    for _ in range(2):
        once()
    clock = time.perf_counter if device == "cuda" else time.process_time
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock()
        once()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def cases(device: str, quick: bool) -> list[tuple[str, Callable, Callable, list[torch.Tensor]]]:
    """(name, ours, PyTorch, leaf tensors) for each benchmark case; ``quick``: batch 1 and maps of side 14 / 7."""
    n, big, small = (1, 14, 7) if quick else (8, 56, 28)

    def leaf(*shape):
        return torch.randn(*shape, device=device).requires_grad_()

    x64, w64 = leaf(n, 64, big, big), leaf(64, 64, 3, 3)
    xg, wg = leaf(n, 64, big, big), leaf(64, 2, 3, 3)  # ResNeXt-style groups = 32
    xd, wd = leaf(n, 128, big, big), leaf(128, 1, 3, 3)
    xp, wp = leaf(n, 128, small, small), leaf(256, 128, 1, 1)
    xt, wt = leaf(n, 64, small, small), leaf(64, 32, 4, 4)
    xs, ds, ps = leaf(n, 128, small, small), leaf(128, 1, 3, 3), leaf(128, 128, 1, 1)
    return [
        (
            f"conv2d 3x3 64->64 @{big}",
            lambda: conv2d(x64, w64, None, 1, 1),
            lambda: F.conv2d(x64, w64, None, 1, 1),
            [x64, w64],
        ),
        (
            f"conv2d 3x3 groups=32 @{big}",
            lambda: conv2d(xg, wg, None, 1, 1, 1, 32),
            lambda: F.conv2d(xg, wg, None, 1, 1, 1, 32),
            [xg, wg],
        ),
        (
            f"depthwise 3x3 128 @{big}",
            lambda: depthwise_conv(xd, wd, padding=1),
            lambda: F.conv2d(xd, wd, None, 1, 1, 1, 128),
            [xd, wd],
        ),
        (f"pointwise 128->256 @{small}", lambda: pointwise_conv(xp, wp), lambda: F.conv2d(xp, wp), [xp, wp]),
        (
            f"conv_transpose2d 4x4/2 64->32 @{small}",
            lambda: conv_transpose2d(xt, wt, None, 2, 1),
            lambda: F.conv_transpose2d(xt, wt, None, 2, 1),
            [xt, wt],
        ),
        (
            f"separable 3x3 128->128 @{small}",
            lambda: separable_conv(xs, ds, ps, padding=1),
            lambda: F.conv2d(F.conv2d(xs, ds, None, 1, 1, 1, 128), ps),
            [xs, ds, ps],
        ),
    ]


def run(devices: list[str], quick: bool, repeat: int) -> Iterator[dict]:
    """One dict per case, device and pass: ``device``, ``case``, ``pass`` (``fwd``/``fwd+bwd``), ``ours_ms``,
    ``torch_ms``."""
    for device in devices:
        for name, ours, reference, leaves in cases(device, quick):
            for backward in (False, True):
                t_ours = _time(ours, repeat, backward, device)
                t_ref = _time(reference, repeat, backward, device)
                for t in leaves:
                    t.grad = None
                label = "fwd+bwd" if backward else "fwd"
                yield {"device": device, "case": name, "pass": label, "ours_ms": t_ours * 1e3, "torch_ms": t_ref * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="default: CPU, and CUDA if any")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per case (default 20)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 3 timed calls (a smoke run)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    repeat = 3 if args.quick else args.repeat
    devices = [args.device] if args.device != "all" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), float32, median of {repeat} (CPU: process time)")
    header = f"{'device':6} {'case':36} {'pass':9} {'ours ms':>9} {'torch ms':>9} {'ratio':>6}"
    print(header)
    for r in run(devices, args.quick, repeat):
        t_ours, t_ref = r["ours_ms"], r["torch_ms"]
        print(f"{r['device']:6} {r['case']:36} {r['pass']:9} {t_ours:9.2f} {t_ref:9.2f} {t_ref / t_ours:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
