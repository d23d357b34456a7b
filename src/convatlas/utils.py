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
