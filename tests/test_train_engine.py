"""The training engine: schedule, inputs, metrics, a short real run of each task, NaN handling and the CLI.

References: PyTorch's ``CosineAnnealingLR`` for the cosine part of the schedule, torchvision's ``Normalize`` and
``F.interpolate`` for the input pipeline, a plain Python loop for the confusion matrix and IoU, and PyTorch's own
``CrossEntropyLoss`` for the training loss.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from convatlas.cli import main
from convatlas.data.fashion_mnist import DEBIAN_DIR
from convatlas.train import TrainConfig, TrainingDiverged, engine, load_checkpoint, load_model, prepare_inputs, train
from convatlas.train.engine import augment_batch, epoch_order, lr_factor
from convatlas.train.metrics import confusion_matrix, iou_per_class, mean_iou

TINY = {"model": "mobilenet_v2", "model_args": {"width_mult": 0.35}, "data": "mnist5k", "threads": 1}


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


def test_epoch_order_and_augmentation_are_seeded():
    assert torch.equal(epoch_order(100, 3, 1), epoch_order(100, 3, 1))
    assert not torch.equal(epoch_order(100, 3, 1), epoch_order(100, 3, 2))
    assert sorted(epoch_order(100, 3, 1).tolist()) == list(range(100))
    x, mask = torch.rand(4, 1, 28, 28), torch.randint(0, 3, (4, 28, 28))
    a = augment_batch(x, mask, torch.Generator().manual_seed(1), segmentation=True)
    b = augment_batch(x, mask, torch.Generator().manual_seed(1), segmentation=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Masks move with their images: where the image kept a pixel, the mask kept the same pixel's class.
    for i in range(4):
        moved = a[1][i] != 255
        assert moved.float().mean() > 0.7


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        **TINY, out=str(out), epochs=2, batch_size=32, lr=0.05, limit_train=256, limit_test=100, save_every=3
    )
    return out, train(config)


def test_short_run_leaves_checkpoints_metrics_and_plots(tiny_run):
    out, result = tiny_run
    assert {"last.json", "best.json", "metrics.jsonl", "curves.png", "confusion.png"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["global_step"] == 16
    assert result["test_acc"] == pytest.approx(epochs[-1]["test_acc"])
    _, meta = load_checkpoint(out, "last")
    assert meta["task"] == "classification" and meta["model_args"] == {"width_mult": 0.35}
    assert meta["in_channels"] == 1 and meta["num_classes"] == 10 and meta["epoch"] == 2


def test_reported_test_metrics_match_pytorch_loss_on_the_saved_model(tiny_run):
    out, result = tiny_run
    model, meta = load_model(out, tag="last")
    from convatlas.data import build_dataset

    data = build_dataset("mnist5k", split="test", limit=100)
    x, y = data.get_batch(torch.arange(100))
    with torch.no_grad():
        logits = model(prepare_inputs(x, mean=meta["mean"], std=meta["std"], image_size=None, device="cpu"))
    assert result["test_loss"] == pytest.approx(torch.nn.CrossEntropyLoss()(logits, y).item(), rel=1e-5)
    assert result["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_cli_evaluate_predict_export(tiny_run, tmp_path, capsys):
    out, result = tiny_run
    assert main(["evaluate", "--checkpoint", str(out), "--which", "last", "--limit", "100"]) == 0
    assert f"test accuracy: {result['test_acc']:.4f}" in capsys.readouterr().out
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


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = engine.loss_fn
    calls = {"n": 0}

    def poisoned(logits, target, **kw):
        calls["n"] += 1
        loss = real(logits, target, **kw)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(engine, "loss_fn", poisoned)
    config = TrainConfig(
        **TINY, out=str(tmp_path), epochs=1, batch_size=16, limit_train=128, limit_test=32, save_every=2
    )
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1 step 5 .*last good checkpoint .*last.json"):
        train(config)
    tensors, meta = load_checkpoint(tmp_path, "last")
    assert meta["global_step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


@pytest.mark.skipif(not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="needs Fashion-MNIST")
def test_segmentation_run_on_fashion_scenes(tmp_path):
    config = TrainConfig(
        model="unet",
        model_args={"widths": (8, 16), "padding": "same"},
        data="fashion-scenes:num_images=16,canvas=32,scale=0.75-1.0",
        out=str(tmp_path),
        epochs=1,
        batch_size=8,
        lr=0.01,
        opt="adamw",
        threads=1,
    )
    result = train(config)
    assert 0 <= result["test_miou"] <= 1 and 0 <= result["test_acc"] <= 1
    assert (tmp_path / "masks.png").exists()
    images = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images)
    assert main(["predict", "--checkpoint", str(tmp_path), "--out-dir", str(tmp_path / "pred"), str(images)]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "scene.mask.png"))
    assert mask.shape == (32, 32) and mask.max() <= 10


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", "--model", "mobilenet_v3", "--data", "mnist5k", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mobilenet_v3'" in err and "mobilenet_v3_small" in err and "Traceback" not in err
    assert main(["train", "--model", "mobilenet_v2", "--data", "mnist5k", "--model-arg", "widht_mult=0.5"]) == 2
    assert "did you mean: width_mult" in capsys.readouterr().err
    assert main(["train", "--model", "mobilenet_v2", "--data", "mnist5k", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--model", "unet", "--data", "mnist5k", "--out", str(tmp_path / "b")]) == 2
    assert "unet is a segmentation model but the data is a classification set" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "nothing: no such file or run folder" in capsys.readouterr().err


def test_existing_run_folder_needs_resume(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["train", "--model", "mobilenet_v2", "--data", "mnist5k", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_dispatch_to_the_detection_and_text_engines(monkeypatch, capsys):
    import sys
    import types

    seen = {}
    for name in ("detection", "text"):
        module = types.ModuleType(f"convatlas.train.{name}")
        module.run = lambda args, name=name: seen.setdefault(name, args) and 0
        monkeypatch.setitem(sys.modules, f"convatlas.train.{name}", module)
    assert main(["train", "--model", "faster_rcnn", "--task", "detection", "--backbone", "mobilenet_v3_small"]) == 0
    assert seen["detection"].backbone == "mobilenet_v3_small" and seen["detection"].epochs is None
    assert main(["train", "--model", "kim_cnn", "--data", "mr", "--mode", "static", "--folds", "3"]) == 0
    assert seen["text"].mode == "static" and seen["text"].folds == 3
