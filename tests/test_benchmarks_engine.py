"""The benchmarks that train in the engine keep running: each script's quick mode (a few steps of every side, one
seed) as a user runs it, ``python benchmarks/NAME.py``, with its results written to ``--out``. The numbers of a
few steps mean nothing and are not checked beyond their range; the full runs and their results are in docs/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = {
    "segmentation": (["--models", "ours,smp,paper"], {"ours", "smp", "paper"}, "fg_iou"),
    "detection": (["--data", "nuclei"], {"convatlas", "torchvision"}, "voc_map50"),
    "lineage": (["--explain", "--detectors", "rcnn,faster_fpn"], {"rcnn", "faster_fpn"}, "agnostic_ap50"),
}


def _run(name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *argv], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_quick_mode_trains_every_side_and_writes_its_results(name, tmp_path):
    extra, sides, metric = SCRIPTS[name]
    out = tmp_path / "results.json"
    result = _run(name, "--quick", "--threads", "1", "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# ") and "torch " in lines[0] and "load " in lines[0]
    assert sum(line.startswith("  seed 0 ") for line in lines) == len(sides)
    assert lines[-1].startswith("| ") and len([line for line in lines if line.startswith("|")]) >= len(sides) + 2
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == sides and saved["args"]["quick"] is True
    for rows in saved["results"].values():
        assert len(rows) == 1 and 0 <= rows[0][metric] <= 1 and rows[0]["cpu_s"] > 0 and rows[0]["steps"] >= 1


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_an_existing_out_and_an_unknown_side_are_refused_before_training(name, tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}")
    result = _run(name, "--quick", "--out", str(out))
    assert result.returncode != 0 and str(out) in result.stderr and "--overwrite" in result.stderr
    assert out.read_text() == "{}" and "seed 0" not in result.stdout
    option = {"segmentation": "--models", "detection": "--sides", "lineage": "--detectors"}[name]
    result = _run(name, "--quick", option, "nothing")
    assert result.returncode == 2 and f"{option}: unknown 'nothing'" in result.stderr


@pytest.mark.slow
def test_detection_pretrains_the_backbone_and_evaluates_kept_runs_again(tmp_path):
    """--pretrain: one classification run per seed starts both sides (its CPU time is in each row); --reevaluate
    scores the kept runs on other test images without training."""
    options = ["--quick", "--threads", "1", "--pretrain", "--backbone", "resnet9", "--backbone-kwargs",
               '{"width_mult": 0.125}', "--anchor-sizes", "24", "48", "--warmup-epochs", "0.5"]  # fmt: skip
    result = _run("detection", *options, "--keep", str(tmp_path / "runs"), "--out", str(tmp_path / "train.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "train.json").read_text())["results"]
    for side in ("convatlas", "torchvision"):
        row = rows[side][0]
        assert row["pretrain_cpu_s"] > 0 and row["cpu_s"] > row["pretrain_cpu_s"] and 0 <= row["pretrain_acc"] <= 1
    assert (tmp_path / "runs" / "pretrain-0" / "last.json").is_file()
    again = _run("detection", *options, "--reevaluate", str(tmp_path / "runs"), "--out", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[-5].startswith("| detector | VOC mAP@0.5 | COCO mAP | COCO AP50 |")
    assert set(json.loads((tmp_path / "again.json").read_text())["results"]) == {"convatlas", "torchvision"}
