"""Detection operators, ours vs torchvision.ops in the same run: NMS, batched NMS, RoI align, RoI pool.

Prints markdown tables with the ratio torchvision time / our time (above 1.0: we are faster) and checks that both
give the same answer. Every backend of ours that can run on the device is timed, chosen by the operators' ``backend``
argument (:func:`convatlas.ops.backends` lists them).

    .venv/bin/python benchmarks/ops.py                  # CPU, and CUDA when present
    .venv/bin/python benchmarks/ops.py --device cuda    # one device
    .venv/bin/python benchmarks/ops.py --quick          # tiny sizes and few repeats: a smoke run of every case
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torchvision

from convatlas.ops import backends
from convatlas.ops import boxes as B
from convatlas.ops import roi as R

IMAGE = 1000.0  # side of the square image the boxes live in


def uniform_boxes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes anywhere in the image, sides 8..128 px, uniform scores."""
    xy = torch.rand(n, 2, generator=gen) * IMAGE
    wh = 8 + torch.rand(n, 2, generator=gen) * 120
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=gen)


def clustered_boxes(n: int, gen: torch.Generator, objects: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector-like output: jittered copies of a few object boxes (sides 24..300 px), higher scores near the object."""
    xy = torch.rand(objects, 2, generator=gen) * IMAGE * 0.8
    wh = 24 + torch.rand(objects, 2, generator=gen) * 276
    objs = torch.cat([xy, xy + wh], dim=1)
    pick = torch.randint(0, objects, (n,), generator=gen)
    size = (objs[pick, 2:] - objs[pick, :2]).repeat(1, 2)
    noise = torch.randn(n, 4, generator=gen) * 0.15
    boxes = objs[pick] + noise * size
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.sigmoid(3 - 10 * noise.abs().mean(dim=1) + 0.3 * torch.randn(n, generator=gen))
    return boxes, scores


# milliseconds of repeated runs per side and case (QUICK in a smoke run)
BUDGET_MS, QUICK_BUDGET_MS = 500.0, 5.0
budget_ms = BUDGET_MS


def timeit(ref: Callable[[], object], ours: Callable[[], object], repeats: int, sync: bool = False):
    """Best wall times (ms) of ``ref`` and ``ours`` over interleaved runs, after one warm-up each.

    Interleaving and taking the minimum keep the ratio honest on a machine loaded by other jobs: both sides see
    the same background load, and the minimum is the run least disturbed by it. Fast calls get more runs (about
    ``budget_ms`` per side, at most 300, each side counted on its own) so that a scheduler time slice does not
    decide the result.
    """

    def once(fn: Callable[[], object]) -> float:
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    best = [once(ref), once(ours)]
    runs = [max(repeats, min(300, int(budget_ms / max(t, 1e-3)))) for t in best]
    for i in range(max(runs)):
        for side, fn in enumerate((ref, ours)):
            if i < runs[side]:
                best[side] = min(best[side], once(fn))
    return best[0], best[1]


def row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def available(op: str, device: str) -> tuple[str, ...]:
    """Our backends that can run ``op`` on ``device``, ``"auto"``'s pick first."""
    (report,) = [r for r in backends(device) if r.op == op]
    return (report.auto, *(b for b in report.available if b != report.auto))


# Each bench_* function yields one dict per measurement: "op", "case", "backend", "pass", "torchvision_ms",
# "ours_ms" and what that table adds ("kept", "same kept set", "max abs diff"). main() prints them as tables;
# benchmarks/gpu.py collects them.


def bench_nms(device: str, sizes: list[int], repeats: int) -> Iterator[dict]:
    sync = device == "cuda"
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        for name, make in (("uniform", uniform_boxes), ("clustered", clustered_boxes)):
            boxes, scores = (t.to(device) for t in make(n, gen))
            ref = torchvision.ops.nms(boxes, scores, 0.5)
            for backend in available("nms", device):  # the public function, with its checks, is timed
                ours = B.nms(boxes, scores, 0.5, backend=backend)
                assert torch.equal(ref, ours), f"NMS differs from torchvision at n={n} ({name}, {backend})"
                t_ref, t_ours = timeit(
                    lambda b=boxes, s=scores: torchvision.ops.nms(b, s, 0.5),
                    lambda b=boxes, s=scores, k=backend: B.nms(b, s, 0.5, backend=k),
                    repeats,
                    sync,
                )
                yield {"op": "nms", "case": f"{n} {name} boxes", "boxes": n, "distribution": name, "backend": backend,
                       "pass": "forward", "kept": len(ref), "torchvision_ms": t_ref, "ours_ms": t_ours}  # fmt: skip


def bench_batched_nms(device: str, n: int, repeats: int) -> Iterator[dict]:
    sync = device == "cuda"
    gen = torch.Generator().manual_seed(1)
    boxes, scores = clustered_boxes(n, gen)
    idxs = torch.randint(0, 80, (n,), generator=gen)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    ref = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    for backend in available("batched_nms", device):
        ours = B.batched_nms(boxes, scores, idxs, 0.5, backend=backend)
        # same kept set (the order of equal scores is unspecified in torchvision; ours breaks ties by index)
        same = set(ref.tolist()) == set(ours.tolist())
        t_ref, t_ours = timeit(
            lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
            lambda k=backend: B.batched_nms(boxes, scores, idxs, 0.5, backend=k),
            repeats,
            sync,
        )
        yield {"op": "batched_nms", "case": f"{n} clustered boxes, 80 classes", "backend": backend, "pass": "forward",
               "same kept set": same, "torchvision_ms": t_ref, "ours_ms": t_ours}  # fmt: skip


def bench_roi(device: str, repeats: int, quick: bool) -> Iterator[dict]:
    """RoI align and RoI pool on a large map (stride 16 of 800 x 1088), then RoI align as a detector head calls it."""
    sync = device == "cuda"
    gen = torch.Generator().manual_seed(2)
    n, c, h, w, k = (2, 16, 12, 17, 32) if quick else (2, 256, 50, 68, 512)  # full: a stride-16 map of 800 x 1088
    x = torch.randn(n, c, h, w, generator=gen).to(device)
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([w * 15.0, h * 14.0])
    wh = 16 + torch.rand(k, 2, generator=gen) * 300
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=gen).float(), xy, xy + wh], dim=1).to(device)
    where = f"{k} boxes on a {n} x {c} x {h} x {w} map"
    title = f"RoI operators on {device}: {where}, 7 x 7 output, scale 1/16"
    cases = [
        ("roi_align (sampling 2)", "roi_align", R.roi_align, torchvision.ops.roi_align, (7, 1 / 16, 2, True)),
        ("roi_align (adaptive)", "roi_align", R.roi_align, torchvision.ops.roi_align, (7, 1 / 16, -1, False)),
        ("roi_pool", "roi_pool", R.roi_pool, torchvision.ops.roi_pool, (7, 1 / 16)),
    ]
    yield from roi_rows(device, x, rois, cases, repeats, sync, where, title)
    # The call the Faster R-CNN head makes in benchmarks/detection.py: mobilenet_v3_small's stride-16 map of a batch
    # of sixteen 128 px scenes (48 channels, 8 x 8) and 150 proposals per image, given as a list (its fast path).
    b, per_image = (2, 20) if quick else (16, 150)
    x = torch.randn(b, 48, 8, 8, generator=gen).to(device)
    xy = torch.rand(b, per_image, 2, generator=gen) * 110
    boxes = [torch.cat([p, p + 4 + torch.rand(per_image, 2, generator=gen) * 90], dim=1).to(device) for p in xy]
    where = f"detector head: {b} x {per_image} boxes (list), {b} x 48 x 8 x 8 map"
    title = f"RoI align on {device} as a detector head calls it: {b} x {per_image} boxes (list), {b} x 48 x 8 x 8 map"
    cases = [
        ("roi_align (sampling 2, aligned)", "roi_align", R.roi_align, torchvision.ops.roi_align, (7, 1 / 16, 2, True))
    ]
    yield from roi_rows(device, x, boxes, cases, repeats, sync, where, title)


