"""Lightweight and dynamic convolution against their alternatives, and sentence models against sequence length.

Run: ``python benchmarks/seqconv.py`` (CUDA when present, else CPU; ``--device cpu`` forces CPU; ``--quick`` runs
every case at tiny sizes, a smoke run).

1. Operators, same run, same inputs (the GPU target setting: B=32, C=1024, T=512, H=16, K=31, bf16; on CPU a
   smaller float32 setting):
   - ``lightweight_conv`` on each backend that can run on the device (``backend="triton"`` and ``"torch"`` on CUDA,
     ``"torch"`` on CPU; see :func:`convatlas.ops.backends`) against a grouped ``F.conv1d`` (cuDNN on CUDA)
     with the per-head kernel repeated over its channels, and against the memory floor: a copy of x (it reads and
     writes the bytes any lightweight conv must);
   - ``dynamic_conv`` against the unfold implementation (fairseq's ``unfold1d``: pad, unfold to ``[B, C, T, K]``,
     weighted sum over K);
   - forward alone and forward + backward.
2. Throughput (sentences/s and tokens/s, inference) of ``kim_cnn``, ``lightconv_classifier`` and
   ``attention_classifier`` for sequence lengths 128 ... 8,192 at a fixed token budget per batch; a PNG plot with
   ``--plot PATH``.

Each ratio is ours / theirs in time, computed in this run.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convatlas.models import create_model  # noqa: E402
from convatlas.ops import backends, dynamic_conv, lightweight_conv  # noqa: E402
from convatlas.utils import set_threads

# seconds of repeated calls per timing (QUICK in a smoke run)
MIN_TIME, QUICK_MIN_TIME = 0.5, 0.01
min_time_s = MIN_TIME


def available(op: str, device: torch.device) -> tuple[str, ...]:
    """Our backends that can run ``op`` on ``device``, ``"auto"``'s pick first."""
    (report,) = [r for r in backends(device) if r.op == op]
    return (report.auto, *(b for b in report.available if b != report.auto))


