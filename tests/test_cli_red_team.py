"""A broader corpus of ordinary mistakes, across every command, each refused as the user's mistake (exit 2, no
traceback, one line naming the option or file) without changing any file of the workspace; and their valid
neighbours, which must run. Checked in-process with the shared checker ``cli_checks.expect_user_error``.

The kinds of input: options given twice, values that are empty, negative, zero, huge (10**30), NaN or infinite,
paths that are empty, folders, files used as folders, unwritable, missing or inside the user's data, outputs that
would replace a file of a training run (never allowed, not even with ``--overwrite``), options that do not apply to
what the command is given (refused by name instead of dropped), images that are not images (text, empty, truncated,
a decompression bomb) or odd ones that must be read (1x1, 16-bit, RGBA, animated, a name with spaces and accents),
data folders with one class or images too small for the model, ``module:function`` models that fail, and the Python
API behind the commands (wrong types and shapes name the argument).

The workspace is built once per module: a finished run of each task and the files the rows point at. ``{w}`` in a row
is the workspace and ``{t}`` a fresh folder of the test; names (separated by ``|``) must all appear in the error.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cli_checks import expect_user_error, run_cli, unchanged
from convatlas.errors import InputTypeError, is_user_error
from convatlas.train import cross_validate, fit
from tiny_runs import HAVE_FASHION_MNIST, blocks_coco, separable_tsv, tiny_config

BIG = "1" + "0" * 30  # 10**30
CLS = "--model mobilenet_v2 --model-arg width_mult=0.35 --data mnist5k --limit-train 32 --limit-test 16"
SMALL = "--model mobilenet_v3_small --data mnist5k --limit-train 32 --limit-test 16 --batch-size 16"  # no --model-arg


def _png_bomb(path: Path, side: int = 100_000) -> None:
    """A valid PNG header declaring side x side pixels, with almost no data (Pillow refuses it as a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))  # fmt: skip


