"""``convatlas summary`` and ``convatlas rf``: per-layer summary and receptive field of any network.

``MODEL`` is a registry name (``resnext50_32x4d``) or ``module:function`` returning an ``nn.Module``
(``torchvision.models:resnet50``, ``mypkg.nets:build``), so users can analyse their own networks.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from convatlas.analysis.erf import MAX_SAMPLES
from convatlas.cli import add_threads_option, parse_int
from convatlas.errors import InputTypeError, is_user_error
from convatlas.files import atomic_write, check_output_file

# An input holds at most this many values (PyTorch's 32-bit indexing limit, and 8 GiB in float32).
MAX_INPUT_VALUES = 2**31 - 1
T = TypeVar("T")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_model(spec: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build the model named by ``spec`` and its default input size (``None`` if unknown).

    Raises:
        ValueError: an unknown registry name (with close matches), a detection model, a ``module:function`` that
            cannot be imported or found, or whose call raises.
        InputTypeError: the function does not return an ``nn.Module``.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ValueError(
                f"MODEL {spec!r}: expected a registry name or module:function, e.g. torchvision.models:resnet18"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"MODEL {spec!r}: cannot import module {module_name!r} ({err})") from None
        except Exception as err:  # the user's module fails while it is imported
            raise ValueError(f"MODEL {spec!r}: importing {module_name!r} raised {_first_line(err)}") from err
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            raise ValueError(f"MODEL {spec!r}: module {module_name!r} has no callable {attr!r}")
        try:
            model = fn()
        except Exception as err:  # the user's builder fails: their mistake, reported with its own words
            raise ValueError(f"MODEL {spec!r}: calling {attr}() raised {_first_line(err)}") from err
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"MODEL {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
        return model, None
    from convatlas.models import create_model, model_info

    info = model_info(spec)
    if info.task == "detection":
        raise ValueError(
            f"MODEL {spec!r} is a detection model (lists of images in, boxes out); analyse its backbone instead, "
            "e.g. a classification model of the same family"
        )
    return create_model(spec), tuple(info.input_size)


def parse_input(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; ``"64"`` (token ids) -> ``(64,)``.

    Raises:
        ValueError: not sizes separated by ``x``, a size below 1, or more than ``2**31 - 1`` values in all.
    """
    parts = text.lower().replace(" ", "").split("x")
    if not text.strip() or not all(part.isdecimal() for part in parts):
        raise ValueError(f"--input must look like 3x224x224 (C x H x W) or 64 (T), got {text!r}")
    size = tuple(int(part) if len(part) <= 20 else MAX_INPUT_VALUES + 1 for part in parts)
    if any(v < 1 for v in size):
        raise ValueError(f"--input must have positive sizes, got {text!r}")
    if math.prod(size) > MAX_INPUT_VALUES:
        raise ValueError(f"--input {text}: at most {MAX_INPUT_VALUES:,} values in all (2**31 - 1)")
    return size


