"""``convatlas train``, ``evaluate``, ``predict`` and ``export``: the training engine from the command line.

``train`` builds one :class:`~convatlas.train.TrainConfig` from the options the user typed (an option left out is the
task's default) and calls :func:`~convatlas.train.fit` (text: :func:`~convatlas.train.cross_validate`). With
``--resume`` the saved configuration is used and the typed options are applied to it; the engine refuses those that
may not change. Library errors name configuration fields; :func:`user_message` turns them into options here.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import json
import re
import warnings
from pathlib import Path

from convatlas.cli import add_threads_option
from convatlas.errors import InputError
from convatlas.utils import close_matches

TASKS = ("classification", "segmentation", "detection", "text")
# The options that become TrainConfig fields: (option, type, help). Every one defaults to None ("not typed").
CONFIG_OPTIONS = (
    ("--epochs", int, "passes over the training set (text: over each fold's)"),
    ("--batch-size", int, "the global batch (all processes and accumulation steps)"),
    ("--accum-steps", int, "gradient accumulation: micro-batches per step"),
    ("--lr", float, "peak learning rate (default: sgd 0.1, adamw 1e-3, adadelta 1.0)"),
    ("--opt", str, "sgd, adamw or adadelta (default: the task's)"),
    ("--momentum", float, "SGD momentum (default 0.9)"),
    ("--weight-decay", float, "never on biases and norm weights"),
    ("--schedule", str, "cosine or constant (after the warm-up)"),
    ("--warmup-epochs", float, "linear warm-up from lr/10"),
    ("--min-lr", float, "the cosine schedule's final rate"),
    ("--label-smoothing", float, "of the cross-entropy"),
    ("--clip-grad", float, "max gradient norm (0: off)"),
    ("--amp", str, "auto (bf16 on CUDA), none, bf16 or fp16"),
    ("--channels-last", bool, "channels-last memory format"),
    ("--compile", bool, "torch.compile the model (classification, segmentation)"),
    ("--seed", int, "seeds initialisation, data order, augmentation, folds"),
    ("--deterministic", bool, "deterministic algorithms"),
    ("--image-size", int, "resize image inputs to this side (classification, segmentation)"),
    ("--augment", bool, "random flips and shifts; masks and boxes move with the images"),
    ("--data-dir", str, "where the dataset files are"),
    ("--limit-train", int, "use only N training items (sentences for text), spread over the set"),
    ("--limit-test", int, "use only N test items, spread over the set"),
    ("--eval-batch-size", int, "the evaluation batch"),
    ("--save-every", int, "also checkpoint every N steps (mid-epoch resume)"),
    ("--log-every", int, "a metrics.jsonl record every N steps"),
    ("--num-workers", int, "DataLoader workers for data decoded per item"),
    ("--device", str, "auto, cpu, cuda or cuda:N"),
    ("--threads", int, "CPU threads (default 0: OMP_NUM_THREADS if set, else all usable cores)"),
    ("--mode", str, "text: rand, static, non-static or multichannel"),
    ("--folds", int, "text: k of the k-fold cross-validation"),
    ("--max-folds", int, "text: run only the first folds"),
    ("--backbone", str, "detection: the zoo image model under the detector"),
    ("--max-proposals", int, "detection: selective-search proposals per image (rcnn, fast_rcnn)"),
    (
        "--loss",
        str,
        "segmentation: cross-entropy (default) or unet-weighted (the U-Net paper's border weights, w0 10, "
        "sigma 5 px; needs instance labels: nuclei)",
    ),
    (
        "--backbone-weights",
        str,
        "detection: start the backbone from a classification run (its folder or checkpoint JSON) of a zoo image "
        "model; --backbone defaults to that model",
    ),
    (
        "--fit-anchors",
        int,
        "detection (faster_rcnn): fit K anchor shapes to the training boxes (k-means on 1 - IoU) "
        "and report the share of boxes each anchor set matches",
    ),
)
_FLAG_OF = {"model_args": "--model-arg", "limit": "--limit", "split": "--split"}


def flag(name: str) -> str:
    """The option of a configuration field: ``lr`` -> ``--lr``, ``model_args`` -> ``--model-arg``."""
    return _FLAG_OF.get(name, "--" + name.replace("_", "-"))


def user_message(err: BaseException) -> str:
    """A library error's message with field names turned into options (``ConfigError``'s field, and every
    `` `field` `` the message quotes)."""
    from convatlas.train import ConfigError
    from convatlas.train.config import TrainConfig

    text = f"{flag(err.field)} {err.detail}" if isinstance(err, ConfigError) else str(err)
    lead = re.match(r"([a-z_]+) (?=')", text)  # the data layer's "data 'SPEC': ..." names its argument first
    if lead and lead.group(1) in TrainConfig.__dataclass_fields__:
        text = flag(lead.group(1)) + text[lead.end(1) :]
    return re.sub(r"`([a-z_]+)`", lambda m: flag(m.group(1)), text)


def reports_options(handler):
    """Run a command handler; re-raise its value errors with the options the user typed in place of field names."""

    @functools.wraps(handler)
    def run(args):
        try:
            return handler(args)
        except ValueError as err:
            message = user_message(err)
            if message == str(err):
                raise
            raise InputError(message) from None

    return run


def parse_model_args(items: list[str] | None) -> dict:
    """``["width_mult=0.5", "drop_rate=0"]`` -> ``{"width_mult": 0.5, "drop_rate": 0}`` (Python literals, else str).

    Raises:
        ValueError: for an item without ``=`` or a key given twice.
    """
    values = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputError(f"--model-arg {item!r}: expected key=value, for example width_mult=0.5")
        if key in values:
            raise InputError(f"--model-arg {key}: given twice")
        try:
            values[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            values[key] = text.strip()
    return values


def _typed_config(args) -> dict:
    fields = {opt[2:].replace("-", "_") for opt, _, _ in CONFIG_OPTIONS} | {"model", "data", "out", "task"}
    typed = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    if args.model_arg is not None:
        typed["model_args"] = parse_model_args(args.model_arg)
    return typed


@reports_options
def _train(args) -> int:
    from convatlas.models import model_info
    from convatlas.train import TrainConfig, TrainingInterrupted, cross_validate, fit, run_config

    typed = _typed_config(args)
    if args.resume:
        if not args.out:
            raise InputError("--resume needs --out DIR, the run folder to continue")
        config = dataclasses.replace(run_config(args.out), **typed)
    else:
        missing = [f"--{n}" for n in ("model", "data") if n not in typed]
        if missing:
            raise InputError(f"train: {' and '.join(missing)} required (see `convatlas models` for model names)")
        typed.setdefault("out", f"runs/{args.model}-{args.data.split(':', 1)[0]}")
        config = TrainConfig(**typed)
    text = model_info(config.model).task == "text"
    try:
        if text:
            return _report_cv(cross_validate(config, resume=args.resume, overwrite=args.overwrite))
        return _report_run(fit(config, resume=args.resume, overwrite=args.overwrite))
    except TrainingInterrupted as stop:
        where = f"; checkpoint {stop.checkpoint}" if stop.checkpoint else ""
        print(f"convatlas train: stopped by signal {stop.signum} at epoch {stop.progress.epoch + 1} step "
              f"{stop.progress.step}{where}; continue with --resume --out {config.out}")  # fmt: skip
        return 128 + stop.signum


def _report_run(result) -> int:
    print(f"run folder: {result.out} ({result.seconds:.0f} s)")
    for line in metric_lines(result.task, "test", {k[5:]: v for k, v in result.final.items() if k[:5] == "test_"}):
        print(line)
    return 0


def metric_lines(task: str, split: str, metrics: dict) -> list[str]:
    """The closing lines of a run or an evaluation (the last one is the headline metric)."""

    def show(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    if task == "segmentation":
        lines = [f"{split} pixel accuracy: {show(metrics.get('acc'))}"]
        if "fg_iou" in metrics:
            lines.append(f"{split} foreground IoU: {show(metrics.get('fg_iou'))}, Dice {show(metrics.get('dice'))}")
        if "instance_f1" in metrics:
            lines.append(
                f"{split} instance F1 at IoU 0.5: {show(metrics.get('instance_f1'))} (precision "
                f"{show(metrics.get('instance_precision'))}, recall {show(metrics.get('instance_recall'))})"
            )
        return [*lines, f"{split} mIoU: {show(metrics.get('miou'))}"]
    if task == "detection":
        ms = 1000 * (metrics.get("seconds_per_image") or 0.0)
        return [f"{split} COCO mAP: {show(metrics.get('coco_ap'))}, AP50 {show(metrics.get('coco_ap50'))}, "
                f"AP75 {show(metrics.get('coco_ap75'))}; VOC mAP@0.5 11-point {show(metrics.get('voc_map50_11point'))};"
                f" {ms:.1f} ms/image", f"{split} VOC mAP@0.5: {show(metrics.get('voc_map50'))}"]  # fmt: skip
    return [f"{split} accuracy: {show(metrics.get('acc'))}"]


def _report_cv(result) -> int:
    config = result.config
    spread = f"{100 * result.mean:.2f} +- {100 * (result.std or 0):.2f}" if result.folds else "-"
    print(f"{config['model']} {config['mode']} on {config['data']}: {len(result.folds)} of {config['folds']} folds, "
          f"mean test accuracy {spread} ({result.train_size} sentences, classes {', '.join(result.classes)}, "
          f"vocabulary {result.vocab_size}, GloVe covers {100 * result.glove_coverage:.1f}%)")  # fmt: skip
    print(f"wrote {Path(config['out']) / 'cv_results.json'}")
    return 0


def _check_positive(option: str, value) -> None:
    if value is not None and value < 1:
        raise InputError(f"{option} must be >= 1, got {value}")


@reports_options
def _evaluate(args) -> int:
    from convatlas.files import atomic_write_json, check_output_file
    from convatlas.train.engine import evaluate_checkpoint

    _check_positive("--batch-size", args.batch_size)
    _check_positive("--limit", args.limit)
    if args.json is not None:
        check_output_file(args.json, "--json", overwrite=args.overwrite)
    elif args.overwrite:
        raise InputError("--overwrite replaces an existing --json file; without --json nothing is written")
    found = evaluate_checkpoint(args.checkpoint, tag=args.which, split=args.split, data=args.data, limit=args.limit,
                                batch_size=args.batch_size, device=args.device)  # fmt: skip
    record, metrics = found.record, found.metrics
    where = f"fold {record.fold}, " if record.fold else ""
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("loss", "acc", "miou") and v is not None)
    print(f"{record.model.name} ({where}epoch {record.progress.epoch}) on {found.data} {args.split} ({found.items} "
          f"items)" + (f": {shown}" if shown else ""))  # fmt: skip
    if record.task == "classification" and found.confusion is not None:
        recall = found.confusion.diag().double() / found.confusion.sum(1).clamp(min=1)
        print("per class: " + ", ".join(f"{name} {r:.3f}" for name, r in zip(record.classes, recall, strict=True)))
    for line in metric_lines(record.task, args.split, metrics):
        print(line)
    if args.json is not None:
        atomic_write_json(args.json, {"checkpoint": str(args.checkpoint), "split": args.split, "data": found.data,
                                      "items": found.items, "metrics": metrics})  # fmt: skip
        print(f"wrote {args.json}")
    return 0


def _load_image_model(args, command: str):
    from convatlas.train import load_model
    from convatlas.train.checkpoint import read_record
    from convatlas.train.config import IMAGE_TASKS
    from convatlas.utils import resolve_device

    device = resolve_device(getattr(args, "device", "cpu"), "--device")
    record, path = read_record(args.checkpoint, args.which)
    if record.task not in IMAGE_TASKS:
        other = " (use convatlas detect)" if record.task == "detection" else ""
        raise InputError(f"{command}: checkpoint {path} is a {record.task} run; {command} takes classification and "
                         f"segmentation checkpoints{other}")  # fmt: skip
    return load_model(args.checkpoint, tag=args.which, device=device)


@reports_options
def _predict(args) -> int:
    import torch

    from convatlas.files import atomic_write, check_output_dir, check_output_file
    from convatlas.train.images import prepare_inputs, segment_scores
    from convatlas.train.plots import mask_to_png, overlay_png

    _check_positive("--top-k", args.top_k)
    model, record = _load_image_model(args, "predict")
    _refuse_foreign(record, "segmentation", {"--out-dir": args.out_dir, "--overwrite": args.overwrite or None,
                                             "--overlay": args.overlay or None})  # fmt: skip
    _refuse_foreign(record, "classification", {"--top-k": args.top_k})
    top_k = 3 if args.top_k is None else args.top_k
    out_dir = Path("predictions" if args.out_dir is None else args.out_dir)
    if record.task == "segmentation":
        check_output_dir("predictions" if args.out_dir is None else args.out_dir, "--out-dir")
        targets = [out_dir / f"{Path(name).stem}.mask.png" for name in args.images]
        _distinct(targets, args.images, "--out-dir")
        overlays = [out_dir / f"{Path(name).stem}.overlay.png" for name in args.images] if args.overlay else []
        for target in targets + overlays:
            check_output_file(target, "--out-dir", overwrite=args.overwrite)
    # A segmentation network is fully convolutional: it sees each image at its own size (or at --image-size if it
    # was trained so) and gives a mask of that size; a classifier sees the training data's size.
    segment = record.task == "segmentation"
    images = [_read_image(name, record.inputs, resize=not segment) for name in args.images]
    spec = record.inputs
    for name, (raw, original) in zip(args.images, images, strict=True):
        x = prepare_inputs(raw, mean=spec.mean, std=spec.std, image_size=spec.image_size,
                           device=next(model.parameters()).device)  # fmt: skip
        if segment:
            mask = segment_scores(model, x, original).argmax(1)[0].cpu()
            out_dir.mkdir(parents=True, exist_ok=True)
            path = atomic_write(out_dir / f"{Path(name).stem}.mask.png", lambda tmp, m=mask: mask_to_png(m, tmp))
            if args.overlay:
                atomic_write(out_dir / f"{Path(name).stem}.overlay.png",
                             lambda tmp, m=mask, im=raw[0]: overlay_png(im, m, tmp))  # fmt: skip
            counts = torch.bincount(mask.flatten(), minlength=len(record.classes))
            shares = ", ".join(f"{record.classes[c]} {counts[c] / mask.numel():.1%}"
                               for c in counts.argsort(descending=True)[:4])  # fmt: skip
            print(f"{name}: mask {path} ({mask.shape[1]}x{mask.shape[0]}); pixels: {shares}")
        else:
            with torch.no_grad():
                probs = model(x).float().softmax(1)[0].cpu()
            top = probs.topk(min(top_k, probs.numel()))
            ranked = ", ".join(f"{record.classes[i]} {p:.4f}" for p, i in zip(top.values, top.indices, strict=True))
            print(f"{name}: {ranked}")
    return 0


def _refuse_foreign(record, task: str, options: dict) -> None:
    """Refuse the options (given: not ``None``) that only apply to checkpoints of ``task``."""
    given = [name for name, value in options.items() if value is not None]
    if given and record.task != task:
        raise InputError(f"{given[0]} applies to {task} checkpoints; this one is a {record.task} run")


def _distinct(targets: list[Path], sources: list[str], option: str) -> None:
    seen: dict[Path, str] = {}
    for target, source in zip(targets, sources, strict=True):
        if target in seen:
            raise InputError(f"{option}: {seen[target]} and {source} would both be written to {target}")
        seen[target] = source


def _read_image(name: str, spec, *, resize: bool = True):
    """``(Tensor[1, C, H, W] in [0, 1] at the training data's size (``resize``) or its own, (H, W) of the file)``."""
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import v2

    if not Path(name).is_file():
        raise FileNotFoundError(f"IMAGE {name}: no such file")
    try:
        with Image.open(name) as im:
            image = im.convert("RGB" if spec.in_channels == 3 else "L")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise InputError(f"IMAGE {name}: not a readable image ({err})") from None
    x = v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True)
    if resize:
        x = v2.functional.resize(x, list(spec.data_size), antialias=True)
    x = x.as_subclass(torch.Tensor)[None]
    return x, (image.height, image.width)


