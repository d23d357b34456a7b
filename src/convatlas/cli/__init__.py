"""The ``convatlas`` command line: argparse subcommands that call the library.

Each command group lives in its own module here and exposes ``register(subparsers)``; its handlers take the parsed
arguments and return an exit status. An error that reports the user's bad input (:mod:`convatlas.errors`: a
``ValueError``, an ``InputTypeError``, a missing, unwritable or existing file) is printed as one line and the command
exits with status 2, without a traceback; any other exception is a bug and keeps its traceback. argparse's own errors
(an unknown option, a missing argument, a value of the wrong type) are one line too, naming the option.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from convatlas.errors import is_user_error, one_line

# Command groups, in the order ``convatlas --help`` lists them.
COMMAND_MODULES = ("arith", "tour", "models", "detect", "train", "analysis", "atlas")
# Integers given on the command line stay below this, so that every product the commands print stays printable.
MAX_INT = 10**100


class _StoreOnce(argparse.Action):
    """argparse's ``store`` action, except that an option given twice is refused: argparse would keep the last value
    and drop the first in silence (``--lr 0.1 ... --lr 0.01``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = getattr(parser, "given_options", None)
        if given is not None:
            if self.dest in given:
                raise argparse.ArgumentError(self, f"given twice ({given[self.dest]!r}, then {values!r}); give it once")
            given[self.dest] = values
        setattr(namespace, self.dest, values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with errors on one line: ``PROG: error: MESSAGE (see PROG --help)``, exit status 2, and
    options that take a value refused when given twice.

    Subcommand parsers are made with the parent's class, so every command of ``convatlas`` reports this way.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        self.given_options: dict[str, object] = {}
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(ValueError(message))} (see `{self.prog} --help`)\n")


def parse_int(option: str, text: str, *, minimum: int | None = None, maximum: int = MAX_INT) -> int:
    """An integer option given as text, naming the option, the rule and the value in the error.

    Args:
        option: the option's name (``"--length"``).
        text: what the user typed.
        minimum: the smallest value allowed (``None``: no bound).
        maximum: the largest value allowed (default ``10**100``).

    Raises:
        ValueError: ``text`` is not an integer, or the value lies outside ``[minimum, maximum]``.
    """
    shown = text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"
    limit = "10**100" if maximum == MAX_INT else str(maximum)
    try:
        value = int(text)
    except ValueError:
        if text.strip().lstrip("+-").isdecimal():  # more digits than Python reads (4300)
            rule = f">= {minimum if minimum is not None else '-' + limit}" if text.strip()[0] == "-" else f"<= {limit}"
            raise ValueError(f"{option} must be {rule}, got {shown}") from None
        raise ValueError(f"{option} must be an integer, got {shown!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {shown}")
    if value > maximum:
        raise ValueError(f"{option} must be <= {limit}, got {shown}")
    return value


def seed_type(text: str) -> int:
    """argparse ``type`` of a ``--seed`` option: an integer in ``0..2**32 - 1``."""
    from convatlas.utils import MAX_SEED

    try:
        return parse_int("", text, minimum=0, maximum=MAX_SEED)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).strip()) from None


def threads_type(text: str) -> int:
    """argparse ``type`` of a ``--threads`` option: an integer in ``0..MAX_THREADS`` (0: the default)."""
    from convatlas.utils import MAX_THREADS

    try:
        return parse_int("", text, minimum=0, maximum=MAX_THREADS)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).strip()) from None


THREADS_HELP = "CPU threads for torch (default 0: OMP_NUM_THREADS if set, else every core this process may use)"


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Give a command that computes with torch the ``--threads`` option; :func:`main` sets the threads from it
    (:func:`convatlas.utils.set_threads`) before the command runs. ``train`` has its own, a configuration field."""
    parser.add_argument("--threads", type=threads_type, default=0, metavar="N", help=THREADS_HELP)
    parser.set_defaults(sets_threads=True)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="convatlas",
        description="Convolutional networks from the arithmetic up: shapes, receptive fields, operators, models, "
        "analysis, training and detection.",
    )
    from convatlas import __version__

    parser.add_argument("--version", action="version", version=f"convatlas {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"convatlas.cli.{name}").register(subparsers)
    parser.set_defaults(commands=tuple(subparsers.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.error(f"a command is required, one of: {', '.join(args.commands)}")
    try:
        if getattr(args, "sets_threads", False):
            from convatlas.utils import set_threads

            set_threads(args.threads)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("convatlas: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"convatlas {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
