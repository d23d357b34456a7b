"""The main job and its side-by-side benchmark: ``make demo``'s options form a valid run of the chosen recipe, the
classic peer is the network of PyTorch's MNIST example (its published size, 1,199,882 parameters), and
``benchmarks/main_job.py --quick`` goes through both trainings. Timings are not checked here: they are in the docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark
from convatlas.cli import build_parser
from convatlas.cli.train import _typed_config
from convatlas.train import TrainConfig

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "main_job.py"


@pytest.fixture(scope="module")
def main_job():
    return load_benchmark("main_job")


def _config(args: list[str]) -> TrainConfig:
    parsed = build_parser().parse_args(["train", *args, "--out", "runs/x"])
    return TrainConfig(**_typed_config(parsed)).resolved()


def test_make_demo_runs_the_chosen_recipe_on_every_core(main_job):
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^DEMO_THREADS \?= 0$", makefile, flags=re.M)
    assert "--threads $(DEMO_THREADS)" in makefile
    config = _config(main_job.demo_args())
    assert (config.model, config.model_args, config.data) == ("resnet9", {"width_mult": 0.125}, "fashion-mnist")
    assert (config.epochs, config.batch_size, config.opt, config.lr, config.schedule) == (4, 256, "sgd", 0.2, "cosine")
    assert (config.warmup_epochs, config.label_smoothing, config.channels_last) == (0.3, 0.1, True)
    assert config.threads == 0 and config.limit_train is None and config.limit_test is None and not config.augment


def test_every_frontier_recipe_is_a_valid_run(main_job):
    base = main_job.demo_args()
    configs = {name: _config(main_job.candidate_args(base, changes)) for name, changes in main_job.FRONTIER.items()}
    demo = _config(base)
    assert configs["width 0.125, 4 epochs"] == demo
    for name, config in configs.items():
        if name.startswith("width "):  # each states its width and epochs
            width, epochs = re.match(r"width ([\d.]+), (\d) epochs", name).groups()
            assert (config.model_args, config.epochs) == ({"width_mult": float(width)}, int(epochs)), name
    assert configs["width 0.125, 3 epochs, no channels-last"].channels_last is False
    assert configs["width 0.125, 3 epochs, inputs resized to 20x20"].image_size == 20
    assert configs["width 0.125, 3 epochs, batch 512, lr 0.4"].batch_size == 512
    old = configs["MobileNet v2 width 0.5, the earlier demo's recipe, 4 epochs"]
    assert (old.model, old.epochs, old.opt) == ("mobilenet_v2", 4, "adamw")


def test_with_option_replaces_instead_of_repeating(main_job):
    assert main_job.with_option(["--epochs", "2", "--lr", "1"], "--epochs", "1") == ["--epochs", "1", "--lr", "1"]
    assert main_job.with_option(["--lr", "1"], "--epochs", "1") == ["--lr", "1", "--epochs", "1"]


def test_time_to_is_the_first_epoch_that_reaches_the_target(main_job):
    records = [{"train_seconds": 10.0, "acc": 0.905}, {"train_seconds": 20.0, "acc": 0.915},
               {"train_seconds": 30.0, "acc": 0.912}, {"train_seconds": 40.0, "acc": 0.921}]  # fmt: skip
    assert main_job.time_to(records, 0.91) == 20.0
    assert main_job.time_to(records, 0.92) == 40.0
    assert main_job.time_to(records, 0.93) is None


def test_classic_network_is_pytorchs_mnist_example(main_job):
    model = main_job.ClassicNet()
    assert sum(p.numel() for p in model.parameters()) == 1_199_882  # examples/mnist: 320 + 18,496 + 1,179,776 + 1,290
    kinds = [type(m).__name__ for m in model.children()]
    assert kinds == ["Conv2d", "Conv2d", "Dropout", "Dropout", "Linear", "Linear"]
    assert (model.dropout1.p, model.dropout2.p) == (0.25, 0.5)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_throughput_quick_mode_times_every_model(main_job, capsys):
    assert main_job.main(["--throughput", "--quick", "--threads", "1"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert "threads 1; torch" in header
    names = ["ResNet-9 width 0.125", "ResNet-9 width 0.25", "MobileNet v2 width 0.5", "the classic example's network"]
    assert [line.split(":")[0] for line in lines] == names
    assert all(re.fullmatch(r".*: [\d,]+ img/s", line) for line in lines)


def test_quick_run_trains_both_and_reports_the_ratio():
    cmd = [sys.executable, str(SCRIPT), "--quick", "--threads", "1"]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "threads 1;" in out and "--threads 1" in out and "--epochs 1" in out and "--limit-train 512" in out
    assert re.search(r"^ours epoch 1: test acc 0\.\d{4}, \d+\.\d s of training$", out, flags=re.M)
    assert re.search(r"^classic epoch 1: test acc 0\.\d{4}, \d+\.\d s of training$", out, flags=re.M)
    for target in (91, 92):  # 512 images for one epoch reach neither
        assert f"time to {target}%: ours not reached, classic not reached, ratio ours/classic -" in out
