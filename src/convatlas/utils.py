"""Small helpers shared by every layer: close-match suggestions for error messages, tuple expansion, the device and
the CPU threads of a command."""

from __future__ import annotations

import difflib
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
    """A ``"; did you mean: a, b?"`` suffix for an error message, or ``""`` when nothing is close.

    Args:
        name: what the user gave.
        choices: the valid names.
        n: at most this many suggestions.
    """
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        found = [c for c in choices if name.lower() in c.lower()][:n]
    return f"; did you mean: {', '.join(found)}?" if found else ""


def as_tuple(value, n: int, name: str) -> tuple:
    """Expand an int (or a length-``n`` sequence) to an ``n``-tuple, naming ``name`` in the error."""
    if isinstance(value, int | float):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} must be an int or a sequence of {n}, got {value!r} ({len(value)} values)")
    return value


MAX_SEED = 2**32 - 1  # the largest seed accepted anywhere: numpy's bound, and torch's generators take it too
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, option: str = "--device"):
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device`` that exists here.

    Raises:
        ValueError: an unknown name, or a CUDA device this machine does not have (naming ``option``).
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = str(name).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"{option} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: CUDA is not available on this machine (use --device cpu)")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


MAX_THREADS = 1024  # the most CPU threads accepted anywhere: catches typos before they exhaust the machine
_CGROUP_ROOT = "/sys/fs/cgroup"
_PROC_CGROUP = "/proc/self/cgroup"  # this process's cgroup path per hierarchy


def usable_cores() -> int:
    """The CPU cores this process may use: those of its affinity mask (``os.sched_getaffinity``, which ``taskset``,
    ``docker --cpuset-cpus`` and Kubernetes' static CPU manager set), capped by a CPU quota of its cgroup
    (``cpu.max``, v2, or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, v1; ``docker --cpus``, Kubernetes limits),
    rounded down, at least 1. Without an affinity call (macOS, Windows): ``os.cpu_count()``.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: str | os.PathLike = _CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``), the smallest on its path up to the root;
    ``None`` when there is none or it cannot be read.

    Args:
        root: where the cgroup file system is mounted.
    """
    root = Path(root)
    try:
        lines = Path(_PROC_CGROUP).read_text().splitlines()
    except OSError:
        lines = []
    quotas = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":
            quotas += _quotas_up(root, root / path.lstrip("/"), "cpu.max")
        elif "cpu" in controllers.split(","):
            v1 = root / "cpu,cpuacct" if (root / "cpu,cpuacct").is_dir() else root / "cpu"
            quotas += _quotas_up(v1, v1 / path.lstrip("/"), "cpu.cfs_quota_us")
    if not lines:  # no /proc: the root's own files
        quotas += _quotas_up(root, root, "cpu.max")
    return min(quotas) if quotas else None


def _quotas_up(top: Path, folder: Path, name: str) -> list[float]:
    """The quotas (in cores) written in ``folder`` and each folder above it up to ``top``."""
    found = []
    while True:
        quota = _read_quota(folder, name)
        if quota is not None:
            found.append(quota)
        if folder == top or top not in folder.parents:
            return found
        folder = folder.parent


def _read_quota(folder: Path, name: str) -> float | None:
    try:
        if name == "cpu.max":  # "max 100000" or "200000 100000"
            quota, _, period = (folder / name).read_text().strip().partition(" ")
        else:
            quota = (folder / name).read_text().strip()  # -1: no limit
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or not period:
            return None
        quota, period = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer (the variable PyTorch itself reads, and that ``torchrun`` sets to 1
    for each of several processes on one machine), or ``None`` when it is unset or not a positive integer."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdecimal() and int(text) > 0 else None


def choose_threads(threads: int = 0, *, workers: int = 0) -> int:
    """The intra-op CPU threads of a command: ``threads`` when given, else ``OMP_NUM_THREADS`` when set, else the
    usable cores (:func:`usable_cores`) less one per data-loading worker.

    Each DataLoader worker process runs one thread (PyTorch sets that in the worker), so ``threads + workers`` threads
    compete for the cores. When they outnumber the cores, one warning says so: with ``threads`` left at 0 the
    threads make room for the workers (at least 1 stays); a ``threads`` that was given is kept.

    Args:
        threads: ``0`` (the default above) or a count in ``1..MAX_THREADS``.
        workers: the data-loading worker processes that run beside the threads.

    Raises:
        ValueError: ``threads`` or ``workers`` is not an integer in range.
    """
    for name, value, low in (("threads", threads, 0), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_THREADS:
            raise ValueError(f"{name} must be an integer in {low}..{MAX_THREADS}, got {value!r}")
    cores = usable_cores()
    chosen = threads or omp_threads() or cores
    if workers and chosen + workers > cores:
        if threads or omp_threads():
            source = "threads" if threads else "OMP_NUM_THREADS"
            _warn_once(f"{source} {chosen} + {workers} data-loading workers exceed the {cores} usable CPU cores: they "
                       "will compete for them (fewer threads or workers would avoid it)")  # fmt: skip
        else:
            room = max(1, cores - workers)
            _warn_once(f"{workers} data-loading workers and {chosen} threads would exceed the {cores} usable CPU "
                       f"cores; using {room} thread{'s' if room > 1 else ''} (give threads to choose)")  # fmt: skip
            chosen = room
    return chosen


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def set_threads(threads: int = 0, *, workers: int = 0) -> int:
    """Set torch's intra-op CPU threads to :func:`choose_threads` ``(threads, workers=workers)``; returns the count.

    Raises:
        ValueError: ``threads`` or ``workers`` is not an integer in range.
    """
    import torch

    chosen = choose_threads(threads, workers=workers)
    torch.set_num_threads(chosen)
    return chosen