def roi_rows(device: str, x, rois, cases, repeats: int, sync: bool, where: str, title: str) -> Iterator[dict]:
    for name, op, ours_fn, ref_fn, args in cases:
        for backend in available(op, device):
            diff = (ours_fn(x, rois, *args, backend=backend) - ref_fn(x, rois, *args)).abs().max().item()
            t_ref, t_ours = timeit(
                lambda f=ref_fn, a=args: f(x, rois, *a),
                lambda f=ours_fn, a=args, k=backend: f(x, rois, *a, backend=k),
                repeats,
                sync,
            )
            common = {"op": name, "case": where, "title": title, "backend": backend}
            yield {**common, "pass": "forward", "torchvision_ms": t_ref, "ours_ms": t_ours, "max abs diff": diff}
            xg = x.clone().requires_grad_()

            def fwd_bwd(f, a=args, xg=xg, **kw):
                f(xg, rois, *a, **kw).sum().backward()

            t_ref, t_ours = timeit(
                lambda f=ref_fn: fwd_bwd(f), lambda f=ours_fn, k=backend: fwd_bwd(f, backend=k), repeats, sync
            )
            yield {**common, "pass": "forward + backward", "torchvision_ms": t_ref, "ours_ms": t_ours}


def print_nms(rows: Iterable[dict], device: str) -> None:
    print(f"\n### NMS on {device} (IoU threshold 0.5)\n")
    print(row(["boxes", "distribution", "kept", "torchvision ms", "ours ms", "ratio", "backend"]))
    print(row(["---:", "---", "---:", "---:", "---:", "---:", "---"]))
    for r in rows:
        t_ref, t_ours = r["torchvision_ms"], r["ours_ms"]
        cells = [r["boxes"], r["distribution"], r["kept"], f"{t_ref:.2f}", f"{t_ours:.2f}", f"{t_ref / t_ours:.1f}x"]
        print(row([*cells, r["backend"]]))


