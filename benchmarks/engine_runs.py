"""What the benchmarks that train in the engine share (``segmentation.py``, ``detection.py``, ``lineage.py``).

Each of them trains several sides (models, detectors) over several seeds with :func:`convatlas.train.fit`, times every
run by the process CPU time and the wall clock, prints one line per run and then a table of mean ± spread, and can
write every run's metrics to a JSON file. Imported by those scripts as a sibling module (run them as
``python benchmarks/NAME.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from convatlas.files import atomic_write_json, check_output_file
from convatlas.train import TrainConfig, fit


def machine_line(details: str, versions: str = "") -> str:
    """The first line every such benchmark prints: date, machine, cores, load, torch and torchvision, ``details``."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# {time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {os.cpu_count()} "
            f"CPUs, load {load:.1f}; torch {torch.__version__}, torchvision {torchvision.__version__}{versions}; "
            f"{details}")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every such benchmark has: seeds, threads, device, quick, and where the runs and results go."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: every usable core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few steps of each and one seed, to check the script")
    parser.add_argument("--keep", help="keep the run folders (checkpoints, metrics.jsonl) in this folder")
    parser.add_argument("--out", help="also write every run's metrics to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def choose(parser: argparse.ArgumentParser, option: str, given: str, known) -> list[str]:
    """The comma-separated names of ``given``, each one of ``known`` (otherwise the parser's usage error)."""
    names = [n.strip() for n in given.split(",") if n.strip()]
    for name in names:
        if name not in known:
            parser.error(f"{option}: unknown {name!r} (known: {', '.join(known)})")
    return names


def timed_fit(config: TrainConfig, task=None) -> dict:
    """Train ``config`` (with ``task`` in place of the one its data names, if given): the final test metrics without
    their ``test_`` prefix, ``cpu_s`` (process CPU time), ``wall_s`` and ``steps``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fit(config, task)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    final = {k.removeprefix("test_"): v for k, v in result.final.items()}
    return {**final, "cpu_s": cpu, "wall_s": wall, "steps": result.global_step}


def mean_spread(values: list[float]) -> str:
    """``mean ± sample standard deviation`` to three decimals (spread 0 for one value)."""
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def ratio(ours: float, theirs: float, digits: int = 2) -> str:
    """``ours / theirs`` to ``digits`` decimals, or ``-`` when ``theirs`` is 0."""
    return f"{ours / theirs:.{digits}f}" if theirs else "-"


def run_all(
    args: argparse.Namespace,
    names: list[str],
    one_run: Callable[[str, int, Path], dict],
    describe: Callable[[dict], str],
    table: Callable[[dict], list[str]],
    prefix: str,
) -> dict:
    """Every name for every seed of ``args.seeds``, in run folders under ``args.keep`` (or a temporary folder),
    printing ``describe(row)`` per run, then ``table(results)``; ``args.out`` (checked by :func:`check_out`) gets
    every row. Returns ``{name: [row per seed]}``."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    keep = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix=f"{prefix}-")
    width = max(map(len, names))
    with keep as root:
        for seed in args.seeds:
            for name in names:
                row = one_run(name, seed, Path(root))
                results[name].append(row)
                print(f"  seed {seed} {name:{width}s} {describe(row)} CPU {row['cpu_s']:.0f} s "
                      f"(wall {row['wall_s']:.0f} s)", flush=True)  # fmt: skip
    print()
    print("\n".join(table(results)))
    if args.out:
        atomic_write_json(args.out, {"args": vars(args), "results": results})
    return results


def check_out(args: argparse.Namespace) -> None:
    """Refuse an existing ``--out`` before any training (unless ``--overwrite``)."""
    if args.out:
        check_output_file(args.out, "--out", overwrite=args.overwrite)
