"""The main job against a classic peer: time to 91% and 92% test accuracy on Fashion-MNIST, side by side in one run.

Two trainings on the same data (the full Fashion-MNIST from ``convatlas.data``, 60,000 training and 10,000 test images
at 28x28) with the same number of CPU threads:

- the classic: the network of PyTorch's MNIST example (``examples/mnist``), written here from its description: conv
  3x3 to 32 channels, ReLU, conv 3x3 to 64, ReLU, 2x2 max pool, dropout 0.25, linear to 128, ReLU, dropout 0.5,
  linear to 10; Adadelta at lr 1.0, the rate multiplied by 0.7 after every epoch (``StepLR``), batches of 64, seed 1,
  up to 14 epochs (the example's), stopped once it has reached the highest target. Its batches are sliced from the
  in-memory set, which is faster than the example's per-item DataLoader (the peer is not slowed down), and normalised
  with Fashion-MNIST's mean and standard deviation (the example uses MNIST's).
- ours: ``make demo``'s command (its ``DEMO_ARGS``, read from the Makefile), run as ``convatlas train`` in a child
  process with ``--threads`` set to the same count.

Both are evaluated on the whole test set after every epoch; the clocks count training only (evaluation, checkpoints
and start-up excluded: ours reads the engine's ``train_seconds`` from ``metrics.jsonl``). The time to a target is the
training time at the end of the first epoch whose test accuracy reaches it. Printed: one line per epoch, then the
times to 91% and 92% and the ratio ours / classic (below 1: ours is faster).

    .venv/bin/python benchmarks/main_job.py                  # the full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/main_job.py --quick          # a dry run on a few hundred images (seconds)
    .venv/bin/python benchmarks/main_job.py --frontier       # each recipe of FRONTIER (about 16 minutes)
    .venv/bin/python benchmarks/main_job.py --throughput     # images/s of single training steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.data import build_dataset
from convatlas.utils import set_threads, usable_cores

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (0.91, 0.92)


class ClassicNet(nn.Module):
    """The network of PyTorch's MNIST example.

    Shapes:
        x (Tensor[N, 1, 28, 28]) -> Tensor[N, 10] (logits)
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))  # (N, 32, 26, 26)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 12, 12)
        x = torch.flatten(self.dropout1(x), 1)  # (N, 9216)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


def demo_args(makefile: Path = ROOT / "Makefile") -> list[str]:
    """The options of ``make demo``'s ``convatlas train``: the Makefile's ``DEMO_ARGS`` (continuation lines joined).

    Raises:
        ValueError: the Makefile defines no ``DEMO_ARGS``.
    """
    lines = makefile.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("DEMO_ARGS"):
            text = line.split("=", 1)[1]
            while text.rstrip().endswith("\\"):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i]
            return shlex.split(text)
    raise ValueError(f"{makefile}: no DEMO_ARGS")


# The recipes measured for the frontier of docs/benchmarks.md (``--frontier``): changes to ``DEMO_ARGS`` (ResNet-9 at
# width 0.125, SGD, batch 256), or a whole argument list. Each runs to its own last epoch (the cosine schedule ends
# there); every epoch is a point (training seconds, test accuracy).
MOBILENET_V2_RECIPE = ["--model", "mobilenet_v2", "--model-arg", "width_mult=0.5", "--data", "fashion-mnist",
                       "--batch-size", "128", "--opt", "adamw", "--lr", "0.004", "--weight-decay", "0.05",
                       "--warmup-epochs", "0.3", "--label-smoothing", "0.1", "--channels-last"]  # fmt: skip
