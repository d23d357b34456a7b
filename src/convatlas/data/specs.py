"""The ``key=value,...`` options of a data spec (``fashion-scenes:canvas=128,num_images=2000``, ``nuclei:size=96``).

Each spec kind declares a table ``{key: (read, looks)}``: ``read`` turns the text into the value (raising
``ValueError``), ``looks`` says what a good value looks like, for the message.
"""

from __future__ import annotations

from collections.abc import Callable

from convatlas.utils import close_matches

OptionTable = dict[str, tuple[Callable[[str], object], str]]


def read_bool(text: str) -> bool:
    """``1``/``true``/``yes`` or ``0``/``false``/``no`` (any case)."""
    value = text.lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(text)


def parse_options(spec: str, text: str, table: OptionTable) -> dict:
    """The options after a spec's first ``:`` as keywords.

    Args:
        spec: the whole spec, for messages.
        text: the part after the kind and its ``:``.
        table: the spec kind's options.

    Raises:
        ValueError: an item that is not ``key=value``, an unknown key (with close matches), a key given twice, or a
            value that does not parse (naming it and what it should look like).
    """
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"data {spec!r}: option {item!r} is not key=value")
        if key not in table:
            raise ValueError(
                f"data {spec!r}: unknown option {key!r}{close_matches(key, table)} (known: {', '.join(table)})"
            )
        if key in options:
            raise ValueError(f"data {spec!r}: option {key!r} given twice")
        read, looks = table[key]
        try:
            options[key] = read(value.strip())
        except ValueError:
            raise ValueError(f"data {spec!r}: {key} must be {looks}, got {value!r}") from None
    return options


__all__ = ["OptionTable", "parse_options", "read_bool"]
