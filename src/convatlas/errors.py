"""The one error policy: which exceptions mean "the caller gave something wrong".

The library raises ``ValueError`` (wrong value) or ``TypeError`` (wrong kind of object) whose message names the
argument, file or layer, the rule it broke and the numbers. The command line prints such an error as one line and
exits with status 2; everything else is a bug in convatlas and keeps its traceback.

``ValueError`` and its subclasses always count as the caller's mistake. A plain ``TypeError`` or ``KeyError`` does
not (it is how Python reports a bug), so code that rejects a wrong *type* given by the user raises
:class:`InputTypeError`, a ``TypeError`` that the command line recognises. Files the user names that are missing, are
folders, or cannot be written raise the ``OSError`` subclasses below, with the file name; so does any ``OSError``
whose number says that the name itself cannot be used (too long, a loop of symbolic links), wherever it is raised.
"""

from __future__ import annotations

import errno


class InputError(ValueError):
    """A value the caller gave breaks a rule; the message names the argument or file, the rule and the numbers."""


class InputTypeError(TypeError):
    """An object of the wrong type given by the caller (``isinstance(err, TypeError)`` still holds)."""


# The exceptions that mean "bad input, not a bug": the CLI prints them as one line and exits with status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    InputTypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


# OSError numbers that blame the name the caller gave, whatever the file system holds.
BAD_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP})


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports the caller's mistake (print one line, exit 2) rather than a bug (keep the traceback)."""
    return isinstance(err, USER_ERRORS) or (isinstance(err, OSError) and err.errno in BAD_NAME_ERRNOS)


def one_line(err: BaseException) -> str:
    """The message of a user error on one line: ``OSError`` with its file name, newlines folded into ``"; "``."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        name = str(err.filename)
        name = name if len(name) <= 200 else f"{name[:120]}...{name[-40:]} ({len(name)} characters)"
        text = f"{name}: {err.strerror}"
    else:
        text = str(err)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__