def _png(path: Path, size=(8, 8), channels: int = 1, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size if channels == 1 else (*size, channels)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    w = SimpleNamespace(root=root)
    w.cls = root / "cls"
    fit(tiny_config("classification", w.cls, epochs=1, deterministic=False, limit_train=32, limit_test=16))
    w.cv = root / "cv"
    cross_validate(tiny_config("text", w.cv, tsv=separable_tsv(root / "sep.tsv", n=60), epochs=1, max_folds=1,
                               deterministic=False), log=lambda line: None)  # fmt: skip
    w.coco = blocks_coco(root / "coco")
    w.det = root / "det"
    fit(tiny_config("detection", w.det, data=f"coco:{w.coco}", epochs=1, limit_train=4, limit_test=2, batch_size=2,
                    deterministic=False))  # fmt: skip
    w.seg = root / "seg"
    if HAVE_FASHION_MNIST:
        fit(tiny_config("segmentation", w.seg, epochs=1, deterministic=False))
    records = {  # hand-edited or damaged checkpoint records (the tensors are intact)
        "few_classes": lambda r: r.update(classes=["a", "b", "c"]),
        "no_classes": lambda r: r.update(classes=[]),
        "task_unknown": lambda r: r.update(task="ocr"),
        "inputs_none": lambda r: r.update(inputs=None),
        "std_zero": lambda r: r["inputs"].update(std=[0.0]),
        "mean_missing": lambda r: r["inputs"].update(mean=[]),
        "size_negative": lambda r: r["inputs"].update(data_size=[-1, 28]),
        "config_extra_field": lambda r: r["config"].update(foo=1),
        "model_unknown": lambda r: r["model"].update(name="nope"),
        "progress_negative": lambda r: r["progress"].update(epoch=-5),
    }
    for name, edit in records.items():
        folder = root / "records" / name
        shutil.copytree(w.cls, folder, ignore=shutil.ignore_patterns(".convatlas.lock"))
        for tag in ("last", "best"):
            record = json.loads((folder / f"{tag}.json").read_text())
            edit(record)
            (folder / f"{tag}.json").write_text(json.dumps(record))
    for name in ("pipe", "pipe.svg", "pipe.png"):  # named pipes: replacing one with a file would break its readers
        os.mkfifo(root / name)
    images = root / "imgs"
    _png(root / "digit.png", (28, 28))
    _png(images / "one.png", (1, 1))
    _png(images / "rgba.png", (32, 32), channels=4)
    _png(images / "with space é.png", (32, 32), channels=3)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16)).save(images / "sixteen.png")
    frames = [Image.fromarray(np.full((16, 16), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(images / "anim.gif", save_all=True, append_images=frames[1:])
    (images / "text.png").write_text("hello")
    (images / "zero.png").write_bytes(b"")
    (images / "trunc.png").write_bytes((images / "rgba.png").read_bytes()[:60])
    (images / "dir.png").mkdir()
    _png_bomb(images / "bomb.png")
    data = root / "data"
    for i in range(4):
        _png(data / "if_one" / "a" / f"{i}.png")
        _png(data / "if_two" / ("a" if i % 2 else "b") / f"{i}.png", value=60 * i)
    for i in range(2):  # odd trees: images one level too deep, a class of text files, a class that links to the root
        _png(data / "if_nested" / "a" / "deeper" / f"{i}.png")
        _png(data / "if_nested" / "b" / f"{i}.png")
        _png(data / "if_text_class" / "a" / f"{i}.png")
        _png(data / "if_loop" / "a" / f"{i}.png")
    (data / "if_text_class" / "b").mkdir()
    (data / "if_text_class" / "b" / "notes.txt").write_text("not an image")
    (data / "if_loop" / "b").symlink_to(data / "if_loop")
    for name in ("a", "b"):  # 8x8 images: too small for the default U-Net (four 2x2 poolings, valid convolutions)
        _png(data / "seg_small" / "im" / f"{name}.png", channels=3)
        _png(data / "seg_small" / "mk" / f"{name}.png", value=1 if name == "b" else 0)
        _png(data / "seg_one_class" / "im" / f"{name}.png", channels=3)
        _png(data / "seg_one_class" / "mk" / f"{name}.png")
    coco = blocks_coco(data / "coco_text_image", train=2, test=1)
    next((coco / "train").glob("*.png")).write_text("not an image")
    modules = root / "modules"
    modules.mkdir()
    (modules / "zz_redteam.py").write_text(
        "from torch import nn\n\n\n"
        "class Half(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv2d(3, 4, 3).half()\n\n"
        "    def forward(self, x):\n        return self.conv(x)\n\n\n"
        "def half():\n    return Half()\n\n\n"
        "def linear():\n    return nn.Sequential(nn.Flatten(), nn.Linear(10, 2))\n\n\n"
        "def returns_tuple():\n    return (nn.Conv2d(3, 4, 3),)\n\n\n"
        "def recursion():\n    return recursion()\n\n\n"
        "def conv():\n    return nn.Conv2d(3, 4, 3)\n"
    )
    sys.path.insert(0, str(modules))
    yield w
    sys.path.remove(str(modules))
    sys.modules.pop("zz_redteam", None)


# --- refused: (argv template, names) ---------------------------------------------------------------------------------
ROWS = {
    # options given twice: argparse would keep the last value and drop the first in silence
    "twice-train-lr": (f"train {CLS} --lr 0.1 --lr 0.01 --out {{t}}/r", "--lr|given twice|0.1|0.01"),
    "twice-train-epochs": (f"train {CLS} --epochs 1 --epochs 2 --out {{t}}/r", "--epochs|given twice"),
    "twice-tour-network": ("tour --network vgg16 --network alexnet", "--network|given twice|'vgg16'|'alexnet'"),
    "twice-arith-kernel": ("arith params --in-channels 4 --out-channels 4 --kernel 3 --kernel 5", "--kernel|twice"),
    "twice-summary-format": ("summary mobilenet_v3_small --format json --format csv", "--format|given twice"),
    "twice-predict-which": ("predict --checkpoint {w}/cls {w}/digit.png --which best --which last", "--which|twice"),
    "twice-draw-input": ("draw conv --input 3 --input 4 --out {t}/a.svg", "--input|given twice"),
    "twice-draw-equals-form": ("draw conv --input=3 --input=4 --out {t}/a.svg", "--input|given twice"),
    "twice-evaluate-checkpoint": ("evaluate --checkpoint {w}/cls --checkpoint {w}/det", "--checkpoint|given twice"),
    # empty names: Path("") is the current folder, so they would write (or train) into it
    "empty-train-out": (f'train {CLS} --out ""', "--out|must name the run folder|''"),
    "empty-train-data-dir": (f'train {CLS} --data-dir "" --out {{t}}/r', "--data-dir|must name a folder"),
    "empty-evaluate-json": ('evaluate --checkpoint {w}/cls --json ""', "--json|empty"),
    "empty-export-onnx": ('export --checkpoint {w}/cls --onnx ""', "--onnx|empty"),
    "empty-detect-out": ('detect --checkpoint {w}/det {w}/digit.png --out ""', "--out|empty"),
    "empty-proposals-out": ('proposals {w}/digit.png --out ""', "--out|empty"),
    "empty-proposals-json": ('proposals {w}/digit.png --out {t}/p.png --json ""', "--json|empty"),
    "empty-evaluate-data": ('evaluate --checkpoint {w}/cls --data ""', "--data|unknown dataset ''"),
    "empty-draw-kernels": ('draw sentence --kernel "" --out {t}/a.svg', "--kernel|''"),
    # numbers out of range: torch would overflow (10**30) after the data is loaded, or the machine run out of memory
    "train-seed-huge": (f"train {CLS} --seed {BIG} --out {{t}}/r", f"--seed|0..4294967295|{BIG}"),
    "train-threads-huge": (f"train {CLS} --threads {BIG} --out {{t}}/r", "--threads|0..1024"),
    "train-workers-huge": (f"train {CLS} --num-workers {BIG} --out {{t}}/r", "--num-workers|0..256"),
    "train-image-size-huge": (f"train {CLS} --image-size {BIG} --out {{t}}/r", "--image-size|8..4096"),
    "train-image-size-too-large": (f"train {CLS} --image-size 5000 --out {{t}}/r", "--image-size|5000"),
    "train-warmup-inf": (f"train {CLS} --warmup-epochs inf --out {{t}}/r", "--warmup-epochs|finite|inf"),
    "train-lr-inf": (f"train {CLS} --lr inf --out {{t}}/r", "--lr|finite"),
    "train-weight-decay-nan": (f"train {CLS} --weight-decay nan --out {{t}}/r", "--weight-decay|nan"),
    "train-momentum-nan": (f"train {CLS} --momentum nan --out {{t}}/r", "--momentum|nan"),
    "train-momentum-negative": (f"train {CLS} --momentum -0.1 --out {{t}}/r", "--momentum|-0.1"),
    "train-clip-inf": (f"train {CLS} --clip-grad inf --out {{t}}/r", "--clip-grad|inf"),
    "train-min-lr-nan": (f"train {CLS} --min-lr nan --out {{t}}/r", "--min-lr|nan"),
    "train-smoothing-negative": (f"train {CLS} --label-smoothing -0.1 --out {{t}}/r", "--label-smoothing"),
    "train-lr-empty": (f'train {CLS} --lr "" --out {{t}}/r', "--lr|invalid float value: ''"),
    "train-accum-huge": (f"train {CLS} --accum-steps {BIG} --out {{t}}/r", "--batch-size|--accum-steps"),
    "train-device-space": (f'train {CLS} --device "cpu " --out {{t}}/r', "--device|'cpu '"),
    "train-device-mps": (f"train {CLS} --device mps --out {{t}}/r", "--device|'mps'"),
    "train-device-negative": (f"train {CLS} --device cuda:-1 --out {{t}}/r", "--device|cuda:-1"),
    "train-amp-empty": (f'train {CLS} --amp "" --out {{t}}/r', "--amp|''"),
    "train-opt-upper-case": (f"train {CLS} --opt SGD --out {{t}}/r", "--opt|'SGD'"),
    "train-task-empty": (f'train {CLS} --task "" --out {{t}}/r', "--task|''"),
    "train-model-empty": ('train --model "" --data mnist5k --out {t}/r', "unknown model ''"),
    "train-data-empty": ('train --model mobilenet_v2 --data "" --out {t}/r', "--data|unknown dataset ''"),
    "evaluate-batch-negative": ("evaluate --checkpoint {w}/cls --batch-size -3", "--batch-size|-3"),
    "predict-top-k-negative": ("predict --checkpoint {w}/cls {w}/digit.png --top-k -1", "--top-k|-1"),
    "export-opset-negative": ("export --checkpoint {w}/cls --onnx {t}/a.onnx --opset -1", "--opset|-1"),
    "detect-threshold-nan": (
        "detect --checkpoint {w}/det {w}/digit.png --out {t}/d --score-threshold nan",
        "--score-threshold|nan",
    ),
    "detect-scale-huge": (
        f"detect --checkpoint {{w}}/det {{w}}/digit.png --out {{t}}/d --scale {BIG}",
        "--scale|digit.png|16384",
    ),
    "detect-scale-too-large": (
        "detect --checkpoint {w}/det {w}/digit.png --out {t}/d --scale 1000",
        "--scale 1000|28x28|28000x28000",
    ),
    "proposals-seed-negative": ("proposals {w}/digit.png --out {t}/p.png --seed -1", "--seed|>= 0|-1"),
    "proposals-seed-huge": (f"proposals {{w}}/digit.png --out {{t}}/p.png --seed {BIG}", "--seed|4294967295"),
    "draw-cell-zero": ("draw conv --input 4x4 --cell 0 --out {t}/a.svg", "cell|4..100|0.0"),
    "draw-cell-negative": ("draw conv --input 4x4 --cell -5 --out {t}/a.svg", "cell|-5.0"),
    "draw-cell-nan": ("draw conv --input 4x4 --cell nan --out {t}/a.svg", "cell|nan"),
    "draw-cell-inf": ("draw conv --input 4x4 --cell inf --out {t}/a.svg", "cell|inf"),
    "draw-cell-huge": ("draw conv --input 4x4 --cell 100000 --out {t}/a.png", "cell|100000"),
    "draw-sentence-cell": ("draw sentence --cell 1 --out {t}/a.svg", "cell|1.0"),
    "draw-channels-cell": ("draw separable --input 4x4 --cell 1000 --out {t}/a.svg", "cell|1000"),
    "draw-seed-negative": ("draw conv --input 4x4 --values --seed -1 --out {t}/a.svg", "--seed|-1"),
    "draw-seed-huge": (f"draw conv --input 4x4 --values --seed {BIG} --out {{t}}/a.svg", "--seed|4294967295"),
    "draw-sentence-kernels-text": ("draw sentence --kernel 2,x --out {t}/a.svg", "--kernel|'2,x'"),
    "draw-field-samples-huge": (
        f"draw field mobilenet_v3_small --input 3x32x32 --samples {BIG} --out {{t}}/f.png",
        "samples|1..1024",
    ),
    "draw-field-seed-negative": ("draw field mobilenet_v3_small --input 3x32x32 --seed -1 --out {t}/f.png", "--seed"),
    "report-erf-samples-huge": (
        f"report mobilenet_v3_small --input 3x32x32 --erf-samples {BIG} --out {{t}}/r.html",
        "--erf-samples|0..1024",
    ),
    "report-screenshot-height-negative": (
        "report mobilenet_v3_small --erf-samples 0 --screenshot {t}/s.png --screenshot-height -5 --out {t}/r.html",
        "--screenshot-height|-5",
    ),
    "summary-token-input-huge": ("summary kim_cnn --input 1000000000", "--input 1000000000|at most 1,048,576"),
    # options that do not apply to what the command was given: refused by name, never dropped in silence
    "predict-out-dir-classification": (
        "predict --checkpoint {w}/cls {w}/digit.png --out-dir {t}/m",
        "--out-dir|segmentation|classification",
    ),
    "predict-overwrite-classification": (
        "predict --checkpoint {w}/cls {w}/digit.png --overwrite",
        "--overwrite|segmentation",
    ),
    "evaluate-overwrite-without-json": ("evaluate --checkpoint {w}/cls --overwrite", "--overwrite|--json"),
    "rf-samples-without-plot": ("rf mobilenet_v3_small --input 3x32x32 --samples 5", "--samples|--plot"),
    "rf-overwrite-without-plot": ("rf mobilenet_v3_small --input 3x32x32 --overwrite", "--overwrite|--plot"),
    "report-screenshot-height-alone": (
        "report mobilenet_v3_small --erf-samples 0 --screenshot-height 100 --out {t}/r.html",
        "--screenshot-height|--screenshot",
    ),
    "report-image-without-picture": (
        "report mobilenet_v3_small --input 3x32x32 --erf-samples 0 --image {w}/digit.png --out {t}/r.html",
        "--image|--erf-samples is 0",
    ),
    "report-seed-without-picture": (
        "report mobilenet_v3_small --input 3x32x32 --erf-samples 0 --seed 5 --out {t}/r.html",
        "--seed|--erf-samples is 0",
    ),
    "report-image-of-a-text-model": (
        "report kim_cnn --erf-samples 1 --image {w}/digit.png --out {t}/r.html",
        "--image|64|not an image",
    ),
    "draw-frame-of-a-gif": ("draw conv --input 4x4 --frame 3 --out {t}/a.gif", "--frame|.gif"),
    "draw-seed-without-values": ("draw conv --input 4x4 --seed 3 --out {t}/a.svg", "--seed|--values"),
    "draw-pool-seed-without-values": ("draw pool --input 4x4 --seed 3 --out {t}/a.svg", "--seed|--values"),
    "draw-pointwise-kernel": ("draw pointwise --input 4x4 --kernel 5 --out {t}/a.svg", "--kernel 5"),
    "draw-pointwise-padding": ("draw pointwise --input 4x4 --padding 2 --out {t}/a.svg", "--padding 2"),
    "draw-pointwise-dilation": ("draw pointwise --input 4x4 --dilation 2 --out {t}/a.svg", "--dilation 2"),
    "draw-pointwise-multiplier": ("draw pointwise --input 4x4 --multiplier 3 --out {t}/a.svg", "--multiplier 3"),
    "draw-depthwise-out-channels": ("draw depthwise --input 4x4 --out-channels 5 --out {t}/a.svg", "--out-channels"),
    "draw-channels-values": ("draw separable --input 4x4 --values --out {t}/a.svg", "--values"),
    "draw-channels-seed": ("draw depthwise --input 4x4 --seed 1 --out {t}/a.svg", "--seed"),
    # outputs: never a file of a training run (even with --overwrite), never a picture under the wrong name
    "evaluate-json-over-checkpoint": (
        "evaluate --checkpoint {w}/cls --json {w}/cls/last.json --overwrite",
        "--json|{w}/cls/last.json|training run",
    ),
    "evaluate-json-new-best": (
        "evaluate --checkpoint {w}/cv/fold-01 --json {w}/cv/fold-01/metrics.jsonl",
        "--json|training run",
    ),
    "export-onnx-over-checkpoint": (
        "export --checkpoint {w}/cls --onnx {w}/cls/best.json --overwrite",
        "--onnx|best.json|training run",
    ),
    "export-onnx-over-tensors": (
        "export --checkpoint {w}/det --onnx {w}/det/curves.png --overwrite",
        "--onnx|curves.png|training run",
    ),
    "export-onnx-suffix": ("export --checkpoint {w}/cls --onnx {t}/model.json", "--onnx|.onnx|'.json'"),
    "proposals-json-over-checkpoint": (
        "proposals {w}/digit.png --out {t}/p.png --json {w}/cls/last.json --overwrite",
        "--json|last.json|training run",
    ),
    "proposals-out-over-curves": (
        "proposals {w}/digit.png --out {w}/cls/curves.png --overwrite",
        "--out|curves.png|training run",
    ),
    "proposals-out-suffix": ("proposals {w}/digit.png --out {t}/p.json", "--out|.png|'.json'"),
    "detect-picture-over-curves": (
        "detect --checkpoint {w}/det {w}/cls/curves.png --out {w}/cls --overwrite",
        "--out|curves.png|training run",
    ),
    "evaluate-json-over-a-pipe": (
        "evaluate --checkpoint {w}/cls --json {w}/pipe --overwrite",
        "--json|pipe|not a regular file",
    ),
    "tsv-is-a-pipe": ("train --model kim_cnn --data tsv:{w}/pipe --out {t}/r", "tsv file|pipe|not a regular file"),
    "draw-over-a-pipe": ("draw conv --input 4x4 --out {w}/pipe.svg --overwrite", "--out|pipe.svg|not a regular file"),
    "rf-plot-over-a-pipe": (
        "rf mobilenet_v3_small --input 3x32x32 --plot {w}/pipe.png --overwrite --samples 1",
        "--plot|pipe.png",
    ),
    "draw-over-curves": ("draw conv --input 4x4 --out {w}/cls/curves.png --overwrite", "--out|training run"),
    "rf-plot-over-confusion": (
        "rf mobilenet_v3_small --input 3x32x32 --plot {w}/cls/confusion.png --overwrite --samples 1",
        "--plot|confusion.png|training run",
    ),
    "report-over-a-fold-record": (
        "report mobilenet_v3_small --erf-samples 0 --out {w}/cv/fold-01/best.json",
        "--out|.html",
    ),
    "train-out-in-image-data": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_two --out {w}/data/if_two/a/run",
        "--out|lies in the data folder|--data",
    ),
    "train-out-is-image-data": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_two --out {w}/data/if_two",
        "--out|data folder",
    ),
    "train-out-in-mask-folder": (
        "train --model unet --data segfolder:{w}/data/seg_small/im:{w}/data/seg_small/mk --out {w}/data/seg_small/mk",
        "--out|{w}/data/seg_small/mk",
    ),
    "train-out-in-coco-folder": (
        "train --model faster_rcnn --data coco:{w}/coco --out {w}/coco/runs/a",
        "--out|{w}/coco",
    ),
    "train-out-in-data-via-dotdot": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_two --out {w}/data/x/../if_two/b",
        "--out|data folder",
    ),
    "train-out-under-an-image": (f"train {CLS} --out {{w}}/digit.png/run", "--out|digit.png|is a file"),
    "train-out-is-a-checkpoint": (f"train {CLS} --out {{w}}/cls/last.json", "--out|last.json|not a folder"),
    "train-resume-a-checkpoint-file": ("train --resume --out {w}/cls/last.json", "--out|last.json"),
    "train-resume-an-image": ("train --resume --out {w}/digit.png", "digit.png"),
    # images that are not images
    "predict-text-as-png": ("predict --checkpoint {w}/cls {w}/imgs/text.png", "IMAGE|text.png|not a readable image"),
    "predict-empty-png": ("predict --checkpoint {w}/cls {w}/imgs/zero.png", "IMAGE|zero.png"),
    "predict-truncated-png": ("predict --checkpoint {w}/cls {w}/imgs/trunc.png", "IMAGE|trunc.png"),
    "predict-decompression-bomb": ("predict --checkpoint {w}/cls {w}/imgs/bomb.png", "IMAGE|bomb.png|pixels"),
    "predict-folder-as-image": ("predict --checkpoint {w}/cls {w}/imgs/dir.png", "IMAGE|dir.png|no such file"),
    "predict-empty-image-name": ('predict --checkpoint {w}/cls ""', "IMAGE|no such file"),
    "detect-decompression-bomb": ("detect --checkpoint {w}/det {w}/imgs/bomb.png --out {t}/d", "IMAGE|bomb.png"),
    "detect-empty-png": ("detect --checkpoint {w}/det {w}/imgs/zero.png --out {t}/d", "IMAGE|zero.png"),
    "proposals-decompression-bomb": ("proposals {w}/imgs/bomb.png --out {t}/p.png", "IMAGE|bomb.png"),
    "proposals-one-pixel": ("proposals {w}/imgs/one.png --out {t}/p.png", "2x2|1x1"),
    "draw-field-decompression-bomb": (
        "draw field mobilenet_v3_small --input 3x32x32 --samples 1 --image {w}/imgs/bomb.png --out {t}/f.png",
        "bomb.png|not a picture",
    ),
    "draw-field-text-image": (
        "draw field mobilenet_v3_small --input 3x32x32 --samples 1 --image {w}/imgs/text.png --out {t}/f.png",
        "text.png",
    ),
    "report-decompression-bomb": (
        "report mobilenet_v3_small --input 3x32x32 --erf-samples 1 --image {w}/imgs/bomb.png --out {t}/r.html",
        "bomb.png",
    ),
    # checkpoints that are not checkpoints
    "predict-tensors-as-checkpoint": (
        "predict --checkpoint {w}/cls/last-000000002.safetensors {w}/digit.png",
        "last-000000002.safetensors|run folder",
    ),
    "predict-metrics-as-checkpoint": ("predict --checkpoint {w}/cls/metrics.jsonl {w}/digit.png", "metrics.jsonl"),
    "predict-coco-json-as-checkpoint": (
        "predict --checkpoint {w}/coco/train.json {w}/digit.png",
        "train.json|'convatlas-checkpoint'",
    ),
    "predict-empty-checkpoint": ('predict --checkpoint "" {w}/digit.png', "checkpoint|no best.json or last.json"),
    "draw-field-image-folder-as-model": ("draw field {w}/imgs --samples 1 --out {t}/f.png", "{w}/imgs|best.json"),
    "draw-field-coco-json-as-model": ("draw field {w}/coco/train.json --samples 1 --out {t}/f.png", "train.json"),
    "report-cross-validation-root": ("report {w}/cv --erf-samples 0 --out {t}/r.html", "{w}/cv|fold-NN"),
    "report-text-fold-without-input": ("report {w}/cv/fold-01 --erf-samples 0 --out {t}/r.html", "--input"),
    "summary-run-folder": ("summary {w}/cls", "unknown model"),
    "record-fewer-classes-than-outputs": (
        "predict --checkpoint {w}/records/few_classes {w}/digit.png",
        "{w}/records/few_classes/best.json|'classes'|3 classes|10 outputs",
    ),
    "record-without-classes": ("evaluate --checkpoint {w}/records/no_classes", "no_classes/best.json|'classes'"),
    "record-of-an-unknown-task": ("evaluate --checkpoint {w}/records/task_unknown", "'task'|'ocr'"),
    "record-without-inputs": ("export --checkpoint {w}/records/inputs_none --onnx {t}/a.onnx", "'inputs'|required"),
    "record-with-zero-std": ("predict --checkpoint {w}/records/std_zero {w}/digit.png", "'inputs'|std=[0.0]"),
    "record-without-mean": ("predict --checkpoint {w}/records/mean_missing {w}/digit.png", "'inputs'|mean=[]"),
    "record-with-negative-size": (
        "report {w}/records/size_negative --erf-samples 0 --out {t}/r.html",
        "'inputs'|data_size [-1, 28]",
    ),
    "record-config-of-another-version": (
        "evaluate --checkpoint {w}/records/config_extra_field",
        "config_extra_field/best.json|'config'|foo",
    ),
    "record-config-on-resume": (
        "train --resume --out {w}/records/config_extra_field",
        "config_extra_field/last.json|foo",
    ),
    "record-of-an-unknown-model": (
        "predict --checkpoint {w}/records/model_unknown {w}/digit.png",
        "model_unknown/best.json|cannot be built|'nope'",
    ),
    "record-with-negative-progress": (
        "train --resume --out {w}/records/progress_negative",
        "progress_negative/last.json|'progress'",
    ),
    # data the model cannot take, and data of one class
    "train-image-folder-one-class": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_one --image-size 16 --out {t}/r",
        "--data|1 class (a)|at least 2",
    ),
    "train-image-folder-nested-class": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_nested --out {t}/r",
        "if_nested/a|holds no image",
    ),
    "train-image-folder-class-of-text": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_text_class --out {t}/r",
        "if_text_class/b|holds no image",
    ),
    "train-image-folder-class-linking-to-root": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_loop --out {t}/r",
        "if_loop/b|holds no image",
    ),
    "train-segmentation-one-class": (
        "train --model unet --data segfolder:{w}/data/seg_one_class/im:{w}/data/seg_one_class/mk --out {t}/r",
        "--data|1 class|at least 2",
    ),
    "train-images-too-small-for-unet": (
        "train --model unet --data segfolder:{w}/data/seg_small/im:{w}/data/seg_small/mk --batch-size 2 --out {t}/r",
        "--data|3x8x8|do not fit unet|--image-size|layer down.1",
    ),
    "train-image-size-too-small-for-unet": (
        "train --model unet --data segfolder:{w}/data/seg_small/im:{w}/data/seg_small/mk --image-size 8 "
        "--batch-size 2 --out {t}/r",
        "--image-size|unpadded U-Net|overlap-tile",
    ),
    "train-coco-image-not-an-image": (
        "train --model faster_rcnn --data coco:{w}/data/coco_text_image --batch-size 2 --epochs 1 --threads 1 "
        "--out {t}/r",
        "coco_text_image/train|not a picture",
    ),
    "train-one-image-per-step-batch-norm": (
        f"train {CLS} --batch-size 1 --out {{t}}/r",
        "--batch-size 1|--accum-steps 1|BatchNorm2d|one value per channel",
    ),
    "train-accumulated-to-one-image": (
        f"train {CLS} --batch-size 16 --accum-steps 16 --out {{t}}/r",
        "--batch-size 16|--accum-steps 16|one image at a time",
    ),
    "rcnn-zero-proposals": (
        "train --model rcnn --data coco:{w}/coco --batch-size 2 --max-proposals 0 --out {t}/r",
        "--max-proposals|>= 1|got 0",
    ),
    "detection-backbone-empty": (
        'train --model faster_rcnn --data coco:{w}/coco --backbone "" --out {t}/r',
        "--backbone ''|unknown model",
    ),
    "detection-backbone-typo": (
        "train --model faster_rcnn --data coco:{w}/coco --backbone resnxt --out {t}/r",
        "--backbone 'resnxt'|resnext50_32x4d",
    ),
    "detection-backbone-text-model": (
        "train --model faster_rcnn --data coco:{w}/coco --backbone kim_cnn --out {t}/r",
        "--backbone 'kim_cnn'|text model",
    ),
    "detection-backbone-kwargs-text": (
        "train --model faster_rcnn --data coco:{w}/coco --batch-size 2 --model-arg backbone_kwargs=x --out {t}/r",
        "backbone_kwargs|dict|str 'x'",
    ),
    "model-arg-width-nan": (f"train {SMALL} --model-arg width_mult=nan --out {{t}}/r", "--model-arg|width_mult='nan'"),
    "model-arg-width-huge": (f"train {SMALL} --model-arg width_mult=1e30 --out {{t}}/r", "width_mult|<= 16|1e+30"),
    "model-arg-code": (
        f"train {SMALL} --model-arg \"drop_rate=__import__('os').getcwd()\" --out {{t}}/r",
        "--model-arg|drop_rate|a number",
    ),
    "model-arg-bool-for-number": (f"train {SMALL} --model-arg drop_rate=True --out {{t}}/r", "drop_rate=True|a number"),
    "model-arg-tuple-for-number": (f'train {SMALL} --model-arg "drop_rate=(0.1,)" --out {{t}}/r', "drop_rate"),
    "model-arg-empty-key": (f"train {CLS} --model-arg =0.5 --out {{t}}/r", "--model-arg|key=value"),
    "model-arg-key-with-space": (f'train {CLS} --model-arg "drop rate=0.5" --out {{t}}/r', "--model-arg|key=value"),
    "text-folds-huge": (f"train --model kim_cnn --data tsv:{{w}}/sep.tsv --folds {BIG} --out {{t}}/r", "--folds|60"),
    "text-max-folds-zero": ("train --model kim_cnn --data tsv:{w}/sep.tsv --max-folds 0 --out {t}/r", "--max-folds"),
    "workers-for-in-memory-data": (f"train {SMALL} --num-workers 2 --out {{t}}/r", "--num-workers|mnist5k|memory"),
    "data-dir-for-an-image-folder": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_two --data-dir {w} --out {t}/r",
        "--data-dir|imagefolder:|names its own files",
    ),
    "data-dir-for-a-segmentation-folder": (
        "train --model unet --data segfolder:{w}/data/seg_small/im:{w}/data/seg_small/mk --data-dir {w} --out {t}/r",
        "--data-dir|segfolder:",
    ),
    "data-dir-for-a-tsv-file": (
        "train --model kim_cnn --data tsv:{w}/sep.tsv --data-dir {w} --out {t}/r",
        "--data-dir|tsv:",
    ),
    # --overwrite replaces a run only once the new one has passed every check: a refused run loses nothing
    "overwrite-text-run-with-a-batch-too-large": (
        "train --model kim_cnn --mode rand --data tsv:{w}/sep.tsv --folds 3 --batch-size 40 --overwrite --out {w}/cv",
        "--batch-size 40|36 items",
    ),
    "overwrite-text-run-with-a-keyword-typo": (
        "train --model kim_cnn --mode rand --data tsv:{w}/sep.tsv --folds 3 --batch-size 10 --model-arg mapz=3 "
        "--overwrite --out {w}/cv",
        "--model-arg mapz|maps",
    ),
    "overwrite-image-run-with-a-keyword-typo": (
        f"train {SMALL} --model-arg widht_mult=0.5 --overwrite --out {{w}}/cls",
        "--model-arg widht_mult|width_mult",
    ),
    "overwrite-detection-run-with-a-batch-too-large": (
        "train --model faster_rcnn --data coco:{w}/coco --limit-train 2 --batch-size 4 --overwrite --out {w}/det",
        "--batch-size 4|(2 items)",
    ),
    "resume-with-a-model-of-another-task": (
        "train --resume --out {w}/cls --model unet",
        "--task classification|--model unet|segmentation model",
    ),
    # module:function models that fail
    "summary-user-model-half": ("summary zz_redteam:half --input 3x8x8", "zz_redteam:half|--input 3x8x8|Half"),
    "rf-user-model-half": ("rf zz_redteam:half --input 3x8x8", "zz_redteam:half|RuntimeError"),
    "report-user-model-half": (
        "report zz_redteam:half --input 3x8x8 --erf-samples 0 --out {t}/r.html",
        "zz_redteam:half|fails on --input 3x8x8",
    ),
    "report-user-model-wrong-input": (
        "report zz_redteam:linear --input 3x8x8 --erf-samples 0 --out {t}/r.html",
        "zz_redteam:linear on --input 3x8x8|expects 10 input features",
    ),
    "draw-field-user-model-half": (
        "draw field zz_redteam:half --input 3x8x8 --samples 1 --out {t}/f.png",
        "zz_redteam:half",
    ),
    "summary-user-model-returns-tuple": ("summary zz_redteam:returns_tuple", "returned tuple"),
    "summary-user-model-recursion": ("summary zz_redteam:recursion", "RecursionError"),
    "summary-user-model-extra-colon": ("summary zz_redteam:conv:x", "no callable 'conv:x'"),
    "summary-registry-name-with-space": ('summary "mobilenet_v3_small "', "'mobilenet_v3_small '|did you mean"),
    "summary-registry-name-upper-case": ("summary MOBILENET_V3_SMALL", "did you mean: mobilenet_v3_small"),
    "summary-unet-input-too-small": ("summary unet --input 1x8x8", "unet on --input 1x8x8|too small"),
    # resume and the run folder
    "resume-cls-and-overwrite": ("train --resume --overwrite --out {w}/cls", "--resume|--overwrite"),
    "resume-cv-too-many-folds": ("train --resume --out {w}/cv --max-folds 5", "--max-folds|<= folds (3)"),
    "resume-with-other-device": ("train --resume --out {w}/cls --device cuda:7", "--device"),
    "new-run-into-a-fold": (
        "train --model kim_cnn --data tsv:{w}/sep.tsv --out {w}/cv/fold-01",
        "--out|already holds a run",
    ),
    "new-run-into-the-coco-data": ("train --model faster_rcnn --data coco:{w}/coco --out {w}/coco", "--out"),
}
SEGMENTATION_ROWS = {
    "predict-top-k-segmentation": (
        "predict --checkpoint {w}/seg {w}/digit.png --top-k 5 --out-dir {t}/m",
        "--top-k|classification|segmentation",
    ),
    "predict-empty-out-dir": ('predict --checkpoint {w}/seg {w}/digit.png --out-dir ""', "--out-dir|empty"),
    "predict-mask-bomb": ("predict --checkpoint {w}/seg {w}/imgs/bomb.png --out-dir {t}/m", "IMAGE|bomb.png"),
    "predict-mask-out-dir-unwritable": (
        "predict --checkpoint {w}/seg {w}/digit.png --out-dir /proc/zz_convatlas/m",
        "--out-dir|cannot write",
    ),
}

