"""The ``convatlas`` command line: argparse subcommands that call the library.

Each command group lives in its own module here and exposes ``register(subparsers)``; its handlers take the parsed
arguments and return an exit status. An error that reports the user's bad input (:mod:`convatlas.errors`: a
``ValueError``, an ``InputTypeError``, a missing, unwritable or existing file) is printed as one line and the command
exits with status 2, without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from convatlas.errors import USER_ERRORS, one_line

# Command groups, in the order ``convatlas --help`` lists them.
COMMAND_MODULES = ("arith", "tour", "models", "detect", "train", "analysis", "atlas")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convatlas",
        description="Convolutional networks from the arithmetic up: shapes, receptive fields, operators, models, "
        "analysis, training and detection.",
    )
    from convatlas import __version__

    parser.add_argument("--version", action="version", version=f"convatlas {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"convatlas.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as err:
        print(f"convatlas {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convatlas: interrupted", file=sys.stderr)
        return 130
