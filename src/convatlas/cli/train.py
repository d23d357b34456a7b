"""``convatlas train``, ``evaluate``, ``predict`` and ``export``: the training engine from the command line.

``train`` runs image classification and segmentation in :mod:`convatlas.train.engine`; text specs (``mr``, ``cr``,
``tsv:PATH``, or ``--task text``) go to ``convatlas.train.text.run(args)`` and ``--task detection`` to
``convatlas.train.detection.run(args)``. Those modules read the namespace: an option left out is ``None`` there, which
means "the module's default".
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import warnings
from pathlib import Path

from convatlas.utils import close_matches

TASKS = ("classification", "segmentation", "detection", "text")
KIM_MODES = ("rand", "static", "non-static", "multichannel")
# Options whose value, when left out, is the engine's default (TrainConfig's): None tells the other engines the same.
_ENGINE_OPTIONS = (
    "epochs",
    "batch_size",
    "accum_steps",
    "lr",
    "opt",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "min_lr",
    "label_smoothing",
    "clip_grad",
    "amp",
    "seed",
    "image_size",
    "data_dir",
    "limit_train",
    "limit_test",
    "eval_batch_size",
    "save_every",
    "log_every",
    "num_workers",
    "device",
    "threads",
)


def parse_model_args(items: list[str] | None) -> dict:
    """``["width_mult=0.5", "drop_rate=0"]`` -> ``{"width_mult": 0.5, "drop_rate": 0}`` (Python literals, else str).

    Raises:
        ValueError: for an item without ``=``.
    """
    values = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg {item!r}: expected key=value, for example width_mult=0.5")
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values


def _dispatch(module: str, function: str, args: argparse.Namespace) -> int:
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise ValueError(f"{module} is not available in this installation; it handles {args.command} here") from None
    return int(getattr(target, function)(args) or 0)


def _train(args: argparse.Namespace) -> int:
    from convatlas.data import is_text_spec

    args.model_args = parse_model_args(args.model_arg)
    if args.task == "detection":
        return _dispatch("convatlas.train.detection", "run", args)
    if args.task == "text" or (args.data and is_text_spec(args.data)):
        return _dispatch("convatlas.train.text", "run", args)

    from convatlas.train import TrainConfig, train

    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run folder to continue")
        config = TrainConfig(model=args.model or "", data=args.data or "", out=args.out)
    else:
        missing = [f"--{n}" for n in ("model", "data") if not getattr(args, n)]
        if missing:
            raise ValueError(f"train: {' and '.join(missing)} required (see `convatlas models` for model names)")
        kind = args.data.split(":", 1)[0]
        config = TrainConfig(model=args.model, data=args.data, out=args.out or f"runs/{args.model}-{kind}")
        for name in _ENGINE_OPTIONS:
            value = getattr(args, name)
            if value is not None:
                setattr(config, name, value)
        config.model_args = args.model_args
        config.task = args.task
        config.channels_last, config.compile = args.channels_last, args.compile
        config.deterministic, config.augment = args.deterministic, args.augment
    result = train(config, resume=args.resume)
    print(f"run folder: {result['out']} ({result['seconds']:.0f} s)")
    if "test_miou" in result:
        print(f"test pixel accuracy: {result['test_acc']:.4f}")
        print(f"test mIoU: {result['test_miou']:.4f}")
    else:
        print(f"test accuracy: {result['test_acc']:.4f}")
    return 0


def _checkpoint_meta(path: str) -> dict:
    from convatlas.train.checkpoint import CheckpointError, resolve_checkpoint

    json_path = resolve_checkpoint(path)
    try:
        return json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {json_path} is corrupted (not valid JSON: {err})") from None


def _evaluate(args: argparse.Namespace) -> int:
    if _checkpoint_meta(args.checkpoint).get("task") == "detection":
        return _dispatch("convatlas.train.detection", "evaluate", args)
    from convatlas.data import build_dataset
    from convatlas.train import evaluate, load_model

    model, meta = load_model(args.checkpoint, tag=args.which, device=args.device)
    config = meta["config"]
    data = args.data or config["data"]
    dataset = build_dataset(data, split=args.split, data_dir=args.data_dir or config["data_dir"], limit=args.limit)
    if dataset.num_classes != meta["num_classes"] or dataset.in_channels != meta["in_channels"]:
        raise ValueError(
            f"--data {data}: {dataset.num_classes} classes x {dataset.in_channels} channels, the checkpoint's model "
            f"has {meta['num_classes']} x {meta['in_channels']}"
        )
    result = evaluate(model, dataset, meta=meta, batch_size=args.batch_size, device=model_device(model))
    print(f"{meta['model']} (epoch {meta['epoch']}) on {data} {args.split} ({len(dataset)} items): "
          f"loss {result['loss']:.4f}")  # fmt: skip
    cm = result["cm"]
    per_class = cm.diag().double() / cm.sum(1).clamp(min=1)
    names = meta["classes"]
    print("per class: " + ", ".join(f"{names[i]} {per_class[i]:.3f}" for i in range(len(names))))
    if meta["task"] == "segmentation":
        print(f"{args.split} pixel accuracy: {result['acc']:.4f}")
        print(f"{args.split} mIoU: {result['miou']:.4f}")
    else:
        print(f"{args.split} accuracy: {result['acc']:.4f}")
    return 0


def model_device(model):
    return next(model.parameters()).device


def _predict(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import v2

    from convatlas.train import load_model, prepare_inputs
    from convatlas.train.plots import mask_to_png

    if _checkpoint_meta(args.checkpoint).get("task") == "detection":
        raise ValueError("predict: detection checkpoints are predicted by `convatlas evaluate` (boxes and mAP)")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    model, meta = load_model(args.checkpoint, tag=args.which, device=args.device)
    height, width = meta["data_size"]
    out_dir = Path(args.out_dir)
    for name in args.images:
        try:
            with Image.open(name) as im:
                image = im.convert("RGB" if meta["in_channels"] == 3 else "L")
        except FileNotFoundError:
            raise FileNotFoundError(f"predict: image {name} does not exist") from None
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"predict: image {name} is unreadable ({err})") from None
        original = (image.height, image.width)
        x = v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True)
        x = v2.functional.resize(x, [height, width], antialias=True).as_subclass(torch.Tensor)[None]
        x = prepare_inputs(
            x, mean=meta["mean"], std=meta["std"], image_size=meta["image_size"], device=model_device(model)
        )
        with torch.no_grad():
            logits = model(x).float()
        if meta["task"] == "segmentation":
            logits = torch.nn.functional.interpolate(logits, size=original, mode="bilinear", align_corners=False)
            mask = logits.argmax(1)[0].cpu()
            out_dir.mkdir(parents=True, exist_ok=True)
            path = mask_to_png(mask, out_dir / f"{Path(name).stem}.mask.png")
            counts = torch.bincount(mask.flatten(), minlength=meta["num_classes"])
            shares = ", ".join(
                f"{meta['classes'][c]} {counts[c] / mask.numel():.1%}" for c in counts.argsort(descending=True)[:4]
            )
            print(f"{name}: mask {path} ({mask.shape[1]}x{mask.shape[0]}); pixels: {shares}")
        else:
            probs = logits.softmax(1)[0].cpu()
            top = probs.topk(min(args.top_k, probs.numel()))
            ranked = ", ".join(f"{meta['classes'][i]} {p:.4f}" for p, i in zip(top.values, top.indices, strict=True))
            print(f"{name}: {ranked}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from convatlas.train import load_model

    if _checkpoint_meta(args.checkpoint).get("task") == "detection":
        raise ValueError("export: detection checkpoints cannot be exported to ONNX here")
    model, meta = load_model(args.checkpoint, tag=args.which, device="cpu")
    side = meta["image_size"]
    size = (side, side) if side else tuple(meta["data_size"])
    x = torch.rand(2, meta["in_channels"], *size)
    out = Path(args.onnx)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is not the default any more
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(out),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=args.opset,
            dynamo=False,
        )
    import onnx

    proto = onnx.load(str(out))
    info = {"convatlas_model": meta["model"], "task": meta["task"], "classes": json.dumps(meta["classes"])}
    info.update({"mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"])})
    for key, value in info.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (ours,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    diff = float(np.abs(ours - expected).max())
    shape = f"image[N, {meta['in_channels']}, {size[0]}, {size[1]}]"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, opset {args.opset}): input {shape} normalised with "
          f"mean {meta['mean']} std {meta['std']}")  # fmt: skip
    print(f"onnxruntime vs PyTorch on 2 random images: max |difference| {diff:.2e}")
    if diff > 1e-3:
        raise ValueError(f"export: onnxruntime disagrees with PyTorch by {diff:.2e} (> 1e-3)")
    return 0


def _choice(allowed: tuple[str, ...], option: str):
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{option} {text!r}{close_matches(text, allowed)} (one of {allowed})")
        return text

    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a zoo model on a dataset",
        description="Train a zoo model. Image sets use the engine in convatlas.train; text sets and --task detection "
        "go to their own engines. Options left out take each engine's defaults.",
    )
    p.add_argument("--model", help="a registered model (`convatlas models`)")
    p.add_argument("--data", help="fashion-mnist, mnist5k, imagefolder:DIR, segfolder:IMAGES:MASKS, fashion-scenes, "
                   "mr, cr, tsv:PATH")  # fmt: skip
    p.add_argument("--out", help="the run folder (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--task", type=_choice(TASKS, "--task"), help="default: the data's")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="builder keyword, repeatable")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="the global batch (all processes)")
    p.add_argument("--accum-steps", type=int, help="gradient accumulation micro-batches per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--opt", help="sgd or adamw (text: adadelta or adamw)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    p.add_argument("--amp", help="auto (bf16 on CUDA), none, bf16, fp16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume)")
    p.add_argument("--image-size", type=int, help="resize inputs to this side")
    p.add_argument("--augment", action="store_true", help="random flips and shifts")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--limit-train", type=int, help="use only N training items (spread over the set)")
    p.add_argument("--limit-test", type=int, help="use only N test items (spread over the set)")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--save-every", type=int, help="also checkpoint every N steps (mid-epoch resume)")
    p.add_argument("--log-every", type=int, help="a metrics.jsonl record every N steps")
    p.add_argument("--num-workers", type=int, help="DataLoader workers for folder datasets")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads (0: torch's default)")
    p.add_argument("--mode", type=_choice(KIM_MODES, "--mode"), help="text: Kim CNN embedding mode")
    p.add_argument("--folds", type=int, help="text: k of the k-fold cross-validation")
    p.add_argument("--max-folds", type=int, help="text: run only the first folds")
    p.add_argument("--backbone", help="detection: the backbone model")
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on a test split")
    p.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint's JSON")
    p.add_argument("--which", choices=("best", "last"), help="in a run folder (default: best, else last)")
    p.add_argument("--data", help="default: the training data")
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--limit", type=int, help="only N items (spread over the set)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser("predict", help="top-k classes (or a mask PNG) for images")
    p.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint's JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--which", choices=("best", "last"))
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--out-dir", default="predictions", help="segmentation: where the mask PNGs go")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_predict)

    p = subparsers.add_parser("export", help="export a checkpoint to ONNX (checked with onnxruntime)")
    p.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint's JSON")
    p.add_argument("--onnx", required=True, help="the output .onnx file")
    p.add_argument("--which", choices=("best", "last"))
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(handler=_export)
