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
    with pytest.warns(UserWarning, match="2 of 6 images .* left out"):
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


# ---------------------------------------------------------------------------------------------------------------------
# Rules for users' data: wrong data is refused with the file and the rule, never relabelled or dropped in silence.


def _write_split(root, classes, per_class=2):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((6, 6, 3), 20 * c + i, np.uint8)).save(root / name / f"{i}.png")


def test_imagefolder_test_split_keeps_training_labels_when_it_lacks_a_class(tmp_path):
    _write_split(tmp_path / "train", ("a", "b", "c"))
    _write_split(tmp_path / "test", ("a", "c"))
    train = build_dataset(f"imagefolder:{tmp_path}", split="train", image_size=8)
    test = build_dataset(f"imagefolder:{tmp_path}", split="test", image_size=8)
    reference = TVImageFolder(str(tmp_path / "train")).class_to_idx  # torchvision's labels of the training tree
    assert train.classes == test.classes == ("a", "b", "c") and test.num_classes == 3
    assert [(p.parent.name, y) for p, y in test.samples] == [(p.parent.name, reference[p.parent.name])
                                                             for p, _ in test.samples]  # fmt: skip
    assert test.targets == [0, 0, 2, 2]  # c keeps label 2; before, the test tree's own order made it 1 (b)


def test_imagefolder_test_class_absent_from_training_is_an_error_naming_it(tmp_path):
    _write_split(tmp_path / "train", ("a", "b"))
    _write_split(tmp_path / "val", ("a", "zebra"))
    with pytest.raises(ValueError, match=r"class folder .*val/zebra is not one of the 2 classes a, b"):
        build_dataset(f"imagefolder:{tmp_path}", split="test")
    assert len(build_dataset(f"imagefolder:{tmp_path}", split="train", image_size=8)) == 4


def test_imagefolder_given_classes_are_matched_by_name(tmp_path):
    _write_split(tmp_path, ("b", "a"))
    data = ImageFolder(tmp_path, image_size=8, classes=("x", "b", "a"))
    assert data.classes == ("x", "b", "a") and data.num_classes == 3
    assert {(p.parent.name, y) for p, y in data.samples} == {("b", 1), ("a", 2)}
    with pytest.raises(ValueError, match="must be distinct"):
        ImageFolder(tmp_path, classes=("a", "a", "b"))
    with pytest.raises(TypeError, match="not one string"):
        ImageFolder(tmp_path, classes="ab")


def test_imagefolder_skips_hidden_folders_and_files_and_refuses_empty_classes(tmp_path):
    _write_split(tmp_path, ("cat", "dog"))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "dog" / "._0.png").write_bytes(b"macOS resource fork, not an image")
    data = ImageFolder(tmp_path, image_size=8)
    assert data.classes == ("cat", "dog") and len(data) == 4
    (tmp_path / "emu").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*emu holds no image"):
        ImageFolder(tmp_path, image_size=8)


@pytest.mark.parametrize(
    "layout, error, words",
    [
        ("file", NotADirectoryError, ["is a file"]),
        ("missing", FileNotFoundError, ["does not exist"]),
        ("train-only", FileNotFoundError, ["neither test/ nor val/"]),
        ("no-classes", ValueError, ["no class sub-folders"]),
        ("no-images", ValueError, ["holds no image"]),
    ],
)
def test_imagefolder_layout_errors_name_the_folder(tmp_path, layout, error, words):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "train-only":
        _write_split(root / "train", ("a", "b"))
    elif layout == "no-classes":
        root.mkdir()
    elif layout == "no-images":
        (root / "a").mkdir(parents=True)
        (root / "a" / "notes.txt").write_text("no image here")
    with pytest.raises(error) as info:
        build_dataset(f"imagefolder:{root}", split="test")
    assert str(root) in str(info.value) and all(w in str(info.value) for w in words)


@pytest.mark.parametrize("limit", [0, -1, -(10**30)])
def test_limit_below_one_is_an_error_naming_limit(limit):
    with pytest.raises(ValueError, match=rf"limit must be >= 1 .*got {limit}"):
        build_dataset("mnist5k", split="test", limit=limit)


@pytest.mark.parametrize("limit", [True, 2.0, "5"])
def test_limit_of_the_wrong_type_is_an_error_naming_limit(limit):
    with pytest.raises(TypeError, match="limit must be an int"):
        build_dataset("mnist5k", split="test", limit=limit)


def test_limit_spreads_over_every_class_for_every_image_spec(tmp_path):
    _write_split(tmp_path / "if", ("a", "b", "c"), per_class=4)
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    for i in range(5):
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "im" / f"{i}.png")
        Image.fromarray(np.full((6, 6), i % 2, np.uint8)).save(tmp_path / "mk" / f"{i}.png")
    folder = build_dataset(f"imagefolder:{tmp_path / 'if'}", limit=3, image_size=8)
    assert len(folder) == 3 and sorted(folder[i][1] for i in range(3)) == [0, 1, 2]
    assert folder.classes == ("a", "b", "c") and folder.num_classes == 3  # the subset keeps the metadata
    seg = build_dataset(f"segfolder:{tmp_path / 'im'}:{tmp_path / 'mk'}", limit=2)
    assert len(seg) == 2 and seg.num_classes == 2
    digits = build_dataset("mnist5k", split="test", limit=10)
    assert sorted(digits.get_batch(torch.arange(10))[1].tolist()) == list(range(10))
    assert len(build_dataset("mnist5k", split="test", limit=10**30)) == 1000  # a limit above the size keeps all


