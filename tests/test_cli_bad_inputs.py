"""A corpus of bad command lines: every one must end in exit status 2, no traceback, one ``error:`` line that names
the option, the file or the value at fault, and no change to the user's files (their data, a previous run, an
existing output). Checked in-process with the shared checker ``cli_checks.expect_user_error``.

Covered: ``convatlas`` itself, ``arith``, ``tour``, ``models``, ``summary`` and ``rf`` (argparse's own errors, numbers
that are negative, empty, not numbers, or huge, models that cannot be built or reject their input, outputs that are
folders, files used as folders, unwritable or already there), and the data layer as reached through
``convatlas train --data ...``: ImageFolder trees, segmentation folders, TSV files, COCO and VOC folders, limits.
The training cases stop at the data, before any model is built, so each takes milliseconds.

Each entry is ``id: (argv template, names)``; ``{d}`` is the corpus folder and ``{out}`` a fresh run folder.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_checks import expect_user_error, unchanged

BIG = "9" * 101  # above the 10**100 bound of integer options
HUGE = "9" * 5000  # more digits than Python reads from text (4300)
LONG = "n" * 300  # longer than a file name may be (255 bytes)

IMG = "train --model mobilenet_v3_small --epochs 1 --out {out} --data"
SEG = "train --model unet --epochs 1 --out {out} --data"
TXT = "train --model kim_cnn --mode rand --epochs 1 --folds 2 --out {out} --data"
DET = "train --task detection --model faster_rcnn --backbone mobilenet_v3_small --epochs 1 --out {out} --data"

COMMANDS = {
    # convatlas itself: argparse's errors are one line naming the option or value
    "top-no-command": ("", ["a command is required", "arith"]),
    "top-unknown-option": ("--bogus", ["--bogus"]),
    "top-unknown-command": ("nothing", ["'nothing'", "arith"]),
    "top-unknown-option-after-command": ("arith conv --length 5 --kernel 3 --lenght 4", ["--lenght"]),
    "arith-no-what": ("arith", ["WHAT"]),
    "arith-unknown-what": ("arith convolve", ["'convolve'"]),
    # arith conv
    "conv-negative-length": ("arith conv --length -3 --kernel 2", ["--length must be >= 1, got -3"]),
    "conv-zero-length": ("arith conv --length 0 --kernel 2", ["--length", "0"]),
    "conv-text-length": ("arith conv --length abc --kernel 3", ["--length must be an integer, got 'abc'"]),
    "conv-empty-length": ('arith conv --length "" --kernel 3', ["--length must be an integer, got ''"]),
    "conv-float-length": ("arith conv --length 3.5 --kernel 3", ["--length", "'3.5'"]),
    "conv-power-length": ("arith conv --length 10**30 --kernel 3", ["--length", "'10**30'"]),
    "conv-exp-length": ("arith conv --length 1e3 --kernel 3", ["--length", "'1e3'"]),
    "conv-superscript-length": ("arith conv --length ² --kernel 1", ["--length must be an integer, got '²'"]),
    "conv-big-length": (f"arith conv --length {BIG} --kernel 3", ["--length must be <= 10**100"]),
    "conv-huge-length": (f"arith conv --length {HUGE} --kernel 3", ["--length must be <= 10**100", "5000 characters"]),
    "conv-huge-negative": (f"arith conv --length -{HUGE} --kernel 3", ["--length must be >= 1"]),
    "conv-missing-length": ("arith conv --kernel 3", ["--length"]),
    "conv-missing-value": ("arith conv --kernel 3 --length", ["--length", "expected one argument"]),
    "conv-zero-kernel": ("arith conv --length 8 --kernel 0", ["--kernel must be >= 1, got 0"]),
    "conv-kernel-longer": ("arith conv --length 3 --kernel 7", ["kernel", "7", "3", "floor("]),
    "conv-zero-stride": ("arith conv --length 8 --kernel 3 --stride 0", ["--stride must be >= 1, got 0"]),
    "conv-negative-dilation": ("arith conv --length 8 --kernel 3 --dilation -2", ["--dilation", "-2"]),
    "conv-negative-padding": ("arith conv --length 8 --kernel 3 --padding -1", ["--padding must be >= 0"]),
    "conv-negative-right-padding": ("arith conv --length 8 --kernel 3 --padding 1,-1", ["--padding (right)"]),
    "conv-three-paddings": ("arith conv --length 8 --kernel 3 --padding 1,2,3", ["--padding", "'1,2,3'"]),
    "conv-empty-paddings": ("arith conv --length 8 --kernel 3 --padding ,", ["--padding (left)"]),
    # arith pool, transpose, same
    "pool-zero-kernel": ("arith pool --length 10 --kernel 0", ["--kernel must be >= 1"]),
    "pool-padding-over-half": ("arith pool --length 8 --kernel 2 --padding 2", ["padding", "k // 2"]),
    "pool-text-stride": ("arith pool --length 10 --kernel 3 --stride abc", ["--stride", "'abc'"]),
    "pool-pair-padding": ("arith pool --length 10 --kernel 3 --padding 1,1", ["--padding", "'1,1'"]),
    "pool-window-too-long": ("arith pool --length 1 --kernel 3", ["pool_out", "3"]),
    "transpose-zero-length": ("arith transpose --length 0 --kernel 3", ["--length must be >= 1"]),
    "transpose-output-padding": (
        "arith transpose --length 4 --kernel 3 --output-padding 1",
        ["output_padding", "max(stride, dilation)"],
    ),
    "transpose-negative-output-padding": (
        "arith transpose --length 4 --kernel 3 --output-padding -1",
        ["--output-padding"],
    ),
    "transpose-zero-stride": ("arith transpose --length 4 --kernel 3 --stride 0", ["--stride"]),
    "same-zero-kernel": ("arith same --kernel 0", ["--kernel must be >= 1"]),
    "same-text-kernel": ("arith same --kernel x", ["--kernel", "'x'"]),
    "same-negative-dilation": ("arith same --kernel 3 --dilation -2", ["--dilation"]),
    # arith rf
    "rf-empty-layers": ('arith rf ""', ["layer 0", "kernel[/stride"]),
    "rf-trailing-comma": ('arith rf "3/1/1,"', ["layer 1"]),
    "rf-five-fields": ("arith rf 3/1/1/1/1", ["layer 0", "'3/1/1/1/1'"]),
    "rf-text-field": ("arith rf 7/2/x", ["layer 0", "integer"]),
    "rf-zero-stride": ("arith rf 3/0", ["stride must be >= 1"]),
    "rf-negative-padding": ("arith rf 3/1/-1", ["layer 0 padding must be >= 0"]),
    "rf-zero-kernel": ("arith rf 0", ["layer 0 kernel must be >= 1"]),
    "rf-zero-length": ("arith rf 3/1/1 --length 0", ["--length must be >= 1"]),
    "rf-text-length": ("arith rf 3/1/1 --length abc", ["--length", "'abc'"]),
    "rf-length-too-short": ('arith rf "3/1/1, 7/1/0" --length 3', ["--length", "layer 2 (7/1/0/1)"]),
    # arith params
    "params-zero-in": ("arith params --in-channels 0 --out-channels 3", ["--in-channels must be >= 1"]),
    "params-text-out": ("arith params --in-channels 4 --out-channels four", ["--out-channels must be an integer"]),
    "params-zero-kernel": ("arith params --in-channels 4 --out-channels 4 --kernel 0", ["--kernel must be >= 1"]),
    "params-zero-size": ("arith params --in-channels 4 --out-channels 4 --size 0", ["--size must be >= 1"]),
    "params-half-size": ("arith params --in-channels 4 --out-channels 4 --size 14x", ["--size", "''"]),
    "params-3d-size": ("arith params --in-channels 4 --out-channels 4 --size 14x14x14", ["--size", "HxW"]),
    "params-big-size": (f"arith params --in-channels 4 --out-channels 4 --size {BIG}", ["--size must be <= 10**100"]),
    "params-big-channels": (f"arith params --in-channels {HUGE} --out-channels 4", ["--in-channels", "<= 10**100"]),
    # tour
    "tour-zero-size": ("tour --size 0", ["--size must be >= 1, got 0"]),
    "tour-negative-size": ("tour --size -5", ["--size", "-5"]),
    "tour-huge-size": ("tour --size 1000000000000000000000000000000", ["--size must be <= 65536"]),
    "tour-empty-size": ('tour --size ""', ["--size must be an integer"]),
    "tour-text-size": ("tour --size big", ["--size must be an integer, got 'big'"]),
    "tour-small-size": ("tour --size 16", ["alexnet layer 5 (MaxPool2d 3/2/0)", "pool_out", "= 1"]),
    "tour-unknown-network": ("tour --network lenet", ["--network", "'lenet'"]),
    "tour-empty-network": ('tour --network ""', ["--network"]),
    "tour-unknown-option": ("tour --bogus", ["--bogus"]),
    # models
    "models-no-match": ("models zz_no_such_model", ["'zz_no_such_model'"]),
    "models-unicode-no-match": ("models résnext", ["'résnext'"]),
    "models-unknown-task": ("models --task nope", ["--task", "'nope'"]),
    "models-task-no-value": ("models --task", ["--task"]),
    "models-bad-glob": ("models [", ["'['"]),
    # summary
    "summary-unknown-model": ("summary resnxt50", ["'resnxt50'", "did you mean"]),
    "summary-detection-model": ("summary faster_rcnn", ["'faster_rcnn'", "detection model"]),
    "summary-zero-input": ("summary mobilenet_v3_small --input 3x0x8", ["--input", "'3x0x8'"]),
    "summary-text-input": ("summary mobilenet_v3_small --input abc", ["--input", "'abc'"]),
    "summary-empty-input": ('summary mobilenet_v3_small --input ""', ["--input", "''"]),
    "summary-negative-input": ("summary mobilenet_v3_small --input 3x-4x4", ["--input", "'3x-4x4'"]),
    "summary-superscript-input": ("summary mobilenet_v3_small --input 3x²x4", ["--input", "'3x²x4'"]),
    "summary-huge-input": ("summary mobilenet_v3_small --input 3x10000000000000000000000000000000x8", ["--input"]),
    "summary-input-rank": ("summary mobilenet_v3_small --input 224", ["--input 224", "3-d inputs"]),
    "summary-text-model-rank": ("summary kim_cnn --input 3x64x64", ["--input 3x64x64", "kim_cnn", "1-d"]),
    "summary-input-channels": ("summary mobilenet_v3_small --input 1x32x32", ["--input 1x32x32", "3 input channels"]),
    "summary-zero-depth": ("summary mobilenet_v3_small --depth 0", ["--depth must be >= 1"]),
    "summary-text-depth": ("summary mobilenet_v3_small --depth x", ["--depth", "'x'"]),
    "summary-unknown-format": ("summary mobilenet_v3_small --format xml", ["--format", "'xml'"]),
    "summary-returns-str": ("summary os:getcwd", ["MODEL 'os:getcwd'", "returned str"]),
    "summary-no-function": ("summary os:nothing", ["MODEL 'os:nothing'", "no callable 'nothing'"]),
    "summary-class-needs-arguments": ("summary torch.nn:Linear", ["MODEL 'torch.nn:Linear'", "raised TypeError"]),
    "summary-no-module": ("summary zz_no_module:f", ["MODEL 'zz_no_module:f'", "cannot import"]),
    "summary-empty-module": ("summary :f", ["MODEL ':f'"]),
    "summary-empty-function": ("summary os:", ["MODEL 'os:'"]),
    "summary-module-raises-on-import": ("summary zz_bad_import:build", ["MODEL 'zz_bad_import:build'", "importing"]),
    "summary-builder-raises": ("summary zz_models:raises", ["MODEL 'zz_models:raises'", "RuntimeError: no weights"]),
    "summary-builder-returns-none": ("summary zz_models:returns_none", ["returned NoneType"]),
    "summary-user-model-wrong-rank": ("summary zz_models:small_cnn --input 64", ["MODEL 'zz_models:small_cnn'", "64"]),
    "summary-user-model-fails-forward": ("summary zz_models:broken", ["MODEL 'zz_models:broken'", "KeyError"]),
    "summary-user-model-too-small": (
        "summary torchvision.models:alexnet --input 3x30x30",
        ["--input 3x30x30", "layer features.5 (MaxPool2d)"],
    ),
    # rf
    "rf-zero-samples": ("rf mobilenet_v3_small --samples 0", ["--samples must be in 1..1024, got 0"]),
    "rf-huge-samples": ("rf mobilenet_v3_small --samples 100000", ["--samples", "100000"]),
    "rf-text-samples": ("rf mobilenet_v3_small --samples x", ["--samples", "'x'"]),
    "rf-unknown-method": ("rf mobilenet_v3_small --method magic", ["--method", "'magic'"]),
    "rf-unknown-layer": ("rf mobilenet_v3_small --input 3x32x32 --layer zz", ["layer 'zz'", "--input 3x32x32"]),
    "rf-plot-folder": ("rf mobilenet_v3_small --plot {d}/data", ["--plot", "is a folder"]),
    "rf-plot-file-as-folder": (
        "rf mobilenet_v3_small --plot {d}/data/existing.png/erf.png",
        ["--plot", "existing.png"],
    ),
    "rf-plot-exists": (
        "rf mobilenet_v3_small --plot {d}/data/existing.png",
        ["--plot", "already exists", "--overwrite"],
    ),
    "rf-plot-unwritable": ("rf mobilenet_v3_small --plot /proc/zz_convatlas/erf.png", ["--plot", "/proc"]),
    "rf-plot-name-too-long": (f"rf mobilenet_v3_small --plot {{d}}/{LONG}.png", ["--plot", "File name too long"]),
    "rf-plot-symlink-loop": ("rf mobilenet_v3_small --plot {d}/data/loop/erf.png", ["--plot", "symbolic links"]),
    "rf-plot-suffix": ("rf mobilenet_v3_small --plot {d}/erf.txt", ["--plot", "erf.txt", ".png"]),
    "rf-plot-no-suffix": ("rf mobilenet_v3_small --plot {d}/erf", ["--plot", ".png"]),
    "rf-plot-text-model": ("rf kim_cnn --plot {d}/erf.png", ["--plot", "2-d inputs"]),
    "rf-unknown-model": ("rf zz_model", ["'zz_model'"]),
    "rf-text-input": ("rf mobilenet_v3_small --input 3xabc", ["--input", "'3xabc'"]),
}

DATA = {
    # ImageFolder trees
    "if-test-class-not-in-training": (
        f"{IMG} imagefolder:{{d}}/data/if_extra",
        ["{d}/data/if_extra/test/zebra", "a, b"],
    ),
    "if-unicode-test-class": (f"{IMG} imagefolder:{{d}}/data/if_unicode", ["été"]),
    "if-val-class-not-in-training": (f"{IMG} imagefolder:{{d}}/data/if_val", ["val/zebra"]),
    "if-empty-class": (f"{IMG} imagefolder:{{d}}/data/if_empty_class", ["if_empty_class/train/b", "holds no image"]),
    "if-train-without-test": (
        f"{IMG} imagefolder:{{d}}/data/if_train_only",
        ["if_train_only", "neither test/ nor val/"],
    ),
    "if-no-classes": (f"{IMG} imagefolder:{{d}}/data/if_no_classes", ["if_no_classes", "no class sub-folders"]),
    "if-unreadable-image": (f"{IMG} imagefolder:{{d}}/data/if_unreadable", ["broken.png", "unreadable"]),
    "if-root-is-file": (f"{IMG} imagefolder:{{d}}/data/existing.png", ["existing.png", "is a file"]),
    "if-root-missing": (f"{IMG} imagefolder:{{d}}/data/nowhere", ["{d}/data/nowhere", "does not exist"]),
    "if-no-folder": (f"{IMG} imagefolder:", ["'imagefolder:'", "needs a folder"]),
    "if-name-too-long": (f"{IMG} imagefolder:{{d}}/{LONG}", ["nnnn", "File name too long"]),
    "if-hidden-only": (f"{IMG} imagefolder:{{d}}/data/if_hidden_only", ["if_hidden_only", "no class sub-folders"]),
    # specs, limits and data_dir
    "spec-unknown": (f"{IMG} fashion-mnst", ["'fashion-mnst'", "did you mean: fashion-mnist"]),
    "spec-options-on-mnist": (f"{IMG} mnist5k:x", ["'mnist5k:x'", "takes no options"]),
    "limit-train-zero": (f"{IMG} mnist5k --limit-train 0", ["limit", "got 0"]),
    "limit-train-negative": (f"{IMG} mnist5k --limit-train -5", ["limit", "got -5"]),
    "limit-test-zero": (f"{IMG} mnist5k --limit-test 0", ["limit", "got 0"]),
    "limit-train-zero-imagefolder": (f"{IMG} imagefolder:{{d}}/data/if_good --limit-train 0", ["limit", "got 0"]),
    "data-dir-is-file": (f"{IMG} mnist5k --data-dir {{d}}/data/existing.png", ["data_dir", "existing.png"]),
    "data-dir-missing": (f"{IMG} mnist5k --data-dir {{d}}/data/nowhere", ["data_dir", "nowhere"]),
    "data-dir-corrupt": (f"{IMG} mnist5k --data-dir {{d}}/data/mnist_corrupt", ["mnist_5k.csv.gz", "gzip"]),
    "scenes-bad-canvas": (f"{SEG} fashion-scenes:canvas=abc", ["canvas", "'abc'"]),
    "scenes-unknown-option": (f"{SEG} fashion-scenes:cnavas=64", ["'cnavas'", "did you mean: canvas"]),
    "scenes-zero-images": (f"{SEG} fashion-scenes:num_images=0", ["num_images", "got 0"]),
    "scenes-infinite-scale": (f"{SEG} fashion-scenes:scale=1-inf", ["scale"]),
    # segmentation folders
    "seg-unpaired": (f"{SEG} segfolder:{{d}}/data/seg_unpaired/im:{{d}}/data/seg_unpaired/mk", ["lonely.png"]),
    "seg-size-mismatch": (f"{SEG} segfolder:{{d}}/data/seg_size/im:{{d}}/data/seg_size/mk", ["mk/a.png", "im/a.png"]),
    "seg-missing-masks": (f"{SEG} segfolder:{{d}}/data/seg_size/im:{{d}}/data/nowhere", ["masks folder", "nowhere"]),
    "seg-one-folder": (f"{SEG} segfolder:{{d}}/data/seg_size/im", ["segfolder:IMAGES:MASKS"]),
    # TSV files (the text engine)
    "tsv-bom-one-label": (f"{TXT} tsv:{{d}}/data/bom_one_label.tsv", ["bom_one_label.tsv", "got 1 (pos)"]),
    "tsv-empty-text": (f"{TXT} tsv:{{d}}/data/empty_text.tsv", ["empty_text.tsv line 3", "is empty"]),
    "tsv-blank-text-crlf": (f"{TXT} tsv:{{d}}/data/blank_text_crlf.tsv", ["blank_text_crlf.tsv line 2", "is empty"]),
    "tsv-empty-label": (f"{TXT} tsv:{{d}}/data/empty_label.tsv", ["empty_label.tsv line 2", "label"]),
    "tsv-no-tab": (f"{TXT} tsv:{{d}}/data/no_tab.tsv", ["no_tab.tsv line 2", "no tab"]),
    "tsv-no-token": (f"{TXT} tsv:{{d}}/data/no_token.tsv", ["no_token.tsv line 2", "no token"]),
    "tsv-not-utf8": (f"{TXT} tsv:{{d}}/data/latin1.tsv", ["latin1.tsv line 2", "not UTF-8"]),
    "tsv-empty-file": (f"{TXT} tsv:{{d}}/data/empty.tsv", ["empty.tsv", "no label<TAB>text line"]),
    "tsv-header-only": (f"{TXT} tsv:{{d}}/data/header_only.tsv", ["header_only.tsv", "no label<TAB>text line"]),
    "tsv-missing": (f"{TXT} tsv:{{d}}/data/nowhere.tsv", ["nowhere.tsv", "does not exist"]),
    "tsv-folder": (f"{TXT} tsv:{{d}}/data", ["{d}/data", "is a folder"]),
    "tsv-name-too-long": (f"{TXT} tsv:{{d}}/{LONG}.tsv", ["nnnn", "File name too long"]),
    "text-options-on-mr": (f"{TXT} mr:x", ["'mr:x'", "takes no options"]),
    "tsv-no-path": (f"{TXT} tsv:", ["'tsv:'", "needs a file"]),
    # COCO folders (the detection engine)
    "coco-missing-folder": (f"{DET} coco:{{d}}/data/nowhere", ["nowhere", "does not exist"]),
    "coco-name-too-long": (f"{DET} coco:{{d}}/{LONG}", ["nnnn", "File name too long"]),
    "coco-no-json": (f"{DET} coco:{{d}}/data/if_good", ["instances_train.json", "train.json"]),
    "coco-not-json": (f"{DET} coco:{{d}}/data/coco_not_json", ["coco_not_json/train.json", "not valid JSON"]),
    "coco-no-annotations": (f"{DET} coco:{{d}}/data/coco_no_annotations", ["train.json", "'annotations'"]),
    "coco-unknown-image": (f"{DET} coco:{{d}}/data/coco_unknown_image", ["annotations[1] (id 11)", "image_id 77"]),
    "coco-unknown-category": (
        f"{DET} coco:{{d}}/data/coco_unknown_category",
        ["annotations[0] (id 10)", "category_id 3"],
    ),
    "coco-short-bbox": (f"{DET} coco:{{d}}/data/coco_short_bbox", ["annotations[0] (id 10)", "bbox"]),
    "coco-negative-bbox": (f"{DET} coco:{{d}}/data/coco_negative_bbox", ["annotations[0] (id 10)", "negative width"]),
    "coco-nan-bbox": (f"{DET} coco:{{d}}/data/coco_nan_bbox", ["annotations[0] (id 10)", "finite"]),
    "coco-missing-image-file": (f"{DET} coco:{{d}}/data/coco_missing_image", ["images[1] (id 2)", "gone.png"]),
    "coco-duplicate-image-id": (f"{DET} coco:{{d}}/data/coco_duplicate_image", ["images has the id 1 more than once"]),
    "coco-annotation-without-id": (f"{DET} coco:{{d}}/data/coco_annotation_no_id", ["annotations[0]", "'id'"]),
    # VOC folders
    "voc-no-annotations-folder": (f"{DET} voc:{{d}}/data/if_good", ["if_good/Annotations", "does not exist"]),
    "voc-not-xml": (f"{DET} voc:{{d}}/data/voc_not_xml", ["voc_not_xml/Annotations/a.xml", "not valid XML"]),
    "voc-no-bndbox": (f"{DET} voc:{{d}}/data/voc_no_bndbox", ["a.xml object 0 (dog)", "no <bndbox>"]),
    "voc-no-xmax": (f"{DET} voc:{{d}}/data/voc_no_xmax", ["a.xml object 0 (dog)", "<xmax>"]),
    "voc-text-coordinate": (f"{DET} voc:{{d}}/data/voc_text_coordinate", ["a.xml object 0 (dog)", "'ten'"]),
    "voc-xmax-before-xmin": (f"{DET} voc:{{d}}/data/voc_reversed", ["a.xml object 1 (cat)", "x1 < x2"]),
    "voc-unknown-class": (f"{DET} voc:{{d}}/data/voc_unknown_class", ["a.xml", "unknown class 'unicorn' (object 0)"]),
    "voc-bad-difficult": (f"{DET} voc:{{d}}/data/voc_bad_difficult", ["a.xml object 0 (dog)", "<difficult>"]),
    "voc-missing-image": (f"{DET} voc:{{d}}/data/voc_missing_image", ["a.xml", "JPEGImages/a.jpg"]),
    "voc-listed-id-missing": (f"{DET} voc:{{d}}/data/voc_bad_listing", ["trainval.txt line 2", "zz.xml"]),
    "voc-empty": (f"{DET} voc:{{d}}/data/voc_empty", ["voc_empty/Annotations", "no annotation"]),
    "det-scenes-unknown-option": (f"{DET} fashion-scenes:cnavas=64", ["'cnavas'", "did you mean: canvas"]),
    "det-scenes-one-channel": (f"{DET} fashion-scenes:channels=1", ["3 channels"]),
    "det-unknown-spec": (f"{DET} cocoo:{{d}}/data", ["'cocoo:", "coco:DIR"]),
}

CASES = {**COMMANDS, **DATA}


def _png(path: Path, size=(6, 6), value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _tree(root: Path, classes: str | tuple[str, ...]) -> None:
    for c in classes:
        for i in range(2):
            _png(root / c / f"{i}.png", value=40 * i)


COCO = {
    "images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 5, "bbox": [1, 1, 3, 3]},
        {"id": 11, "image_id": 2, "category_id": 5, "bbox": [0, 0, 4, 2]},
    ],
    "categories": [{"id": 5, "name": "cat"}],
}


def _coco(root: Path, change=None, text: str | None = None) -> None:
    data = json.loads(json.dumps(COCO))
    if change is not None:
        change(data)
    for name in ("1.png", "2.png"):
        _png(root / "train" / name)
    (root / "train.json").write_text(text if text is not None else json.dumps(data))


def _voc(root: Path, objects: str | None, *, image=True, listing: str | None = None) -> None:
    (root / "Annotations").mkdir(parents=True)
    if objects is not None:
        text = (
            objects
            if objects.startswith("<annotation")
            else f"<annotation><filename>a.jpg</filename>{objects}</annotation>"
        )
        (root / "Annotations" / "a.xml").write_text(text)
    if image:
        _png(root / "JPEGImages" / "a.jpg")
    if listing is not None:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "trainval.txt").write_text(listing)


def _box(x1, y1, x2, y2) -> str:
    return f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"


def _object(name="dog", box=None, difficult="0") -> str:
    box = _box(1, 1, 5, 5) if box is None else box
    return f"<object><name>{name}</name><difficult>{difficult}</difficult>{box}</object>"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The user's files the bad command lines point at, and a previous run that must survive them."""
    root = tmp_path_factory.mktemp("corpus")
    data = root / "data"
    _png(data / "existing.png")
    (data / "loop").symlink_to(data / "loop")
    _tree(data / "if_good", "ab")
    _tree(data / "if_extra" / "train", "ab")
    _tree(data / "if_extra" / "test", ("a", "zebra"))
    _tree(data / "if_unicode" / "train", ("hiver", "printemps"))
    _tree(data / "if_unicode" / "test", ("hiver", "été"))
    _tree(data / "if_val" / "train", "ab")
    _tree(data / "if_val" / "val", ("b", "zebra"))
    _tree(data / "if_empty_class" / "train", "a")
    (data / "if_empty_class" / "train" / "b").mkdir()
    _tree(data / "if_empty_class" / "test", "a")
    _tree(data / "if_train_only" / "train", "ab")
    (data / "if_no_classes").mkdir()
    _tree(data / "if_unreadable", "ab")
    (data / "if_unreadable" / "b" / "broken.png").write_bytes(b"not a png")
    _tree(data / "if_hidden_only" / ".ipynb_checkpoints", "a")
    (data / "mnist_corrupt").mkdir()
    (data / "mnist_corrupt" / "mnist_5k.csv.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    for name, mask_size in (("seg_unpaired", (6, 6)), ("seg_size", (5, 6))):
        _png(data / name / "im" / "a.png")
        (data / name / "mk").mkdir(parents=True)
        Image.fromarray(np.zeros(mask_size, np.uint8)).save(data / name / "mk" / "a.png")
    _png(data / "seg_unpaired" / "im" / "lonely.png")
    tsv = {
        "bom_one_label.tsv": b"\xef\xbb\xbfpos\tgreat film\r\npos\tfine acting\r\n",
        "empty_text.tsv": b"pos\tgreat\nneg\tdull\nneg\t\n",
        "blank_text_crlf.tsv": b"pos\tgreat\r\nneg\t  \r\n",
        "empty_label.tsv": b"pos\tgreat\n\tdull\n",
        "no_tab.tsv": b"pos\tgreat\nneg dull\n",
        "no_token.tsv": "pos\tgreat\nneg\tужасно\n".encode(),
        "latin1.tsv": "pos\tgreat\nneg\tmauvais film, très\n".encode("latin-1"),
        "empty.tsv": b"",
        "header_only.tsv": b"label\ttext\n",
    }
    for name, content in tsv.items():
        (data / name).write_bytes(content)
    _coco(data / "coco_not_json", text='{"images": [')
    _coco(data / "coco_no_annotations", lambda d: d.pop("annotations"))
    _coco(data / "coco_unknown_image", lambda d: d["annotations"][1].update(image_id=77))
    _coco(data / "coco_unknown_category", lambda d: d["annotations"][0].update(category_id=3))
    _coco(data / "coco_short_bbox", lambda d: d["annotations"][0].update(bbox=[1, 2, 3]))
    _coco(data / "coco_negative_bbox", lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]))
    _coco(data / "coco_nan_bbox", text=json.dumps(COCO).replace("[1, 1, 3, 3]", "[1, NaN, 3, 3]"))
    _coco(data / "coco_missing_image", lambda d: d["images"][1].update(file_name="gone.png"))
    _coco(data / "coco_duplicate_image", lambda d: d["images"][1].update(id=1))
    _coco(data / "coco_annotation_no_id", lambda d: d["annotations"][0].pop("id"))
    _voc(data / "voc_not_xml", "<annotation><object>")
    _voc(data / "voc_no_bndbox", _object(box=""))
    _voc(data / "voc_no_xmax", _object(box="<bndbox><xmin>1</xmin><ymin>1</ymin><ymax>5</ymax></bndbox>"))
    _voc(data / "voc_text_coordinate", _object(box=_box(1, 1, "ten", 5)))
    _voc(data / "voc_reversed", _object() + _object("cat", _box(9, 1, 4, 5)))
    _voc(data / "voc_unknown_class", _object("unicorn"))
    _voc(data / "voc_bad_difficult", _object(difficult="yes"))
    _voc(data / "voc_missing_image", _object(), image=False)
    _voc(data / "voc_bad_listing", _object(), listing="a\nzz\n")
    _voc(data / "voc_empty", None)
    previous = root / "previous"
    previous.mkdir()
    (previous / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    (previous / "last.json").write_text('{"epoch": 1}\n')
    modules = root / "modules"
    modules.mkdir()
    (modules / "zz_bad_import.py").write_text("raise RuntimeError('this module fails when imported')\n")
    (modules / "zz_models.py").write_text(
        "from torch import nn\n\n\n"
        "def raises():\n    raise RuntimeError('no weights here')\n\n\n"
        "def returns_none():\n    return None\n\n\n"
        "def small_cnn():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n\n\n"
        "class Broken(nn.Module):\n    def forward(self, x):\n        return {}['missing']\n\n\n"
        "def broken():\n    return Broken()\n"
    )
    sys.path.insert(0, str(modules))
    yield root
    sys.path.remove(str(modules))
    for name in ("zz_bad_import", "zz_models"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_command_line(corpus, case):
    if "/proc/" in CASES[case][0] and not Path("/proc").is_dir():
        pytest.skip("needs /proc, a folder no process can write in")
    template, names = CASES[case]
    fill = {"d": str(corpus), "out": str(corpus / "runs" / case)}
    argv = [part.format(**fill) for part in shlex.split(template)]
    with unchanged(corpus / "data", corpus / "previous"):
        expect_user_error(argv, names=[name.format(**fill) for name in names])


def test_the_corpus_is_large_and_covers_every_command_of_its_own():
    commands = {shlex.split(template)[0] if template else "" for template, _ in CASES.values()}
    assert {"", "arith", "tour", "models", "summary", "rf", "train"} <= commands
    assert len(CASES) >= 100 and len(DATA) >= 40


# ---------------------------------------------------------------------------------------------------------------------
# What the refusals leave possible


def test_rf_plot_overwrite_replaces_the_file_atomically(tmp_path):
    from cli_checks import run_cli

    plot = tmp_path / "erf.png"
    plot.write_bytes(b"an older plot")
    argv = ["rf", "mobilenet_v3_small", "--input", "3x32x32", "--samples", "1", "--plot", str(plot)]
    with unchanged(plot):
        expect_user_error(argv, names=["--plot", "already exists"])
    result = run_cli([*argv, "--overwrite"])
    assert result.code == 0, result.stderr
    assert plot.read_bytes().startswith(b"\x89PNG") and sorted(p.name for p in tmp_path.iterdir()) == ["erf.png"]


def test_names_the_file_system_refuses_are_user_errors_and_nothing_else_is():
    import errno

    from convatlas.errors import is_user_error

    assert is_user_error(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300))
    assert is_user_error(OSError(errno.ELOOP, "Too many levels of symbolic links", "loop"))
    assert not is_user_error(OSError(errno.EIO, "Input/output error", "disk")) and not is_user_error(KeyError("k"))


def test_argparse_errors_are_one_line_with_a_pointer_to_help():
    result = expect_user_error(["arith", "conv", "--kernel", "3"], names=["--length"])
    assert result.stderr.splitlines() == [
        "convatlas arith conv: error: the following arguments are required: --length "
        "(see `convatlas arith conv --help`)"
    ]


def test_a_user_model_that_fits_its_input_is_summarised(corpus):
    from cli_checks import run_cli

    result = run_cli(["summary", "zz_models:small_cnn", "--input", "3x8x8"])
    # nn.Conv2d(3, 4, 3) on 8x8: 6x6 outputs and 4 * 3 * 3 * 3 + 4 = 112 parameters
    assert result.code == 0 and "[1, 4, 6, 6]" in result.stdout and "Total params: 112" in result.stdout