# --- valid neighbours: (argv template, text on stdout) ---------------------------------------------------------------
RUNS = {
    "models-every-model": ("models", "faster_rcnn"),
    "models-detection": ("models --task detection", "3 models"),
    "predict-one-pixel": ("predict --checkpoint {w}/cls {w}/imgs/one.png", "one.png:"),
    "predict-sixteen-bit": ("predict --checkpoint {w}/cls {w}/imgs/sixteen.png", "sixteen.png:"),
    "predict-rgba": ("predict --checkpoint {w}/cls {w}/imgs/rgba.png", "rgba.png:"),
    "predict-animated-gif": ("predict --checkpoint {w}/cls {w}/imgs/anim.gif", "anim.gif:"),
    "predict-space-and-accent": ('predict --checkpoint {w}/cls "{w}/imgs/with space é.png"', "with space é.png:"),
    "predict-top-k-huge": (f"predict --checkpoint {{w}}/cls {{w}}/digit.png --top-k {BIG}", "digit.png:"),
    "evaluate-batch-huge": (f"evaluate --checkpoint {{w}}/cls --batch-size {BIG}", "test accuracy"),
    "evaluate-text-batch-huge": (f"evaluate --checkpoint {{w}}/cv/fold-01 --split dev --batch-size {BIG}", "dev"),
    "evaluate-json-beside-the-run": ("evaluate --checkpoint {w}/det --limit 1 --json {t}/eval.json", "wrote"),
    "detect-into-new-folder": ("detect --checkpoint {w}/det {w}/imgs/rgba.png --out {t}/d --scale 4", "detections"),
    "proposals-top-huge": (f"proposals {{w}}/imgs/rgba.png --out {{t}}/p.png --top {BIG}", "wrote"),
    "proposals-new-folder": ("proposals {w}/imgs/rgba.png --out {t}/a/b/p.png --json {t}/a/p.json", "wrote"),
    "draw-new-folder-with-accent": ('draw conv --input 4x4 --out "{t}/dossier é/a.svg"', "dossier é/a.svg"),
    "draw-upper-case-suffix": ("draw conv --input 4x4 --out {t}/a.SVG", "wrote"),
    "draw-values-with-seed": ("draw conv --input 4x4 --values --seed 7 --out {t}/a.svg", "wrote"),
    "draw-frame-of-an-svg": ("draw conv --input 4x4 --frame -1 --out {t}/a.svg", "frame 3 of 4"),
    "draw-pointwise": ("draw pointwise --input 4x4 --out-channels 2 --out {t}/a.svg", "3 -> 2"),
    "draw-sentence-unicode": ('draw sentence --sentence "日本語 の 文" --seed 3 --out {t}/a.svg', "wrote"),
    "rf-plot-new-folder": ("rf mobilenet_v3_small --input 3x32x32 --plot {t}/a/b/e.png --samples 1", "written"),
    "rf-layer-output": ('rf mobilenet_v3_small --input 3x32x32 --layer ""', "the output"),
    "report-new-folder": ("report mobilenet_v3_small --input 3x32x32 --erf-samples 0 --out {t}/a/r.html", "wrote"),
    "report-run-folder": ("report {w}/cls --erf-samples 1 --seed 3 --out {t}/r.html", "MobileNetV2"),
    "summary-user-model": ("summary zz_redteam:conv --input 3x8x8", "Total params: 112"),
    "train-image-folder-with-workers": (
        "train --model mobilenet_v3_small --data imagefolder:{w}/data/if_two --image-size 16 --batch-size 2 "
        "--num-workers 1 --epochs 1 --threads 1 --out {t}/r",
        "test accuracy",
    ),
    "train-unet-one-image-per-step": (
        'train --model unet --model-arg "widths=(4,8)" --model-arg padding=same --data '
        "segfolder:{w}/data/seg_small/im:{w}/data/seg_small/mk --batch-size 1 --epochs 1 --threads 1 --out {t}/r",
        "test mIoU",
    ),
}