def test_split_and_spec_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        build_dataset("mnist5k", split="val")
    with pytest.raises(ValueError, match="data 'mnist5k:x': mnist5k takes no options"):
        build_dataset("mnist5k:x")
    with pytest.raises(ValueError, match="data 'imagefolder:': imagefolder:DIR needs a folder"):
        build_dataset("imagefolder:")
    with pytest.raises(ValueError, match="expected segfolder:IMAGES:MASKS"):
        build_dataset(f"segfolder:{tmp_path}")
    with pytest.raises(ValueError, match="a text set"):
        build_dataset("tsv:x.tsv")
    with pytest.raises(TypeError, match="data must be a spec string"):
        build_dataset(None)
    with pytest.raises(NotADirectoryError, match=r"data_dir .*is a file"):
        (tmp_path / "f").write_text("x")
        build_dataset("mnist5k", data_dir=tmp_path / "f")
    with pytest.raises(FileNotFoundError, match=r"data_dir .*does not exist"):
        build_dataset("mnist5k", data_dir=tmp_path / "nowhere")


@pytest.mark.parametrize(
    "options, words",
    [
        ("canvas=abc", ["canvas must be an integer or HxW, got 'abc'"]),
        ("canvas=64x", ["canvas must be an integer or HxW"]),
        ("scale=1", ["scale must be a range LOW-HIGH such as 0.75-1.75, got '1'"]),
        ("scale=a-b", ["scale must be a range LOW-HIGH"]),
        ("scale=0.5-inf", ["scale must be a range 0 < low <= high (finite)"]),
        ("num_images=0", ["num_images must be in 1.."]),
        ("num_images=" + "9" * 30, ["num_images must be in 1.."]),
        ("max_items=0", ["max_items must be in 1..256"]),
        ("seed=-1", ["seed must be in 0..4294967295"]),
        ("canvas=100000", ["canvas must be in 28..8192"]),
        ("channels=2", ["channels must be 1 or 3"]),
        ("cnavas=64", ["unknown option 'cnavas'; did you mean: canvas"]),
        ("canvas", ["option 'canvas' is not key=value"]),
    ],
)
def test_fashion_scenes_options_name_the_option(options, words):
    with pytest.raises((ValueError, TypeError)) as info:
        build_dataset(f"fashion-scenes:{options}")
    assert all(w in str(info.value) for w in words), str(info.value)


def test_given_classes_must_match_a_fixed_set():
    data = build_dataset("mnist5k", split="test", classes=tuple(str(d) for d in range(10)))
    assert data.classes == tuple(str(d) for d in range(10))
    with pytest.raises(ValueError, match="are not the given classes"):
        build_dataset("mnist5k", split="test", classes=("cat", "dog"))


@pytest.mark.parametrize("size", [0, -4, 10**30])
def test_image_size_out_of_range_is_named(tmp_path, size):
    _write_split(tmp_path, ("a", "b"))
    with pytest.raises(ValueError, match=rf"image_size must be in 1..16384, got {size}"):
        build_dataset(f"imagefolder:{tmp_path}", image_size=size)


def test_segfolder_refuses_float_negative_and_ambiguous_masks(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im" / "a.png")
    Image.fromarray(np.full((4, 4), -2, np.int32)).save(tmp_path / "mk" / "a.tif")
    with pytest.raises(ValueError, match=r"mask .*mk/a.tif has the negative class -2"):
        SegmentationFolder(tmp_path / "im", tmp_path / "mk")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "mk" / "a.tif")
    with pytest.raises(ValueError, match=r"mask .*a.tif holds float32 values"):
        SegmentationFolder(tmp_path / "im", tmp_path / "mk")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im" / "a.jpg")
    with pytest.raises(ValueError, match="two files of stem 'a'"):
        SegmentationFolder(tmp_path / "im", tmp_path / "mk")


def test_segfolder_named_classes(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im" / "a.png")
    Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / "mk" / "a.png")
    data = build_dataset(f"segfolder:{tmp_path / 'im'}:{tmp_path / 'mk'}", classes=("sky", "road", "car"))
    assert data.classes == ("sky", "road", "car") and data.num_classes == 3
    with pytest.raises(ValueError, match="mask values go up to 1, not below num_classes=1"):
        build_dataset(f"segfolder:{tmp_path / 'im'}:{tmp_path / 'mk'}", classes=("sky",))


def test_corrupt_gzip_idx_names_the_file(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match=r"x-idx1-ubyte.gz: not a readable gzip file"):
        read_idx(path)


@pytest.mark.parametrize("spec", ["mnist5k", "imagefolder", "segfolder", "fashion-scenes", "fashion-mnist"])
def test_every_dataset_exposes_its_class_names(tmp_path, spec):
    if spec in ("fashion-scenes", "fashion-mnist") and not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist not installed (make data)")
    if spec == "imagefolder":
        _write_split(tmp_path, ("ant", "bee"))
        spec = f"imagefolder:{tmp_path}"
    elif spec == "segfolder":
        (tmp_path / "im").mkdir()
        (tmp_path / "mk").mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im" / "a.png")
        Image.fromarray(np.full((4, 4), 2, np.uint8)).save(tmp_path / "mk" / "a.png")
        spec = f"segfolder:{tmp_path / 'im'}:{tmp_path / 'mk'}"
    elif spec == "fashion-scenes":
        spec = "fashion-scenes:num_images=4"
    for data in (build_dataset(spec, split="test"), build_dataset(spec, split="test", limit=1)):
        assert len(data.classes) == data.num_classes and all(isinstance(c, str) and c for c in data.classes)
