"""Bad command lines for ``train``, ``evaluate``, ``predict``, ``export``, ``detect`` and ``proposals``: each must be
refused as the user's mistake (exit 2, no traceback, one line naming the option or file) and must leave every file
of the workspace (finished runs of each task, images, outputs) exactly as it was.

The workspace is built once per module: a finished run of each task and the files the rows point at. Every row runs
``convatlas.cli.main`` in-process through :mod:`cli_checks` inside ``unchanged(workspace)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cli_checks import expect_user_error, unchanged
from convatlas.train import cross_validate, fit
from tiny_runs import HAVE_FASHION_MNIST, blocks_coco, separable_tsv, tiny_config

CLS = ["--model", "mobilenet_v2", "--model-arg", "width_mult=0.35", "--data", "mnist5k", "--limit-train", "32",
       "--limit-test", "16", "--batch-size", "16", "--epochs", "1", "--threads", "1"]  # fmt: skip
UNWRITABLE = "/proc/convatlas-no-such-place/run"  # not even root can create folders in /proc
# A tiny unpadded U-Net (three levels) and a small Faster R-CNN, without their data (rows add --data).
UNET = ["--model", "unet", "--model-arg", "widths=(4,8,16)", "--batch-size", "4", "--epochs", "1", "--threads", "1"]
FASTER = ["--model", "faster_rcnn", "--model-arg", "fpn_channels=8", "--batch-size", "2", "--epochs", "1",
          "--threads", "1"]  # fmt: skip


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".convatlas.lock"))
    return dst


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    w = SimpleNamespace(root=root)
    w.cls = root / "cls"
    fit(tiny_config("classification", w.cls, epochs=2, deterministic=False, limit_train=32, limit_test=16))
    w.tsv = separable_tsv(root / "sep.tsv", n=60)
    w.cv = root / "cv"
    cross_validate(tiny_config("text", w.cv, tsv=w.tsv, epochs=1, max_folds=1, deterministic=False), log=print)
    w.coco = blocks_coco(root / "coco")
    w.det = root / "det"
    det = tiny_config("detection", w.det, data=f"coco:{w.coco}", epochs=1, limit_train=4, limit_test=2, batch_size=2,
                      deterministic=False)  # fmt: skip
    fit(det)
    w.seg = root / "seg"
    if HAVE_FASHION_MNIST:
        fit(tiny_config("segmentation", w.seg, epochs=1, deterministic=False))
    w.file = root / "notes.txt"
    w.file.write_text("not a run")
    w.image = root / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(w.image)
    w.image2 = root / "other" / "digit.png"
    w.image2.parent.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(w.image2)
    w.bad_image = root / "broken.png"
    w.bad_image.write_text("this is not a PNG")
    w.empty = root / "empty"
    w.empty.mkdir()
    w.only_best = root / "only_best"
    w.only_best.mkdir()
    shutil.copy(w.cls / "best.json", w.only_best / "best.json")
    w.only_metrics = root / "only_metrics"
    w.only_metrics.mkdir()
    shutil.copy(w.cls / "metrics.jsonl", w.only_metrics / "metrics.jsonl")
    w.metrics_dir = root / "metrics_dir"
    (w.metrics_dir / "metrics.jsonl").mkdir(parents=True)
    w.old = _copy_run(w.cls, root / "old_format")
    _edit_json(w.old / "last.json", lambda r: {"format": "convatlas-checkpoint/1", "global_step": 4, "task": "x"})
    w.broken_json = _copy_run(w.cls, root / "broken_json")
    (w.broken_json / "last.json").write_text('{"format": "convatlas-checkpoint", "vers')
    w.truncated = _copy_run(w.cls, root / "truncated")
    tensors = w.truncated / json.loads((w.truncated / "last.json").read_text())["tensors"]
    tensors.write_bytes(tensors.read_bytes()[:64])
    w.det_truncated = _copy_run(w.det, root / "det_truncated")
    for tag in ("last", "best"):
        tensors = w.det_truncated / json.loads((w.det_truncated / f"{tag}.json").read_text())["tensors"]
        tensors.write_bytes(tensors.read_bytes()[:64])
    w.other_model = _copy_run(w.cls, root / "other_model")
    for tag in ("last", "best"):
        _edit_json(
            w.other_model / f"{tag}.json",
            lambda r: {**r, "model": {**r["model"], "kwargs": {**r["model"]["kwargs"], "width_mult": 0.5}}},
        )
    w.folder2 = root / "two_classes"
    for name in ("a", "b"):
        (w.folder2 / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(w.folder2 / name / f"{i}.png")
    w.tsv3 = root / "three.tsv"
    w.tsv3.write_text("pos\tgood film\nneg\tbad film\npos\tfine film\n", encoding="utf-8")
    w.existing_onnx = root / "model.onnx"
    w.existing_onnx.write_bytes(b"an older export")
    w.existing_json = root / "metrics.json"
    w.existing_json.write_text("{}")
    w.det_out = root / "det_out"
    w.det_out.mkdir()
    (w.det_out / "detections.json").write_text("[]")
    w.mask_out = root / "masks"
    w.mask_out.mkdir()
    (w.mask_out / "digit.mask.png").write_bytes(b"an older mask")
    return w


# (id, command line, names): ``{name}`` is a workspace path (``{new}``: a fresh folder, ``{CLS}``: a small valid
# classification run's options); the names (separated by ``|``) must all appear in the error line.
ROWS = [
    # --- run folders ------------------------------------------------------------------------------------------------
    ("out-is-a-file", "train {CLS} --out {file}", "--out|{file}|is a file"),
    ("out-under-a-file", "train {CLS} --out {file}/run", "--out|{file}"),
    ("out-unwritable", "train {CLS} --out {unwritable}", "--out|cannot write"),
    ("text-out-is-a-file", "train --model kim_cnn --data tsv:{tsv} --out {file}", "--out|is a file"),
    ("detection-out-is-a-file", "train --model faster_rcnn --data coco:{coco} --out {file}", "--out|is a file"),
    ("segmentation-out-unwritable", "train --model unet --data fashion-scenes --out {unwritable}", "--out|cannot"),
    ("out-holds-a-run", "train {CLS} --out {cls}", "--out|already holds a run|--resume|--overwrite"),
    ("out-holds-only-best", "train {CLS} --out {only_best}", "--out|best.json"),
    ("out-holds-only-metrics", "train {CLS} --out {only_metrics}", "--out|metrics.jsonl"),
    ("out-holds-a-cv", "train {CLS} --out {cv}", "--out|cv_results.json"),
    ("out-holds-a-detection-run", "train {CLS} --out {det}", "--out|already holds a run"),
    ("output-name-is-a-folder", "train {CLS} --out {metrics_dir}", "--out|metrics.jsonl is a folder"),
    ("text-out-holds-a-run", "train --model kim_cnn --data tsv:{tsv} --out {cls}", "--out|already holds a run"),
    ("detection-out-holds-a-run", "train --model faster_rcnn --data coco:{coco} --out {cv}", "--out|already holds"),
    ("resume-and-overwrite", "train --resume --overwrite --out {cls}", "--resume|--overwrite"),
    ("resume-without-out", "train --resume", "--resume needs --out"),
    ("resume-empty-folder", "train --resume --out {empty}", "{empty}|last.json"),
    ("resume-missing-folder", "train --resume --out {new}", "{new}"),
    # --- resume conflicts -------------------------------------------------------------------------------------------
    ("resume-other-lr", "train --resume --out {cls} --lr 0.5", "--lr is 0.5|0.05|--epochs"),
    ("resume-other-batch", "train --resume --out {cls} --batch-size 8", "--batch-size is 8"),
    ("resume-other-model", "train --resume --out {cls} --model mobilenet_v3_small", "--model"),
    ("resume-other-data", "train --resume --out {cls} --data fashion-mnist", "--data"),
    ("resume-fewer-epochs", "train --resume --out {cls} --epochs 1", "--epochs is 1|already completed 2 epochs"),
    ("resume-other-model-arg", "train --resume --out {cls} --model-arg width_mult=0.5", "--model-arg"),
    ("resume-augment", "train --resume --out {cls} --augment", "--augment"),
    ("resume-other-seed", "train --resume --out {cls} --seed 9", "--seed"),
    ("resume-text-folds", "train --resume --out {cv} --folds 4", "--folds|cross-validation"),
    ("resume-text-mode", "train --resume --out {cv} --mode static", "--mode"),
    ("resume-detection-backbone", "train --resume --out {det} --backbone mobilenet_v3_large", "--backbone"),
    ("resume-image-option-on-text", "train --resume --out {cv} --image-size 32", "--image-size|text"),
    ("resume-broken-json", "train --resume --out {broken_json}", "{broken_json}/last.json|not valid JSON"),
    ("resume-truncated", "train --resume --out {truncated}", "{truncated}|truncated"),
    ("resume-old-format", "train --resume --out {old}", "convatlas-checkpoint/1|{old}/last.json"),
    # --- values out of range ----------------------------------------------------------------------------------------
    ("lr-zero", "train {CLS} --lr 0 --out {new}", "--lr|> 0, got 0.0"),
    ("lr-nan", "train {CLS} --lr nan --out {new}", "--lr|finite"),
    ("lr-negative", "train {CLS} --lr -1 --out {new}", "--lr"),
    ("epochs-zero", "train {CLS} --epochs 0 --out {new}", "--epochs|got 0"),
    ("epochs-not-a-number", "train {CLS} --epochs two --out {new}", "--epochs|two"),
    ("batch-size-zero", "train {CLS} --batch-size 0 --out {new}", "--batch-size"),
    (
        "batch-larger-than-data",
        "train {CLS} --batch-size 64 --out {new}",
        "--batch-size 64 is larger than the training set (32 items)",
    ),
    ("batch-not-divisible", "train {CLS} --accum-steps 3 --out {new}", "--batch-size|--accum-steps"),
    ("accum-zero", "train {CLS} --accum-steps 0 --out {new}", "--accum-steps"),
    ("limit-train-zero", "train {CLS} --limit-train 0 --out {new}", "--limit-train|got 0"),
    ("limit-test-zero", "train {CLS} --limit-test 0 --out {new}", "--limit-test"),
    ("eval-batch-negative", "train {CLS} --eval-batch-size -1 --out {new}", "--eval-batch-size|-1"),
    ("save-every-negative", "train {CLS} --save-every -1 --out {new}", "--save-every"),
    ("log-every-zero", "train {CLS} --log-every 0 --out {new}", "--log-every"),
    ("num-workers-negative", "train {CLS} --num-workers -2 --out {new}", "--num-workers"),
    ("threads-negative", "train {CLS} --threads -1 --out {new}", "--threads"),
    ("warmup-negative", "train {CLS} --warmup-epochs -1 --out {new}", "--warmup-epochs"),
    ("min-lr-above-lr", "train {CLS} --lr 0.1 --min-lr 0.2 --out {new}", "--min-lr"),
    ("label-smoothing-one", "train {CLS} --label-smoothing 1 --out {new}", "--label-smoothing"),
    ("clip-grad-negative", "train {CLS} --clip-grad -1 --out {new}", "--clip-grad"),
    ("momentum-with-adamw", "train {CLS} --opt adamw --momentum 0.9 --out {new}", "--momentum|adamw"),
    ("min-lr-with-constant", "train {CLS} --schedule constant --min-lr 0.001 --out {new}", "--min-lr|constant"),
    ("seed-negative", "train {CLS} --seed -1 --out {new}", "--seed"),
    ("image-size-tiny", "train {CLS} --image-size 4 --out {new}", "--image-size"),
    ("unknown-opt", "train {CLS} --opt lamb --out {new}", "--opt|lamb"),
    ("unknown-amp", "train {CLS} --amp fp8 --out {new}", "--amp|fp8"),
    ("unknown-schedule", "train {CLS} --schedule step --out {new}", "--schedule|step"),
    ("device-without-cuda", "train {CLS} --device cuda:99 --out {new}", "--device|cuda:99"),
    ("unknown-device", "train {CLS} --device tpu --out {new}", "--device|tpu"),
    # --- models, data, model arguments ------------------------------------------------------------------------------
    ("unknown-model", "train --model mobilenet_v9 --data mnist5k --out {new}", "mobilenet_v9"),
    ("missing-model", "train --data mnist5k --out {new}", "--model"),
    ("task-contradicts-model", "train {CLS} --task detection --out {new}", "--task|classification"),
    ("unknown-task", "train {CLS} --task ocr --out {new}", "--task|ocr"),
    (
        "model-arg-not-a-number",
        "train {CLS} --model-arg drop_rate=abc --out {new}",
        "--model-arg|drop_rate='abc'|a number",
    ),
    ("model-arg-typo", "train {CLS} --model-arg widht_mult=0.5 --out {new}", "--model-arg|widht_mult|width_mult"),
    ("model-arg-from-data", "train {CLS} --model-arg num_classes=3 --out {new}", "--model-arg|num_classes"),
    ("model-arg-without-equals", "train {CLS} --model-arg width_mult --out {new}", "--model-arg|key=value"),
    (
        "model-arg-twice",
        "train {CLS} --model-arg drop_rate=0.1 --model-arg drop_rate=0.2 --out {new}",
        "--model-arg|drop_rate|twice",
    ),
    ("unknown-data", "train --model mobilenet_v2 --data cifar10 --out {new}", "--data|cifar10"),
    ("data-of-another-task", "train --model unet --data mnist5k --out {new}", "--data|mnist5k|classification"),
    ("text-data-for-an-image-model", "train --model mobilenet_v2 --data tsv:{tsv} --out {new}", "--data"),
    ("missing-tsv", "train --model kim_cnn --data tsv:{root}/none.tsv --out {new}", "none.tsv"),
    # --- options that do not apply to the task ----------------------------------------------------------------------
    ("mode-for-images", "train {CLS} --mode static --out {new}", "--mode|classification"),
    ("folds-for-images", "train {CLS} --folds 5 --out {new}", "--folds|classification"),
    ("backbone-for-images", "train {CLS} --backbone resnext50_32x4d --out {new}", "--backbone|classification"),
    ("max-proposals-for-images", "train {CLS} --max-proposals 10 --out {new}", "--max-proposals"),
    (
        "image-size-for-text",
        "train --model kim_cnn --data tsv:{tsv} --image-size 32 --out {new}",
        "--image-size|text run",
    ),
    (
        "channels-last-for-text",
        "train --model kim_cnn --data tsv:{tsv} --channels-last --out {new}",
        "--channels-last|text",
    ),
    ("augment-for-text", "train --model kim_cnn --data tsv:{tsv} --augment --out {new}", "--augment|text"),
    ("limit-test-for-text", "train --model kim_cnn --data tsv:{tsv} --limit-test 5 --out {new}", "--limit-test|text"),
    ("workers-for-text", "train --model kim_cnn --data tsv:{tsv} --num-workers 2 --out {new}", "--num-workers|text"),
    (
        "compile-for-detection",
        "train --model faster_rcnn --data coco:{coco} --compile --out {new}",
        "--compile|detection",
    ),
    (
        "label-smoothing-for-detection",
        "train --model faster_rcnn --data coco:{coco} --label-smoothing 0.1 --out {new}",
        "--label-smoothing|detection",
    ),
    (
        "image-size-for-detection",
        "train --model faster_rcnn --data coco:{coco} --image-size 64 --out {new}",
        "--image-size|detection",
    ),
    (
        "data-dir-for-detection",
        "train --model faster_rcnn --data coco:{coco} --data-dir {root} --out {new}",
        "--data-dir|detection",
    ),
    ("augment-for-rcnn", "train --model rcnn --data coco:{coco} --augment --out {new}", "--augment|rcnn"),
    (
        "max-proposals-for-faster-rcnn",
        "train --model faster_rcnn --data coco:{coco} --max-proposals 10 --out {new}",
        "--max-proposals|faster_rcnn",
    ),
    (
        "detection-batch-too-large",
        "train --model faster_rcnn --data coco:{coco} --limit-train 2 --out {new}",
        "--batch-size 4|(2 items)",
    ),
    ("missing-coco", "train --model faster_rcnn --data coco:{empty} --out {new}", "{empty}"),
    ("text-one-fold", "train --model kim_cnn --data tsv:{tsv} --folds 1 --out {new}", "--folds|>= 2"),
    (
        "text-max-folds-above-folds",
        "train --model kim_cnn --data tsv:{tsv} --folds 3 --max-folds 4 --out {new}",
        "--max-folds",
    ),
    (
        "text-more-folds-than-sentences",
        "train --model kim_cnn --mode rand --data tsv:{tsv3} --out {new}",
        "--folds 10 folds need at least 10 sentences|has 3",
    ),
    (
        "text-multichannel-encoder",
        "train --model lightconv_classifier --data tsv:{tsv} --mode multichannel --out {new}",
        "--mode|kim_cnn",
    ),
    ("text-unknown-mode", "train --model kim_cnn --data tsv:{tsv} --mode frozen --out {new}", "--mode|frozen"),
    (
        "text-momentum-with-adadelta",
        "train --model kim_cnn --data tsv:{tsv} --momentum 0.5 --out {new}",
        "--momentum|adadelta",
    ),
    # --- evaluate ---------------------------------------------------------------------------------------------------
    ("evaluate-missing-checkpoint", "evaluate --checkpoint {new}", "{new}"),
    ("evaluate-empty-folder", "evaluate --checkpoint {empty}", "{empty}"),
    ("evaluate-not-json", "evaluate --checkpoint {image}", "{image}"),
    ("evaluate-cv-root", "evaluate --checkpoint {cv}", "{cv}|fold-NN"),
    ("evaluate-batch-zero", "evaluate --checkpoint {cls} --batch-size 0", "--batch-size must be >= 1, got 0"),
    ("evaluate-limit-zero", "evaluate --checkpoint {cls} --limit 0", "--limit"),
    ("evaluate-no-cuda", "evaluate --checkpoint {cls} --device cuda:99", "--device|cuda:99"),
    ("evaluate-json-is-a-folder", "evaluate --checkpoint {cls} --json {empty}", "--json|{empty}"),
    ("evaluate-json-exists", "evaluate --checkpoint {cls} --json {existing_json}", "--json|--overwrite"),
    ("evaluate-json-unwritable", "evaluate --checkpoint {cls} --json {unwritable}", "--json"),
    ("evaluate-dev-split-for-images", "evaluate --checkpoint {cls} --split dev", "--split|dev"),
    ("evaluate-data-other-classes", "evaluate --checkpoint {cls} --data imagefolder:{folder2}", "--data|classes"),
    ("evaluate-data-other-task", "evaluate --checkpoint {cls} --data fashion-scenes", "--data|segmentation"),
    ("evaluate-text-other-data", "evaluate --checkpoint {cv}/fold-01 --data tsv:{tsv3}", "--data|text"),
    ("evaluate-truncated", "evaluate --checkpoint {truncated} --which last", "truncated or corrupted"),
    ("evaluate-another-model", "evaluate --checkpoint {other_model}", "{other_model}/best.json|has shape"),
    ("evaluate-old-format", "evaluate --checkpoint {old}/last.json", "convatlas-checkpoint/1"),
    # --- predict ----------------------------------------------------------------------------------------------------
    ("predict-missing-image", "predict --checkpoint {cls} {root}/none.png", "IMAGE|none.png"),
    ("predict-unreadable-image", "predict --checkpoint {cls} {bad_image}", "IMAGE|{bad_image}"),
    ("predict-top-k-zero", "predict --checkpoint {cls} --top-k 0 {image}", "--top-k"),
    ("predict-detection-checkpoint", "predict --checkpoint {det} {image}", "detection|convatlas detect"),
    ("predict-text-checkpoint", "predict --checkpoint {cv}/fold-01 {image}", "text"),
    ("predict-no-cuda", "predict --checkpoint {cls} --device cuda:99 {image}", "--device"),
    ("predict-another-model", "predict --checkpoint {other_model} {image}", "has shape"),
    # --- export -----------------------------------------------------------------------------------------------------
    ("export-onnx-is-a-folder", "export --checkpoint {cls} --onnx {empty}", "--onnx|{empty}"),
    ("export-onnx-exists", "export --checkpoint {cls} --onnx {existing_onnx}", "--onnx|--overwrite"),
    ("export-onnx-under-a-file", "export --checkpoint {cls} --onnx {file}/m.onnx", "--onnx"),
    ("export-onnx-unwritable", "export --checkpoint {cls} --onnx {unwritable}.onnx", "--onnx"),
    ("export-bad-opset", "export --checkpoint {cls} --onnx {new}.onnx --opset 99", "--opset|99"),
    ("export-detection", "export --checkpoint {det} --onnx {new}.onnx", "export|detection"),
    ("export-missing-checkpoint", "export --checkpoint {new} --onnx {new}.onnx", "{new}"),
    # --- detect and proposals ---------------------------------------------------------------------------------------
    ("detect-classification-checkpoint", "detect --checkpoint {cls} {image}", "--checkpoint|classification"),
    ("detect-out-is-a-file", "detect --checkpoint {det} {image} --out {file}", "--out|{file}"),
    ("detect-out-holds-detections", "detect --checkpoint {det} {image} --out {det_out}", "--out|detections.json"),
    ("detect-no-cuda", "detect --checkpoint {det} {image} --device cuda:99", "--device"),
    ("detect-bad-threshold", "detect --checkpoint {det} {image} --score-threshold 2", "--score-threshold"),
    ("detect-scale-zero", "detect --checkpoint {det} {image} --scale 0", "--scale"),
    ("detect-missing-image", "detect --checkpoint {det} {root}/none.png", "IMAGE|none.png"),
    ("detect-unreadable-image", "detect --checkpoint {det} {bad_image}", "IMAGE|broken.png"),
    ("predict-overlay-for-a-classifier", "predict --checkpoint {cls} --overlay {image}", "--overlay|classification"),
    ("detect-same-picture-twice", "detect --checkpoint {det} {image} {image2} --out {new}", "--out|digit.png"),
    ("detect-missing-checkpoint", "detect --checkpoint {new} {image}", "{new}"),
    (
        "detect-truncated-checkpoint",
        "detect --checkpoint {det_truncated} {image}",
        "{det_truncated}|truncated or corrupted",
    ),
    ("proposals-top-zero", "proposals {image} --top 0 --out {new}.png", "--top"),
    ("proposals-out-is-a-folder", "proposals {image} --out {empty}", "--out|{empty}"),
    ("proposals-out-exists", "proposals {image} --out {image}", "--out|--overwrite"),
    ("proposals-json-is-a-folder", "proposals {image} --out {new}.png --json {empty}", "--json"),
    ("proposals-json-unwritable", "proposals {image} --out {new}.png --json {unwritable}", "--json"),
    ("proposals-missing-image", "proposals {root}/none.png --out {new}.png", "IMAGE"),
]
# The nuclei data spec and the options of U-Net's and Faster R-CNN's training on it.
NUCLEI_ROWS = [
    ("nuclei-unknown-option", "train {UNET} --data nuclei:sise=64 --out {new}", "--data|sise|size"),
    ("nuclei-option-twice", "train {UNET} --data nuclei:size=32,size=64 --out {new}", "--data|size|twice"),
    ("nuclei-size-not-a-number", "train {UNET} --data nuclei:size=big --out {new}", "--data|size|integer"),
    ("nuclei-size-too-large", "train {UNET} --data nuclei:size=300 --out {new}", "--data|size 300|256"),
    ("nuclei-samples-zero", "train {UNET} --data nuclei:samples=0 --out {new}", "--data|samples|>= 1"),
    ("nuclei-quadrant-out-of-range", "train {UNET} --data nuclei:quadrant=7 --out {new}", "--data|quadrant|0..3"),
    ("nuclei-separate-not-a-flag", "train {UNET} --data nuclei:separate=maybe --out {new}", "--data|separate"),
    ("nuclei-separate-for-detection", "train {FASTER} --data nuclei:separate=0 --out {new}", "--data|separate"),
    ("nuclei-loss-unknown", "train {UNET} --data nuclei:size=24 --loss dice --out {new}", "--loss|dice|unet-weighted"),
    (
        "nuclei-weighted-loss-with-label-smoothing",
        "train {UNET} --data nuclei:size=24 --loss unet-weighted --label-smoothing 0.1 --out {new}",
        "--label-smoothing|unet-weighted",
    ),
    ("loss-on-a-classification-run", "train {CLS} --loss unet-weighted --out {new}", "--loss|classification"),
    ("loss-on-a-detection-run", "train {FASTER} --data nuclei --loss unet-weighted --out {new}", "--loss|detection"),
    (
        "nuclei-unpadded-unet-image-size",
        "train {UNET} --data nuclei:size=24 --image-size 64 --out {new}",
        "--image-size|unpadded",
    ),  # fmt: skip
    (
        "fit-anchors-zero",
        "train {FASTER} --data nuclei:size=32,samples=2 --fit-anchors 0 --out {new}",
        "--fit-anchors|>= 1",
    ),  # fmt: skip
    ("fit-anchors-not-a-number", "train {FASTER} --data nuclei --fit-anchors many --out {new}", "--fit-anchors"),
    (
        "fit-anchors-for-rcnn",
        "train --model rcnn --data nuclei --fit-anchors 3 --out {new}",
        "--fit-anchors|faster_rcnn",
    ),  # fmt: skip
    (
        "fit-anchors-on-segmentation",
        "train {UNET} --data nuclei --fit-anchors 3 --out {new}",
        "--fit-anchors|does not apply",
    ),  # fmt: skip
    (
        "fit-anchors-more-than-boxes",
        "train {FASTER} --data nuclei:size=16,samples=2 --fit-anchors 500 --out {new}",
        "--fit-anchors|500|boxes",
    ),
    (
        "fit-anchors-and-anchor-shapes",
        "train {FASTER} --data nuclei:size=32,samples=2 --fit-anchors 2 --model-arg anchor_shapes=[[(8,8)]] "
        "--out {new}",
        "--fit-anchors|--model-arg|anchor_shapes",
    ),
]
# Rows that need Fashion-MNIST (make data).
SCENES_ROWS = [
    (
        "weighted-loss-without-instance-labels",
        "train {UNET} --data fashion-scenes:num_images=8,canvas=32,scale=0.75-1.0 --loss unet-weighted --out {new}",
        "--loss|unet-weighted|nuclei",
    ),
]
SEGMENTATION_ROWS = [
    (
        "predict-overlay-exists",
        "predict --checkpoint {seg} --out-dir {mask_out} --overlay {image}",
        "--out-dir|digit.mask.png|--overwrite",
    ),  # fmt: skip
    ("predict-mask-out-dir-is-a-file", "predict --checkpoint {seg} --out-dir {file} {image}", "--out-dir|{file}"),
    (
        "predict-mask-exists",
        "predict --checkpoint {seg} --out-dir {mask_out} {image}",
        "--out-dir|digit.mask.png|--overwrite",
    ),
    ("predict-two-images-one-mask", "predict --checkpoint {seg} --out-dir {new} {image} {image2}", "--out-dir|both"),
    ("export-segmentation-onnx-exists", "export --checkpoint {seg} --onnx {existing_onnx}", "--onnx"),
]


def _cls_without(text: str) -> str:
    """CLS less the options the row gives itself (an option given twice is refused)."""
    given = {part for part in text.split() if part.startswith("--") and part != "--model-arg"}
    pairs = zip(CLS[::2], CLS[1::2], strict=True)
    return " ".join(f"{option} {value}" for option, value in pairs if option not in given)


def _expand(w, text: str) -> str:
    return text.format(**vars(w), CLS=_cls_without(text), UNET=" ".join(UNET), FASTER=" ".join(FASTER),
                       new=w.root / "new-run", unwritable=UNWRITABLE)  # fmt: skip


def _check(w, line: str, names: str) -> None:
    with unchanged(w.root):
        expect_user_error(_expand(w, line).split(), names=_expand(w, names).split("|"))


def test_the_table_is_large_and_its_ids_unique():
    ids = [row[0] for row in ROWS + NUCLEI_ROWS + SCENES_ROWS + SEGMENTATION_ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


@pytest.mark.parametrize(("line", "names"), [pytest.param(a, n, id=i) for i, a, n in ROWS])
def test_bad_command_line_is_refused_and_changes_nothing(ws, line, names):
    _check(ws, line, names)


@pytest.mark.parametrize(("line", "names"), [pytest.param(a, n, id=i) for i, a, n in NUCLEI_ROWS])
def test_bad_nuclei_command_line_is_refused_and_changes_nothing(ws, line, names):
    _check(ws, line, names)


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="needs Fashion-MNIST (make data)")
@pytest.mark.parametrize(("line", "names"), [pytest.param(a, n, id=i) for i, a, n in SCENES_ROWS + SEGMENTATION_ROWS])
def test_bad_segmentation_command_line_is_refused_and_changes_nothing(ws, line, names):
    _check(ws, line, names)


def test_the_same_options_are_accepted_where_they_apply(ws, tmp_path):
    """The control group: the valid neighbours of the refused rows run (so the refusals are about the rule)."""
    from cli_checks import run_cli

    result = run_cli(["train", *CLS, "--out", str(tmp_path / "ok"), "--augment", "--momentum", "0.8",
                      "--eval-batch-size", "8"])  # fmt: skip
    assert result.code == 0, result.stderr
    resumed = run_cli(["train", "--resume", "--out", str(tmp_path / "ok"), "--epochs", "2", "--threads", "1"])
    assert resumed.code == 0, resumed.stderr
    config = json.loads((tmp_path / "ok" / "last.json").read_text())["config"]
    assert config["epochs"] == 2 and config["momentum"] == 0.8 and config["augment"] is True
