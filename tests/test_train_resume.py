"""A run folder never loses work: exact resume after SIGKILL for every task, SIGTERM/SIGINT checkpoints, a lock that
keeps a second process out, resume with more epochs, corrupted checkpoints on resume, and 2-process DDP.

References: an uninterrupted run of the same configuration (bitwise-equal weights and optimiser state after kill and
resume, CPU, deterministic mode), and a single process on the same global batch (DDP must give the same weights to
float tolerance; the single process uses 2 accumulation micro-batches of the 8 images each rank sees, so that every
batch normalisation sees the same batch in both runs).

Run as a script (``python test_train_resume.py CONFIG_JSON KIND N``), this file trains the configuration and kills
itself with SIGKILL during the N-th training step: that is the killed process of the tests.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(PATHS)}
# The step during which the killed run dies (its last checkpoint is then mid-epoch): 2 epochs of 4 steps with a
# checkpoint every 3 steps die in step 8 (last checkpoint: step 6, epoch 2 step 2); text dies in the 6th step of
# fold 2 (3 steps per epoch, a checkpoint every 2: the last at fold 2's step 4, epoch 2 step 1).
KILL = {"classification": (8, 3), "segmentation": (8, 3), "detection": (8, 3), "text": (12, 2)}


def _task_class(kind: str):
    from convatlas.train.detection import DetectionTask
    from convatlas.train.images import ClassificationTask, SegmentationTask
    from convatlas.train.text import TextTask

    return {"classification": ClassificationTask, "segmentation": SegmentationTask, "text": TextTask,
            "detection": DetectionTask}[kind]  # fmt: skip


def _train(kind: str, config, *, resume: bool = False):
    from convatlas.train import cross_validate, fit

    return cross_validate(config, resume=resume) if kind == "text" else fit(config, resume=resume)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from convatlas.train import load_checkpoint

    tensors, _ = load_checkpoint(run, "last")
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "optimizer/"))}


def _epochs(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records if r["kind"] == "epoch"]  # no timings


def _assert_same_run(ours: Path, ref: Path) -> None:
    a, b = _weights(ours), _weights(ref)
    assert a.keys() == b.keys() and len(a) > 10
    for name in b:
        assert torch.equal(a[name], b[name]), f"{name} differs between {ours} and {ref}"
    assert _epochs(ours) == _epochs(ref)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classification", "segmentation", "text", "detection"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(kind, tmp_path):
    from convatlas.train import read_record, run_config
    from tiny_runs import HAVE_FASHION_MNIST, separable_tsv, tiny_config

    if kind in ("segmentation", "detection") and not HAVE_FASHION_MNIST:
        pytest.skip("needs Fashion-MNIST (make data)")
    kill_step, save_every = KILL[kind]
    tsv = separable_tsv(tmp_path / "sep.tsv", n=60) if kind == "text" else None
    reference = tiny_config(kind, tmp_path / "ref", tsv=tsv, save_every=save_every)
    _train(kind, reference)
    killed = dataclasses.replace(reference, out=str(tmp_path / "killed"))
    argv = [sys.executable, __file__, json.dumps(killed.to_dict()), kind, str(kill_step)]
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run = Path(killed.out) / ("fold-02" if kind == "text" else "")
    record, _ = read_record(run, "last")
    assert record.progress.epoch == 1 and 0 < record.progress.step < 4, "the kill must land mid-epoch"

    _train(kind, run_config(killed.out), resume=True)
    for sub in ("fold-01", "fold-02") if kind == "text" else ("",):
        _assert_same_run(Path(killed.out) / sub, Path(reference.out) / sub)
    if kind == "text":
        results = [json.loads((Path(c.out) / "cv_results.json").read_text()) for c in (killed, reference)]
        folds = [[{k: v for k, v in f.items() if k != "seconds"} for f in r["folds"]] for r in results]
        assert folds[0] == folds[1] and len(folds[0]) == 2 and results[0]["classes"] == ["neg", "pos"]


def test_sigterm_and_sigint_write_a_checkpoint_and_resume_finishes_identically(tmp_path, monkeypatch):
    from cli_checks import run_cli
    from convatlas.train import TrainingInterrupted, fit, read_record, run_config
    from convatlas.train.images import ClassificationTask
    from tiny_runs import tiny_config

    reference = tiny_config("classification", tmp_path / "ref")
    fit(reference)
    real, calls = ClassificationTask.train_step, {"n": 0, "signal": signal.SIGTERM}

    def signalled(self, model, batch, device):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), calls["signal"])
        return real(self, model, batch, device)

    monkeypatch.setattr(ClassificationTask, "train_step", signalled)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as stop:
        fit(dataclasses.replace(reference, out=str(out)))
    assert stop.value.signum == signal.SIGTERM and stop.value.checkpoint == out / "last.json"
    progress = read_record(out, "last")[0].progress
    assert (progress.epoch, progress.step, progress.global_step) == (1, 2, 6)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back

    monkeypatch.setattr(ClassificationTask, "train_step", real)
    fit(run_config(out), resume=True)
    _assert_same_run(out, Path(reference.out))

    calls.update(n=0, signal=signal.SIGINT)  # the same from the command line, with Ctrl-C
    monkeypatch.setattr(ClassificationTask, "train_step", signalled)
    argv = ["train", "--model", "mobilenet_v2", "--model-arg", "width_mult=0.35", "--data", "mnist5k",
            "--limit-train", "64", "--limit-test", "16", "--batch-size", "16", "--threads", "1", "--out",
            str(tmp_path / "cli")]  # fmt: skip
    result = run_cli(argv)
    assert result.code == 128 + signal.SIGINT and "Traceback" not in result.stderr
    assert f"continue with --resume --out {tmp_path / 'cli'}" in result.stdout
    assert read_record(tmp_path / "cli", "last")[0].progress.global_step == 6


def test_a_second_process_is_kept_out_of_a_live_run_folder(tmp_path):
    from cli_checks import expect_user_error, run_cli, unchanged

    out = tmp_path / "run"
    out.mkdir()
    argv = ["train", "--model", "mobilenet_v2", "--model-arg", "width_mult=0.35", "--data", "mnist5k",
            "--limit-train", "32", "--limit-test", "16", "--batch-size", "16", "--epochs", "1", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    with open(out / ".convatlas.lock", "w") as held:  # a live owner: this process holds the lock
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with unchanged(out):
            expect_user_error(argv, names=["--out", str(out), "another process (pid 4242)"])
        fcntl.flock(held, fcntl.LOCK_UN)
    # The owner is gone (a killed process's lock is dropped by the kernel): the folder is free again.
    assert run_cli(argv).code == 0
    assert (out / ".convatlas.lock").read_text().strip() != "4242"


def test_resume_with_more_epochs_extends_the_run_and_its_schedule_and_cleans_stale_temporaries(tmp_path):
    from convatlas.train import fit, read_record, run_config
    from convatlas.train.optim import lr_factor
    from tiny_runs import tiny_config

    config = tiny_config("classification", tmp_path / "run", epochs=1, warmup_epochs=0.0)
    fit(config)
    assert read_record(config.out, "last")[0].optimizer["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    stale = Path(config.out) / ".last.tmp999999999.json"  # left by a writer that was killed (no such pid)
    stale.write_text("{")
    longer = dataclasses.replace(run_config(config.out), epochs=3, save_every=1)
    result = fit(longer, resume=True)
    assert not stale.exists()
    assert result.epochs == 3 and result.global_step == 12
    epochs = _epochs(Path(config.out))
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    # After the resume the cosine runs over the new 12 steps: at step 8 it stands where a 12-step run stands.
    assert epochs[1]["lr"] == pytest.approx(0.05 * lr_factor(8, total=12, warmup=0, min_ratio=0.0))
    assert epochs[2]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resume_from_a_corrupted_checkpoint_fails_clearly_and_keeps_files(tmp_path, capsys):
    from cli_checks import expect_user_error, unchanged
    from convatlas.train import fit
    from tiny_runs import tiny_config

    run = tmp_path / "run"
    fit(tiny_config("classification", run, epochs=1))
    tensor_file = run / json.loads((run / "last.json").read_text())["tensors"]
    data = bytearray(tensor_file.read_bytes())
    data[len(data) // 2] ^= 0x55
    tensor_file.write_bytes(bytes(data))
    with unchanged(run):
        expect_user_error(["train", "--out", str(run), "--resume"], names=[str(tensor_file), "is corrupted: SHA-256"])
    shutil.copy(run / "best.json", run / "last.json")  # a truncated best file next
    best_file = run / json.loads((run / "best.json").read_text())["tensors"]
    best_file.write_bytes(best_file.read_bytes()[:100])
    with unchanged(run):
        expect_user_error(["evaluate", "--checkpoint", str(run)], names=["truncated or corrupted: 100 bytes"])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    from convatlas.train import fit, load_checkpoint
    from tiny_runs import tiny_config

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    # Dropout off: each process draws its own masks, a single process draws others.
    args = ["--model", "mobilenet_v2", "--model-arg", "width_mult=0.35", "--model-arg", "drop_rate=0.0", "--data",
            "mnist5k", "--seed", "1", "--threads", "1", "--deterministic", "--limit-train", "96", "--limit-test",
            "50", "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0"]  # fmt: skip
    ddp = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "convatlas", "train", *args, "--out",
         str(tmp_path / "ddp")], env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = tiny_config("classification", tmp_path / "one", epochs=1, limit_train=96, limit_test=50, accum_steps=2,
                         warmup_epochs=0.0, model_args={"width_mult": 0.35, "drop_rate": 0.0})  # fmt: skip
    fit(single)
    a, record_a = load_checkpoint(tmp_path / "ddp", "last")
    b, record_b = load_checkpoint(tmp_path / "one", "last")
    assert (record_a.progress.world_size, record_b.progress.world_size) == (2, 1)
    assert record_a.progress.global_step == record_b.progress.global_step == 6
    params = [k for k in b if k.startswith("model/") and "running" not in k and "num_batches" not in k]
    assert len(params) > 50
    for name in params:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # The evaluation is gathered over both processes: the whole test subset counted once.
    acc = _epochs(tmp_path / "ddp")[-1]["test_acc"]
    assert round(acc * 50) == pytest.approx(acc * 50) and acc == pytest.approx(
        _epochs(tmp_path / "one")[-1]["test_acc"]
    )


if __name__ == "__main__":  # the killed process: train CONFIG_JSON of KIND and die by SIGKILL in step N
    from convatlas.train import TrainConfig

    config, kind, step = TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    task_class = _task_class(kind)
    real_step, seen = task_class.train_step, {"n": 0}

    def killing(self, model, batch, device):
        seen["n"] += 1
        if seen["n"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, model, batch, device)

    task_class.train_step = killing
    _train(kind, config)
    sys.exit(3)  # not reached: the process dies in step N