ONNX_OPSETS = (7, 20)  # the TorchScript exporter's range in torch 2.4 to 2.14


@reports_options
def _export(args) -> int:
    from convatlas.files import atomic_write, check_output_file

    if not ONNX_OPSETS[0] <= args.opset <= ONNX_OPSETS[1]:
        raise InputError(f"--opset must be in {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}, got {args.opset}")
    out = check_output_file(args.onnx, "--onnx", overwrite=args.overwrite)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"--onnx {out}: the name must end in .onnx, got {out.suffix!r}")
    model, record = _load_image_model(args, "export")
    diff = []
    atomic_write(out, lambda tmp: diff.append(_export_onnx(model, record, tmp, args.opset)))
    spec = record.inputs
    size = (spec.image_size, spec.image_size) if spec.image_size else tuple(spec.data_size)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, opset {args.opset}): input image[N, {spec.in_channels}, "
          f"{size[0]}, {size[1]}] normalised with mean {spec.mean} std {spec.std}")  # fmt: skip
    print(f"onnxruntime vs PyTorch on 2 random images: max |difference| {diff[0]:.2e}")
    return 0


def _export_onnx(model, record, path: Path, opset: int) -> float:
    """Export to ``path``, add the metadata, and check the file with onnxruntime; returns the largest difference."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    spec = record.inputs
    size = (spec.image_size, spec.image_size) if spec.image_size else tuple(spec.data_size)
    x = torch.rand(2, spec.in_channels, *size)
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is not the default any more
        warnings.simplefilter("ignore")
        torch.onnx.export(model.cpu(), (x,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)  # fmt: skip
    proto = onnx.load(str(path))
    info = {"convatlas_model": record.model.name, "task": record.task, "classes": json.dumps(record.classes),
            "mean": json.dumps(spec.mean), "std": json.dumps(spec.std)}  # fmt: skip
    for key, value in info.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ours,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        diff = float(np.abs(ours - model(x).numpy()).max())
    if diff > 1e-3:
        raise ValueError(f"export: onnxruntime disagrees with PyTorch by {diff:.2e} (> 1e-3); nothing was written")
    return diff


def _choice(allowed: tuple[str, ...], option: str):
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{option} {text!r}{close_matches(text, allowed)} (one of "
                                             f"{', '.join(allowed)})")  # fmt: skip
        return text

    return parse


def _add_config_options(p) -> None:
    for option, kind, text in CONFIG_OPTIONS:
        if kind is bool:
            p.add_argument(option, action="store_true", default=None, help=text)
        else:
            p.add_argument(option, type=kind, help=text)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a zoo model on a dataset (any task)",
        description="Train a zoo model: classification, segmentation, text (k-fold cross-validation) or detection; "
        "the model decides the task. Options left out take the task's defaults; an option that does not apply to "
        "the task is refused.",
    )
    p.add_argument("--model", help="a registered model (`convatlas models`)")
    p.add_argument("--data", help="fashion-mnist, mnist5k, imagefolder:DIR, segfolder:IMAGES:MASKS, "
                   "fashion-scenes[:key=value,...], mr, cr, tsv:PATH, coco:DIR, voc:DIR")  # fmt: skip
    p.add_argument("--out", help="the run folder (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run files in --out")
    p.add_argument("--task", type=_choice(TASKS, "--task"), help="check the model's task")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="builder keyword, repeatable")
    _add_config_options(p)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint of any task")
    p.add_argument("--checkpoint", required=True, help="a run folder (text: a fold-NN folder) or a checkpoint's JSON")
    p.add_argument("--which", choices=("best", "last"), help="in a run folder (default: best, else last)")
    p.add_argument("--data", help="other data of the same task and classes (default: the training data)")
    p.add_argument("--split", choices=("train", "dev", "test"), default="test", help="dev: text folds only")
    p.add_argument("--limit", type=int, help="only N items (spread over the split)")
    p.add_argument("--batch-size", type=int, help="default: the run's evaluation batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_threads_option(p)
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser("predict", help="top-k classes (or a mask PNG) for images")
    p.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint's JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--which", choices=("best", "last"))
    p.add_argument("--top-k", type=int, help="classification: the classes shown per image (default 3)")
    p.add_argument("--out-dir", help="segmentation: where the mask PNGs go (default predictions)")
    p.add_argument("--overlay", action="store_true", help="segmentation: also write IMAGE.overlay.png, the classes "
                   "coloured over the image")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="segmentation: replace existing mask and overlay PNGs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_option(p)
    p.set_defaults(handler=_predict)

    p = subparsers.add_parser("export", help="export a checkpoint to ONNX (checked with onnxruntime)")
    p.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint's JSON")
    p.add_argument("--onnx", required=True, help="the output .onnx file")
    p.add_argument("--which", choices=("best", "last"))
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    add_threads_option(p)
    p.set_defaults(handler=_export)
