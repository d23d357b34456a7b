"""Datasets: Fashion-MNIST and MNIST 5k decoding, folders, specs and bad input.

References: torchvision's own IDX reader (``read_sn3_pascalvincent_tensor``) for the decoding, torchvision's
``ImageFolder`` for class indices, the published Fashion-MNIST split sizes (60,000/10,000, 6,000 per class).
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder as TVImageFolder
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from convatlas.data import FashionMNIST, ImageFolder, SegmentationFolder, build_dataset, read_idx
from convatlas.data.fashion_mnist import DEBIAN_DIR

needs_fashion = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed (make data)"
)


@needs_fashion
def test_fashion_mnist_test_split_matches_torchvision_reader(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((DEBIAN_DIR / f"{name}.gz").read_bytes()))
    ours = FashionMNIST("test")
    ref_images = read_sn3_pascalvincent_tensor(str(tmp_path / "t10k-images-idx3-ubyte"))
    ref_labels = read_sn3_pascalvincent_tensor(str(tmp_path / "t10k-labels-idx1-ubyte")).long()
    assert torch.equal(ours.images, ref_images)
    assert torch.equal(ours.targets, ref_labels)
    # Published: 1,000 test images per class; items are [1, 28, 28] in [0, 1].
    assert ours.targets.bincount().tolist() == [1000] * 10
    x, y = ours[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and y == 9
    xb, yb = ours.get_batch(torch.tensor([0, 5]))
    assert torch.equal(xb[0], x) and yb.tolist() == [int(ours.targets[0]), int(ours.targets[5])]


@needs_fashion
def test_fashion_mnist_train_split_sizes():
    train = FashionMNIST("train")
    assert len(train) == 60000 and train.targets.bincount().tolist() == [6000] * 10


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="make data.*apt-get install dataset-fashion-mnist"):
        FashionMNIST("train", data_dir=tmp_path)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(7))
    with pytest.raises(ValueError, match="10 bytes.*holds 7"):
        read_idx(path)


def test_mnist5k_split_is_stratified_and_disjoint():
    train, test = build_dataset("mnist5k", split="train"), build_dataset("mnist5k", split="test")
    assert len(train) == 4000 and len(test) == 1000
    assert train.targets.bincount().tolist() == [400] * 10 and test.targets.bincount().tolist() == [100] * 10
    flat_train = {bytes(r) for r in train.images.reshape(4000, -1).numpy()}
    overlap = sum(bytes(r) in flat_train for r in test.images.reshape(1000, -1).numpy())
    assert overlap <= 5  # MNIST has a few exact duplicate digits, nothing more


def _write_tree(root, sizes=((8, 6), (5, 9))):
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.fromarray(np.full(size[::-1] + (3,), 40 * c + i, np.uint8)).save(root / name / f"{i}.png")


def test_imagefolder_matches_torchvision_and_resizes(tmp_path):
    _write_tree(tmp_path)
    ours, ref = ImageFolder(tmp_path, image_size=16), TVImageFolder(str(tmp_path))
    assert list(ours.classes) == ref.classes and ours.targets == ref.targets
    x, y = ours[3]
    assert x.shape == (3, 16, 16) and y == 1
    torch.testing.assert_close(x, torch.full((3, 16, 16), 41 / 255))


def test_imagefolder_reports_unreadable_images_by_name_and_count(tmp_path):
    _write_tree(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 of 6 images .* unreadable: cat/empty.jpg .*dog/broken.png"):
        ImageFolder(tmp_path, image_size=8)
    kept = ImageFolder(tmp_path, image_size=8, skip_unreadable=True)
    assert len(kept) == 4 and len(kept.unreadable) == 2


def test_segfolder_mask_size_mismatch_names_both_files(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "im" / "a.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "mk" / "a.png")
    with pytest.raises(ValueError, match=r"mask .*mk/a.png is 9x8 .* image .*im/a.png is 10x8"):
        SegmentationFolder(tmp_path / "im", tmp_path / "mk")


def test_segfolder_pairs_and_classes(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 1:5] = 3
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "im" / "a.jpg")
    Image.fromarray(mask).save(tmp_path / "mk" / "a.png")
    data = build_dataset(f"segfolder:{tmp_path / 'im'}:{tmp_path / 'mk'}")
    x, m = data[0]
    assert data.num_classes == 4 and x.shape == (3, 6, 6) and torch.equal(m, torch.from_numpy(mask).long())


def test_unknown_spec_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean: fashion-mnist"):
        build_dataset("fashion-mnst")
