"""The real nuclei image through the training engine: U-Net as its paper trains it (unpadded network, context crops,
weighted loss, overlap-tile evaluation and prediction), segmentation metrics, detection with fitted anchors.

References: the library's own checked pieces computed independently of the engine (``weighted_cross_entropy`` and
``F.cross_entropy`` for the loss, ``predict_tiled`` and ``ops.masks``' ``foreground_iou``, ``dice``,
``label_instances`` and ``instance_f1`` for the metrics, ``fit_anchors`` and ``grid_coverage`` for the anchors,
``torchvision.ops.masks_to_boxes`` for boxes after augmentation), and an uninterrupted run for resume.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import masks_to_boxes

from cli_checks import run_cli
from convatlas.data import build_dataset, collate
from convatlas.data.augment import (
    ELASTIC_GRID,
    ELASTIC_SIGMA,
    ElasticGrid,
    augment_batch,
    augment_sample,
    augmentation,
)
from convatlas.data.detection import build_detection_dataset
from convatlas.data.nuclei import IGNORE_INDEX, load_nuclei
from convatlas.detection.anchors import AnchorGenerator, fit_anchors, grid_coverage
from convatlas.models.tiling import predict_tiled, unpadded_border
from convatlas.ops.masks import dice, foreground_iou, instance_f1, label_instances
from convatlas.ops.unet_loss import weighted_cross_entropy
from convatlas.train import TrainConfig, build_task, fit, load_checkpoint, load_model, read_record, run_config
from convatlas.train.images import prepare_inputs

UNPADDED = {"widths": (4, 8, 16)}  # three levels: a border of 20 pixels


def _seg_config(out, **changes) -> TrainConfig:
    config = TrainConfig(model="unet", data="nuclei:size=24,samples=8", model_args=UNPADDED, batch_size=4, epochs=2,
                         opt="adamw", lr=3e-3, loss="unet-weighted", augment=True, threads=1, deterministic=True,
                         seed=1, out=str(out))  # fmt: skip
    return dataclasses.replace(config, **changes)


def _epochs(run) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records if r["kind"] == "epoch"]


def test_nuclei_unet_run_stopped_mid_epoch_resumes_bit_identically(tmp_path, monkeypatch):
    import os
    import signal

    from convatlas.train import TrainingInterrupted
    from convatlas.train.images import SegmentationTask

    reference = _seg_config(tmp_path / "ref")
    result = fit(reference)
    for name in ("fg_iou", "dice", "instance_f1", "miou", "acc"):
        assert 0 <= result.final[f"test_{name}"] <= 1, name
    real, calls = SegmentationTask.train_step, {"n": 0}

    def stopped(self, model, batch, device):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, model, batch, device)

    monkeypatch.setattr(SegmentationTask, "train_step", stopped)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        fit(dataclasses.replace(reference, out=str(out)))
    assert read_record(out, "last")[0].progress.step == 1  # mid-epoch: crops, order and augmentation restart there
    monkeypatch.setattr(SegmentationTask, "train_step", real)
    fit(run_config(out), resume=True)
    a, _ = load_checkpoint(out, "last")
    b, _ = load_checkpoint(tmp_path / "ref", "last")
    names = [k for k in b if k.startswith(("model/", "optimizer/"))]
    assert len(names) > 10 and all(torch.equal(a[k], b[k]) for k in names)
    assert _epochs(out) == _epochs(tmp_path / "ref")


def test_training_crops_carry_the_unpadded_networks_border_of_context():
    task = build_task(_seg_config("unused").resolved())
    assert task.levels == 3 and unpadded_border(3) == 20
    image, target = task.train_set[0]
    assert image.shape == (1, 24 + 2 * 20, 24 + 2 * 20)  # 24 is a valid output side of three levels
    assert target["mask"].shape == target["weight"].shape == image.shape[1:]  # labels in the context too
    # the network maps the input exactly onto its centre
    model = task.build_model()
    assert model(image[None]).shape[-2:] == (24, 24)
    # a size the network cannot give is lowered to the largest one it can (valid outputs are 4 apart here)
    odd = build_task(_seg_config("unused", data="nuclei:size=26,samples=8").resolved())
    assert odd.train_set[0][0].shape == (1, 64, 64)
    # a padded network takes the crops as they are, without context
    padded = build_task(_seg_config("unused", model_args={"widths": (4, 8), "padding": "same"}).resolved())
    assert padded.levels is None and padded.train_set[0][0].shape == (1, 24, 24)


def test_the_weighted_loss_is_the_one_the_option_selects():
    weighted = build_task(_seg_config("unused").resolved())
    plain = build_task(_seg_config("unused", loss=None).resolved())
    torch.manual_seed(0)
    model = weighted.build_model()
    batch = collate([weighted.train_set[i] for i in range(4)])
    loss, _ = weighted.train_step(model, batch, torch.device("cpu"))
    x = prepare_inputs(batch[0], mean=weighted.train_set.mean, std=weighted.train_set.std, image_size=None,
                       device="cpu")  # fmt: skip
    logits = model(x)
    mask, weight = batch[1]["mask"][:, 20:44, 20:44], batch[1]["weight"][:, 20:44, 20:44]  # the output's centre
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, mask, weight, ignore_index=IGNORE_INDEX))
    torch.testing.assert_close(plain.train_step(model, batch, torch.device("cpu"))[0],
                               F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX))  # fmt: skip
    assert not torch.allclose(loss, F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX))


def test_the_unpadded_unet_is_evaluated_tile_by_tile_with_the_mask_metrics(tmp_path, monkeypatch):
    import convatlas.train.images as images

    config = _seg_config(tmp_path / "run", epochs=1)
    fit(config)
    calls = []
    real = images.predict_tiled
    monkeypatch.setattr(images, "predict_tiled", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    result = run_cli(["evaluate", "--checkpoint", str(tmp_path / "run"), "--json", str(tmp_path / "m.json")])
    assert result.code == 0, result.stderr
    assert calls == [(1, 1, 256, 256)]  # the whole held-out quadrant, through the overlap-tile strategy
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    for line in ("foreground IoU", "Dice", "instance F1 at IoU 0.5"):
        assert line in result.stdout
    # the reference: the tiles' scores computed here, scored with ops.masks
    model, record = load_model(tmp_path / "run")
    image, target = build_dataset(config.data, split="test")[0]
    x = prepare_inputs(image[None], mean=record.inputs.mean, std=record.inputs.std, image_size=None, device="cpu")
    pred = real(model, x).argmax(1)[0]
    mask = target["mask"]
    assert metrics["fg_iou"] == pytest.approx(foreground_iou(pred, mask))
    assert metrics["dice"] == pytest.approx(dice(pred, mask))
    scores = instance_f1(label_instances(pred), target["instances"], ignore=mask == IGNORE_INDEX)
    assert metrics["instance_f1"] == pytest.approx(scores.f1)
    assert (metrics["instance_precision"], metrics["instance_recall"]) == pytest.approx(
        (scores.precision, scores.recall)
    )


def test_predict_writes_the_mask_of_the_whole_image_with_the_unpadded_network(tmp_path):
    fit(_seg_config(tmp_path / "run", epochs=1))
    image, _ = load_nuclei()
    png = tmp_path / "nuclei.png"
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(png)
    argv = [
        "predict",
        "--checkpoint",
        str(tmp_path / "run"),
        "--out-dir",
        str(tmp_path / "pred"),
        "--overlay",
        str(png),
    ]
    result = run_cli(argv)
    assert result.code == 0, result.stderr
    mask = torch.from_numpy(np.asarray(Image.open(tmp_path / "pred" / "nuclei.mask.png")).astype(np.int64))
    assert mask.shape == (512, 512)
    model, record = load_model(tmp_path / "run")
    gray = np.asarray(Image.open(png), dtype=np.float32) / 255
    x = prepare_inputs(torch.from_numpy(gray)[None, None], mean=record.inputs.mean, std=record.inputs.std,
                       image_size=None, device="cpu")  # fmt: skip
    assert torch.equal(mask, predict_tiled(model, x).argmax(1)[0])
    # the overlay: the image where the mask is background, tinted where it is a nucleus
    overlay = np.asarray(Image.open(tmp_path / "pred" / "nuclei.overlay.png")).astype(np.int64)
    background = (mask == 0).numpy()
    assert overlay.shape == (512, 512, 3) and background.any() and (~background).any()
    assert np.array_equal(overlay[background], np.repeat((gray[background] * 255).round()[:, None], 3, 1))
    assert not np.array_equal(overlay[~background], np.repeat((gray[~background] * 255).round()[:, None], 3, 1))


def test_context_crops_carry_labels_so_the_deformation_loses_none_at_the_centre():
    task = build_task(_seg_config("unused").resolved())
    transform = augmentation("unet", "segmentation")
    images, target = collate([task.train_set[i] for i in range(8)])
    _, out = augment_batch(transform, "segmentation", images, target, seed=3)
    centre = out["mask"][:, 20:44, 20:44]
    # the only ignored pixels are the test region's (none here: crops whose centre misses the held-out quadrant
    # may still reach it in their context, where it is ignored) and the held-out nuclei's
    assert (centre != IGNORE_INDEX).float().mean() > 0.97
    assert out["weight"].shape == out["mask"].shape == images.shape[:1] + images.shape[2:]


def test_detection_boxes_follow_their_masks_through_the_elastic_deformation():
    data = build_detection_dataset("nuclei:size=64,samples=6", "train")
    transform = augmentation(data.augmentation, "detection")
    assert data.augmentation == "unet"
    moved = 0
    for i in range(len(data)):
        image, target = data[i]
        out_image, out = augment_sample(transform, "detection", image, target)
        assert out_image.shape == image.shape and set(out) == set(target)
        assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"]) and out["masks"].any((1, 2)).all()
        reference = masks_to_boxes(out["masks"]) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # ours: x2, y2 exclusive
        assert torch.equal(out["boxes"], reference)
        moved += not torch.equal(out_image, image)
    assert moved >= 4


def test_the_engines_augmentation_of_nuclei_is_the_u_net_papers():
    transform = augmentation("unet", "segmentation")
    steps = [type(s).__name__ for s in transform.transforms]
    assert steps == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRot90", "ElasticGrid"]
    elastic = transform.transforms[-1]
    assert isinstance(elastic, ElasticGrid) and (elastic.grid, elastic.sigma) == (ELASTIC_GRID, ELASTIC_SIGMA)
    assert (ELASTIC_GRID, ELASTIC_SIGMA) == (3, 10.0)  # the paper: a 3x3 grid, 10 px standard deviation
    assert build_dataset("nuclei:samples=1").augmentation == "unet"
    # the default spatial split holds out the bottom-right quadrant: 102 training nuclei, 23 test nuclei
    test = build_detection_dataset("nuclei", "test")
    assert len(test) == 1 and len(test[0][1]["boxes"]) == 23


def test_fitted_anchors_are_fitted_to_the_training_boxes_and_reported(tmp_path, capsys):
    config = TrainConfig(model="faster_rcnn", data="nuclei:size=64,samples=8", fit_anchors=3, epochs=1, batch_size=4,
                         model_args={"representation_size": 32, "fpn_channels": 16}, threads=1,
                         out=str(tmp_path))  # fmt: skip
    fit(config)
    printed = capsys.readouterr().out
    record, _ = read_record(tmp_path, "last")
    shapes = record.model.kwargs["anchor_shapes"]
    assert len(shapes) == 4 and all(len(level) == 3 for level in shapes)  # every pyramid level, P2 to P5
    data = build_detection_dataset(config.data, "train")
    boxes = [data[i][1]["boxes"] for i in range(len(data))]
    reference = fit_anchors(torch.cat(boxes), 3)
    assert np.allclose(shapes[0], reference.shapes.numpy())
    anchors = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert anchors["kind"] == "anchors" and anchors["k"] == 3
    sizes = [(64, 64)] * len(boxes)
    fitted = grid_coverage(boxes, sizes, AnchorGenerator(shapes=reference.per_level(4)), (4, 8, 16, 32))
    default = grid_coverage(boxes, sizes, AnchorGenerator(sizes=[(16.0,), (32.0,), (64.0,), (128.0,)]), (4, 8, 16, 32))
    assert anchors["coverage_fitted"] == pytest.approx(fitted) and anchors["coverage_default"] == pytest.approx(default)
    assert f"{fitted:.3f} with the fitted 3 per cell" in printed and f"{default:.3f} with the default 3" in printed


def test_faster_rcnn_defaults_to_a_feature_pyramid_on_small_objects():
    from tiny_runs import HAVE_FASHION_MNIST

    for data in ("nuclei", "fashion-scenes") if HAVE_FASHION_MNIST else ("nuclei",):
        task = build_task(TrainConfig(model="faster_rcnn", data=data, out="unused").resolved())
        kwargs = task.model_spec().kwargs
        assert kwargs["fpn"] is True and kwargs["anchor_sizes"] == [16.0, 32.0, 64.0, 128.0]
    c4 = build_task(TrainConfig(model="faster_rcnn", data="nuclei", model_args={"fpn": False}, out="x").resolved())
    assert c4.model_spec().kwargs["fpn"] is False