FRONTIER = {
    "width 0.125, 3 epochs": {"--epochs": "3"},
    "width 0.125, 2 epochs": {"--epochs": "2"},
    "width 0.125, 4 epochs": {"--epochs": "4"},
    "width 0.25, 2 epochs": {"--model-arg": "width_mult=0.25", "--epochs": "2"},
    "width 0.25, 3 epochs": {"--model-arg": "width_mult=0.25", "--epochs": "3"},
    "width 0.125, 3 epochs, no channels-last": {"--epochs": "3", "--channels-last": None},
    "width 0.125, 3 epochs, batch 128": {"--epochs": "3", "--batch-size": "128"},
    "width 0.125, 3 epochs, batch 512, lr 0.4": {"--epochs": "3", "--batch-size": "512", "--lr": "0.4"},
    "width 0.125, 3 epochs, AdamW lr 0.004, weight decay 0.05": {
        "--epochs": "3",
        "--opt": "adamw",
        "--lr": "0.004",
        "--weight-decay": "0.05",
    },
    "width 0.125, 3 epochs, inputs resized to 20x20": {"--epochs": "3", "--image-size": "20"},
    "MobileNet v2 width 0.5, the earlier demo's recipe, 4 epochs": {"": MOBILENET_V2_RECIPE, "--epochs": "4"},
}


def candidate_args(base: list[str], changes: dict) -> list[str]:
    """``base`` (or ``changes[""]``, a whole list) with each ``option: value`` of ``changes`` applied; ``None``
    removes a flag."""
    args = list(changes.get("", base))
    for option, value in changes.items():
        if not option:
            continue
        args = [a for a in args if a != option] if value is None else with_option(args, option, value)
    return args


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option`` set to ``value``: replaced where it is given (the CLI refuses an option twice), else
    appended."""
    if option in args:
        i = args.index(option)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, option, value]


def _normalize(x: Tensor, mean, std) -> Tensor:
    return (x - mean[0]) / std[0]


def accuracy(model: nn.Module, test, batch: int = 1000) -> float:
    """Test accuracy of ``model`` on the whole in-memory split ``test``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), batch):
            x, y = test.get_batch(torch.arange(start, min(start + batch, len(test))))
            correct += (model(_normalize(x, test.mean, test.std)).argmax(1) == y).sum().item()
    model.train()
    return correct / len(test)


def run_classic(*, limit_train: int | None, limit_test: int | None, max_epochs: int, stop_at: float) -> list[dict]:
    """Train the classic network; one ``{"epoch", "train_seconds", "acc"}`` per epoch."""
    train = build_dataset("fashion-mnist", split="train", limit=limit_train)
    test = build_dataset("fashion-mnist", split="test", limit=limit_test)
    torch.manual_seed(1)
    model = ClassicNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    generator = torch.Generator().manual_seed(1)
    records, seconds = [], 0.0
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(len(train), generator=generator)
        start = time.perf_counter()
        for i in range(0, len(train), 64):
            x, y = train.get_batch(order[i : i + 64])
            loss = F.cross_entropy(model(_normalize(x, train.mean, train.std)), y)  # = the example's nll(log_softmax)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        seconds += time.perf_counter() - start
        records.append({"epoch": epoch, "train_seconds": seconds, "acc": accuracy(model, test)})
        print(f"classic epoch {epoch}: test acc {records[-1]['acc']:.4f}, {seconds:.1f} s of training", flush=True)
        if records[-1]["acc"] >= stop_at:
            break
    return records


def run_ours(args: list[str], *, threads: int, out: Path) -> list[dict]:
    """Run ``convatlas train ARGS --threads THREADS --out OUT``; its epoch records from ``metrics.jsonl``."""
    cmd = [sys.executable, "-m", "convatlas", "train", *args, "--threads", str(threads), "--out", str(out)]
    print("ours:", shlex.join(["convatlas", *cmd[3:]]), flush=True)
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    subprocess.run(cmd, check=True, env=env)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line) for line in lines if json.loads(line)["kind"] == "epoch"]
    return [{"epoch": r["epoch"], "train_seconds": r["train_seconds"], "acc": r["test_acc"]} for r in epochs]


def time_to(records: list[dict], target: float) -> float | None:
    """Training seconds at the end of the first epoch whose test accuracy reaches ``target`` (``None``: never)."""
    return next((r["train_seconds"] for r in records if r["acc"] >= target), None)


