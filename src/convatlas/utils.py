"""Small helpers shared by every layer: close-match suggestions for error messages and tuple expansion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
