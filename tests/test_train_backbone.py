"""A detector's backbone started from a classification run (``backbone_weights``, ``--backbone-weights``).

References: the classification run's own tensors (every feature tensor is copied exactly) and the run's own first
convolution on the run's normalisation (the adapted convolution on the detector's normalisation gives the same output
up to a constant per channel, which the batch norm after it removes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys

import pytest
import torch

from benchmark_scripts import BENCHMARKS, load_benchmark
from cli_checks import expect_user_error, run_cli
from convatlas.detection.detectors import IMAGENET_MEAN, IMAGENET_STD
from convatlas.models import create_model
from convatlas.train import TrainConfig, fit
from convatlas.train.checkpoint import CheckpointError, load_backbone, load_checkpoint, load_model, prefixed
from convatlas.train.config import ConfigError
from convatlas.train.detection import DetectionTask
from convatlas.train.engine import run_config
from tiny_runs import HAVE_FASHION_MNIST, blocks_coco

WIDTH = {"width_mult": 0.125}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A classification run of resnet9 (1 channel, mnist5k) and a COCO folder of blocks."""
    root = tmp_path_factory.mktemp("backbone")
    cls = TrainConfig(model="resnet9", data="mnist5k", model_args=WIDTH, out=str(root / "cls"), epochs=1,
                      batch_size=16, limit_train=32, limit_test=16, threads=1, seed=3)  # fmt: skip
    fit(cls)
    return root / "cls", blocks_coco(root / "coco")


def _detection(runs, out, **changes) -> TrainConfig:
    cls, coco = runs
    values = dict(
        model="faster_rcnn",
        data=f"coco:{coco}",
        out=str(out),
        backbone_weights=str(cls),
        epochs=1,
        batch_size=2,
        limit_train=4,
        limit_test=2,
        threads=1,
        model_args={"representation_size": 32},
    )
    return TrainConfig(**{**values, **changes})


