"""Kim's cross-validation protocol (convatlas.train.text) on small real and separable sets.

Reference for "learns": a separable task (the label is which of two words a sentence contains) must reach > 90%
test accuracy; the MR run checks the protocol's bookkeeping (folds, dev-selected epochs, JSON) on real sentences.
"""

from __future__ import annotations

import argparse
import json
import random

import pytest

from convatlas.models import list_models
from convatlas.train.text import TextRunConfig, cross_validate, main, run

TINY = {"dim": 16, "heads": 2, "depth": 1, "kernel_size": 3}


def _separable_tsv(path, n=240, seed=0):
    rng = random.Random(seed)
    filler = ["the", "a", "film", "plot", "actors", "story", "was", "is", "and", "of", "scenes", "music"]
    lines = []
    for i in range(n):
        words = rng.sample(filler, 6)
        words.insert(rng.randrange(7), "wonderful" if i % 2 else "awful")
        lines.append(f"{'pos' if i % 2 else 'neg'}\t{' '.join(words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_learns_a_separable_task(tmp_path):
    path = _separable_tsv(tmp_path / "sep.tsv")
    cfg = TextRunConfig(
        model="lightconv_classifier",
        data=f"tsv:{path}",
        mode="non-static",
        folds=4,
        max_folds=1,
        epochs=6,
        batch_size=10,
        lr=3e-3,
        device="cpu",
        model_args=TINY,
    )
    result = cross_validate(cfg, log=lambda *_: None)
    assert len(result.folds) == 1
    assert result.folds[0].test_accuracy > 0.9


def test_run_writes_cv_json(tmp_path):
    path = _separable_tsv(tmp_path / "sep.tsv", n=120)
    args = argparse.Namespace(
        model="attention_classifier",
        data=f"tsv:{path}",
        mode="static",
        folds=3,
        max_folds=2,
        epochs=2,
        batch_size=None,
        lr=None,
        seed=1,
        out=str(tmp_path / "out"),
        opt="sgd",
        model_args=TINY,
    )
    assert run(args) == 0
    saved = json.loads((tmp_path / "out" / "cv_results.json").read_text())
    assert [f["fold"] for f in saved["folds"]] == [1, 2]
    assert all(1 <= f["best_epoch"] <= 2 and 0.0 <= f["test_accuracy"] <= 1.0 for f in saved["folds"])
    assert saved["config"]["batch_size"] == 50 and saved["config"]["opt"] is None  # Kim's default, sgd ignored
    assert saved["train_size"] == 120 and 0.0 < saved["glove_coverage"] <= 1.0


def test_bad_options_exit_2(capsys, tmp_path):
    path = _separable_tsv(tmp_path / "sep.tsv", n=20)
    assert main(["--model", "lightconv_classifier", "--data", f"tsv:{path}", "--folds", "1"]) == 2
    assert "--folds must be >= 2 for cross-validation, got 1" in capsys.readouterr().err
    assert main(["--model", "lightconv_classifier", "--data", f"tsv:{path}", "--mode", "multichannel"]) == 2
    assert "multichannel exists only for kim_cnn" in capsys.readouterr().err


@pytest.mark.skipif("kim_cnn" not in list_models(), reason="kim_cnn (models/kim_cnn.py) is not registered yet")
@pytest.mark.parametrize("mode", ["rand", "multichannel"])
def test_kim_cnn_protocol_runs(tmp_path, mode):
    path = _separable_tsv(tmp_path / "sep.tsv", n=200)
    cfg = TextRunConfig(
        model="kim_cnn", data=f"tsv:{path}", mode=mode, folds=5, max_folds=1, epochs=4, batch_size=10, device="cpu"
    )
    result = cross_validate(cfg, log=lambda *_: None)
    assert result.folds[0].test_accuracy > 0.8


def test_convatlas_train_cli_reaches_the_text_engine(tmp_path, capsys):
    from convatlas.cli import COMMAND_MODULES
    from convatlas.cli import main as cli_main

    if "train" not in COMMAND_MODULES:
        pytest.skip("convatlas train (cli/train.py) is not registered")
    path = _separable_tsv(tmp_path / "sep.tsv", n=60)
    out = tmp_path / "cli"
    argv = [
        "train",
        "--model",
        "lightconv_classifier",
        "--data",
        f"tsv:{path}",
        "--folds",
        "3",
        "--max-folds",
        "1",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--model-arg",
        "dim=16",
        "--model-arg",
        "heads=2",
    ]
    assert cli_main(argv) == 0
    assert json.loads((out / "cv_results.json").read_text())["config"]["model_args"] == {"dim": 16, "heads": 2}
    assert cli_main([*argv[:-4], "--mode", "multichannel"]) == 2
    assert "multichannel exists only for kim_cnn" in capsys.readouterr().err