def _argv(w, template: str, tmp: Path) -> list[str]:
    return [part.format(w=w.root, t=tmp) for part in shlex.split(template)]


def _names(w, names: str, tmp: Path) -> list[str]:
    return [name.format(w=w.root, t=tmp) for name in names.split("|")]


def test_the_corpus_is_large_and_its_ids_unique():
    assert len(ROWS) + len(SEGMENTATION_ROWS) >= 150 and len(RUNS) >= 20
    assert not set(ROWS) & set(SEGMENTATION_ROWS) and not set(ROWS) & set(RUNS)


@pytest.mark.parametrize("case", list(ROWS))
def test_bad_command_line_is_refused_and_changes_nothing(ws, tmp_path, case):
    template, names = ROWS[case]
    with unchanged(ws.root):
        expect_user_error(_argv(ws, template, tmp_path), names=_names(ws, names, tmp_path))


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="needs Fashion-MNIST (make data)")
@pytest.mark.parametrize("case", list(SEGMENTATION_ROWS))
def test_bad_segmentation_command_line_is_refused_and_changes_nothing(ws, tmp_path, case):
    template, names = SEGMENTATION_ROWS[case]
    with unchanged(ws.root):
        expect_user_error(_argv(ws, template, tmp_path), names=_names(ws, names, tmp_path))