def test_every_feature_tensor_is_the_runs_and_the_first_convolution_is_adapted(runs):
    cls, _ = runs
    trained, record = load_model(cls)
    body = create_model("resnet9", **WIDTH)  # 3 input channels, ImageNet normalisation, 10 classes
    line = load_backbone(body, "resnet9", cls, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    assert "first convolution prep.0.weight adapted from 1 to 3 input channels" in line
    ours, theirs = body.state_dict(), trained.state_dict()
    copied = [k for k in theirs if not k.startswith("head.") and k != "prep.0.weight"]
    assert len(copied) > 30
    for name in copied:
        assert torch.equal(ours[name], theirs[name]), name
    # The stem: the run's convolution on its normalisation against ours on the detector's, on a grey image.
    gray = torch.rand(1, 1, 20, 20, dtype=torch.float64)
    mean, std = record.inputs.mean[0], record.inputs.std[0]
    run_out = torch.nn.functional.conv2d((gray - mean) / std, theirs["prep.0.weight"].double(), padding=1)
    rgb = (gray.expand(1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    our_out = torch.nn.functional.conv2d(rgb, ours["prep.0.weight"].double(), padding=1)
    inner = (our_out - run_out)[..., 1:-1, 1:-1]  # the zero padding of the border sees no offset
    assert inner.std(dim=(2, 3)).max() < 1e-5  # a constant per output channel
    assert inner.abs().max() > 1e-3  # which is not zero: the normalisations differ
    # and a norm layer in training mode removes it
    bn = torch.nn.BatchNorm2d(run_out.shape[1], affine=False, dtype=torch.float64).train()
    torch.testing.assert_close(bn(our_out[..., 1:-1, 1:-1]), bn(run_out[..., 1:-1, 1:-1]), atol=1e-6, rtol=1e-6)


def test_the_run_names_the_backbone_and_its_width_and_the_model_starts_from_it(runs, tmp_path):
    config = _detection(runs, tmp_path / "det").resolved()
    assert config.backbone == "resnet9" and config.model_args["backbone_kwargs"] == WIDTH
    task = DetectionTask(config)
    model = task.build_model()
    task.initialise(model)
    state = prefixed(load_checkpoint(runs[0])[0], "model")
    body = model.backbone.body.state_dict()
    layers = [k for k in body if k.startswith("layer")]
    assert len(layers) > 20 and all(torch.equal(body[k], state[k]) for k in layers)
    assert task.notes()[-1][1] == {"kind": "backbone", "weights": str(runs[0]), "model": "resnet9"}


def test_a_run_with_backbone_weights_trains_logs_them_and_resumes_without_them(runs, tmp_path):
    cls, _ = runs
    moved = tmp_path / "cls-copy"
    shutil.copytree(cls, moved, ignore=shutil.ignore_patterns(".convatlas.lock"))
    out = tmp_path / "det"
    fit(_detection(runs, out, backbone_weights=str(moved)))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "backbone" and first["model"] == "resnet9"
    shutil.rmtree(moved)  # resuming takes the run's own checkpoint, not the classification run
    saved = run_config(out)  # what `convatlas train --resume` continues: the backbone and its width are in it
    assert saved.backbone == "resnet9" and saved.model_args["backbone_kwargs"] == WIDTH
    resumed = fit(dataclasses.replace(saved, epochs=2), resume=True)
    assert resumed.global_step == 4


def test_a_run_of_another_task_model_or_width_is_refused_naming_the_option(runs, tmp_path):
    det = tmp_path / "det"
    fit(_detection(runs, det))
    with pytest.raises(ConfigError, match="backbone_weights.*a detection run of faster_rcnn"):
        _detection(runs, tmp_path / "x", backbone_weights=str(det)).resolved()
    other = _detection(runs, tmp_path / "y", backbone="mobilenet_v3_small")
    with pytest.raises(ConfigError, match="backbone_weights.*a run of resnet9, but the backbone is mobilenet_v3_small"):
        fit(other)
    wide = _detection(runs, tmp_path / "z", model_args={"backbone_kwargs": {"width_mult": 0.25}})
    with pytest.raises(ConfigError, match=r"backbone_weights.*shape.*built with \{'width_mult': 0.125\}"):
        fit(wide)
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()  # refused before any file is written
    with pytest.raises(ConfigError, match="backbone_weights.*no such file or run folder"):
        _detection(runs, tmp_path / "w", backbone_weights=str(tmp_path / "nothing")).resolved()
    with pytest.raises(CheckpointError, match="a detection run"):
        load_backbone(create_model("resnet9"), "resnet9", det, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)


def test_the_command_line_refuses_bad_backbone_weights_in_one_line(runs, tmp_path):
    cls, coco = runs
    base = ["train", "--model", "faster_rcnn", "--data", f"coco:{coco}", "--epochs", "1", "--batch-size", "2",
            "--threads", "1", "--out", str(tmp_path / "new")]  # fmt: skip
    expect_user_error([*base, "--backbone-weights", str(tmp_path / "none")], names=["--backbone-weights", "none"])
    expect_user_error([*base, "--backbone", "mobilenet_v2", "--backbone-weights", str(cls)],
                      names=["--backbone-weights", "resnet9", "mobilenet_v2"])  # fmt: skip
    expect_user_error(["train", "--model", "resnet9", "--data", "mnist5k", "--backbone-weights", str(cls), "--out",
                       str(tmp_path / "new")], names=["--backbone-weights", "does not apply"])  # fmt: skip
    assert not (tmp_path / "new").exists()
    ok = run_cli([*base, "--backbone-weights", str(cls), "--limit-train", "4", "--limit-test", "2",
                  "--model-arg", "representation_size=32"])  # fmt: skip
    assert ok.code == 0, ok.stderr
    assert "backbone: resnet9 starts from" in ok.stdout


def test_the_benchmark_starts_torchvisions_detector_from_the_same_weights(runs):
    """benchmarks/detection.py --pretrain: torchvision's FasterRCNN gets the run's tensors, as ours does, and
    --fpn-channels sets both sides' pyramid width."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        detection = load_benchmark("detection")
    finally:
        sys.path.remove(str(BENCHMARKS))
    args = argparse.Namespace(backbone="resnet9", backbone_kwargs=WIDTH, anchor_sizes=[24.0, 48.0], fpn=True, seed=0,
                              weights=str(runs[0]), canvas=64)  # fmt: skip
    model, stride = detection.build_torchvision(args, 3)
    assert stride == 4 and model.rpn.anchor_generator.sizes == ((24.0,), (48.0,))
    state = prefixed(load_checkpoint(runs[0])[0], "model")
    body = model.backbone.body.state_dict()  # torchvision's IntermediateLayerGetter over prep, layer1..3
    layers = [k for k in body if k.startswith("layer")]
    assert len(layers) > 20 and all(torch.equal(body[k], state[k]) for k in layers)
    default = argparse.Namespace(**{**vars(args), "anchor_sizes": None, "weights": None})
    assert detection.build_torchvision(default, 3)[0].rpn.anchor_generator.sizes == ((16.0,), (32.0,))  # as ours
    assert model.backbone.out_channels == 64 and model.roi_heads.box_head.fc6.in_features == 64 * 49  # the default
    narrow = argparse.Namespace(**{**vars(default), "fpn_channels": 32})
    theirs = detection.build_torchvision(narrow, 3)[0]
    ours = detection.build_ours(narrow, 3)
    assert theirs.backbone.out_channels == ours.backbone.out_channels == 32  # --fpn-channels: both sides
    assert theirs.roi_heads.box_head.fc6.in_features == 32 * 49


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="needs Fashion-MNIST (make data)")
def test_small_object_anchors_are_four_times_each_pyramid_levels_stride(tmp_path):
    """The small-object default (fashion-scenes, nuclei): one anchor size per level, 4 x stride: 16 to 128 px on P2 to
    P5 of a MobileNet, 16 and 32 px on the two levels of ResNet-9 (strides 4 and 8); given sizes are kept."""

    def sizes(**changes):
        config = TrainConfig(model="faster_rcnn", data="fashion-scenes:canvas=64,num_images=8", out=str(tmp_path / "r"),
                             **changes).resolved()  # fmt: skip
        return DetectionTask(config).model_spec().kwargs["anchor_sizes"]

    assert sizes() == [16.0, 32.0, 64.0, 128.0]
    assert sizes(backbone="resnet9") == [16.0, 32.0]
    assert sizes(backbone="resnet9", model_args={"anchor_sizes": [24, 48]}) == [24, 48]


def test_rcnn_starts_the_cnn_it_runs_on_each_warp_from_the_run(runs, tmp_path):
    config = _detection(runs, tmp_path / "rcnn", model="rcnn", model_args={}).resolved()
    task = DetectionTask(config)
    model = task.build_model()
    task.initialise(model)
    state = prefixed(load_checkpoint(runs[0])[0], "model")
    cnn = model.roi_heads.box_features.cnn.state_dict()
    layers = [k for k in cnn if k.startswith("layer")]
    assert len(layers) > 20 and all(torch.equal(cnn[k], state[k]) for k in layers)
