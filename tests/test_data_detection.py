"""Detection data rules: COCO JSON and PASCAL VOC XML records are checked when the set is built, and a malformed one
is refused with the file, the record and the rule; every spec honours ``limit``.

Reference: pycocotools' ``COCO`` reads the same annotation file, and its ``[x, y, w, h]`` boxes converted to
``(x1, y1, x2, y2)`` must equal ours.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convatlas.data.detection import CocoDetection, VOCDetection, build_detection_dataset
from convatlas.data.fashion_mnist import DEBIAN_DIR

GOOD_COCO = {
    "images": [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 16} for i in (1, 2, 3, 4)],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 5, "bbox": [1, 2, 5, 6], "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 9, "bbox": [0.5, 0, 10, 8.25]},
        {"id": 12, "image_id": 2, "category_id": 5, "bbox": [3, 3, 4, 4], "iscrowd": 1},
        {"id": 13, "image_id": 4, "category_id": 9, "bbox": [2, 2, 2, 2]},
    ],
    "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
}


def write_coco(root, data=GOOD_COCO, split="train"):
    (root / split).mkdir(parents=True, exist_ok=True)
    for image in GOOD_COCO["images"]:
        Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / split / image["file_name"])
    (root / f"{split}.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return root / f"{split}.json"


def test_coco_boxes_match_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    path = write_coco(tmp_path)
    ours = build_detection_dataset(f"coco:{tmp_path}", "train")
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        ref = COCO(str(path))
    assert ours.classes == ("background", "cat", "dog") and ours.num_classes == 2 and ours.task == "detection"
    label_of = {5: 1, 9: 2}
    for index, image in enumerate(ours.images):
        anns = [a for a in ref.loadAnns(ref.getAnnIds(imgIds=image["id"])) if not a.get("iscrowd", 0)]
        expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        _, target = ours[index]
        assert target["boxes"].tolist() == expected
        assert target["labels"].tolist() == [label_of[a["category_id"]] for a in anns]


def _mutate(change):
    data = copy.deepcopy(GOOD_COCO)
    change(data)
    return data


COCO_CASES = {
    "not-json": ('{"images": [', ["not valid JSON", "line 1"]),
    "a-list": ("[]", ["holds a JSON list"]),
    "no-annotations": (_mutate(lambda d: d.pop("annotations")), ["needs a list 'annotations'"]),
    "images-not-list": (_mutate(lambda d: d.update(images={})), ["needs a list 'images'", "found dict"]),
    "no-categories": (_mutate(lambda d: d.update(categories=[])), ["'categories' is empty"]),
    "category-twice": (_mutate(lambda d: d["categories"].append({"id": 9, "name": "x"})), ["id 9 more than once"]),
    "name-twice": (_mutate(lambda d: d["categories"].append({"id": 7, "name": "dog"})), ["name 'dog' more than once"]),
    "image-no-id": (_mutate(lambda d: d["images"][1].pop("id")), ["images[1] has no integer or string 'id'"]),
    "image-not-object": (_mutate(lambda d: d["images"].append(3)), ["images[4] is a int, not an object"]),
    "image-no-file": (_mutate(lambda d: d["images"][0].pop("file_name")), ["images[0] (id 1) has no 'file_name'"]),
    "image-missing": (
        _mutate(lambda d: d["images"][2].update(file_name="gone.png")),
        ["images[2] (id 3)", "gone.png does not exist"],
    ),
    "unknown-image": (
        _mutate(lambda d: d["annotations"][1].update(image_id=77)),
        ["annotations[1] (id 11)", "image_id 77 is not the id of an image"],
    ),
    "unknown-category": (
        _mutate(lambda d: d["annotations"][0].update(category_id=3)),
        ["annotations[0] (id 10)", "category_id 3 is not the id of a category", "(ids: 5, 9)"],
    ),
    "bbox-3": (
        _mutate(lambda d: d["annotations"][3].update(bbox=[1, 2, 3])),
        ["annotations[3] (id 13)", "bbox must be four finite numbers"],
    ),
    "bbox-text": (_mutate(lambda d: d["annotations"][3].update(bbox=[1, 2, "3", 4])), ["bbox must be four finite"]),
    "bbox-nan": (
        '{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [NaN, 0, 1, 1]}],'
        ' "categories": [{"id": 1, "name": "a"}]}',
        ["annotations[0]"],
    ),
    "bbox-negative": (
        _mutate(lambda d: d["annotations"][0].update(bbox=[1, 2, -5, 6])),
        ["annotations[0] (id 10)", "negative width or height"],
    ),
    "no-bbox": (_mutate(lambda d: d["annotations"][0].pop("bbox")), ["annotations[0] (id 10)", "got None"]),
    "iscrowd-2": (_mutate(lambda d: d["annotations"][0].update(iscrowd=2)), ["iscrowd must be 0 or 1, got 2"]),
    "ann-no-id": (_mutate(lambda d: d["annotations"][2].pop("id")), ["annotations[2] has no integer or string 'id'"]),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_malformed_coco_names_file_record_and_rule(tmp_path, case):
    data, words = COCO_CASES[case]
    path = write_coco(tmp_path, data)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        build_detection_dataset(f"coco:{tmp_path}", "train")
    message = str(info.value)
    assert str(path) in message and all(w in message for w in words), message


def test_coco_zero_size_boxes_are_left_out_with_a_warning(tmp_path):
    write_coco(tmp_path, _mutate(lambda d: d["annotations"][3].update(bbox=[2, 2, 0, 3])))
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) with a zero width or height left out \(ids 13\)"):
        data = build_detection_dataset(f"coco:{tmp_path}", "train")
    assert data.degenerate == [13] and len(data[3][1]["boxes"]) == 0


def test_coco_files_and_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"coco: .*nowhere does not exist"):
        build_detection_dataset(f"coco:{tmp_path / 'nowhere'}", "train")
    with pytest.raises(FileNotFoundError, match=r"none of .*instances_test.json, .*test.json exists"):
        build_detection_dataset(f"coco:{tmp_path}", "test")
    (tmp_path / "test.json").mkdir()
    with pytest.raises(IsADirectoryError, match=r"annotation file .*test.json is a folder"):
        build_detection_dataset(f"coco:{tmp_path}", "test")
    with pytest.raises(NotADirectoryError, match=r"images folder .*is a file"):
        CocoDetection(write_coco(tmp_path), write_coco(tmp_path))


VOC_OBJECT = "<object><name>{name}</name><difficult>{difficult}</difficult>{box}</object>"
VOC_BOX = "<bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox>"


def write_voc(root, objects=None, ids=("a", "b", "c")):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    for item in ids:
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "JPEGImages" / f"{item}.jpg")
        body = objects or VOC_OBJECT.format(name="dog", difficult=0, box=VOC_BOX.format(1, 2, 30, 20))
        (root / "Annotations" / f"{item}.xml").write_text(
            f"<annotation><filename>{item}.jpg</filename>{body}</annotation>"
        )
    return root / "Annotations" / f"{ids[-1]}.xml"


def test_voc_reads_boxes_in_torchvision_convention(tmp_path):
    write_voc(tmp_path)
    data = build_detection_dataset(f"voc:{tmp_path}", "train")
    assert isinstance(data, VOCDetection) and len(data) == 3 and data.task == "detection"
    image, target = data[0]
    assert image.shape == (3, 30, 40) and target["boxes"].tolist() == [[0.0, 1.0, 30.0, 20.0]]
    one_pixel = VOC_OBJECT.format(name="cat", difficult=1, box=VOC_BOX.format(5, 5, 5, 5))  # xmax == xmin: 1 px wide
    write_voc(tmp_path, one_pixel)
    assert VOCDetection(tmp_path)[0][1]["boxes"].tolist() == [[4.0, 4.0, 5.0, 5.0]]


VOC_CASES = {
    "not-xml": ("<annotation><object>", ["not valid XML", "line 1"]),
    "wrong-root": (None, ["root element is <voc>"]),
    "no-bndbox": (VOC_OBJECT.format(name="dog", difficult=0, box=""), ["object 0 (dog): no <bndbox>"]),
    "no-xmax": (
        VOC_OBJECT.format(name="dog", difficult=0, box="<bndbox><xmin>1</xmin><ymin>1</ymin><ymax>5</ymax></bndbox>"),
        ["object 0 (dog): <bndbox> has no <xmax>"],
    ),
    "text-coordinate": (
        VOC_OBJECT.format(name="dog", difficult=0, box=VOC_BOX.format(1, 1, "ten", 5)),
        ["object 0 (dog): <xmax> 'ten' is not a number"],
    ),
    "inf-coordinate": (
        VOC_OBJECT.format(name="dog", difficult=0, box=VOC_BOX.format(1, 1, "inf", 5)),
        ["<xmax> is 'inf'; coordinates must be finite"],
    ),
    "x2-before-x1": (
        VOC_OBJECT.format(name="dog", difficult=0, box=VOC_BOX.format(1, 1, 5, 5))
        + VOC_OBJECT.format(name="cat", difficult=0, box=VOC_BOX.format(9, 1, 4, 5)),
        ["object 1 (cat): xmin 9, ymin 1, xmax 4, ymax 5", "x1 < x2"],
    ),
    "y2-before-y1": (VOC_OBJECT.format(name="dog", difficult=0, box=VOC_BOX.format(1, 8, 5, 7)), ["ymax >= ymin"]),
    "unknown-class": (
        VOC_OBJECT.format(name="unicorn", difficult=0, box=VOC_BOX.format(1, 1, 5, 5)),
        ["has an object of unknown class 'unicorn' (object 0)"],
    ),
    "difficult-yes": (
        VOC_OBJECT.format(name="dog", difficult="yes", box=VOC_BOX.format(1, 1, 5, 5)),
        ["object 0 (dog): <difficult> must be 0 or 1, got 'yes'"],
    ),
}


@pytest.mark.parametrize("case", list(VOC_CASES))
def test_malformed_voc_names_file_object_and_rule(tmp_path, case):
    body, words = VOC_CASES[case]
    bad = write_voc(tmp_path)
    if body is None:
        text = "<voc></voc>"
    elif body.startswith("<annotation"):
        text = body
    else:
        text = f"<annotation><filename>c.jpg</filename>{body}</annotation>"
    bad.write_text(text)
    with pytest.raises(ValueError) as info:
        build_detection_dataset(f"voc:{tmp_path}", "train")
    message = str(info.value)
    assert str(bad) in message and all(w in message for w in words), message


def test_voc_missing_files_are_named(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b.xml: its image .*JPEGImages/b.jpg does not exist"):
        VOCDetection(tmp_path)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("a\n\nzz\n")
    with pytest.raises(FileNotFoundError, match=r"test.txt line 3: .*Annotations/zz.xml does not exist"):
        build_detection_dataset(f"voc:{tmp_path}", "test")
    with pytest.raises(FileNotFoundError, match=r"voc: annotation folder .*Annotations does not exist"):
        VOCDetection(tmp_path / "JPEGImages")


def test_voc_listing_that_is_not_utf8_is_named(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"a\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"trainval.txt: not UTF-8 text"):
        build_detection_dataset(f"voc:{tmp_path}", "train")


def test_voc_custom_classes(tmp_path):
    write_voc(tmp_path, VOC_OBJECT.format(name="nucleus", difficult=0, box=VOC_BOX.format(1, 1, 5, 5)))
    data = build_detection_dataset(f"voc:{tmp_path}", "train", classes=("nucleus",))
    assert data.classes == ("background", "nucleus") and data[0][1]["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="must not name 'background'"):
        VOCDetection(tmp_path, classes=("background", "nucleus"))


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_limit_applies_to_coco_and_voc(tmp_path, kind):
    if kind == "coco":
        write_coco(tmp_path)
    else:
        write_voc(tmp_path, ids=("a", "b", "c", "d"))
    data = build_detection_dataset(f"{kind}:{tmp_path}", "train", limit=2)
    assert len(data) == 2 and data.classes[0] == "background" and data.num_classes >= 1
    assert len(build_detection_dataset(f"{kind}:{tmp_path}", "train", limit=10**30)) == 4
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"limit must be >= 1 .*got {bad}"):
            build_detection_dataset(f"{kind}:{tmp_path}", "train", limit=bad)


@pytest.mark.skipif(not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist (make data)")
def test_scenes_num_images_zero_is_an_error_not_the_default():
    with pytest.raises(ValueError, match=r"num_images must be in 1\.\.\d+, got 0"):
        build_detection_dataset("fashion-scenes", "train", num_images=0)
    data = build_detection_dataset("fashion-scenes", "test", num_images=6, limit=3)
    assert len(data) == 3 and data.classes[0] == "background" and data.num_classes == 10
    assert torch.equal(data[1][0], build_detection_dataset("fashion-scenes", "test", num_images=6)[2][0])
    options = build_detection_dataset(
        "fashion-scenes:num_images=3,canvas=40,max_items=1,scale=1-1.25", "test", num_images=50
    )
    assert len(options) == 3 and options[0][0].shape == (3, 40, 40) and len(options[0][1]["boxes"]) <= 1
    with pytest.raises(ValueError, match="detection scenes have 3 channels"):
        build_detection_dataset("fashion-scenes:channels=1", "test")
    with pytest.raises(ValueError, match="unknown option 'cnavas'; did you mean: canvas"):
        build_detection_dataset("fashion-scenes:cnavas=40", "test")


def test_detection_spec_errors():
    with pytest.raises(ValueError, match=r"detection data must be one of fashion-scenes\[:key=value,...\], "
                       r"nuclei\[:key=value,...\], coco:DIR"):  # fmt: skip
        build_detection_dataset("cocoo:x", "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        build_detection_dataset("coco:x", "val")
