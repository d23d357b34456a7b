"""The training engine: schedule, optimiser, inputs, metrics, configuration rules, a short real run of each task,
one divergence error for every task, bf16 autocast on CPU, and the evaluate/predict/export commands.

References: PyTorch's ``CosineAnnealingLR`` for the cosine part of the schedule, ``torch.optim.Adadelta`` with Kim's
settings, torchvision's ``Normalize`` and ``F.interpolate`` for the input pipeline, a plain Python loop for the
confusion matrix and IoU, and PyTorch's own ``CrossEntropyLoss`` on the saved model for the reported test metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from convatlas.cli import main
from convatlas.train import (
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    cross_validate,
    epoch_order,
    fit,
    load_checkpoint,
    load_model,
    prepare_inputs,
    read_record,
)
from convatlas.train.config import APPLIES_TO, TASKS
from convatlas.train.detection import DetectionTask
from convatlas.train.images import ClassificationTask, SegmentationTask
from convatlas.train.metrics import confusion_matrix, iou_per_class, mean_iou
from convatlas.train.optim import build_optimizer, lr_factor
from convatlas.train.text import TextTask
from tiny_runs import HAVE_FASHION_MNIST, KINDS, separable_tsv, tiny_config

TASK_CLASSES = {"classification": ClassificationTask, "segmentation": SegmentationTask, "text": TextTask,
                "detection": DetectionTask}  # fmt: skip
needs_fashion = pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="needs Fashion-MNIST (make data)")


def _run(kind, config):
    return cross_validate(config) if kind == "text" else fit(config)


def _config(kind, tmp_path, **changes):
    if kind in ("segmentation", "detection") and not HAVE_FASHION_MNIST:
        pytest.skip("needs Fashion-MNIST (make data)")
    tsv = separable_tsv(tmp_path / "sep.tsv", n=60) if kind == "text" else None
    return tiny_config(kind, tmp_path / "run", tsv=tsv, **changes)


def test_cosine_part_matches_pytorch_scheduler():
    total, warmup, base = 50, 10, 0.4
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=base * 0.05)
    for step in range(warmup, total + 1):
        ours = base * lr_factor(step, total=total, warmup=warmup, min_ratio=0.05)
        assert math.isclose(ours, opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12), step
        opt.step()
        ref.step()
    assert lr_factor(0, total=total, warmup=warmup, min_ratio=0) == pytest.approx(0.1)
    assert lr_factor(5, total=total, warmup=warmup, min_ratio=0) == pytest.approx(0.55)
    assert lr_factor(30, total=total, warmup=warmup, min_ratio=0, cosine=False) == 1.0


def test_adadelta_is_kims_and_no_decay_reaches_biases():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ours = build_optimizer(model, TrainConfig("kim_cnn", "mr", opt="adadelta", lr=1.0, weight_decay=0.0))
    assert isinstance(ours, torch.optim.Adadelta)
    assert all(g["rho"] == 0.95 and g["eps"] == 1e-6 and g["lr"] == 1.0 for g in ours.param_groups)
    sgd = build_optimizer(model, TrainConfig("m", "d", opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3))
    decayed = {id(p) for g in sgd.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.weight)} and sgd.param_groups[0]["nesterov"]


def test_prepare_inputs_matches_torchvision():
    x = torch.rand(3, 1, 28, 28)
    ours = prepare_inputs(x, mean=(0.3,), std=(0.2,), image_size=32, device=torch.device("cpu"))
    ref = v2.Normalize((0.3,), (0.2,))(F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True))
    torch.testing.assert_close(ours, ref)


def test_confusion_and_iou_match_a_loop():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 4, (3, 7, 5), generator=gen), torch.randint(0, 4, (3, 7, 5), generator=gen)
    target[0, 0, :] = 255
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    ref = torch.zeros(4, 4, dtype=torch.int64)
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True):
        if t != 255:
            ref[t, p] += 1
    assert torch.equal(cm, ref)
    for c in range(4):
        inter = sum(1 for p, t in zip(pred.flatten(), target.flatten(), strict=True) if p == c and t == c)
        union = sum(1 for p, t in zip(pred.flatten(), target.flatten(), strict=True) if t != 255 and (p == c or t == c))
        assert iou_per_class(cm)[c].item() == pytest.approx(inter / union)
    assert mean_iou(cm) == pytest.approx(iou_per_class(cm).mean().item())


def test_epoch_order_is_seeded():
    assert torch.equal(epoch_order(100, 3, 1), epoch_order(100, 3, 1))
    assert not torch.equal(epoch_order(100, 3, 1), epoch_order(100, 3, 2))
    assert sorted(epoch_order(100, 3, 1).tolist()) == list(range(100))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("mobilenet_v2", dict(task="classification", opt="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=5)),
        ("unet", dict(task="segmentation", opt="sgd", batch_size=16, schedule="cosine")),
        ("kim_cnn", dict(task="text", opt="adadelta", lr=1.0, weight_decay=0.0, batch_size=50, schedule="constant",
                         folds=10, mode="non-static", momentum=None)),
        ("lightconv_classifier", dict(task="text", opt="adamw", lr=1e-3, weight_decay=0.01)),
        ("faster_rcnn", dict(task="detection", opt="adamw", lr=1e-3, clip_grad=10.0, backbone="mobilenet_v3_small",
                             max_proposals=None)),
        ("rcnn", dict(task="detection", max_proposals=300)),
    ],
)  # fmt: skip
def test_task_defaults_fill_only_what_was_left_out(model, expected):
    resolved = TrainConfig(model, "-").resolved()
    assert {k: getattr(resolved, k) for k in expected} == expected
    assert TrainConfig(model, "-", lr=0.25, epochs=3).resolved().lr == 0.25  # given values are kept


@pytest.mark.parametrize("field", sorted(APPLIES_TO))
def test_a_field_that_does_not_apply_to_the_task_is_refused_by_name(field):
    value = {"mode": "static", "device": "cpu", "data_dir": "d", "backbone": "resnext50_32x4d"}.get(field)
    default = getattr(TrainConfig("m", "d"), field)
    value = value if value is not None else (True if isinstance(default, bool) else 3 if field != "dev_fraction"
                                             else 0.2)  # fmt: skip
    model_of = {"classification": "mobilenet_v2", "segmentation": "unet", "text": "kim_cnn", "detection": "faster_rcnn"}
    for task in TASKS:
        config = TrainConfig(model_of[task], "-", **{field: value})
        if task in APPLIES_TO[field]:
            continue
        with pytest.raises(ConfigError, match=rf"^{field} does not apply to a {task} run") as err:
            config.resolved()
        assert err.value.field == field


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (dict(lr=0.0), "lr", "must be a finite number > 0, got 0.0"),
        (dict(lr=float("nan")), "lr", "finite number > 0"),
        (dict(epochs=0), "epochs", ">= 1"),
        (dict(limit_train=0), "limit_train", ">= 1, got 0"),
        (dict(eval_batch_size=-1), "eval_batch_size", ">= 1, got -1"),
        (dict(opt="adamw", momentum=0.9), "momentum", "applies to opt 'sgd' only"),
        (dict(schedule="constant", min_lr=0.01), "min_lr", "cosine"),
        (dict(min_lr=1.0), "min_lr", "must be <= lr"),
        (dict(opt="lamb"), "opt", "must be one of sgd, adamw, adadelta"),
        (dict(amp="fp8"), "amp", "must be one of"),
        (dict(device="tpu"), "device", "auto, cpu, cuda or cuda:N"),
        (dict(task="detection"), "task", "mobilenet_v2 is a classification model"),
        (dict(model_args=[1]), "model_args", "must be a dict"),
    ],
)
def test_bad_fields_are_refused_by_name_before_any_work(tmp_path, changes, field, message):
    config = TrainConfig("mobilenet_v2", "mnist5k", out=str(tmp_path / "never"), **changes)
    with pytest.raises(ConfigError, match=message) as err:
        fit(config)
    assert err.value.field == field and not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = tiny_config("classification", out, deterministic=False, save_every=3, augment=True)
    return out, fit(config)


def test_short_run_leaves_checkpoints_metrics_and_plots(tiny_run):
    out, result = tiny_run
    assert {"last.json", "best.json", "metrics.jsonl", "curves.png", "confusion.png"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["global_step"] == 8
    assert result.final["test_acc"] == pytest.approx(epochs[-1]["test_acc"]) and result.epochs == 2
    record, _ = read_record(out, "last")
    assert record.task == "classification" and record.model.kwargs == {"num_classes": 10, "in_channels": 1,
                                                                        "width_mult": 0.35}  # fmt: skip
    assert record.inputs.in_channels == 1 and record.inputs.data_size == [28, 28] and record.progress.epoch == 2
    assert record.classes == [str(i) for i in range(10)] and record.config["augment"] is True
    best, _ = read_record(out, "best")
    assert best.progress.best_epoch == result.best_epoch and best.progress.best_metrics == result.best


def test_reported_test_metrics_match_pytorch_loss_on_the_saved_model(tiny_run):
    out, result = tiny_run
    model, record = load_model(out, tag="last")
    from convatlas.data import build_dataset

    data = build_dataset("mnist5k", split="test", limit=32)
    x, y = data.get_batch(torch.arange(32))
    with torch.no_grad():
        logits = model(prepare_inputs(x, mean=record.inputs.mean, std=record.inputs.std, image_size=None, device="cpu"))
    assert result.final["test_loss"] == pytest.approx(torch.nn.CrossEntropyLoss()(logits, y).item(), rel=1e-5)
    assert result.final["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_cli_evaluate_predict_export(tiny_run, tmp_path, capsys):
    out, result = tiny_run
    assert main(["evaluate", "--checkpoint", str(out), "--which", "last", "--limit", "32", "--device", "cpu",
                 "--json", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines()[-2] == f"test accuracy: {result.final['test_acc']:.4f}"
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["acc"] == pytest.approx(result.final["test_acc"])
    image = tmp_path / "digit.png"
    from convatlas.data import build_dataset

    Image.fromarray(build_dataset("mnist5k", split="test").images[0].numpy()).save(image)
    assert main(["predict", "--checkpoint", str(out), "--top-k", "2", str(image)]) == 0
    line = capsys.readouterr().out.strip()
    probs = [float(tok) for tok in line.split(": ", 1)[1].replace(",", "").split()[1::2]]
    assert len(probs) == 2 and probs[0] >= probs[1] and 0 < sum(probs) <= 1 + 1e-6
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(out), "--onnx", str(onnx_path)]) == 0
    assert "max |difference|" in capsys.readouterr().out and onnx_path.stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("kind", KINDS)
def test_a_diverging_loss_is_one_error_for_every_task(kind, tmp_path, monkeypatch):
    cls = TASK_CLASSES[kind]
    real, calls = cls.train_step, {"n": 0}

    def poisoned(self, model, batch, device):
        calls["n"] += 1
        loss, sums = real(self, model, batch, device)
        return (loss * float("nan") if calls["n"] == 3 else loss), sums

    monkeypatch.setattr(cls, "train_step", poisoned)
    config = _config(kind, tmp_path, save_every=2, epochs=1)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1 step 3 .*last good checkpoint .*last.json"):
        _run(kind, config)
    run = tmp_path / "run" / ("fold-01" if kind == "text" else "")
    tensors, record = load_checkpoint(run, "last")
    assert record.progress.global_step == 2
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_runs_on_cpu_for_every_task(kind, tmp_path, monkeypatch):
    cls = TASK_CLASSES[kind]
    real, seen = cls.train_step, []

    def watched(self, model, batch, device):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(self, model, batch, device)

    monkeypatch.setattr(cls, "train_step", watched)
    config = _config(kind, tmp_path, amp="bf16", epochs=1, max_folds=1 if kind == "text" else None)
    result = _run(kind, config)
    assert seen and all(seen)
    final = result.folds[0].test_accuracy if kind == "text" else next(iter(result.final.values()))
    assert final is not None and math.isfinite(final)


@needs_fashion
def test_segmentation_run_predicts_masks(tmp_path):
    config = tiny_config("segmentation", tmp_path / "run", epochs=1, augment=True)
    result = fit(config)
    assert 0 <= result.final["test_miou"] <= 1 and 0 <= result.final["test_acc"] <= 1
    assert (tmp_path / "run" / "masks.png").exists()
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    argv = ["predict", "--checkpoint", str(tmp_path / "run"), "--out-dir", str(tmp_path / "pred"), str(image)]
    assert main(argv) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "scene.mask.png"))
    assert mask.shape == (32, 32) and mask.max() <= 10
    assert main(argv) == 2  # the mask exists now: refused without --overwrite
    assert main([*argv, "--overwrite"]) == 0


def test_overwrite_replaces_the_run_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "run"
    config = tiny_config("classification", out, epochs=1)
    fit(config)
    (out / "notes.txt").write_text("mine")
    old = {p.name for p in out.glob("*.safetensors")}
    fit(dataclasses.replace(config, seed=2), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert read_record(out, "last")[0].config["seed"] == 2
    assert {p.name for p in out.glob("*.safetensors")} == old  # same steps, new files; nothing of the old run left