def timeit(fn, device: torch.device, *, min_time: float | None = None, warmup: int = 3) -> float:
    """Median seconds per call over repeated calls lasting about ``min_time`` in total."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    min_time = min_time_s if min_time is None else min(min_time, min_time_s)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def grouped_conv1d(x, weight, padding_l):
    """The stock alternative: the softmaxed per-head kernel repeated to ``[C, 1, K]``, one grouped conv1d."""
    channels = x.shape[1]
    heads, taps = weight.shape
    w = torch.softmax(weight, dim=-1, dtype=torch.promote_types(weight.dtype, torch.float32)).to(x.dtype)
    w = w.repeat_interleave(channels // heads, dim=0).unsqueeze(1)
    return F.conv1d(F.pad(x, (padding_l, taps - 1 - padding_l)), w, groups=channels)


def unfold_dynamic(x, weight, padding_l):
    """fairseq-style dynamic conv: unfold x to ``[B, C, T, K]`` and sum it against the per-step kernels."""
    batch, channels, steps = x.shape
    heads, taps = weight.shape[1], weight.shape[2]
    w = torch.softmax(weight, dim=2, dtype=torch.promote_types(weight.dtype, torch.float32)).to(x.dtype)  # (B, H, K, T)
    cols = F.pad(x, (padding_l, taps - 1 - padding_l)).unfold(2, taps, 1)  # (B, C, T, K)
    cols = cols.view(batch, heads, channels // heads, steps, taps)
    return torch.einsum("bhctk,bhkt->bhct", cols, w).reshape(batch, channels, steps)


def bench_ops(device: torch.device, dtype: torch.dtype, b: int, c: int, t: int, h: int, k: int) -> list[dict]:
    pad = k // 2
    x = torch.randn(b, c, t, device=device, dtype=dtype, requires_grad=True)
    w_lw = torch.randn(h, k, device=device, requires_grad=True)
    w_dyn = torch.randn(b, h, k, t, device=device, dtype=dtype, requires_grad=True)
    rows = []

    def fwd_bwd(fn, *args):
        def run():
            out = fn(*args)
            out.backward(torch.ones_like(out))

        return run

    def add(op, backend, alt, ours_fn, theirs_fn, pass_name):
        ours, theirs = timeit(ours_fn, device), timeit(theirs_fn, device)
        rows.append(
            {
                "op": op,
                "backend": backend,
                "vs": alt,
                "pass": pass_name,
                "ours_ms": 1e3 * ours,
                "theirs_ms": 1e3 * theirs,
                "speedup": theirs / ours,
            }
        )

    for be in available("lightweight_conv", device):
        lw = functools.partial(lightweight_conv, backend=be)
        # correctness in this run before timing
        torch.testing.assert_close(lw(x, w_lw, pad), grouped_conv1d(x, w_lw, pad), atol=2e-2, rtol=2e-2)
        with torch.no_grad():
            ours = functools.partial(lw, x, w_lw, pad)
            add("lightweight", be, "grouped conv1d", ours, lambda: grouped_conv1d(x, w_lw, pad), "forward")
            add("lightweight", be, "copy of x (memory floor)", ours, lambda: x.clone(), "forward")
        add("lightweight", be, "grouped conv1d", fwd_bwd(lw, x, w_lw, pad), fwd_bwd(grouped_conv1d, x, w_lw, pad),
            "forward+backward")  # fmt: skip
    for be in available("dynamic_conv", device):
        dyn = functools.partial(dynamic_conv, backend=be)
        torch.testing.assert_close(dyn(x, w_dyn, pad), unfold_dynamic(x, w_dyn, pad), atol=2e-2, rtol=2e-2)
        with torch.no_grad():
            ours = functools.partial(dyn, x, w_dyn, pad)
            add("dynamic", be, "unfold", ours, lambda: unfold_dynamic(x, w_dyn, pad), "forward")
        add("dynamic", be, "unfold", fwd_bwd(dyn, x, w_dyn, pad), fwd_bwd(unfold_dynamic, x, w_dyn, pad),
            "forward+backward")  # fmt: skip
    return rows


def bench_models(device: torch.device, lengths: list[int], tokens_per_batch: int, dtype: torch.dtype) -> list[dict]:
    vocab = 20000
    models = {
        "kim_cnn": create_model("kim_cnn", vocab_size=vocab, embed_dim=50, mode="non-static"),
        "lightconv_classifier": create_model("lightconv_classifier", vocab_size=vocab),
        "attention_classifier": create_model("attention_classifier", vocab_size=vocab),
    }
    rows = []
    for name, model in models.items():
        model = model.to(device).eval()
        for steps in lengths:
            batch = max(1, tokens_per_batch // steps)
            tokens = torch.randint(1, vocab, (batch, steps), device=device)
            autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

            def run(model=model, tokens=tokens, autocast=autocast):
                with torch.no_grad(), autocast:
                    model(tokens)

            sec = timeit(run, device, min_time=0.3, warmup=2)
            rows.append(
                {
                    "model": name,
                    "T": steps,
                    "batch": batch,
                    "sentences_per_s": batch / sec,
                    "tokens_per_s": batch * steps / sec,
                }
            )
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["T"], r["tokens_per_s"]) for r in rows if r["model"] == name]
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set(
        xscale="log", yscale="log", xlabel="sequence length T (tokens)", ylabel="tokens / s (inference)", title=title
    )
    lengths = sorted({r["T"] for r in rows})
    ax.set_xticks(lengths, [str(t) for t in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def settings(device: torch.device, quick: bool) -> tuple[torch.dtype, dict, list[int], int]:
    """``(dtype, operator shape, model sequence lengths, tokens per model batch)`` for ``device``: the bf16 target
    setting on CUDA, a smaller float32 one on CPU, tiny sizes when ``quick``."""
    if device.type == "cuda":
        dtype, shape, budget = torch.bfloat16, dict(b=32, c=1024, t=512, h=16, k=31), 65536
    else:
        dtype, shape, budget = torch.float32, dict(b=4, c=256, t=256, h=8, k=31), 8192
    lengths = [128, 256, 512, 1024, 2048, 4096, 8192]
    if quick:
        shape, lengths, budget = dict(b=2, c=32, t=64, h=4, k=7), [64, 128], 512
    return dtype, shape, lengths, budget


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny sizes and short timings (a smoke run of every case)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: every usable core)")
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-ops", action="store_true")
    p.add_argument("--plot", default=None, help="write the throughput plot here (PNG)")
    p.add_argument("--json", default=None, help="write all rows here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    global min_time_s
    min_time_s = QUICK_MIN_TIME if args.quick else MIN_TIME
    set_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    dtype, shape, lengths, budget = settings(device, args.quick)
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} CPU, threads={torch.get_num_threads()}"
    print(f"device: {name}; torch {torch.__version__}; dtype {dtype}; shape {shape}")
    for op in ("lightweight_conv", "dynamic_conv"):
        print(f"  {op}: backends {', '.join(available(op, device))} (auto first)")
    op_rows = [] if args.skip_ops else bench_ops(device, dtype, **shape)
    if op_rows:
        print(f"{'op':12} {'backend':8} {'pass':17} {'vs':26} {'ours ms':>9} {'theirs ms':>10} {'theirs/ours':>12}")
    for r in op_rows:
        print(
            f"{r['op']:12} {r['backend']:8} {r['pass']:17} {r['vs']:26} {r['ours_ms']:9.3f} {r['theirs_ms']:10.3f} "
            f"{r['speedup']:12.2f}"
        )
    model_rows = []
    if not args.skip_models:
        model_rows = bench_models(device, lengths, budget, dtype)
        print(f"\n{'model':22} {'T':>6} {'batch':>6} {'sentences/s':>12} {'tokens/s':>12}")
        for r in model_rows:
            print(f"{r['model']:22} {r['T']:6d} {r['batch']:6d} {r['sentences_per_s']:12.1f} {r['tokens_per_s']:12.0f}")
        if args.plot:
            plot(model_rows, args.plot, f"Inference throughput, {name}, {dtype}".replace("torch.", ""))
            print(f"wrote {args.plot}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": name, "torch": torch.__version__, "ops": op_rows, "models": model_rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
