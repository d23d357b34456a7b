"""Kim's cross-validation protocol as an outer loop around the engine (convatlas.train.text), on separable sets.

References: for "learns", a separable task (the label is which of two words a sentence contains) must reach > 90%
test accuracy; for the folds, set arithmetic (test parts partition the sentences; dev and train are disjoint and
together the rest); for the max-norm constraint, ``torch.renorm`` (Kim's rule: every output row has L2 norm <= 3).
"""

from __future__ import annotations

import json

import pytest
import torch

from cli_checks import run_cli
from convatlas.train import ConfigError, TrainConfig, cross_validate, read_record
from convatlas.train.text import TextData, TextTask, fold_splits
from tiny_runs import separable_tsv

TINY = {"dim": 16, "heads": 2, "depth": 1, "kernel_size": 3}


def test_fold_splits_partition_the_sentences():
    splits = fold_splits(23, 4, 0.1, seed=5)
    tests = [set(t.tolist()) for _, _, t in splits]
    assert set().union(*tests) == set(range(23)) and sum(map(len, tests)) == 23
    for (train, dev, _), part in zip(splits, tests, strict=True):
        train, dev = set(train.tolist()), set(dev.tolist())
        assert not train & dev and train | dev == set(range(23)) - part and len(dev) == round(0.1 * (23 - len(part)))
    assert [t.tolist() for _, _, t in fold_splits(23, 4, 0.1, seed=5)] == [t.tolist() for _, _, t in splits]


def test_learns_a_separable_task(tmp_path):
    path = separable_tsv(tmp_path / "sep.tsv", n=240)
    config = TrainConfig(model="lightconv_classifier", data=f"tsv:{path}", mode="non-static", folds=4, max_folds=1,
                         epochs=6, batch_size=10, lr=3e-3, device="cpu", threads=1, model_args=TINY,
                         out=str(tmp_path / "run"))  # fmt: skip
    result = cross_validate(config, log=lambda *_: None)
    assert len(result.folds) == 1 and result.folds[0].test_accuracy > 0.9
    assert result.config["opt"] == "adamw" and result.config["weight_decay"] == 0.01  # the encoders' defaults


def test_cv_results_record_classes_folds_and_the_config(tmp_path):
    path = separable_tsv(tmp_path / "sep.tsv", n=90)
    out = tmp_path / "out"
    config = TrainConfig(model="kim_cnn", data=f"tsv:{path}", mode="rand", folds=3, max_folds=2, epochs=2,
                         batch_size=10, threads=1, seed=1, model_args={"maps": 8}, out=str(out))  # fmt: skip
    result = cross_validate(config, log=lambda *_: None)
    saved = json.loads((out / "cv_results.json").read_text())
    assert saved["classes"] == ["neg", "pos"] and [f["fold"] for f in saved["folds"]] == [1, 2]
    assert all(1 <= f["best_epoch"] <= 2 and 0.0 <= f["test_accuracy"] <= 1.0 for f in saved["folds"])
    assert saved["config"]["opt"] == "adadelta" and saved["config"]["lr"] == 1.0 and saved["config"]["batch_size"] == 10
    assert saved["mean_test_accuracy"] == pytest.approx(result.mean) and saved["train_size"] == 90
    record, _ = read_record(out / "fold-02", "best")
    assert record.task == "text" and record.fold == 2 and record.classes == ["neg", "pos"]
    assert record.progress.best_metrics["test_acc"] == pytest.approx(saved["folds"][1]["test_accuracy"])
    assert record.model.kwargs["maps"] == 8 and record.model.kwargs["mode"] == "rand"
    for split in ("dev", "test"):  # the fold's best checkpoint scores what the run recorded for it
        found = run_cli(["evaluate", "--checkpoint", str(out / "fold-02"), "--split", split, "--device", "cpu"])
        assert found.code == 0, found.stderr
        assert found.stdout.splitlines()[-1] == f"{split} accuracy: {record.progress.best_metrics[f'{split}_acc']:.4f}"


