"""Tiny training runs of each task for the engine's tests: a few steps, one thread, seconds each.

``tiny_config(kind, out, **changes)`` gives a :class:`TrainConfig`; ``separable_tsv`` writes a sentence file whose
label is which of two words a sentence contains; ``blocks_coco`` writes a small COCO folder of coloured blocks.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from convatlas.data.fashion_mnist import DEBIAN_DIR
from convatlas.train import TrainConfig

HAVE_FASHION_MNIST = (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists()
KINDS = ("classification", "segmentation", "text", "detection")
SCENES = "fashion-scenes:num_images=24,canvas=32,scale=0.75-1.0"
DETECTION_SCENES = "fashion-scenes:num_images=24,canvas=64"


def separable_tsv(path: Path, n: int = 120, seed: int = 0) -> Path:
    """``n`` sentences of filler words with ``wonderful`` (label pos) or ``awful`` (label neg) inserted."""
    rng = random.Random(seed)
    filler = ["the", "a", "film", "plot", "actors", "story", "was", "is", "and", "of", "scenes", "music"]
    lines = []
    for i in range(n):
        words = rng.sample(filler, 6)
        words.insert(rng.randrange(7), "wonderful" if i % 2 else "awful")
        lines.append(f"{'pos' if i % 2 else 'neg'}\t{' '.join(words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def blocks_image(seed: int, size=(64, 80)):
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


def blocks_coco(root: Path, train: int = 8, test: int = 4) -> Path:
    """A COCO folder (``train.json``, ``test.json``, ``train/``, ``test/``) of block images, two categories."""
    for split, seeds in (("train", range(train)), ("test", range(100, 100 + test))):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i, seed in enumerate(seeds):
            array, anns = blocks_image(seed)
            Image.fromarray(array).save(root / split / f"{seed}.png")
            images.append({"id": i + 1, "file_name": f"{seed}.png", "height": 64, "width": 80})
            for a in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, **a})
        annotations.append({"id": 999, "image_id": 1, "bbox": [5, 5, 0, 10], "category_id": 3, "iscrowd": 0})
        categories = [{"id": 3, "name": "blue"}, {"id": 7, "name": "red"}]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def tiny_config(kind: str, out: Path, *, tsv: Path | None = None, **changes) -> TrainConfig:
    """A run of a few steps for ``kind``: 2 epochs of 4 steps (text: per fold), one thread, deterministic."""
    common = dict(out=str(out), threads=1, deterministic=True, seed=1, epochs=2)
    if kind == "classification":
        config = TrainConfig(model="mobilenet_v2", data="mnist5k", model_args={"width_mult": 0.35}, batch_size=16,
                             limit_train=64, limit_test=32, lr=0.05, **common)  # fmt: skip
    elif kind == "segmentation":
        config = TrainConfig(model="unet", data=SCENES, model_args={"widths": (8, 16), "padding": "same"},
                             batch_size=4, limit_train=16, limit_test=8, lr=0.01, opt="adamw", **common)  # fmt: skip
    elif kind == "text":
        config = TrainConfig(model="kim_cnn", data=f"tsv:{tsv}", mode="rand", folds=3, max_folds=2, batch_size=10,
                             limit_train=60, model_args={"maps": 8}, **common)  # fmt: skip
    elif kind == "detection":
        config = TrainConfig(model="faster_rcnn", data=DETECTION_SCENES, batch_size=4, limit_train=16, limit_test=4,
                             model_args={"backbone_kwargs": {"width_mult": 0.5}, "representation_size": 64},
                             **common)  # fmt: skip
    else:
        raise ValueError(kind)
    return dataclasses.replace(config, **changes)