def print_batched_nms(rows: Iterable[dict], device: str, n: int) -> None:
    print(f"\n### batched NMS on {device}: {n} clustered boxes, 80 classes\n")
    print(row(["backend", "torchvision ms", "ours ms", "ratio", "same kept set"]))
    print(row(["---", "---:", "---:", "---:", "---"]))
    for r in rows:
        t_ref, t_ours = r["torchvision_ms"], r["ours_ms"]
        print(row([r["backend"], f"{t_ref:.2f}", f"{t_ours:.2f}", f"{t_ref / t_ours:.1f}x", r["same kept set"]]))


def print_roi(rows: Iterable[dict]) -> None:
    title = None
    for r in rows:
        if r["title"] != title:
            title = r["title"]
            print(f"\n### {title}\n")
            print(row(["op", "backend", "pass", "torchvision ms", "ours ms", "ratio", "max abs diff"]))
            print(row(["---", "---", "---", "---:", "---:", "---:", "---:"]))
        t_ref, t_ours = r["torchvision_ms"], r["ours_ms"]
        diff = f"{r['max abs diff']:.1e}" if "max abs diff" in r else ""
        print(row([r["op"], r["backend"], r["pass"], f"{t_ref:.2f}", f"{t_ours:.2f}", f"{t_ref / t_ours:.2f}x", diff]))


# Ground-truth-like boxes on scikit-image's astronaut (x1, y1, x2, y2): face, shuttle, helmet, mission patch, flag.
ASTRONAUT_OBJECTS = [
    (150, 20, 300, 200),
    (360, 0, 480, 290),
    (285, 335, 512, 512),
    (135, 345, 215, 415),
    (0, 0, 95, 480),
]


def nms_figure(path: str, per_object: int = 25, threshold: float = 0.5) -> None:
    """Draw NMS before/after on ``skimage.data.astronaut()``: jittered copies of a few object boxes, score falling
    with the jitter, as a detector would produce them."""
    import matplotlib.pyplot as plt
    from skimage import data

    gen = torch.Generator().manual_seed(0)
    objs = torch.tensor(ASTRONAUT_OBJECTS, dtype=torch.float32)
    size = (objs[:, 2:] - objs[:, :2]).repeat(1, 2)
    noise = torch.randn(len(objs), per_object, 4, generator=gen) * 0.12
    boxes = (objs[:, None] + noise * size[:, None]).reshape(-1, 4).clamp(0, 512)
    scores = torch.exp(-8 * noise.abs().mean(dim=2)).reshape(-1)
    keep = B.nms(boxes, scores, threshold)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, threshold))
    image = data.astronaut()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
    for ax, idx, title in (
        (axes[0], torch.arange(len(boxes)), f"before: {len(boxes)} boxes"),
        (axes[1], keep, f"after nms(iou_threshold={threshold}): {len(keep)} boxes"),
    ):
        ax.imshow(image)
        for i in idx.tolist():
            x1, y1, x2, y2 = boxes[i].tolist()
            s = float(scores[i])
            ax.add_patch(
                plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.6 + 1.6 * s, color=plt.cm.plasma(s))
            )
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}: {len(boxes)} boxes -> {len(keep)} kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="default: CPU, and CUDA if any")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run of every case)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both libraries' kernels are serial)")
    parser.add_argument("--only", choices=["nms", "roi"], help="run one group")
    parser.add_argument("--figure", metavar="PNG", help="only draw NMS before/after on the astronaut image to PNG")
    args = parser.parse_args(argv)
    if args.figure:
        nms_figure(args.figure)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    global budget_ms
    budget_ms = QUICK_BUDGET_MS if args.quick else BUDGET_MS
    repeats = 1 if args.quick else 7
    sizes, batched = ([200, 1000], 500) if args.quick else ([1000, 5000, 20000], 5000)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {cpu}, {torch.get_num_threads()} threads")
    print(f"CUDA device: {gpu}")
    devices = [args.device] if args.device != "all" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for report in backends(device):
            print(f"- {report}")
        if args.only in (None, "nms"):
            print_nms(bench_nms(device, sizes, repeats), device)
            print_batched_nms(bench_batched_nms(device, batched, repeats), device, batched)
        if args.only in (None, "roi"):
            print_roi(bench_roi(device, repeats, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
