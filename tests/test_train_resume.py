"""Exact resume after SIGKILL, corrupted checkpoints on resume, and 2-process DDP against one process.

References: an uninterrupted run of the same command (bitwise-equal weights after kill and resume, CPU,
deterministic mode), and a single process on the same global batch (DDP must give the same weights to float
tolerance). With batch norm, the single process uses 2 accumulation micro-batches of the same 8 images each rank
sees, so that every normalisation sees the same batch in both runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from convatlas.cli import main
from convatlas.train import TrainConfig, load_checkpoint, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
COMMON = ["--model", "mobilenet_v2", "--model-arg", "width_mult=0.35", "--model-arg", "drop_rate=0.2"]
COMMON += ["--data", "mnist5k", "--seed", "1", "--threads", "1", "--deterministic", "--limit-test", "50"]


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "convatlas", "train", *COMMON, "--out", str(out), *extra]


def _model_tensors(out):
    tensors, meta = load_checkpoint(out, "last")
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "optimizer/"))}, meta


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    # 320 images / batch 16 = 20 steps per epoch, 2 epochs; a checkpoint every 3 steps.
    args = ["--limit-train", "320", "--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--save-every", "3"]
    reference = subprocess.run(_train_cmd(tmp_path / "ref", *args), env=ENV, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(out, *args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads((out / "last.json").read_text())["global_step"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            step = 0
        if 6 <= step <= 15:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    _, meta = load_checkpoint(out, "last")
    assert meta["epoch"] == 0 and 0 < meta["step"] < 20, "the kill must land in the middle of the first epoch"

    resumed = subprocess.run(_train_cmd(out, "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ours, ours_meta = _model_tensors(out)
    ref, ref_meta = _model_tensors(tmp_path / "ref")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert torch.equal(ours[name], ref[name]), f"{name} differs after kill at step {killed_at} and resume"
    assert ours_meta["global_step"] == ref_meta["global_step"] == 40
    epochs = [
        [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for folder in (out, tmp_path / "ref")
    ]
    test_acc = [[r["test_acc"] for r in records if r["kind"] == "epoch"] for records in epochs]
    assert test_acc[0] == test_acc[1] and len(test_acc[0]) == 2
    assert resumed.stdout.strip().splitlines()[-1] == reference.stdout.strip().splitlines()[-1]


def test_resume_from_a_corrupted_checkpoint_fails_clearly_and_keeps_files(tmp_path, capsys):
    config = TrainConfig(
        model="mobilenet_v2", model_args={"width_mult": 0.35}, data="mnist5k", out=str(tmp_path / "run"),
        epochs=1, batch_size=16, limit_train=48, limit_test=16, threads=1,
    )  # fmt: skip
    train(config)
    run = tmp_path / "run"
    tensor_file = run / json.loads((run / "last.json").read_text())["tensors"]
    data = bytearray(tensor_file.read_bytes())
    data[len(data) // 2] ^= 0x55
    tensor_file.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {tensor_file} is corrupted: SHA-256" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    shutil.copy(run / "best.json", run / "last.json")  # a truncated best file next
    best_file = run / json.loads((run / "best.json").read_text())["tensors"]
    best_file.write_bytes(best_file.read_bytes()[:100])
    assert main(["evaluate", "--checkpoint", str(run)]) == 2
    assert "truncated or corrupted: 100 bytes" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    # Dropout off: each process draws its own masks, a single process draws others.
    args = ["--limit-train", "96", "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0"]
    args += ["--model-arg", "drop_rate=0.0"]
    ddp = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "convatlas", "train", *COMMON, "--out",
         str(tmp_path / "ddp"), *args],
        env=ENV, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        _train_cmd(tmp_path / "one", *args, "--accum-steps", "2"), env=ENV, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, meta_a = load_checkpoint(tmp_path / "ddp", "last")
    b, meta_b = load_checkpoint(tmp_path / "one", "last")
    assert (
        meta_a["world_size"] == 2 and meta_b["world_size"] == 1 and meta_a["global_step"] == meta_b["global_step"] == 6
    )
    params = [k for k in b if k.startswith("model/") and "running" not in k and "num_batches" not in k]
    assert len(params) > 50
    for name in params:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # The evaluation is reduced over both processes: the whole test subset counted once.
    acc = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()][-1]
    assert acc["kind"] == "epoch" and round(acc["test_acc"] * 50) == pytest.approx(acc["test_acc"] * 50)
