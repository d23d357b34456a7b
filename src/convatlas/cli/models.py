"""``convatlas models [PATTERN]``: the registered models with their task, default input and parameter count.

Models are built on the ``meta`` device, so even the largest costs no memory and the listing takes seconds.
"""

from __future__ import annotations

import argparse

import torch

from convatlas.models import create_model, list_models, model_info
from convatlas.models.registry import _TASKS
from convatlas.utils import close_matches


def _count(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def _list(args: argparse.Namespace) -> int:
    pattern = args.pattern
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"  # a plain word matches anywhere in the name
    names = list_models(pattern, task=args.task)
    if not names:
        where = f" with task {args.task!r}" if args.task else ""
        hint = close_matches(args.pattern or "", list_models())
        raise ValueError(f"no model matches {args.pattern!r}{where}{hint}")
    rows = []
    for name in names:
        info = model_info(name)
        size = "x".join(str(s) for s in info.input_size)
        rows.append((name, info.task, size, f"{_count(name):,}"))
    header = ("name", "task", "input", "parameters")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}")
    print(f"{len(rows)} model{'s' if len(rows) != 1 else ''}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model zoo with parameter counts",
        description="List registered models: name, task, default input (C x H x W, or T tokens) and parameters "
        "(with default arguments, counted on the meta device).",
    )
    parser.add_argument("pattern", nargs="?", help="shell pattern (resnext*) or a word contained in the name")
    parser.add_argument("--task", choices=_TASKS, help="only models of this task")
    parser.set_defaults(handler=_list)