def frontier(base: list[str], *, threads: int, quick: bool, only: list[str] | None = None) -> int:
    """Train every recipe of :data:`FRONTIER` (or those named in ``only``) one after the other; a table of (recipe,
    epoch, seconds, accuracy)."""
    unknown = sorted(set(only or ()) - set(FRONTIER))
    if unknown:
        raise SystemExit(f"--only: no recipe {unknown[0]!r} (recipes: {', '.join(FRONTIER)})")
    rows = []
    for name, changes in FRONTIER.items():
        if only and name not in only:
            continue
        args = candidate_args(base, changes)
        if quick:
            args = with_option(with_option(args, "--limit-train", "512"), "--limit-test", "256")
        with tempfile.TemporaryDirectory() as tmp:
            rows += [(name, r) for r in run_ours(args, threads=threads, out=Path(tmp) / "run")]
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("| recipe | epoch | training seconds | test accuracy |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['epoch']} | {r['train_seconds']:.1f} | {r['acc']:.4f} |")
    return 0


def throughput(*, steps: int = 20, warmup: int = 3, batch: int = 128) -> int:
    """Training images/s of single steps (forward, backward, SGD) of the demo's model at two widths, the earlier demo's
    MobileNet v2 and the classic network, on random 28x28 inputs, channels-last, at the threads already set."""
    from convatlas.models import create_model

    models = {
        "ResNet-9 width 0.125": lambda: create_model("resnet9", width_mult=0.125, in_channels=1),
        "ResNet-9 width 0.25": lambda: create_model("resnet9", width_mult=0.25, in_channels=1),
        "MobileNet v2 width 0.5": lambda: create_model("mobilenet_v2", width_mult=0.5, num_classes=10, in_channels=1),
        "the classic example's network": ClassicNet,
    }
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=generator)
    for name, build in models.items():
        torch.manual_seed(0)
        model = build().to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        rate = steps * batch / (time.perf_counter() - start)
        print(f"{name}: {rate:,.0f} img/s", flush=True)
    return 0


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="for both (default 0: every usable core)")
    parser.add_argument("--quick", action="store_true", help="a dry run: 512 training and 256 test images, 1 epoch")
    parser.add_argument("--frontier", action="store_true", help="instead: train each recipe of FRONTIER, print the "
                        "test accuracy and training seconds of every epoch")  # fmt: skip
    parser.add_argument("--throughput", action="store_true", help="instead: training images/s of single steps of "
                        "the models compared, at --threads")  # fmt: skip
    parser.add_argument("--only", nargs="+", metavar="RECIPE", help="with --frontier: only these recipes")
    parser.add_argument("--classic-epochs", type=int, default=14, help="at most this many (default 14)")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    ours_args = demo_args()
    limits: dict = {"limit_train": None, "limit_test": None}
    if args.quick:
        limits = {"limit_train": 512, "limit_test": 256}
        for option, value in (("--limit-train", "512"), ("--limit-test", "256"), ("--epochs", "1")):
            ours_args = with_option(ours_args, option, value)
        args.classic_epochs = 1
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {_cpu_name()}, {usable_cores()} usable cores, "
          f"threads {threads}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at the start",
          flush=True)  # fmt: skip
    if args.throughput:
        return throughput(steps=2, warmup=1, batch=16) if args.quick else throughput()
    if args.frontier:
        return frontier(ours_args, threads=threads, quick=args.quick, only=args.only)
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(ours_args, threads=threads, out=Path(tmp) / "run")
    for r in ours:
        print(f"ours epoch {r['epoch']}: test acc {r['acc']:.4f}, {r['train_seconds']:.1f} s of training")
    classic = run_classic(max_epochs=args.classic_epochs, stop_at=max(TARGETS), **limits)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    for target in TARGETS:
        a, b = time_to(ours, target), time_to(classic, target)
        ratio = "-" if a is None or b is None else f"{a / b:.2f}"
        print(f"time to {100 * target:.0f}%: ours {_seconds(a)}, classic {_seconds(b)}, ratio ours/classic {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