def _input(args: argparse.Namespace, default: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input size: ``--input`` or the model's default; a registry model's states how many dimensions it has."""
    size = parse_input(args.input) if args.input is not None else default or (3, 224, 224)
    if default is not None and len(size) != len(default):
        kind = "C x H x W" if len(default) == 3 else "T (token ids)"
        raise ValueError(f"--input {'x'.join(map(str, size))}: {args.model} takes {len(default)}-d inputs ({kind}), "
                         f"e.g. {'x'.join(map(str, default))}")  # fmt: skip
    return size


def _analyse(args: argparse.Namespace, model: nn.Module, size: tuple[int, ...], user_model: bool,
             analyse: Callable[[], T]) -> T:  # fmt: skip
    """``analyse()``, telling a user's model that rejects the input apart from a bug of ours.

    A ``ValueError`` of the analysis (an input too small for a layer, an unknown ``--layer``) gets the model and the
    input in front. When the analysis of a ``module:function`` model fails with an error that is not a user error,
    the model is run once on its own (no tracer) on a zero input of that size: if that fails too, the model rejects
    the input and the error is the user's, in the model's own words; if it runs, the failure is ours and keeps its
    traceback.
    """
    try:
        return analyse()
    except ValueError as err:  # the analysis names the layer and the rule; add the model and the input
        raise ValueError(f"{args.model} on --input {'x'.join(map(str, size))}: {err}") from err
    except Exception as err:
        if user_model and not is_user_error(err):
            _check_forward(args, model, size)
        raise


def _check_forward(args: argparse.Namespace, model: nn.Module, size: tuple[int, ...]) -> None:
    from convatlas.analysis.trace import input_dtype

    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    x = torch.zeros((1, *size), dtype=input_dtype(model, size, None), device=device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as err:  # the user's model rejects this input size
        shown = "x".join(map(str, size))
        raise ValueError(f"MODEL {args.model!r} fails on --input {shown} (batch 1): {_first_line(err)}") from err
    finally:
        model.train(training)


def _depth(text: str | None) -> int | None:
    return None if text is None else parse_int("--depth", text, minimum=1)


def _summary(args: argparse.Namespace) -> int:
    from convatlas.analysis import summary

    depth = _depth(args.depth)
    model, default = load_model(args.model)
    size = _input(args, default)
    result = _analyse(args, model, size, default is None, lambda: summary(model, size, depth=depth))
    if args.format == "json":
        print(result.to_json())
    elif args.format == "csv":
        print(result.to_csv(), end="")
    else:
        print(result)
    return 0


def _check_plot(args: argparse.Namespace) -> Path | None:
    """``--plot``: a new file (or ``--overwrite``) of a format matplotlib writes, checked before any work."""
    if args.samples is not None and not 1 <= args.samples <= MAX_SAMPLES:
        raise ValueError(f"--samples must be in 1..{MAX_SAMPLES}, got {args.samples}")
    if args.plot is None:
        given = "--samples" if args.samples is not None else "--overwrite" if args.overwrite else None
        if given:
            raise ValueError(f"{given} applies to --plot (the effective receptive field); without --plot nothing is "
                             "drawn or written")  # fmt: skip
        return None
    path = check_output_file(args.plot, "--plot", overwrite=args.overwrite)
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ValueError(
            f"--plot {path}: the name must end in one of .{', .'.join(sorted(formats))} (it picks the format)"
        )
    return path


def _rf(args: argparse.Namespace) -> int:
    from convatlas.analysis import plot_effective_receptive_field, receptive_field

    plot = _check_plot(args)
    model, default = load_model(args.model)
    size = _input(args, default)
    if plot is not None and len(size) != 3:
        raise ValueError(f"--plot draws 2-d inputs (C x H x W); the input is {'x'.join(map(str, size))}")
    analyse = partial(receptive_field, model, size, layer=args.layer, method=args.method)
    result = _analyse(args, model, size, default is None, analyse)
    where = f"{result.layer!r}" if result.layer else "the output"
    print(
        f"receptive field of {where} {list(result.output_shape)} for input {'x'.join(map(str, size))} "
        f"(method: {result.method})"
    )
    names = ("H", "W", "D") if len(result.size) > 1 else ("T",) if len(size) == 1 else ("L",)
    for name, size_, jump, start in zip(names, result.size, result.jump, result.start, strict=False):
        print(f"  {name}: size {size_}, jump {jump}, start {start}")
    if result.covers_input:
        print("  every position reads the whole input (its field is as large, or a reduction over space is upstream)")
    if not result.exact:
        print("  the fields are not of one size with evenly spaced centres; size is the largest over positions")
    for note in result.notes:
        print(f"  note: {note}")
    if plot is not None:
        drawn = []
        samples = 8 if args.samples is None else args.samples
        draw = partial(plot_effective_receptive_field, model, size, layer=result.layer, samples=samples)
        _analyse(args, model, size, default is None, lambda: atomic_write(plot, lambda tmp: drawn.append(draw(tmp))))
        print(f"effective receptive field (Luo et al. 2016) of unit {drawn[0].unit} written to {plot}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    help_model = "registry name (see `convatlas models`) or module:function returning an nn.Module"
    p = subparsers.add_parser(
        "summary",
        help="per-layer table: output shape, parameters, MACs, receptive field, activation memory",
        description="Summarise a network layer by layer from one forward pass (on the meta device when possible).",
    )
    p.add_argument("model", metavar="MODEL", help=help_model)
    p.add_argument("--input", help="input size without batch, e.g. 3x224x224 (default: the model's)")
    p.add_argument("--depth", default=None, help="show modules at most this deep, >= 1 (default: all)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    add_threads_option(p)
    p.set_defaults(handler=_summary)

    p = subparsers.add_parser(
        "rf",
        help="receptive field (size, jump, start per spatial dimension) of a network's feature map",
        description="Receptive field on the network's graph; optionally plot the effective receptive field.",
    )
    p.add_argument("model", metavar="MODEL", help=help_model)
    p.add_argument("--input", help="input size without batch, e.g. 3x224x224 (default: the model's)")
    p.add_argument("--layer", default=None, help="module path of the feature map (default: the last spatial map)")
    p.add_argument("--method", choices=("auto", "graph", "empirical"), default="auto")
    p.add_argument(
        "--plot", default=None, metavar="PNG", help="write the effective receptive field here (.png, .svg, ...)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument(
        "--samples", type=int, default=None, help=f"random inputs averaged for --plot, 1..{MAX_SAMPLES} (default 8)"
    )
    add_threads_option(p)
    p.set_defaults(handler=_rf)
