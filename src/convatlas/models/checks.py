"""The checks of model arguments, in one place: every family validates its hyperparameters with these functions.

A wrong value raises ``ValueError`` and a wrong kind of object raises :class:`convatlas.errors.InputTypeError`; each
message is one line naming the model, the argument, the rule and the value given::

    ResNeXt: num_classes must satisfy 0 <= num_classes <= 1000000 (0: no classifier), got -1
    MobileNetV2: width_mult must be a number, got str '0.5'

Conventions shared by the zoo:

- ``num_classes``: an int; ``0`` builds an image classifier without its last linear layer (``forward`` returns the
  pooled features, as in timm); anything negative is an error. Text and segmentation models need at least 1 class.
- ``bool`` is not accepted where an int or a number is expected (``in_channels=True`` is a mistake, not 1).
- Upper bounds catch typos that would otherwise allocate gigabytes or run for hours: they are far above every
  published configuration (ImageNet-21k's 21,843 classes, ConvNeXt-XXLarge's 12,288-channel bottlenecks,
  DenseNet-264's 64-layer dense block).
"""

from __future__ import annotations

import numbers
import reprlib
from collections.abc import Sequence

from torch import nn

from convatlas.errors import InputTypeError

MAX_CLASSES = 1_000_000  # classifier outputs
MAX_CHANNELS = 16384  # input channels and the width of any layer
MAX_BLOCKS = 1000  # blocks or layers in one stage
MAX_MULTIPLIER = 16.0  # width and depth multipliers (EfficientNet-B7 uses 2.0 and 3.1)
MAX_VOCAB = 10_000_000  # rows of a word embedding (word2vec's GoogleNews vectors have 3 million)

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxtuple, _short.maxlist = 40, 40, 8, 8


def _given(value) -> str:
    """``"str '0.5'"``: the type and a short repr of a value, for type errors."""
    return f"{type(value).__name__} {_short.repr(value)}"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(where: str, name: str, value, *, low: int = 1, high: int = MAX_CHANNELS, note: str = "") -> int:
    """``value`` as an int in ``[low, high]``.

    Args:
        where: the model (class name) in the message.
        name: the argument in the message.
        value: what the caller gave.
        low, high: the inclusive range.
        note: appended to the rule, e.g. ``" (0: no classifier)"``.

    Raises:
        InputTypeError: not an int (a bool, a float, a string...).
        ValueError: outside ``[low, high]``.
    """
    if not _is_int(value):
        raise InputTypeError(f"{where}: {name} must be an int, got {_given(value)}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{where}: {name} must satisfy {low} <= {name} <= {high}{note}, got {_short.repr(value)}")
    return value


def check_float(
    where: str, name: str, value, *, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a float in the range from ``low`` to ``high`` (each end open or closed); NaN never passes.

    Raises:
        InputTypeError: not a real number (a bool, a string, None...).
        ValueError: outside the range.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InputTypeError(f"{where}: {name} must be a number, got {_given(value)}")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        rule = f"{low:g} {'<' if low_open else '<='} {name} {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{where}: {name} must satisfy {rule}, got {value:g}")
    return value


def check_rate(where: str, name: str, value) -> float:
    """A dropout or drop-path probability: a number in ``[0, 1)``."""
    return check_float(where, name, value, low=0.0, high=1.0, high_open=True)


def check_multiplier(where: str, name: str, value) -> float:
    """A width or depth multiplier: a number in ``(0, MAX_MULTIPLIER]``."""
    return check_float(where, name, value, low=0.0, high=MAX_MULTIPLIER, low_open=True)


def check_ints(
    where: str,
    name: str,
    value,
    *,
    length: int | None = None,
    min_length: int = 1,
    low: int = 1,
    high: int = MAX_CHANNELS,
    note: str = "",
) -> tuple[int, ...]:
    """``value`` as a tuple of ints, each in ``[low, high]``, of exactly ``length`` items (or at least ``min_length``);
    ``note`` follows the length rule in the message, e.g. ``" (one per stage of depths)"``.

    Raises:
        InputTypeError: not a list or tuple, or an item that is not an int.
        ValueError: a wrong length or an item out of range (named by its index).
    """
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InputTypeError(f"{where}: {name} must be a tuple of ints, got {_given(value)}")
    value = tuple(value)
    if length is not None and len(value) != length:
        raise ValueError(f"{where}: {name} must hold {length} values{note}, got {len(value)}: {_short.repr(value)}")
    if len(value) < min_length:
        raise ValueError(
            f"{where}: {name} must hold at least {min_length} values{note}, got {len(value)}: {_short.repr(value)}"
        )
    return tuple(check_int(where, f"{name}[{i}]", v, low=low, high=high) for i, v in enumerate(value))


def check_bool(where: str, name: str, value) -> bool:
    """``value`` when it is a bool (``0``/``1`` or a string are mistakes here)."""
    if not isinstance(value, bool):
        raise InputTypeError(f"{where}: {name} must be True or False, got {_given(value)}")
    return value


def check_choice(where: str, name: str, value, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}: {name} must be one of {tuple(choices)}, got {_short.repr(value)}")
    return value


def check_num_classes(where: str, value, *, allow_zero: bool = True) -> int:
    """Classifier outputs: an int in ``[0, MAX_CLASSES]``, where 0 means no classifier; ``[1, MAX_CLASSES]`` for
    models whose output needs classes (``allow_zero=False``: segmentation and text)."""
    if allow_zero:
        return check_int(where, "num_classes", value, low=0, high=MAX_CLASSES, note=" (0: no classifier)")
    return check_int(where, "num_classes", value, low=1, high=MAX_CLASSES)


def check_in_channels(where: str, value) -> int:
    """Input image channels: an int in ``[1, MAX_CHANNELS]``."""
    return check_int(where, "in_channels", value, low=1, high=MAX_CHANNELS)


def check_module_class(where: str, name: str, value) -> type[nn.Module]:
    """A layer class such as ``nn.ReLU`` (the class, not an instance)."""
    if not (isinstance(value, type) and issubclass(value, nn.Module)):
        raise InputTypeError(f"{where}: {name} must be an nn.Module class such as nn.ReLU, got {_given(value)}")
    return value


__all__ = [
    "MAX_BLOCKS",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_MULTIPLIER",
    "MAX_VOCAB",
    "check_bool",
    "check_choice",
    "check_float",
    "check_in_channels",
    "check_int",
    "check_ints",
    "check_module_class",
    "check_multiplier",
    "check_num_classes",
    "check_rate",
]
