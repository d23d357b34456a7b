"""``convatlas summary`` and ``convatlas rf``: per-layer summary and receptive field of any network.

``MODEL`` is a registry name (``resnext50_32x4d``) or ``module:function`` returning an ``nn.Module``
(``torchvision.models:resnet50``, ``mypkg.nets:build``), so users can analyse their own networks.
"""

from __future__ import annotations

import argparse
import importlib

from torch import nn


def load_model(spec: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Build the model named by ``spec`` and its default input size (``None`` if unknown).

    Raises:
        ValueError: an unknown registry name (with close matches) or an unimportable ``module:function``.
        TypeError: the function does not return an ``nn.Module``.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"MODEL {spec!r}: cannot import module {module_name!r} ({err})") from None
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            raise ValueError(f"MODEL {spec!r}: module {module_name!r} has no callable {attr!r}")
        model = fn()
        if not isinstance(model, nn.Module):
            raise TypeError(f"MODEL {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
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
    """``"3x224x224"`` -> ``(3, 224, 224)``; ``"64"`` (token ids) -> ``(64,)``."""
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input must look like 3x224x224 (C x H x W) or 64 (T), got {text!r}") from None
    if any(v < 1 for v in size):
        raise ValueError(f"--input must have positive sizes, got {text!r}")
    return size


def _input(args: argparse.Namespace, default: tuple[int, ...] | None) -> tuple[int, ...]:
    if args.input:
        return parse_input(args.input)
    return default or (3, 224, 224)


def _summary(args: argparse.Namespace) -> int:
    from convatlas.analysis import summary

    model, default = load_model(args.model)
    result = summary(model, _input(args, default), depth=args.depth)
    if args.format == "json":
        print(result.to_json())
    elif args.format == "csv":
        print(result.to_csv(), end="")
    else:
        print(result)
    return 0


def _rf(args: argparse.Namespace) -> int:
    from convatlas.analysis import plot_effective_receptive_field, receptive_field

    model, default = load_model(args.model)
    size = _input(args, default)
    result = receptive_field(model, size, layer=args.layer, method=args.method)
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
    if args.plot:
        erf = plot_effective_receptive_field(model, size, args.plot, layer=result.layer, samples=args.samples)
        print(f"effective receptive field (Luo et al. 2016) of unit {erf.unit} written to {args.plot}")
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
    p.add_argument("--depth", type=int, default=None, help="show modules at most this deep (default: all)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
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
    p.add_argument("--plot", default=None, metavar="PNG", help="write the effective receptive field here")
    p.add_argument("--samples", type=int, default=8, help="random inputs averaged for --plot (default 8)")
    p.set_defaults(handler=_rf)