def test_more_folds_than_sentences_is_an_error(tmp_path):
    path = tmp_path / "three.tsv"
    path.write_text("pos\tgood film\nneg\tbad film\npos\tfine film\n", encoding="utf-8")
    config = TrainConfig(model="kim_cnn", data=f"tsv:{path}", mode="rand", out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^folds 10 folds need at least 10 sentences; tsv:.*three.tsv has 3$"):
        cross_validate(config)
    assert not (tmp_path / "run").exists()


def test_lr_zero_is_refused_not_replaced_by_the_default(tmp_path):
    config = TrainConfig(model="kim_cnn", data="tsv:x", lr=0.0, out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="^lr must be a finite number > 0, got 0.0$"):
        cross_validate(config)


def test_kims_max_norm_holds_after_every_step(tmp_path):
    path = separable_tsv(tmp_path / "sep.tsv", n=60)
    config = TrainConfig(model="kim_cnn", data=f"tsv:{path}", mode="rand", folds=3, batch_size=10, lr=500.0,
                         model_args={"maps": 8}, out=str(tmp_path))  # fmt: skip
    config = config.resolved()
    task = TextTask(config, TextData.load(config), fold=1)
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    grew = False
    for batch in task.batches(list(torch.arange(30).split(10)), [None] * 3):
        loss, _ = task.train_step(model, batch, torch.device("cpu"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        grew |= bool(model.fc.weight.norm(dim=1).max() > 3.0)
        task.after_step(model)
        with torch.no_grad():
            torch.testing.assert_close(model.fc.weight, torch.renorm(model.fc.weight, p=2, dim=0, maxnorm=3.0))
        assert model.fc.weight.norm(dim=1).max() <= 3.0 + 1e-5
    assert grew, "the steps never pushed a row past the bound, so the constraint was not exercised"


@pytest.mark.parametrize("mode", ["static", "multichannel"])
def test_glove_modes_run_and_start_from_the_vectors(tmp_path, mode):
    path = separable_tsv(tmp_path / "sep.tsv", n=60)
    config = TrainConfig(model="kim_cnn", data=f"tsv:{path}", mode=mode, folds=3, max_folds=1, epochs=1,
                         batch_size=10, threads=1, model_args={"maps": 8}, out=str(tmp_path / "run"))  # fmt: skip
    result = cross_validate(config, log=lambda *_: None)
    assert 0 <= result.folds[0].test_accuracy <= 1 and 0 < result.glove_coverage <= 1
    data = TextData.load(config.resolved())
    model = TextTask(config.resolved(), data, 1).build_model()
    assert torch.equal(model.embed.weight[1:], data.glove[1:]) and not model.embed.weight[0].any()


def test_convatlas_train_reaches_cross_validation_and_resumes_more_folds(tmp_path):
    path = separable_tsv(tmp_path / "sep.tsv", n=60)
    out = tmp_path / "cli"
    argv = ["train", "--model", "lightconv_classifier", "--data", f"tsv:{path}", "--folds", "3", "--max-folds", "1",
            "--epochs", "1", "--batch-size", "10", "--threads", "1", "--out", str(out), "--model-arg", "dim=16",
            "--model-arg", "heads=2"]  # fmt: skip
    first = run_cli(argv)
    assert first.code == 0, first.stderr
    assert "1 of 3 folds" in first.stdout and "classes neg, pos" in first.stdout
    assert json.loads((out / "cv_results.json").read_text())["config"]["model_args"] == {"dim": 16, "heads": 2}
    more = run_cli(["train", "--resume", "--out", str(out), "--max-folds", "2"])
    assert more.code == 0, more.stderr
    saved = json.loads((out / "cv_results.json").read_text())
    assert [f["fold"] for f in saved["folds"]] == [1, 2] and "2 of 3 folds" in more.stdout