@pytest.mark.parametrize("case", list(RUNS))
def test_valid_neighbour_runs_and_writes_only_its_outputs(ws, tmp_path, case):
    template, expected = RUNS[case]
    with unchanged(ws.root):
        result = run_cli(_argv(ws, template, tmp_path))
    assert result.code == 0, result.stderr
    assert expected.format(w=ws.root, t=tmp_path) in result.stdout, result.stdout


def test_training_with_an_evaluation_batch_larger_than_the_split_runs(tmp_path):
    argv = ["train", *shlex.split(CLS), "--batch-size", "16", "--epochs", "1", "--threads", "1",
            "--eval-batch-size", BIG, "--out", str(tmp_path / "r")]  # fmt: skip
    result = run_cli(argv)
    assert result.code == 0, result.stderr
    assert "test accuracy" in result.stdout


def test_ctrl_c_stops_the_program_with_a_checkpoint_and_resume_refuses_a_changed_option(tmp_path):
    """The real program in a subprocess: SIGINT during training writes a checkpoint and exits 130 with the command
    that continues; a second run into the live folder is refused meanwhile; resuming with another --lr is refused
    without touching the run, and a plain resume finishes it."""
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "convatlas", "train", *shlex.split(CLS.replace("32", "480")), "--batch-size", "16",
            "--epochs", "2", "--threads", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        first = proc.stdout.readline()  # the first epoch's line: the run is alive and holds its folder
        assert first.startswith("epoch 1/2"), first + proc.stderr.read()
        for _ in range(600):  # the line comes just before the epoch's checkpoint
            if (out / "last.json").exists():
                break
            time.sleep(0.05)
        expect_user_error(
            ["train", "--resume", "--out", str(out)], names=["--out", f"another process (pid {proc.pid})"]
        )
        assert (out / ".convatlas.lock").read_text().strip() == str(proc.pid)  # the live run still owns its folder
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (a very fast machine)")
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in stderr, stderr
    assert f"continue with --resume --out {out}" in stdout
    with unchanged(out):
        changed = ["train", "--resume", "--out", str(out), "--lr", "0.5"]
        expect_user_error(changed, names=["--lr is 0.5", "trained with 0.1"])
    resumed = run_cli(["train", "--resume", "--out", str(out), "--threads", "1"])
    assert resumed.code == 0, resumed.stderr
    assert "test accuracy" in resumed.stdout


# --- the Python API behind the commands ------------------------------------------------------------------------------
def _api_cases():
    from convatlas import arithmetic
    from convatlas.analysis import summary
    from convatlas.atlas import draw_convolution, draw_sentence
    from convatlas.detection.proposals import selective_search
    from convatlas.models import create_model
    from convatlas.ops import conv2d
    from convatlas.ops.boxes import decode_boxes, encode_boxes, nms
    from convatlas.train import TrainConfig

    def config(**changes):
        base = dict(model="mobilenet_v2", data="mnist5k", out="runs/api", model_args={"width_mult": 0.35})
        return TrainConfig(**{**base, **changes})

    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    return {
        "fit-a-dict": (lambda: fit({"model": "mobilenet_v2"}), InputTypeError, "config|TrainConfig|dict"),
        "config-model-int": (lambda: config(model=5).resolved(), InputTypeError, "model|5"),
        "config-out-none": (lambda: config(out=None).resolved(), ValueError, "out|None"),
        "config-out-int": (lambda: config(out=7).resolved(), ValueError, "out|7"),
        "config-amp-none": (lambda: config(amp=None).resolved(), ValueError, "amp|None"),
        "config-bool-string": (lambda: config(compile="false").resolved(), ValueError, "compile|'false'"),
        "config-augment-int": (lambda: config(augment=1).resolved(), ValueError, "augment|1"),
        "config-accum-none": (lambda: config(accum_steps=None).resolved(), ValueError, "accum_steps|None"),
        "config-epochs-string": (lambda: config(epochs="3").resolved(), ValueError, "epochs|'3'"),
        "config-seed-huge": (lambda: config(seed=2**40).resolved(), ValueError, "seed|4294967295"),
        "config-threads-none": (lambda: config(threads=None).resolved(), ValueError, "threads|None"),
        "config-data-dir-empty": (lambda: config(data_dir=" ").resolved(), ValueError, "data_dir"),
        "conv2d-integer-input": (lambda: conv2d(x.long(), w.long()), InputTypeError, "conv2d|floating point|int64"),
        "conv2d-list-input": (lambda: conv2d([[1.0]], w), InputTypeError, "conv2d|input|list"),
        "conv2d-dtypes-differ": (lambda: conv2d(x, w.double()), InputTypeError, "conv2d|weight|float64"),
        "nms-threshold-nan": (lambda: nms(box, torch.ones(1), float("nan")), ValueError, "iou_threshold|nan"),
        "nms-threshold-text": (lambda: nms(box, torch.ones(1), "0.5"), InputTypeError, "iou_threshold|str"),
        "encode-shapes-differ": (
            lambda: encode_boxes(box.repeat(3, 1), box.repeat(2, 1)),
            ValueError,
            "boxes (3, 4)|proposals (2, 4)",
        ),
        "decode-shapes-differ": (
            lambda: decode_boxes(torch.zeros(3, 4), box.repeat(2, 1)),
            ValueError,
            "deltas (3, 4)|proposals (2, 4)",
        ),
        "summary-a-name": (lambda: summary("mobilenet_v2", (3, 32, 32)), InputTypeError, "model|str"),
        "summary-input-too-long": (lambda: summary(create_model("kim_cnn"), (2**21,)), ValueError, "input_size"),
        "selective-search-seed": (lambda: selective_search(torch.rand(3, 8, 8), seed=-1), ValueError, "seed|-1"),
        "draw-cell-nan": (lambda: draw_convolution((4, 4), 3, cell=float("nan")), ValueError, "cell|nan"),
        "draw-seed-negative": (lambda: draw_convolution((4, 4), 3, values=True, seed=-1), ValueError, "seed|-1"),
        "draw-sentence-seed": (lambda: draw_sentence("a b c", (2,), seed=2**70), ValueError, "seed"),
        "conv-out-text": (lambda: arithmetic.conv_out("5", 3), InputTypeError, "length|'5'"),
    }


API = list(_api_cases())


@pytest.mark.parametrize("case", API)
def test_the_python_api_names_the_argument(case):
    call, kind, names = _api_cases()[case]
    with pytest.raises(kind) as caught:
        call()
    assert is_user_error(caught.value), f"{type(caught.value).__name__} is not a user error"
    for name in names.split("|"):
        assert name in str(caught.value), f"{name!r} not in {caught.value}"
